//! The one-pass updates of the flex backend (feature `flex`) against Burn's composed operations
//! (for AdamW and Lion, Burn's own optimizers): the same weights, moments and Hessian bit for
//! bit, the same win counts and step counts, over several steps with refreshes, on odd shapes,
//! parameters larger than one parallel chunk and non-contiguous gradients. Without the feature
//! both runs take the composed path. The golden tests check both paths against the reference.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use proptest::prelude::*;
use sophia_golden::RecordedState;
use std::convert::Infallible;

use sophia_optim::{AdamWConfig, EstimateFn, GlobalNormClip, LionConfig, Refresh, SophiaGConfig, SophiaHConfig, SophiaOptimizer, TigerConfig};

#[derive(Module, Debug)]
struct Matrix {
    w: Param<Tensor<2>>,
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn values(module: &Matrix) -> Vec<u32> {
    bits(&module.w.val().into_data().try_to_vec::<f32>().unwrap())
}

/// The bits of state tensor `leaf` as the checkpoint holds it.
fn state(record: burn::optim::OptimizerRecord, module: &Matrix, leaf: &str) -> Vec<u32> {
    bits(&RecordedState::read(record).tensor(module.w.id, leaf, 0))
}

/// A `[rows, cols]` gradient for step `n` on the gradients' (inner) device: every third one is a
/// transposed view, and some entries are exactly zero (sign and ratio at 0).
fn gradient(rows: usize, cols: usize, seed: u64, n: usize) -> Tensor<2> {
    let device = Device::flex();
    device.seed(seed.wrapping_mul(31).wrapping_add(n as u64));
    let g = if n % 3 == 2 {
        Tensor::<2>::random([cols, rows], Distribution::Normal(0.0, 1.0), &device).transpose()
    } else {
        Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), &device)
    };
    g.mask_fill(Tensor::<2>::random([rows, cols], Distribution::Uniform(0.0, 1.0), &device).lower_elem(0.05), 0.0)
}

fn grads_of(module: &Matrix, g: Tensor<2>) -> GradientsParams {
    let mut grads = GradientsParams::new();
    grads.register(module.w.id, g);
    grads
}

fn initial(rows: usize, cols: usize, seed: u64) -> Matrix {
    let device = Device::flex();
    device.seed(seed);
    let w = Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 0.5), &device);
    Matrix { w: Param::from_data(w.into_data(), &Device::flex().autodiff()) }
}

/// Seven Sophia steps (refreshing every second update from a fixed estimate); the weights,
/// the state tensors' bits and the win rate.
fn sophia_run(mut optim: SophiaOptimizer, rows: usize, cols: usize, seed: u64) -> (Vec<u32>, Vec<u32>, Vec<u32>, f64) {
    let mut module = initial(rows, cols, seed);
    optim.control().collect_win_rate(true);
    let estimate = gradient(rows, cols, seed, 100).mul_scalar(0.1);
    let mut wins = Vec::new();
    for n in 0..7 {
        let grads = grads_of(&module, gradient(rows, cols, seed, n));
        let mut estimator = EstimateFn(|m: &Matrix, _: Refresh| Ok::<_, Infallible>(grads_of(m, estimate.clone())));
        module = optim.step(1e-2 * (n + 1) as f64, module, grads, &mut estimator).unwrap();
        wins.push(optim.stats().win_rate.unwrap_or(f64::NAN));
    }
    (values(&module), state(optim.to_record(), &module, "momentum"), state(optim.to_record(), &module, "hessian"), wins.iter().sum())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn fused_sophia_is_bit_identical_to_the_composed_one(rows in 1usize..70, cols in prop_oneof![1usize..40, Just(700usize)], seed in 0u64..1000, auto_rho in any::<bool>()) {
        let g = |fused| SophiaGConfig::new(64).with_hessian_interval(2).with_weight_decay(0.1).with_auto_rho(auto_rho).with_fused(fused).try_init().unwrap();
        prop_assert_eq!(sophia_run(g(true), rows, cols, seed), sophia_run(g(false), rows, cols, seed), "SophiaG");
        let h = |fused| SophiaHConfig::new().with_hessian_interval(2).with_fused(fused).try_init().unwrap();
        prop_assert_eq!(sophia_run(h(true), rows, cols, seed), sophia_run(h(false), rows, cols, seed), "SophiaH");
    }

    /// Global-norm clipping's one-pass sums of squares (f64 per chunk) against Burn's f32
    /// `square().sum()`: the norm to f32 rounding, the clipped gradient to the scale's rounding,
    /// and the same bits on 1 and 3 threads (several chunks when `cols` is 700).
    #[test]
    fn fused_clipping_matches_the_composed_one(rows in 1usize..70, cols in prop_oneof![1usize..40, Just(700usize)], seed in 0u64..1000, max_norm in prop_oneof![Just(0.5), Just(1e6)]) {
        let module = initial(rows, cols, seed);
        let g = gradient(rows, cols, seed, 2);
        let clip = |fused: bool| {
            let (grads, norm) = GlobalNormClip::new(max_norm).unwrap().with_fused(fused).clip(&module, grads_of(&module, g.clone()));
            (grads.get::<2>(module.w.id).unwrap().into_data().try_to_vec::<f32>().unwrap(), norm)
        };
        let ((fused, fused_norm), (composed, composed_norm)) = (clip(true), clip(false));
        prop_assert!((fused_norm.total_norm - composed_norm.total_norm).abs() <= 1e-5 * composed_norm.total_norm, "{} vs {}", fused_norm.total_norm, composed_norm.total_norm);
        prop_assert_eq!(fused_norm.clipped, composed_norm.clipped);
        let largest = composed.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (a, b) in fused.iter().zip(&composed) {
            prop_assert!((a - b).abs() <= 1e-5 * largest, "{} vs {}", a, b);
        }
        let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| clip(true).1.total_norm.to_bits());
        prop_assert_eq!(on(1), on(3));
    }

    #[test]
    fn fused_tiger_is_bit_identical_to_the_composed_one(rows in 1usize..70, cols in prop_oneof![1usize..40, Just(700usize)], seed in 0u64..1000, weight_decay in prop_oneof![Just(0.0), Just(0.3)]) {
        let tiger = |fused| TigerConfig::new().with_weight_decay(weight_decay).with_fused(fused).try_init().unwrap();
        prop_assert_eq!(plain_run(tiger(true), rows, cols, seed, &["momentum"]), plain_run(tiger(false), rows, cols, seed, &["momentum"]));
    }

    #[test]
    fn fused_adamw_is_bit_identical_to_burns(rows in 1usize..70, cols in prop_oneof![1usize..40, Just(700usize)], seed in 0u64..1000, weight_decay in prop_oneof![Just(0.0), Just(0.1)]) {
        let adamw = |fused| AdamWConfig::new().with_beta_2(0.99).with_weight_decay(weight_decay).with_fused(fused).try_init().unwrap();
        let leaves = ["momentum.moment_1", "momentum.moment_2"];
        let (fused, composed) = (plain_run(adamw(true), rows, cols, seed, &leaves), plain_run(adamw(false), rows, cols, seed, &leaves));
        prop_assert_eq!(fused.2, Some(5));
        prop_assert_eq!(fused, composed);
    }

    #[test]
    fn fused_lion_is_bit_identical_to_burns(rows in 1usize..70, cols in prop_oneof![1usize..40, Just(700usize)], seed in 0u64..1000, weight_decay in prop_oneof![Just(0.0), Just(0.3)]) {
        let lion = |fused| LionConfig::new().with_weight_decay(weight_decay).with_fused(fused).try_init().unwrap();
        prop_assert_eq!(plain_run(lion(true), rows, cols, seed, &["momentum"]), plain_run(lion(false), rows, cols, seed, &["momentum"]));
    }
}

/// Five steps of a first-order optimizer at changing learning rates; the weights, the bits of
/// the state tensors `leaves` and AdamW's step count (`None` for the others).
fn plain_run(mut optim: ModuleOptimizer, rows: usize, cols: usize, seed: u64, leaves: &[&str]) -> (Vec<u32>, Vec<Vec<u32>>, Option<usize>) {
    let mut module = initial(rows, cols, seed);
    for n in 0..5 {
        let grads = grads_of(&module, gradient(rows, cols, seed, n));
        module = optim.step(1e-2 / (n + 1) as f64, module, grads);
    }
    let states = leaves.iter().map(|leaf| state(optim.to_record(), &module, leaf)).collect();
    let time = (leaves.len() == 2).then(|| RecordedState::read(optim.to_record()).scalar(module.w.id, "momentum.time"));
    (values(&module), states, time)
}

/// Burn's optimizer for three steps, its checkpoint loaded into ours (one-pass on flex) for two
/// more, and ours checkpointed back into Burn's for a sixth: the same bits as six steps of
/// Burn's alone, so checkpoints move both ways and a fused run resumes exactly.
fn resumes_across(burns: impl Fn() -> ModuleOptimizer, ours: impl Fn() -> ModuleOptimizer, leaves: &[&str]) {
    let (rows, cols, seed) = (13, 700, 7);
    let step = |optim: &mut ModuleOptimizer, module: Matrix, n: usize| {
        let grads = grads_of(&module, gradient(rows, cols, seed, n));
        optim.step(1e-2 / (n + 1) as f64, module, grads)
    };
    let (mut alone, mut uninterrupted) = (burns(), initial(rows, cols, seed));
    for n in 0..6 {
        uninterrupted = step(&mut alone, uninterrupted, n);
    }
    let (mut first, mut module) = (burns(), initial(rows, cols, seed));
    for n in 0..3 {
        module = step(&mut first, module, n);
    }
    let mut second = ours().load_record(first.to_record());
    for n in 3..5 {
        module = step(&mut second, module, n);
    }
    let mut third = burns().load_record(second.to_record());
    module = step(&mut third, module, 5);
    assert_eq!(values(&module), values(&uninterrupted));
    for leaf in leaves {
        assert_eq!(state(third.to_record(), &module, leaf), state(alone.to_record(), &uninterrupted, leaf), "{leaf}");
    }
}

#[test]
fn adamw_and_lion_checkpoints_move_between_burns_optimizers_and_ours() {
    let burn_adamw = || burn::optim::AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.1).init();
    let adamw = || AdamWConfig::new().with_weight_decay(0.1).try_init().unwrap();
    resumes_across(burn_adamw, adamw, &["momentum.moment_1", "momentum.moment_2"]);
    let burn_lion = || burn::optim::LionConfig::new().with_weight_decay(0.3).init();
    let lion = || LionConfig::new().with_weight_decay(0.3).try_init().unwrap();
    resumes_across(burn_lion, lion, &["momentum"]);
}
