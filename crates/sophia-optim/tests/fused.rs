//! The one-pass updates of the flex backend (feature `flex`) against Burn's composed operations:
//! the same weights, momentum and Hessian bit for bit, the same win counts, over several steps
//! with refreshes, on odd shapes, parameters larger than one parallel chunk and non-contiguous
//! gradients. Without the feature both runs take the composed path. The golden tests check both
//! paths against the reference.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use proptest::prelude::*;
use sophia_golden::RecordedState;
use std::convert::Infallible;

use sophia_optim::{EstimateFn, Refresh, SophiaGConfig, SophiaHConfig, SophiaOptimizer, TigerConfig};

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

    #[test]
    fn fused_tiger_is_bit_identical_to_the_composed_one(rows in 1usize..70, cols in prop_oneof![1usize..40, Just(700usize)], seed in 0u64..1000, weight_decay in prop_oneof![Just(0.0), Just(0.3)]) {
        let run = |fused| {
            let mut optim = TigerConfig::new().with_weight_decay(weight_decay).with_fused(fused).try_init().unwrap();
            let mut module = initial(rows, cols, seed);
            for n in 0..5 {
                let grads = grads_of(&module, gradient(rows, cols, seed, n));
                module = optim.step(1e-2, module, grads);
            }
            (values(&module), state(optim.to_record(), &module, "momentum"))
        };
        prop_assert_eq!(run(true), run(false));
    }
}
