//! The comparison, memory, throughput and report harnesses on synthetic data and tiny models:
//! the "steps to reach AdamW's loss" arithmetic, exact state sizes, the FLOP count, the JSON
//! round trip and the plots. No timing is asserted.

use burn::tensor::Device;
use sophia_bench::compare::{CompareReport, CurvePoint, OptimizerResult, SeedRun, Spread, first_crossing, rank_against_adamw};
use sophia_bench::machine::Machine;
use sophia_bench::memory::{MemoryEntry, MemoryReport, state_bytes};
use sophia_bench::{compare, memory, report, throughput};
use sophia_gpt2::{Gpt2, Gpt2Config};
use sophia_train::train::{OptimizerConfig, OptimizerKind, Rho, SophiaGSettings, TrainConfig, TrainSummary};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sophia-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One seed's run: a loss curve `start · decay^(step/10)` evaluated every 10 steps, 1 second
/// per step.
fn seed_run(seed: u64, start: f64, decay: f64) -> SeedRun {
    let curve: Vec<CurvePoint> =
        (0..=10).map(|i| CurvePoint { step: 10 * i, tokens: 5120 * i as u64, seconds: 10.0 * i as f64, val_loss: start * decay.powi(i as i32) }).collect();
    SeedRun {
        seed,
        final_val_loss: curve[10].val_loss,
        curve,
        win_rate: vec![(10, 0.1), (100, 0.2)],
        tokens_per_sec: 512.0,
        hessian_time_fraction: 0.0,
        steps_to_target: None,
        seconds_to_target: None,
    }
}

/// An optimizer's result over seeds with the given curves.
fn result(optimizer: &str, curves: &[(f64, f64)]) -> OptimizerResult {
    let runs: Vec<SeedRun> = curves.iter().enumerate().map(|(seed, &(start, decay))| seed_run(seed as u64, start, decay)).collect();
    let finals: Vec<f64> = runs.iter().map(|r| r.final_val_loss).collect();
    OptimizerResult {
        optimizer: optimizer.into(),
        sweep: vec![
            compare::SweepEntry { lr: 1e-3, rho: Some(0.05), final_val_loss: Some(finals[0]) },
            compare::SweepEntry { lr: 2e-3, rho: Some(0.05), final_val_loss: None },
            compare::SweepEntry { lr: 1e-3, rho: Some(0.1), final_val_loss: Some(finals[0] + 0.1) },
            compare::SweepEntry { lr: 2e-3, rho: Some(0.1), final_val_loss: Some(finals[0] + 0.2) },
        ],
        lr: 1e-3,
        rho: Some("0.05".into()),
        final_val_loss: Spread::of(&finals).unwrap(),
        runs,
        tokens_per_sec: 512.0,
        state_bytes: 8000,
        state_bytes_per_param: 8.0,
        hessian_time_fraction: 0.0,
        final_win_rate: Some(0.2),
        steps_to_adamw_loss: None,
        step_ratio_to_adamw: None,
        seconds_to_adamw_loss: None,
        reached: 0,
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
fn spreads_are_the_mean_the_sample_deviation_and_the_range() {
    let s = Spread::of(&[1.0, 2.0, 4.0]).unwrap();
    assert!((s.mean - 7.0 / 3.0).abs() < 1e-12);
    // Σ(x − x̄)² = 16/9 + 1/9 + 25/9 = 42/9, over n − 1 = 2.
    assert!((s.std - (42.0f64 / 18.0).sqrt()).abs() < 1e-12);
    assert_eq!((s.min, s.max, s.n), (1.0, 4.0, 3));
    assert_eq!(Spread::of(&[5.0]).unwrap().std, 0.0);
    assert_eq!(Spread::of(&[]), None);
    assert_eq!(s.display(2), "2.33 ± 1.53");
}

#[test]
fn steps_to_adamw_loss_and_ratios_over_seeds() {
    // AdamW's two seeds halve their loss every 10 steps from 8 and from 8·√2: the mean curve
    // is 8·(1 + √2)/2 · 0.5^i, the target its last point, reached by the mean curve at step 100.
    let half = 0.5f64;
    let mut results =
        vec![result("adamw", &[(8.0, half), (8.0 * 2f64.sqrt(), half)]), result("fast", &[(8.0, 0.25), (8.0, 0.3)]), result("slow", &[(8.0, 0.9), (8.0, 0.95)])];
    let (target, adamw_steps) = rank_against_adamw(&mut results).unwrap();
    let expected = 8.0 * (1.0 + 2f64.sqrt()) / 2.0 * half.powi(10);
    assert!((target - expected).abs() < 1e-12, "{target} vs {expected}");
    assert!((adamw_steps.unwrap() - 100.0).abs() < 1e-9, "{adamw_steps:?}");
    // AdamW's first seed ends below the mean and reaches it earlier; the second never does.
    let adamw = &results[0];
    assert_eq!(adamw.reached, 1);
    let first = adamw.runs[0].steps_to_target.unwrap();
    assert!(first > 90.0 && first < 100.0, "{first}");
    assert_eq!(adamw.runs[1].steps_to_target, None);
    // "fast" seed 0 (quarter per 10 steps) reaches the target where 8·0.25^(s/10) crosses it,
    // between evaluations (interpolated linearly, as every crossing).
    let fast = &results[1];
    assert_eq!(fast.reached, 2);
    let curve: Vec<(f64, f64)> = fast.runs[0].curve.iter().map(|p| (p.step as f64, p.val_loss)).collect();
    let steps = first_crossing(&curve, target).unwrap();
    assert_eq!(fast.runs[0].steps_to_target, Some(steps));
    let ratios = fast.step_ratio_to_adamw.unwrap();
    assert_eq!(ratios.n, 2);
    assert!((ratios.min - steps / 100.0).abs() < 1e-12 || (ratios.max - steps / 100.0).abs() < 1e-12, "{ratios:?}");
    assert!(ratios.mean < 0.7 && ratios.std > 0.0, "{ratios:?}");
    assert!((fast.seconds_to_adamw_loss.unwrap().mean - fast.steps_to_adamw_loss.unwrap().mean).abs() < 1e-9, "1 second per step");
    let slow = &results[2];
    assert_eq!((slow.reached, slow.steps_to_adamw_loss, slow.step_ratio_to_adamw), (0, None, None), "never reaches the target");
    // Without AdamW there is no target.
    assert_eq!(rank_against_adamw(&mut results[1..]), None);
}

#[test]
fn compare_report_round_trips_and_draws_its_table_and_plots() {
    let dir = scratch("compare");
    let mut results = vec![result("adamw", &[(8.0, 0.8), (8.2, 0.8)]), result("sophiag", &[(8.0, 0.7), (8.1, 0.72)])];
    let ranked = rank_against_adamw(&mut results);
    let report = CompareReport {
        machine: Machine::detect("flex"),
        base: TrainConfig::default(),
        parameters: 812_288,
        lr_multipliers: vec![0.5, 1.0],
        rhos: vec![0.05, 0.1],
        seeds: 2,
        unigram_val_loss: 3.3,
        adamw_final_val_loss: ranked.map(|(t, _)| t),
        adamw_steps: ranked.and_then(|(_, s)| s),
        results,
    };
    let json = dir.join("compare.json");
    compare::write(&report, &json).unwrap();
    let back: CompareReport = sophia_bench::read_json(&json).unwrap();
    assert_eq!(back, report);
    for file in ["compare.png", "compare.svg", "compare-lr-rho.png", "compare-lr-rho.svg"] {
        assert!(std::fs::metadata(dir.join(file)).unwrap().len() > 1000, "{file}");
    }
    let table = std::fs::read_to_string(dir.join("compare.md")).unwrap();
    assert!(table.contains("| sophiag |") && table.contains("diverged") && table.contains(" ± ") && table.contains("2 seeds"), "{table}");
    let map = compare::lr_rho_heatmap(&report).unwrap();
    assert_eq!((map.columns.len(), map.rows.len()), (2, 2));
    assert_eq!(map.values[0][1], None, "lr 2e-3 at ρ 0.05 diverged");
    assert_eq!(map.values[1][1], Some(report.results[1].sweep[3].final_val_loss.unwrap()));

    // The results page is generated from the JSON and checks the targets.
    let page = report::render(&dir, Some("## Discussion\n\nhand-written")).unwrap();
    assert!(page.contains(&report.machine.describe()), "names the machine");
    assert!(page.contains("Paper's claim") && page.contains("hand-written") && page.contains("compare-lr-rho.png"), "{page}");
    assert!(page.contains("Not measured yet: default-run.json, compare-bpe.json, bench-step.json, memory.json, throughput.json"), "{page}");
    assert!(!page.contains("three times as long"), "an optional comparison that is absent is left out: {page}");
    // Every comparison file present gets its own section, its plots named after it.
    std::fs::copy(&json, dir.join("compare-bpe.json")).unwrap();
    std::fs::copy(&json, dir.join("compare-long.json")).unwrap();
    let page = report::render(&dir, None).unwrap();
    let sections: Vec<usize> =
        ["the char regime (", "the char regime, three times as long", "the BPE regime"].iter().map(|t| page.find(t).unwrap_or_else(|| panic!("{t}: {page}"))).collect();
    assert!(sections.is_sorted(), "in order: {page}");
    assert!(page.contains("../results/compare-bpe.png") && page.contains("../results/compare-long.png") && !page.contains("compare-bpe-lr-rho.png"), "{page}");
    assert_eq!(page.matches("Paper's claim").count(), 3, "{page}");
    assert!(page.contains("Not measured yet: default-run.json, bench-step.json, memory.json, throughput.json"), "{page}");
    // The default run's summary, with the wall time spent outside the steps.
    let run = TrainSummary {
        run_dir: "runs/shakespeare-char".into(),
        optimizer: "sophiag".into(),
        parameters: 812_288,
        steps: 2000,
        tokens: 1_536_000,
        seconds: 100.0,
        tokens_per_sec: 15_360.0,
        final_val_loss: 1.8,
        best_val_loss: 1.8,
        unigram_val_loss: 3.3,
        refreshes: 200,
        hessian_time_fraction: 0.05,
        eval_time_fraction: 0.04,
        sample_time_fraction: 0.05,
        checkpoint_time_fraction: 0.002,
        final_win_rate: Some(0.07),
    };
    std::fs::write(dir.join("default-run.json"), serde_json::to_string(&run).unwrap()).unwrap();
    let page = report::render(&dir, None).unwrap();
    assert!(page.contains("| of which outside the steps | evaluations 4.0 s, samples 5.0 s, checkpoints 0.2 s |"), "{page}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn optimizer_state_sizes_are_exact() {
    let device = Device::flex().autodiff();
    let config = Gpt2Config::new(1, 2, 16, 16, 50_257);
    let model = Gpt2::new(&config, &device, 0).unwrap();
    let params = model.num_params() as u64;
    let bytes = |optimizer: OptimizerKind| {
        state_bytes(&TrainConfig { optimizer: optimizer.default_config(), model: Some(config.clone()), ..TrainConfig::default() }, &model, &device).unwrap()
    };
    for (optimizer, per_param) in
        [(OptimizerKind::AdamW, 8), (OptimizerKind::SophiaG, 8), (OptimizerKind::SophiaH, 8), (OptimizerKind::Lion, 4), (OptimizerKind::Tiger, 4)]
    {
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
    // A throughput file of an earlier build (fewer fields) states the speed-up against it.
    let before = serde_json::json!({
        "machine": report.machine,
        "peak_matmul_gflops": 75.0,
        "peak_matmul_size": 1024,
        "repetitions": 5,
        "entries": [{ "preset": "cpu-1m", "parameters": e.parameters, "tokens_per_sec": e.tokens_per_sec / 4.0, "refresh_to_step": 1.5 }],
    });
    std::fs::write(dir.join("throughput-before.json"), before.to_string()).unwrap();
    let page = report::render(&dir, None).unwrap();
    // The copied "adamw" row has Lion's 4 bytes per parameter: the check says so.
    assert!(page.contains("## Memory") && page.contains("## Throughput") && page.contains("Where a training step's time goes"), "{page}");
    assert!(page.contains("(8 bytes): missed") && page.contains("(4 bytes): met"), "{page}");
    assert!(page.contains("- cpu-1m: ") && page.contains(", 4.00x (met); refresh 1.50 → "), "{page}");
    assert!(!page.contains("Against PyTorch"), "no peer file, no peer lines: {page}");
    // The PyTorch peer's figures (peers/throughput.py) set ours beside PyTorch's, preset by
    // preset, and say when they come from another CPU or another model.
    let peer = |cpu: &str, parameters: usize, tokens_per_sec: f64| {
        serde_json::json!({
            "machine": { "cpu": cpu, "logical_cpus": 2, "vector_isa": report.machine.vector_isa, "torch_threads": 2 },
            "torch": "2.15.0", "threads": 2, "repetitions": 5, "peak_matmul_gflops": 120.0, "peak_matmul_size": 1024,
            "entries": [{ "preset": "cpu-1m", "parameters": parameters, "batch_tokens": 8, "step_secs": 8.0 / tokens_per_sec,
                          "tokens_per_sec": tokens_per_sec, "refresh_secs": 0.1, "refresh_to_step": 1.25,
                          "quarter_refresh_secs": 0.05, "quarter_refresh_to_step": 0.5 }],
        })
    };
    let peer_file = dir.join("peer-pytorch-throughput.json");
    std::fs::write(&peer_file, peer(&report.machine.cpu, e.parameters, e.tokens_per_sec / 2.0).to_string()).unwrap();
    let page = report::render(&dir, None).unwrap();
    assert!(page.contains("Against PyTorch 2.15.0 in eager mode on 2 threads") && page.contains("the CPU of the table above"), "{page}");
    assert!(
        page.contains(&format!(
            " tokens/s, 2.00x (met); refresh: the official one on the step's batch 1.25 PyTorch steps, on a quarter of the batch 0.50, ours {:.2}.",
            e.refresh_to_step
        )),
        "{page}"
    );
    std::fs::write(&peer_file, peer("another CPU", e.parameters + 1, e.tokens_per_sec * 2.0).to_string()).unwrap();
    let page = report::render(&dir, None).unwrap();
    assert!(page.contains("another CPU than the table above's") && page.contains(" tokens/s, 0.50x (missed) (PyTorch's model has "), "{page}");
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
fn compare_tunes_then_runs_every_optimizer_with_several_seeds() {
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
        // Two concurrent shards, as the char model trains (the state-size step uses a batch of
        // one sequence).
        shards: Some(2),
        eval_interval: 2,
        eval_batches: 1,
        checkpoint_interval: 4,
        sample_tokens: 0,
        plots: false,
        ..TrainConfig::default()
    };
    let options = compare::CompareOptions {
        optimizers: vec![OptimizerKind::AdamW, OptimizerKind::SophiaG],
        base,
        lr_multipliers: vec![0.5, 1.0],
        rhos: vec![0.02, 0.05],
        seeds: 2,
        auto_rho: true,
    };
    let report = compare::run(&options, &Default::default(), &mut |_| {}).unwrap();
    let names: Vec<&str> = report.results.iter().map(|r| r.optimizer.as_str()).collect();
    assert_eq!(names, ["adamw", "sophiag", "sophiag-auto"]);
    assert_eq!((report.results[0].sweep.len(), report.results[1].sweep.len(), report.results[2].sweep.len()), (2, 4, 2), "SophiaG sweeps lr × ρ, automatic ρ the lr");
    for r in &report.results {
        assert_eq!(r.runs.iter().map(|run| run.seed).collect::<Vec<_>>(), [1337, 1338], "{}", r.optimizer);
        assert_eq!(r.runs[0].curve.iter().map(|p| p.step).collect::<Vec<_>>(), [2, 4]);
        let finals: Vec<f64> = r.runs.iter().map(|run| run.final_val_loss).collect();
        assert_ne!(finals[0], finals[1], "{}: the seeds are different runs", r.optimizer);
        assert_eq!(r.final_val_loss, Spread::of(&finals).unwrap());
        assert!(r.final_val_loss.std > 0.0);
        assert_eq!(r.state_bytes_per_param, 8.0);
    }
    for r in &report.results {
        let best = r.sweep.iter().filter_map(|s| s.final_val_loss).fold(f64::INFINITY, f64::min);
        assert_eq!(r.runs[0].final_val_loss, best, "{}: the first seed is the sweep's best point", r.optimizer);
    }
    // Automatic ρ has its own learning-rate sweep, over SophiaG's rates, and every run of it
    // (its sweep points and seeds) trains with automatic ρ.
    let rates = |r: &OptimizerResult| r.sweep.iter().map(|s| s.lr.to_bits()).collect::<std::collections::BTreeSet<u64>>();
    assert_eq!(rates(&report.results[2]), rates(&report.results[1]));
    assert!(report.results[2].sweep.iter().all(|s| s.rho.is_none()), "{:?}", report.results[2].sweep);
    assert_eq!(report.results[2].rho.as_deref(), Some("auto"));
    let auto_runs: Vec<_> = ["sophiag-auto", "sophiag-auto-seeds"]
        .iter()
        .flat_map(|d| std::fs::read_dir(dir.join("runs/cmp").join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    assert_eq!(auto_runs.len(), 3, "two sweep points and the second seed: {auto_runs:?}");
    for run in &auto_runs {
        let config: TrainConfig = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
        assert!(matches!(config.optimizer, OptimizerConfig::SophiaG(SophiaGSettings { rho: Rho::Auto, .. })), "{}: {:?}", run.display(), config.optimizer);
    }
    assert!(!report.results[2].runs[0].win_rate.is_empty() && report.results[1].hessian_time_fraction > 0.0, "SophiaG refreshed and logged its win rate");
    assert_eq!(report.adamw_final_val_loss, Some(report.results[0].final_val_loss.mean));
    assert!(compare::lr_rho_heatmap(&report).is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
