//! The step benchmark's harness: every optimizer is timed (those with a one-pass update on flex
//! also with the composed operations), and the memory floor beside them; ratios are relative to
//! AdamW, the JSON round-trips, the plot is drawn from it and the results page sets it beside
//! PyTorch's figures. No timing is asserted.

use burn::tensor::Device;
use sophia_bench::report;
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

    // PyTorch's steps on the same preset (peers/step.py): each of ours set against each of its.
    let ours = |name: &str| report.timings.iter().find(|t| t.optimizer == name).unwrap().ns_per_param;
    let peer = serde_json::json!({
        "machine": { "cpu": report.machine.cpu, "logical_cpus": 2, "vector_isa": report.machine.vector_isa, "torch_threads": 2 },
        "torch": "2.15.0", "threads": 2, "repetitions": 5, "preset": "cpu-1m", "parameters": report.timings[0].parameters,
        "timings": [
            { "optimizer": "adamw (fused)", "median_secs": 1.0, "min_secs": 1.0, "max_secs": 1.0, "ns_per_param": ours("adamw") / 2.0 },
            { "optimizer": "sophiag (official)", "median_secs": 1.0, "min_secs": 1.0, "max_secs": 1.0, "ns_per_param": 4.0 * ours("sophiag") },
        ],
    });
    std::fs::write(dir.join("peer-pytorch-step.json"), peer.to_string()).unwrap();
    let page = report::render(&dir, None).unwrap();
    assert!(page.contains("Against PyTorch 2.15.0 in eager mode on 2 threads") && page.contains("the CPU of the table above"), "{page}");
    assert!(page.contains(&format!("- ours, adamw: {:.2} ns per parameter, 2.00x PyTorch's adamw (fused), ", ours("adamw"))), "{page}");
    let sophiag = format!(
        "- ours, sophiag: {:.2} ns per parameter, {:.2}x PyTorch's adamw (fused), 0.25x PyTorch's sophiag (official).\n",
        ours("sophiag"),
        2.0 * ours("sophiag") / ours("adamw")
    );
    assert!(page.contains(&sophiag), "{sophiag}: {page}");
    assert_eq!(page.matches("- ours, ").count(), 4, "AdamW, SophiaG, Lion and Tiger: {page}");
    assert!(!page.contains("PyTorch's model has"), "the same parameters: {page}");

    // A peer run on another parameter count (`step.py --block-size` other than the preset's) is
    // named on every line that sets the two side by side.
    let mut other = peer.clone();
    other["parameters"] = serde_json::json!(report.timings[0].parameters + 64);
    std::fs::write(dir.join("peer-pytorch-step.json"), other.to_string()).unwrap();
    let page = report::render(&dir, None).unwrap();
    let named = format!(" (PyTorch's model has {} parameters, ours {}).\n", report.timings[0].parameters + 64, report.timings[0].parameters);
    assert_eq!(page.matches(&named).count(), 4, "{named}: {page}");
    std::fs::remove_dir_all(&dir).unwrap();
}
