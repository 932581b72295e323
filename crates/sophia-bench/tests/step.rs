//! The step benchmark's harness: every optimizer is timed (those with a one-pass update on flex
//! also with the composed operations), and the memory floor beside them; ratios are relative to
//! AdamW, the
//! JSON round-trips and the plot is drawn from it. No timing is asserted.

use burn::tensor::Device;
use sophia_bench::step::{StepReport, plot, run, write};

#[test]
fn step_report_has_every_optimizer_and_consistent_ratios() {
    let device = Device::flex().autodiff();
    let report = run(&["cpu-1m"], 2, &device, "flex", &mut |_| {}).unwrap();
    let names: Vec<&str> = report.timings.iter().map(|t| t.optimizer.as_str()).collect();
    assert_eq!(
        names,
        [
            "adamw",
            "sophiag",
            "sophiah",
            "lion",
            "tiger",
            "muon",
            "adamw (composed)",
            "sophiag (composed)",
            "sophiah (composed)",
            "lion (composed)",
            "tiger (composed)",
            "memory floor"
        ]
    );
    for t in &report.timings {
        assert!(t.min_secs <= t.median_secs && t.median_secs <= t.max_secs, "{t:?}");
        assert!((t.ns_per_param - t.median_secs * 1e9 / t.parameters as f64).abs() < 1e-6 * t.ns_per_param);
        let adamw = report.timings.iter().find(|a| a.optimizer == "adamw" && a.preset == t.preset).unwrap();
        assert!((t.ratio_to_adamw - t.median_secs / adamw.median_secs).abs() < 1e-12);
    }
    assert_eq!(report.timings[0].ratio_to_adamw, 1.0);

    let dir = std::env::temp_dir().join(format!("sophia-bench-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench-step.json");
    write(&report, &json).unwrap();
    let back: StepReport = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(back, report);
    for file in ["bench-step.png", "bench-step.svg"] {
        assert!(std::fs::metadata(dir.join(file)).unwrap().len() > 1000, "{file}");
    }
    plot(&back, &dir.join("replot")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
