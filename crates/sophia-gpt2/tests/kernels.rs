//! The fused loss and label-sampling kernels against Burn's composed operations, on random
//! shapes (odd vocabularies, a single row, non-contiguous logits, large logits): the same loss,
//! the same gradient, the same labels from the same uniforms. The GPT-2 golden tests check both
//! implementations against the reference.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use proptest::prelude::*;
use sophia_gpt2::loss::{Kernels, cross_entropy_with, sample_labels_with};

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

fn close(a: f32, b: f32, rtol: f32, atol: f32) -> bool {
    (a - b).abs() <= atol + rtol * b.abs()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fused_cross_entropy_equals_the_composed_one(batch in 1usize..4, seq in 1usize..9, vocab in 1usize..300, scale in prop_oneof![Just(1.0f32), Just(30.0f32)], seed in 0u64..1000, transposed in any::<bool>()) {
        let device = device();
        device.seed(seed);
        // Non-contiguous logits: a transposed tensor of the transposed shape.
        let logits = if transposed {
            Tensor::<3>::random([batch, vocab, seq], Distribution::Normal(0.0, scale as f64), &device).swap_dims(1, 2)
        } else {
            Tensor::<3>::random([batch, seq, vocab], Distribution::Normal(0.0, scale as f64), &device)
        };
        let targets = Tensor::<2, Int>::random([batch, seq], Distribution::Uniform(0.0, vocab as f64), &device);
        let (fused, fused_grad) = loss_and_grad(Kernels::Fused, &logits, &targets);
        let (composed, composed_grad) = loss_and_grad(Kernels::Composed, &logits, &targets);
        prop_assert!((fused - composed).abs() <= 1e-5 * (1.0 + composed.abs()), "loss {fused} vs {composed}");
        for (i, (&f, &c)) in fused_grad.iter().zip(&composed_grad).enumerate() {
            prop_assert!(close(f, c, 1e-4, 1e-7), "gradient {i}: {f} vs {c}");
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
fn the_fused_path_is_the_one_taken_on_flex() {
    assert_eq!(sophia_gpt2::loss::fused_available(&Device::flex()), cfg!(feature = "flex"));
}
