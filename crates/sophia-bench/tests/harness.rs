//! The comparison, memory, throughput and report harnesses on synthetic data and tiny models:
//! the "steps to reach AdamW's loss" arithmetic, exact state sizes, the FLOP count, the JSON
//! round trip and the plots. No timing is asserted.

use burn::tensor::Device;
use sophia_bench::compare::{CompareReport, CurvePoint, OptimizerResult, first_crossing, rank_against_adamw};
use sophia_bench::machine::Machine;
use sophia_bench::memory::{MemoryEntry, MemoryReport, state_bytes};
use sophia_bench::{compare, memory, report, throughput};
use sophia_train::train::{OptimizerConfig, OptimizerKind, SophiaGSettings, TrainConfig};
use sophia_gpt2::{Gpt2, Gpt2Config};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sophia-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loss curve `start · decay^(step/10)` evaluated every 10 steps, 1 second per step.
fn result(optimizer: &str, start: f64, decay: f64) -> OptimizerResult {
    let curve: Vec<CurvePoint> =
        (0..=10).map(|i| CurvePoint { step: 10 * i, tokens: 5120 * i as u64, seconds: 10.0 * i as f64, val_loss: start * decay.powi(i as i32) }).collect();
    OptimizerResult {
        optimizer: optimizer.into(),
        sweep: vec![compare::SweepEntry { lr: 1e-3, final_val_loss: Some(curve[10].val_loss) }, compare::SweepEntry { lr: 2e-3, final_val_loss: None }],
        lr: 1e-3,
        final_val_loss: curve[10].val_loss,
        curve,
        tokens_per_sec: 512.0,
        state_bytes: 8000,
        state_bytes_per_param: 8.0,
        hessian_time_fraction: 0.0,
        final_win_rate: None,
        steps_to_adamw_loss: None,
        step_ratio_to_adamw: None,
        seconds_to_adamw_loss: None,
    }
}

#[test]
fn crossing_points_interpolate_between_evaluations() {
    let curve = [(0.0, 10.0), (10.0, 6.0), (20.0, 4.0), (30.0, 5.0), (40.0, 3.0)];
    assert_eq!(first_crossing(&curve, 10.5), Some(0.0), "already below at the first point");
    assert_eq!(first_crossing(&curve, 8.0), Some(5.0));
    assert_eq!(first_crossing(&curve, 5.0), Some(15.0));
    assert_eq!(first_crossing(&curve, 4.0), Some(20.0));
    assert_eq!(first_crossing(&curve, 3.5), Some(37.5), "the first crossing, after a rise");
    assert_eq!(first_crossing(&curve, 2.0), None);
    assert_eq!(first_crossing(&[], 2.0), None);
}

#[test]
fn steps_to_adamw_loss_and_ratios() {
    // AdamW halves its loss every 10 steps over 100 steps; "fast" twice as fast in log space.
    let mut results = vec![result("adamw", 8.0, 0.5f64.sqrt()), result("fast", 8.0, 0.5), result("slow", 8.0, 0.9)];
    let target = rank_against_adamw(&mut results).unwrap();
    assert!((target - 8.0 * 0.5f64.sqrt().powi(10)).abs() < 1e-12);
    assert!((results[0].steps_to_adamw_loss.unwrap() - 100.0).abs() < 1e-9);
    assert!((results[0].step_ratio_to_adamw.unwrap() - 1.0).abs() < 1e-12);
    // "fast" reaches 0.25 exactly at step 50.
    assert!((results[1].steps_to_adamw_loss.unwrap() - 50.0).abs() < 1e-9, "{:?}", results[1].steps_to_adamw_loss);
    assert!((results[1].step_ratio_to_adamw.unwrap() - 0.5).abs() < 1e-12);
    assert!((results[1].seconds_to_adamw_loss.unwrap() - 50.0).abs() < 1e-9);
    assert_eq!(results[2].steps_to_adamw_loss, None, "never reaches the target");
    assert_eq!(results[2].step_ratio_to_adamw, None);
    // Without AdamW there is no target.
    assert_eq!(rank_against_adamw(&mut results[1..]), None);
}

#[test]
fn compare_report_round_trips_and_draws_its_table_and_plots() {
    let dir = scratch("compare");
    let mut results = vec![result("adamw", 8.0, 0.8), result("sophiag", 8.0, 0.7)];
    rank_against_adamw(&mut results);
    let report = CompareReport {
        machine: Machine::detect("flex"),
        base: TrainConfig::default(),
        parameters: 3_420_608,
        lr_multipliers: vec![0.5, 1.0],
        unigram_val_loss: 6.4,
        adamw_final_val_loss: Some(results[0].final_val_loss),
        results,
    };
    let json = dir.join("compare.json");
    compare::write(&report, &json).unwrap();
    let back: CompareReport = sophia_bench::read_json(&json).unwrap();
    assert_eq!(back, report);
    for file in ["compare.png", "compare.svg"] {
        assert!(std::fs::metadata(dir.join(file)).unwrap().len() > 1000, "{file}");
    }
    let table = std::fs::read_to_string(dir.join("compare.md")).unwrap();
    assert!(table.contains("| sophiag |") && table.contains("diverged") && table.contains("1.00x"), "{table}");

    // The results page is generated from the JSON and checks the targets.
    let page = report::render(&dir, Some("## Discussion\n\nhand-written")).unwrap();
    assert!(page.contains(&report.machine.describe()), "names the machine");
    assert!(page.contains("Paper's claim") && page.contains("hand-written"), "{page}");
    assert!(page.contains("Not measured yet: default-run.json, bench-step.json, memory.json, throughput.json"), "{page}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn optimizer_state_sizes_are_exact() {
    let device = Device::flex().autodiff();
    let config = Gpt2Config::new(1, 2, 16, 16, 50_257);
    let model = Gpt2::new(&config, &device, 0).unwrap();
    let params = model.num_params() as u64;
    let bytes = |optimizer: OptimizerKind| state_bytes(&TrainConfig { optimizer: optimizer.default_config(), model: Some(config.clone()), ..TrainConfig::default() }, &model, &device).unwrap();
    for (optimizer, per_param) in [(OptimizerKind::AdamW, 8), (OptimizerKind::SophiaG, 8), (OptimizerKind::SophiaH, 8), (OptimizerKind::Lion, 4), (OptimizerKind::Tiger, 4)] {
        assert_eq!(bytes(optimizer), per_param * params, "{optimizer}");
    }
    // Muon keeps one momentum for the blocks' matrices and AdamW's two moments elsewhere.
    let matrices: u64 = model.named_params().iter().filter(|(n, _, s)| s.len() == 2 && n.starts_with("h.")).map(|(_, _, s)| s.iter().product::<usize>() as u64).sum();
    assert_eq!(bytes(OptimizerKind::Muon), 8 * params - 4 * matrices);
}

#[test]
fn memory_and_throughput_reports_round_trip() {
    let dir = scratch("memory");
    let device = Device::flex().autodiff();
    let entry = memory::measure("cpu-1m", OptimizerKind::Lion, 1, 8, &device).unwrap();
    assert_eq!(entry.state_bytes, 4 * entry.parameters as u64);
    assert!(entry.peak_rss_bytes >= entry.baseline_rss_bytes && entry.peak_rss_bytes > 0, "{entry:?}");
    let report = MemoryReport { machine: Machine::detect("flex"), entries: vec![entry.clone(), MemoryEntry { optimizer: "adamw".into(), ..entry }] };
    memory::write(&report, &dir.join("memory.json")).unwrap();
    assert_eq!(sophia_bench::read_json::<MemoryReport>(&dir.join("memory.json")).unwrap(), report);

    let report = throughput::run(&["cpu-1m"], &[sophia_gpt2::Kernels::Fused], 1, 8, 1, &device, "flex", &mut |_| {}).unwrap();
    let e = &report.entries[0];
    assert!((e.tokens_per_sec - 8.0 / e.step_secs).abs() < 1e-9 * e.tokens_per_sec);
    assert!((e.mfu - e.achieved_gflops / report.peak_matmul_gflops).abs() < 1e-12);
    assert!((e.refresh_overhead_k10 - e.refresh_to_step / (10.0 + e.refresh_to_step)).abs() < 1e-12);
    throughput::write(&report, &dir.join("throughput.json")).unwrap();
    assert!(std::fs::metadata(dir.join("throughput.png")).unwrap().len() > 1000);
    let page = report::render(&dir, None).unwrap();
    // The copied "adamw" row has Lion's 4 bytes per parameter: the check says so.
    assert!(page.contains("## Memory") && page.contains("## Throughput"), "{page}");
    assert!(page.contains("(8 bytes): missed") && page.contains("(4 bytes): met"), "{page}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flops_per_token_follow_the_nanogpt_estimate() {
    // 6·N (without position embeddings) + 12·L·C·T.
    let config = Gpt2Config::new(2, 2, 16, 8, 50_257);
    let model = Gpt2::new(&config, &Device::flex(), 0).unwrap();
    let n = model.num_params() - 8 * 16;
    assert_eq!(throughput::flops_per_token(&model), (6 * n + 12 * 2 * 16 * 8) as f64);
}

#[test]
fn compare_trains_every_optimizer_at_its_best_learning_rate() {
    let dir = scratch("compare-run");
    let words = ["the", "king", "speaks", "to", "his", "loyal", "friend", "and", "enemy", "of", "Rome"];
    let text: String = (0..6000u64).map(|i| format!("{} ", words[(i * 7 + i / 3) as usize % words.len()])).collect();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let base = TrainConfig {
        name: "cmp".into(),
        out_dir: dir.join("runs"),
        data: dir.join("corpus.txt").display().to_string(),
        data_dir: dir.join("data"),
        model: Some(Gpt2Config::new(1, 2, 16, 16, 50_257)),
        block_size: None,
        max_steps: 4,
        warmup_steps: 1,
        optimizer: OptimizerConfig::SophiaG(SophiaGSettings { hessian_interval: 2, ..SophiaGSettings::default() }),
        batch_size: 2,
        eval_interval: 2,
        eval_batches: 1,
        checkpoint_interval: 4,
        sample_tokens: 0,
        plots: false,
        ..TrainConfig::default()
    };
    let options = compare::CompareOptions { optimizers: vec![OptimizerKind::AdamW, OptimizerKind::SophiaG], base, lr_multipliers: vec![0.5, 1.0] };
    let report = compare::run(&options, &Default::default(), &mut |_| {}).unwrap();
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert_eq!(r.sweep.len(), 2, "{r:?}");
        let best = r.sweep.iter().filter_map(|s| s.final_val_loss).fold(f64::INFINITY, f64::min);
        assert_eq!(r.final_val_loss, best, "the compared run is the sweep's best");
        assert_eq!(r.curve.iter().map(|p| p.step).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(r.state_bytes_per_param, 8.0);
    }
    assert_eq!(report.adamw_final_val_loss, Some(report.results[0].final_val_loss));
    assert_eq!(report.results[0].step_ratio_to_adamw, Some(1.0));
    assert!(report.results[1].hessian_time_fraction > 0.0, "SophiaG refreshed");
    std::fs::remove_dir_all(&dir).unwrap();
}
