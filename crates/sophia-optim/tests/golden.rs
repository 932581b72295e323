//! Golden tests: every optimizer, the global-norm clip and the schedule against the
//! independent NumPy/JAX reference in `../shared/golden` (or `$SOPHIA_GOLDEN_DIR`).
//!
//! Everything (shapes, step sequences, hyperparameters, refresh positions) comes from the
//! files, so another golden set in the same format can be dropped in.

use std::collections::BTreeMap;

use burn::module::{Module, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use serde_json::Value;
use sophia_golden::{GoldenTensor, RecordedState, Tolerance, load};
use sophia_optim::{AdamWConfig, GlobalNormClip, HessianEstimator, LionConfig, Refresh, SophiaGConfig, SophiaHConfig, SophiaOptimizer, TigerConfig, WarmupCosineConfig};

const STATE_TOL: Tolerance = Tolerance::new(1e-5, 1e-6);
const CLIP_TOL: Tolerance = Tolerance::new(1e-5, 1e-6);
const SCHEDULE_TOL: Tolerance = Tolerance::new(1e-12, 1e-15);

/// Parameters live on the autodiff device, gradients on its inner device, as after a backward.
fn device() -> Device {
    sophia_golden::test_device().autodiff()
}

fn grad_device() -> Device {
    sophia_golden::test_device()
}

// ---------------------------------------------------------------------------------------------
// A module holding the tensors of one case, whatever their ranks.

#[derive(Module, Debug)]
struct Tensors {
    rank1: Vec<Param<Tensor<1>>>,
    rank2: Vec<Param<Tensor<2>>>,
    rank3: Vec<Param<Tensor<3>>>,
    rank4: Vec<Param<Tensor<4>>>,
}

/// The module plus where each golden tensor (by index) lives in it.
struct CaseTensors {
    module: Tensors,
    slots: Vec<(usize, usize)>,
}

fn data(t: &GoldenTensor) -> TensorData {
    assert_eq!(t.num_elements(), t.data.len(), "golden tensor with shape {:?} has {} values", t.shape, t.data.len());
    TensorData::new(t.data.clone(), t.shape.clone())
}

impl CaseTensors {
    fn new(theta: &[GoldenTensor]) -> Self {
        let device = device();
        let mut module = Tensors { rank1: vec![], rank2: vec![], rank3: vec![], rank4: vec![] };
        let mut slots = Vec::new();
        for t in theta {
            let rank = t.shape.len();
            let index = match rank {
                1 => push(&mut module.rank1, Param::from_data(data(t), &device)),
                2 => push(&mut module.rank2, Param::from_data(data(t), &device)),
                3 => push(&mut module.rank3, Param::from_data(data(t), &device)),
                4 => push(&mut module.rank4, Param::from_data(data(t), &device)),
                _ => panic!("golden tensor of rank {rank} is not supported by this harness"),
            };
            slots.push((rank, index));
        }
        Self { module, slots }
    }

    fn ids(&self) -> Vec<ParamId> {
        self.slots
            .iter()
            .map(|&(rank, i)| match rank {
                1 => self.module.rank1[i].id,
                2 => self.module.rank2[i].id,
                3 => self.module.rank3[i].id,
                _ => self.module.rank4[i].id,
            })
            .collect()
    }

    fn values(&self) -> Vec<Vec<f32>> {
        self.slots
            .iter()
            .map(|&(rank, i)| {
                let data = match rank {
                    1 => self.module.rank1[i].val().into_data(),
                    2 => self.module.rank2[i].val().into_data(),
                    3 => self.module.rank3[i].val().into_data(),
                    _ => self.module.rank4[i].val().into_data(),
                };
                data.try_to_vec::<f32>().unwrap()
            })
            .collect()
    }

    /// Gradients (or refresh inputs) keyed by the parameters of this module.
    fn grads(&self, tensors: &[GoldenTensor]) -> GradientsParams {
        assert_eq!(tensors.len(), self.slots.len(), "one input tensor per parameter");
        let device = grad_device();
        let mut grads = GradientsParams::new();
        for ((&(rank, _), id), t) in self.slots.iter().zip(self.ids()).zip(tensors) {
            match rank {
                1 => grads.register(id, Tensor::<1>::from_data(data(t), &device)),
                2 => grads.register(id, Tensor::<2>::from_data(data(t), &device)),
                3 => grads.register(id, Tensor::<3>::from_data(data(t), &device)),
                _ => grads.register(id, Tensor::<4>::from_data(data(t), &device)),
            }
        }
        grads
    }
}

fn push<T>(list: &mut Vec<T>, item: T) -> usize {
    list.push(item);
    list.len() - 1
}

// ---------------------------------------------------------------------------------------------
// Optimizer files.

#[derive(Deserialize)]
struct OptimizerFile {
    family: String,
    hessian_refresh_every_k_updates: Option<usize>,
    cases: Vec<OptimizerCase>,
}

#[derive(Deserialize)]
struct OptimizerCase {
    name: String,
    shapes: Vec<Vec<usize>>,
    init: BTreeMap<String, Value>,
    steps: Vec<OptimizerStep>,
}

#[derive(Deserialize)]
struct OptimizerStep {
    kind: String,
    hyper: BTreeMap<String, f64>,
    inputs: BTreeMap<String, Vec<GoldenTensor>>,
    expected: BTreeMap<String, Value>,
    win_count: Option<usize>,
    num_elements: Option<usize>,
}

/// How the state of one family is named in the reference and in Burn's optimizer record.
struct Family {
    /// (reference name, record leaf) for each state tensor.
    tensors: &'static [(&'static str, &'static str)],
    /// Record leaf of the step counter, where the reference has one.
    step: Option<&'static str>,
}

enum Driver {
    Plain(ModuleOptimizer),
    Sophia(SophiaOptimizer),
}

impl Driver {
    fn record(&self) -> OptimizerRecord {
        match self {
            Driver::Plain(o) => o.to_record(),
            Driver::Sophia(o) => o.to_record(),
        }
    }
}

fn tensors(value: &Value, what: &str) -> Vec<GoldenTensor> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn hyper(step: &OptimizerStep, key: &str) -> f64 {
    *step.hyper.get(key).unwrap_or_else(|| panic!("hyperparameter `{key}` missing"))
}

/// Build the optimizer of `family` from the hyperparameters of the first step.
/// `fused`: the one-pass update where it applies, or the composed operations (Burn's own for
/// AdamW and Lion).
fn driver(family: &str, first: &OptimizerStep, k: Option<usize>, fused: bool) -> Driver {
    let h = |key| hyper(first, key);
    match family {
        "sophia_g" => Driver::Sophia(
            SophiaGConfig::new(h("bs") as usize)
                .with_beta_1(h("beta1"))
                .with_beta_2(h("beta2"))
                .with_rho(h("rho"))
                .with_weight_decay(h("weight_decay"))
                .with_hessian_interval(k.expect("sophia files give hessian_refresh_every_k_updates"))
                // The reference folds ĝ in as given.
                .with_refresh_grad_clip(None)
                .with_fused(fused)
                .try_init()
                .unwrap(),
        ),
        "sophia_h" => Driver::Sophia(
            SophiaHConfig::new()
                .with_beta_1(h("beta1"))
                .with_beta_2(h("beta2"))
                .with_gamma(h("gamma"))
                .with_epsilon(h("eps"))
                .with_weight_decay(h("weight_decay"))
                .with_hessian_interval(k.expect("sophia files give hessian_refresh_every_k_updates"))
                .with_fused(fused)
                .try_init()
                .unwrap(),
        ),
        "adamw" => Driver::Plain(
            AdamWConfig::new()
                .with_beta_1(h("beta1"))
                .with_beta_2(h("beta2"))
                .with_epsilon(h("eps"))
                .with_weight_decay(h("weight_decay"))
                .with_fused(fused)
                .try_init()
                .unwrap(),
        ),
        "lion" => {
            Driver::Plain(LionConfig::new().with_beta_1(h("beta1")).with_beta_2(h("beta2")).with_weight_decay(h("weight_decay")).with_fused(fused).try_init().unwrap())
        }
        "tiger" => Driver::Plain(TigerConfig::new().with_beta(h("beta")).with_weight_decay(h("weight_decay")).with_fused(fused).try_init().unwrap()),
        other => panic!("unknown optimizer family `{other}`"),
    }
}

fn family(name: &str) -> Family {
    match name {
        "sophia_g" | "sophia_h" => Family { tensors: &[("m", "momentum"), ("h", "hessian")], step: Some("step") },
        // Burn's AdamW keeps its moments under `momentum`, with the step count as `time`.
        "adamw" => Family { tensors: &[("m", "momentum.moment_1"), ("v", "momentum.moment_2")], step: Some("momentum.time") },
        "lion" | "tiger" => Family { tensors: &[("m", "momentum")], step: None },
        other => panic!("unknown optimizer family `{other}`"),
    }
}

fn check_state(what: &str, family: &Family, params: &CaseTensors, state: &RecordedState, expected: &BTreeMap<String, Value>) {
    let theta = tensors(&expected["theta"], "expected.theta");
    for (i, (got, want)) in params.values().iter().zip(&theta).enumerate() {
        STATE_TOL.assert_close(&format!("{what}: theta[{i}]"), got, &want.data);
    }
    for (name, leaf) in family.tensors {
        let want = tensors(&expected[*name], name);
        for (i, (id, want)) in params.ids().into_iter().zip(&want).enumerate() {
            let got = state.tensor(id, leaf, want.data.len());
            STATE_TOL.assert_close(&format!("{what}: {name}[{i}]"), &got, &want.data);
        }
    }
    if let (Some(leaf), Some(want)) = (family.step, expected.get("step")) {
        let want = want.as_u64().expect("integer step") as usize;
        for (i, id) in params.ids().into_iter().enumerate() {
            assert_eq!(state.scalar(id, leaf), want, "{what}: step of tensor {i}");
        }
    }
}

/// The refresh input of a `hessian` step: `ĝ` (SophiaG) or `u ⊙ (H u)` (SophiaH).
fn refresh_input(step: &OptimizerStep) -> Vec<GoldenTensor> {
    step.inputs.get("ghat").cloned().unwrap_or_else(|| {
        let (u, hv) = (&step.inputs["u"], &step.inputs["hv"]);
        u.iter().zip(hv).map(|(u, hv)| GoldenTensor { shape: u.shape.clone(), data: u.data.iter().zip(&hv.data).map(|(a, b)| a * b).collect() }).collect()
    })
}

/// Hands out the one estimate a file step provides and records whether Sophia asked for it.
struct GoldenEstimate {
    estimate: Option<GradientsParams>,
    asked: bool,
}

impl HessianEstimator<Tensors> for GoldenEstimate {
    type Error = String;

    fn estimate(&mut self, _: &Tensors, _: Refresh) -> Result<GradientsParams, String> {
        self.asked = true;
        self.estimate.take().ok_or_else(|| "Sophia refreshed where the reference does not".to_string())
    }
}

/// Every case of `file` with the fused updates and again with the composed operations.
fn run_optimizer_file(file: &str) {
    for fused in [true, false] {
        run_optimizer_file_with(file, fused);
    }
}

fn run_optimizer_file_with(file: &str, fused: bool) {
    let golden: OptimizerFile = load(file);
    let family_spec = family(&golden.family);
    assert!(!golden.cases.is_empty(), "{file} has no cases");
    for case in &golden.cases {
        let theta0 = tensors(&case.init["theta"], "init.theta");
        let shapes: Vec<_> = theta0.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(shapes, case.shapes, "{}: init shapes", case.name);
        for (name, _) in family_spec.tensors {
            let zeros = tensors(&case.init[*name], name);
            assert!(zeros.iter().all(|t| t.data.iter().all(|&x| x == 0.0)), "{}: init state is zero", case.name);
        }
        let mut params = CaseTensors::new(&theta0);
        let first = case.steps.first().expect("a case has steps");
        let mut optim = driver(&golden.family, first, golden.hessian_refresh_every_k_updates, fused);

        let mut n = 0;
        while n < case.steps.len() {
            let step = &case.steps[n];
            let path = if fused { "fused" } else { "composed" };
            let what = format!("{file} case `{}` step {n} ({}, {path})", case.name, step.kind);
            for (key, value) in &step.hyper {
                if key != "lr" {
                    assert_eq!(*value, hyper(first, key), "{what}: only `lr` may change between steps");
                }
            }
            let next = case.steps.get(n + 1);
            match (&mut optim, step.kind.as_str()) {
                (Driver::Sophia(o), kind) => {
                    // One Sophia step is the update plus the refresh the reference puts right
                    // before it (SophiaH) or right after it (SophiaG): the optimizer's own
                    // schedule must ask for the estimate exactly there.
                    let (update, refresh) = match (kind, next.map(|s| s.kind.as_str())) {
                        ("hessian", Some("update")) => (n + 1, Some(n)),
                        ("update", Some("hessian")) if golden.family == "sophia_g" => (n, Some(n + 1)),
                        ("update", _) => (n, None),
                        _ => {
                            // A refresh with no update beside it: refresh directly.
                            let before = params.values();
                            let grads = params.grads(&refresh_input(step));
                            params.module = o.refresh(params.module, grads).unwrap();
                            assert_eq!(params.values(), before, "{what}: a refresh changed weights");
                            check_state(&what, &family_spec, &params, &RecordedState::read(optim.record()), &step.expected);
                            n += 1;
                            continue;
                        }
                    };
                    let mut estimator = GoldenEstimate { estimate: refresh.map(|r| params.grads(&refresh_input(&case.steps[r]))), asked: false };
                    o.control().collect_win_rate(true);
                    let grads = params.grads(&case.steps[update].inputs["grad"]);
                    params.module = o.step(hyper(&case.steps[update], "lr"), params.module, grads, &mut estimator).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(estimator.asked, refresh.is_some(), "{what}: the schedule disagrees with the reference about the refresh");
                    let done = &case.steps[update.max(refresh.unwrap_or(0))];
                    if let (Some(want), Some(total)) = (case.steps[update].win_count, case.steps[update].num_elements) {
                        let got = (o.stats().win_rate.expect("win rate collected") * total as f64).round() as usize;
                        assert_eq!(got, want, "{what}: win count");
                    }
                    check_state(&what, &family_spec, &params, &RecordedState::read(optim.record()), &done.expected);
                    n += if refresh.is_some() { 2 } else { 1 };
                    continue;
                }
                (Driver::Plain(o), "update") => {
                    let grads = params.grads(&step.inputs["grad"]);
                    params.module = o.step(hyper(step, "lr"), params.module, grads);
                }
                (_, kind) => panic!("{what}: unexpected step kind `{kind}`"),
            }
            check_state(&what, &family_spec, &params, &RecordedState::read(optim.record()), &step.expected);
            n += 1;
        }
    }
}

#[test]
fn golden_sophia_g() {
    run_optimizer_file("sophia_g.json");
}

#[test]
fn golden_sophia_h() {
    run_optimizer_file("sophia_h.json");
}

#[test]
fn golden_adamw() {
    run_optimizer_file("adamw.json");
}

#[test]
fn golden_lion() {
    run_optimizer_file("lion.json");
}

#[test]
fn golden_tiger() {
    run_optimizer_file("tiger.json");
}

// ---------------------------------------------------------------------------------------------
// Global-norm clipping.

#[derive(Deserialize)]
struct ClipFile {
    cases: Vec<ClipCase>,
}

#[derive(Deserialize)]
struct ClipCase {
    name: String,
    max_norm: f64,
    grads: Vec<GoldenTensor>,
    per_tensor_norms: Vec<f64>,
    total_norm: f64,
    scale: f64,
    clipped: Vec<GoldenTensor>,
    was_clipped: bool,
}

#[test]
fn golden_clip_global_norm() {
    let golden: ClipFile = load("clip_global_norm.json");
    assert!(!golden.cases.is_empty());
    for (case, fused) in golden.cases.iter().flat_map(|case| [(case, true), (case, false)]) {
        let what = format!("clip case `{}` (fused {fused})", case.name);
        // The parameters' values do not matter; their shapes and ids do.
        let params = CaseTensors::new(&case.grads);
        let clip = GlobalNormClip::new(case.max_norm).unwrap().with_fused(fused);
        let (grads, norm) = clip.clip(&params.module, params.grads(&case.grads));
        CLIP_TOL.assert_scalar(&format!("{what}: total_norm"), norm.total_norm, case.total_norm);
        CLIP_TOL.assert_scalar(&format!("{what}: scale"), norm.scale, case.scale);
        assert_eq!(norm.clipped, case.was_clipped, "{what}: was_clipped");
        let per_tensor: Vec<f32> = norm.per_tensor.iter().map(|(_, n)| *n as f32).collect();
        let want: Vec<f32> = case.per_tensor_norms.iter().map(|&n| n as f32).collect();
        CLIP_TOL.assert_close(&format!("{what}: per_tensor_norms"), &per_tensor, &want);
        for (i, ((&(rank, _), id), want)) in params.slots.iter().zip(params.ids()).zip(&case.clipped).enumerate() {
            let got = match rank {
                1 => grads.get::<1>(id).unwrap().into_data(),
                2 => grads.get::<2>(id).unwrap().into_data(),
                3 => grads.get::<3>(id).unwrap().into_data(),
                _ => grads.get::<4>(id).unwrap().into_data(),
            };
            CLIP_TOL.assert_close(&format!("{what}: clipped[{i}]"), &got.try_to_vec::<f32>().unwrap(), &want.data);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Warmup + cosine schedule.

#[derive(Deserialize)]
struct ScheduleFile {
    cases: Vec<ScheduleCase>,
}

#[derive(Deserialize)]
struct ScheduleCase {
    name: String,
    config: ScheduleConfig,
    its: Vec<usize>,
    lr: Vec<f64>,
}

#[derive(Deserialize)]
struct ScheduleConfig {
    learning_rate: f64,
    warmup_iters: usize,
    lr_decay_iters: usize,
    min_lr: f64,
}

#[test]
fn golden_lr_schedule() {
    use burn::optim::lr_scheduler::LrScheduler;
    let golden: ScheduleFile = load("lr_schedule.json");
    assert!(!golden.cases.is_empty());
    for case in &golden.cases {
        let c = &case.config;
        let mut schedule = WarmupCosineConfig::new(c.learning_rate, c.warmup_iters, c.lr_decay_iters).with_min_lr(c.min_lr).try_init().unwrap();
        assert_eq!(case.its.len(), case.lr.len(), "{}: its and lr lengths", case.name);
        for (&it, &want) in case.its.iter().zip(&case.lr) {
            SCHEDULE_TOL.assert_scalar(&format!("{} lr_at({it})", case.name), schedule.lr_at(it), want);
        }
        // Stepping the scheduler hands out the same values in order.
        if case.its.iter().enumerate().all(|(i, &it)| i == it) {
            for (it, &want) in case.lr.iter().enumerate() {
                SCHEDULE_TOL.assert_scalar(&format!("{} step {it}", case.name), schedule.step(), want);
            }
        }
    }
}
