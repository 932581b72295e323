//! The fused loss, label-sampling and GELU kernels against Burn's composed operations, on random
//! shapes (odd vocabularies, a single row, non-contiguous and offset views, large values): the
//! same loss, the same gradient, the same labels from the same uniforms. The GPT-2 golden tests
//! check both implementations against the reference.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use proptest::prelude::*;
use sophia_gpt2::Kernels;
use sophia_gpt2::activation::gelu_with;
use sophia_gpt2::loss::{cross_entropy_with, sample_labels_with};

fn device() -> Device {
    sophia_golden::test_device()
}

/// Loss and gradient of the logits under `kernels`.
fn loss_and_grad(kernels: Kernels, logits: &Tensor<3>, targets: &Tensor<2, Int>) -> (f64, Vec<f32>) {
    let leaf = logits.clone().inner().autodiff().require_grad();
    let loss = cross_entropy_with(kernels, leaf.clone(), targets.clone());
    let value = loss.clone().into_scalar::<f64>();
    let grads = loss.backward();
    (value, leaf.grad(&grads).expect("the logits are a leaf").into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
}

/// GELU of `x` and the gradient of `Σ w·gelu(x)` (a weighted sum, so every element's gradient
/// is scaled differently) under `kernels`.
fn gelu_and_grad(kernels: Kernels, x: &Tensor<3>, weights: &Tensor<3>) -> (Vec<f32>, Vec<f32>) {
    let leaf = x.clone().inner().autodiff().require_grad();
    let y = gelu_with(kernels, leaf.clone());
    let values = y.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let grads = (y * weights.clone().inner().autodiff()).sum().backward();
    (values, leaf.grad(&grads).expect("x is a leaf").into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
}

/// A `[batch, seq, width]` tensor laid out as `layout` says: 0 row-major, 1 a transposed view,
/// 2 a view that starts past the beginning of its storage.
fn laid_out(layout: u8, [batch, seq, width]: [usize; 3], scale: f64, device: &Device) -> Tensor<3> {
    match layout {
        0 => Tensor::<3>::random([batch, seq, width], Distribution::Normal(0.0, scale), device),
        1 => Tensor::<3>::random([batch, width, seq], Distribution::Normal(0.0, scale), device).swap_dims(1, 2),
        _ => Tensor::<3>::random([batch + 1, seq, width], Distribution::Normal(0.0, scale), device).narrow(0, 1, batch),
    }
}

/// GELU and its derivative in f64, through `0.5·(1 + tanh z) = σ(2z)` (no cancellation in the
/// left tail, where `1 + tanh z` rounds to 0 even in f64).
fn gelu_f64(x: f64) -> (f64, f64) {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let s = 1.0 / (1.0 + (-2.0 * c * (x + 0.044715 * x * x * x)).exp());
    (x * s, s + x * s * (1.0 - s) * 2.0 * c * (1.0 + 3.0 * 0.044715 * x * x))
}

fn close(a: f32, b: f32, rtol: f32, atol: f32) -> bool {
    (a - b).abs() <= atol + rtol * b.abs()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fused_cross_entropy_equals_the_composed_one(batch in 1usize..4, seq in 1usize..9, vocab in 1usize..300, scale in prop_oneof![Just(1.0f64), Just(30.0f64)], seed in 0u64..1000, layout in 0u8..3) {
        let device = device();
        device.seed(seed);
        let logits = laid_out(layout, [batch, seq, vocab], scale, &device);
        let targets = Tensor::<2, Int>::random([batch, seq], Distribution::Uniform(0.0, vocab as f64), &device);
        let (fused, fused_grad) = loss_and_grad(Kernels::Fused, &logits, &targets);
        let (composed, composed_grad) = loss_and_grad(Kernels::Composed, &logits, &targets);
        prop_assert!((fused - composed).abs() <= 1e-5 * (1.0 + composed.abs()), "loss {fused} vs {composed}");
        // `x − lse` carries an absolute rounding error of a few ulps of the largest logit in both
        // implementations, so a probability near 1 (the target's `p − 1`) is known only to that.
        let largest = logits.clone().abs().max().into_scalar::<f32>();
        let rows = (batch * seq) as f32;
        for (i, (&f, &c)) in fused_grad.iter().zip(&composed_grad).enumerate() {
            prop_assert!(close(f, c, 1e-4, 1e-7 + 1e-6 * largest / rows), "gradient {i}: {f} vs {c}");
        }
    }

    #[test]
    fn fused_gelu_matches_the_reference_and_the_composed_one(batch in 1usize..4, seq in 1usize..40, width in 1usize..700, scale in prop_oneof![Just(1.0f64), Just(6.0f64)], seed in 0u64..1000, layout in 0u8..3) {
        let device = device();
        device.seed(seed);
        let x = laid_out(layout, [batch, seq, width], scale, &device);
        let weights = Tensor::<3>::random([batch, seq, width], Distribution::Normal(0.0, 1.0), &device);
        let (fused, fused_grad) = gelu_and_grad(Kernels::Fused, &x, &weights);
        let (composed, composed_grad) = gelu_and_grad(Kernels::Composed, &x, &weights);
        let x = x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let w = weights.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        for i in 0..x.len() {
            let (value, slope) = gelu_f64(x[i] as f64);
            let (value, grad) = (value as f32, (slope * w[i] as f64) as f32);
            // Accurate to a few ulps of the exact function times the condition number of
            // e^(−2z) in f32, |2z|.
            let a = x[i].abs();
            let rtol = 4e-7 * (1.0 + 1.6 * (a + 0.044715 * a * a * a));
            prop_assert!(close(fused[i], value, rtol, 1e-30), "gelu({}) = {} (exact {value})", x[i], fused[i]);
            prop_assert!(close(fused_grad[i], grad, 10.0 * rtol, 1e-6 * w[i].abs()), "gelu'({})·w = {} (exact {grad})", x[i], fused_grad[i]);
            // The composed operations lose digits to cancellation in 1 + tanh z and 1 − tanh² z
            // (an absolute error of a few ulps of 1, scaled by x): they agree within that.
            prop_assert!(close(fused[i], composed[i], 1e-6, 1e-6 * a), "gelu({}): fused {} vs composed {}", x[i], fused[i], composed[i]);
            prop_assert!(close(fused_grad[i], composed_grad[i], 1e-5, 1e-6 * w[i].abs() * (1.0 + a * a * a)), "gelu'({})·w: fused {} vs composed {}", x[i], fused_grad[i], composed_grad[i]);
        }
    }

    #[test]
    fn fused_labels_equal_the_composed_ones(rows in 1usize..64, vocab in 1usize..200, seed in 0u64..1000) {
        let device = device();
        device.seed(seed);
        let logits = Tensor::<3>::random([1, rows, vocab], Distribution::Normal(0.0, 2.0), &device);
        let uniforms = Tensor::<2>::random([1, rows], Distribution::Uniform(0.0, 1.0), &device);
        let labels = |kernels| sample_labels_with(kernels, logits.clone(), uniforms.clone()).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        let (fused, composed) = (labels(Kernels::Fused), labels(Kernels::Composed));
        // A uniform within rounding of a cumulative-probability boundary may land on either
        // side; anything else must agree.
        let differing = fused.iter().zip(&composed).filter(|(a, b)| a != b).count();
        prop_assert!(differing <= rows / 50, "{differing} of {rows} labels differ: {fused:?} vs {composed:?}");
        prop_assert!(fused.iter().all(|&l| (0..vocab as i64).contains(&l)));
    }
}

#[test]
fn labels_at_the_ends_of_the_distribution() {
    let device = device();
    // One-hot-like rows: the label is the dominant token whatever the uniform.
    let mut logits = vec![-50.0f32; 3 * 5];
    for (row, hot) in [(0, 0), (1, 4), (2, 2)] {
        logits[row * 5 + hot] = 50.0;
    }
    let logits = Tensor::<3>::from_data(TensorData::new(logits, [1, 3, 5]), &device);
    let uniforms = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.999_999, 0.5], [1, 3]), &device);
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let labels = sample_labels_with(kernels, logits.clone(), uniforms.clone()).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        assert_eq!(labels, [0, 4, 2], "{kernels:?}");
    }
}

#[test]
fn gelu_where_it_saturates() {
    let device = device();
    let x = [-100.0f32, -10.0, -3.0, -1e-30, 0.0, 1e-30, 3.0, 10.0, 100.0, f32::NAN];
    let x = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [1, 1, x.len()]), &device);
    let weights = Tensor::<3>::ones([1, 1, 10], &device);
    let (fused, fused_grad) = gelu_and_grad(Kernels::Fused, &x, &weights);
    // Far right gelu(x) = x and gelu'(x) = 1 exactly; far left both vanish.
    assert_eq!((fused[7], fused[8], fused_grad[7], fused_grad[8]), (10.0, 100.0, 1.0, 1.0));
    assert!(fused[0].abs() < 1e-30 && fused_grad[0].abs() < 1e-30, "{fused:?} {fused_grad:?}");
    assert!(fused[9].is_nan() && fused_grad[9].is_nan(), "NaN propagates: {fused:?} {fused_grad:?}");
    for (i, x) in [-100.0, -10.0, -3.0, -1e-30, 0.0, 1e-30, 3.0].into_iter().enumerate() {
        let (value, slope) = gelu_f64(x);
        assert!(close(fused[i], value as f32, 1e-6, 1e-30), "gelu({x}) = {} (exact {value})", fused[i]);
        assert!(close(fused_grad[i], slope as f32, 1e-6, 1e-30), "gelu'({x}) = {} (exact {slope})", fused_grad[i]);
    }
}

#[test]
fn the_fused_path_is_the_one_taken_on_flex() {
    assert_eq!(sophia_gpt2::kernels::fused_available(&Device::flex()), cfg!(feature = "flex"));
}
