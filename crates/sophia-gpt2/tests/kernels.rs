//! The fused loss, linear cross-entropy, label-sampling, GELU, LayerNorm and matrix-product kernels against Burn's composed
//! operations or an f64 reference, on random shapes (odd vocabularies and widths, a single row,
//! non-contiguous and offset views, large values): the same loss, the same gradient, the same
//! labels from the same uniforms. The GPT-2 golden tests check both implementations against the
//! reference.

use burn::backend::GradientCheckpointingStrategy;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use proptest::prelude::*;
use sophia_gpt2::Kernels;
use sophia_gpt2::activation::gelu_with;
use sophia_gpt2::attention::causal_attention_with;
use sophia_gpt2::loss::{cross_entropy_with, linear_cross_entropy_on_sampled_labels, linear_cross_entropy_with, sample_labels_with};
use sophia_gpt2::norm::layer_norm_with;
use sophia_gpt2::product::product_with;

fn device() -> Device {
    sophia_golden::test_device()
}

/// Loss and gradient of the logits under `kernels`, with autodiff's gradient checkpointing
/// `strategy`.
fn loss_and_grad(kernels: Kernels, strategy: GradientCheckpointingStrategy, logits: &Tensor<3>, targets: &Tensor<2, Int>) -> (f64, Vec<f32>) {
    let leaf = logits.clone().inner().autodiff().with_gradient_checkpointing_strategy(strategy).require_grad();
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
/// 2 a view that starts past the beginning of its storage, 3 rows padded past their end (the
/// layout of the pitched rows CUDA's allocator gives a matrix).
fn laid_out(layout: u8, [batch, seq, width]: [usize; 3], scale: f64, device: &Device) -> Tensor<3> {
    match layout {
        0 => Tensor::<3>::random([batch, seq, width], Distribution::Normal(0.0, scale), device),
        1 => Tensor::<3>::random([batch, width, seq], Distribution::Normal(0.0, scale), device).swap_dims(1, 2),
        2 => Tensor::<3>::random([batch + 1, seq, width], Distribution::Normal(0.0, scale), device).narrow(0, 1, batch),
        _ => Tensor::<3>::random([batch, seq, width + 3], Distribution::Normal(0.0, scale), device).narrow(2, 0, width),
    }
}

/// GELU and its derivative in f64, through `0.5·(1 + tanh z) = σ(2z)` (no cancellation in the
/// left tail, where `1 + tanh z` rounds to 0 even in f64).
fn gelu_f64(x: f64) -> (f64, f64) {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let s = 1.0 / (1.0 + (-2.0 * c * (x + 0.044715 * x * x * x)).exp());
    (x * s, s + x * s * (1.0 - s) * 2.0 * c * (1.0 + 3.0 * 0.044715 * x * x))
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `y = x·W`, `∂x` and `∂W` of `Σ g·y` (so `∂y = g`) under `kernels`.
fn product_and_grads(kernels: Kernels, x: &Tensor<3>, weight: &Tensor<2>, g: &Tensor<3>) -> [Vec<f32>; 3] {
    let (x, weight) = (x.clone().inner().autodiff().require_grad(), weight.clone().inner().autodiff().require_grad());
    let y = product_with(kernels, x.clone(), weight.clone());
    let grads = (y.clone() * g.clone().inner().autodiff()).sum().backward();
    [values(y), values(x.grad(&grads).expect("a leaf")), values(weight.grad(&grads).expect("a leaf"))]
}

/// The mean cross-entropy of `x·Wᵀ` and its gradients `∂x`, `∂W` under `kernels`.
fn linear_loss_and_grads(kernels: Kernels, x: &Tensor<2>, weight: &Tensor<2>, targets: &Tensor<1, Int>) -> (f64, [Vec<f32>; 2]) {
    let (x, weight) = (x.clone().inner().autodiff().require_grad(), weight.clone().inner().autodiff().require_grad());
    let loss = linear_cross_entropy_with(kernels, x.clone(), weight.clone(), targets.clone());
    let value = loss.clone().into_scalar::<f64>();
    let grads = loss.backward();
    (value, [values(x.grad(&grads).expect("a leaf")), values(weight.grad(&grads).expect("a leaf"))])
}

/// Labels drawn from `softmax(x·Wᵀ)` with `uniforms` inside the refresh's loss under `kernels`,
/// the loss against them and its gradients `∂x`, `∂W`.
fn sampled_linear_loss_and_grads(kernels: Kernels, x: &Tensor<2>, weight: &Tensor<2>, uniforms: &Tensor<1>) -> (Vec<i64>, f64, [Vec<f32>; 2]) {
    let (x, weight) = (x.clone().inner().autodiff().require_grad(), weight.clone().inner().autodiff().require_grad());
    let (loss, labels) = linear_cross_entropy_on_sampled_labels(kernels, x.clone(), weight.clone(), uniforms.clone());
    let value = loss.clone().into_scalar::<f64>();
    let grads = loss.backward();
    let labels = labels.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    (labels, value, [values(x.grad(&grads).expect("a leaf")), values(weight.grad(&grads).expect("a leaf"))])
}

/// The mean cross-entropy of `x·Wᵀ` (`x` `[rows, C]`, `W` `[vocab, C]`) in f64, and per
/// element of `∂x` and `∂W` the exact value and the sum of its terms' magnitudes.
fn reference_linear_cross_entropy(x: &[f32], w: &[f32], targets: &[i64], rows: usize, width: usize) -> (f64, [Vec<(f64, f64)>; 2]) {
    let vocab = w.len() / width;
    let (mut loss, mut dx, mut dw) = (0.0, vec![(0.0, 0.0); rows * width], vec![(0.0, 0.0); vocab * width]);
    for i in 0..rows {
        let x = &x[i * width..(i + 1) * width];
        let logits: Vec<f64> = w.chunks_exact(width).map(|w| x.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()).collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let t = targets[i] as usize;
        loss += (lse - logits[t]) / rows as f64;
        for (j, l) in logits.iter().enumerate() {
            let (p, onehot) = ((l - lse).exp(), if j == t { 1.0 } else { 0.0 });
            // `p − 1` is computed from an f32 `p` known to a few ulps of `p`: the target's term
            // carries `p`'s error even where it cancels to nearly nothing (a dominant target).
            let (g, size) = ((p - onehot) / rows as f64, (p + onehot) / rows as f64);
            for k in 0..width {
                let (to_x, to_w) = (g * w[j * width + k] as f64, g * x[k] as f64);
                dx[i * width + k].0 += to_x;
                dx[i * width + k].1 += size * (w[j * width + k] as f64).abs();
                dw[j * width + k].0 += to_w;
                dw[j * width + k].1 += size * (x[k] as f64).abs();
            }
        }
    }
    (loss, [dx, dw])
}

/// The loss, `∂x` and `∂W` of the linear cross-entropy under both implementations against the
/// f64 reference; the first value outside the rounding bound as the error.
fn linear_cross_entropy_matches_the_reference(x: &Tensor<2>, weight: &Tensor<2>, targets: &Tensor<1, Int>) -> Result<(), String> {
    let t = targets.clone().into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let (loss, got) = linear_loss_and_grads(kernels, x, weight, targets);
        loss_and_grads_match_the_reference(&format!("{kernels:?}"), x, weight, &t, loss, &got)?;
    }
    Ok(())
}

/// One result of the linear cross-entropy against targets `t`, its loss and `∂x`, `∂W`, against
/// the f64 reference; the first value outside the rounding bound as the error.
fn loss_and_grads_match_the_reference(what: &str, x: &Tensor<2>, weight: &Tensor<2>, t: &[i64], loss: f64, got: &[Vec<f32>; 2]) -> Result<(), String> {
    let [rows, width] = x.dims();
    let (exact, want) = reference_linear_cross_entropy(&values(x.clone()), &values(weight.clone()), t, rows, width);
    if (loss - exact).abs() > 1e-5 * (1.0 + exact.abs()) {
        return Err(format!("{what} loss {loss}, exact {exact}"));
    }
    for (grad, (got, want)) in ["∂x", "∂W"].iter().zip(got.iter().zip(&want)) {
        if got.len() != want.len() {
            return Err(format!("{what} {grad}: {} elements, expected {}", got.len(), want.len()));
        }
        for (i, (&got, &(exact, magnitude))) in got.iter().zip(want).enumerate() {
            // Each probability is known to a few ulps of the logits' size (|logit| ≲ 5 here),
            // and the sum over the vocabulary or the rows adds its own rounding.
            if (got as f64 - exact).abs() > 1e-5 * magnitude + 1e-7 / rows as f64 {
                return Err(format!("{what} {grad}[{i}] = {got}, exact {exact}"));
            }
        }
    }
    Ok(())
}

/// The refresh's loss with labels drawn inside it, under both implementations: every label is
/// where its uniform falls in the f64 cumulative distribution of its row (within rounding of a
/// boundary), the two implementations draw the same labels but at such boundaries, and the loss
/// and gradients match the f64 reference on the labels drawn.
fn sampled_linear_cross_entropy_matches_the_reference(x: &Tensor<2>, weight: &Tensor<2>, uniforms: &Tensor<1>) -> Result<(), String> {
    let [rows, width] = x.dims();
    let (xs, ws, u) = (values(x.clone()), values(weight.clone()), values(uniforms.clone()));
    // Per row the f64 cumulative probabilities.
    let cdfs: Vec<Vec<f64>> = (0..rows)
        .map(|i| {
            let logits: Vec<f64> = ws.chunks_exact(width).map(|w| xs[i * width..(i + 1) * width].iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()).collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            logits
                .iter()
                .scan(0.0, |acc, l| {
                    *acc += (l - max).exp() / total;
                    Some(*acc)
                })
                .collect()
        })
        .collect();
    let mut drawn = Vec::new();
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let (labels, loss, got) = sampled_linear_loss_and_grads(kernels, x, weight, uniforms);
        for (i, &label) in labels.iter().enumerate() {
            let cdf = &cdfs[i];
            let label = usize::try_from(label).ok().filter(|&l| l < cdf.len()).ok_or(format!("{kernels:?} row {i}: label {label} outside the vocabulary"))?;
            let (below, upto) = (if label == 0 { 0.0 } else { cdf[label - 1] }, cdf[label]);
            let u = u[i] as f64;
            if u < below - 1e-5 || (u > upto + 1e-5 && label + 1 < cdf.len()) {
                return Err(format!("{kernels:?} row {i}: label {label} covers [{below}, {upto}], the uniform is {u}"));
            }
        }
        loss_and_grads_match_the_reference(&format!("{kernels:?} on its drawn labels"), x, weight, &labels, loss, &got)?;
        drawn.push(labels);
    }
    for (i, (&f, &c)) in drawn[0].iter().zip(&drawn[1]).enumerate().filter(|(_, (f, c))| f != c) {
        let boundary = cdfs[i][f.min(c) as usize];
        if (u[i] as f64 - boundary).abs() > 1e-5 {
            return Err(format!("row {i}: fused label {f}, composed {c}, the uniform {} is not at the boundary {boundary}", u[i]));
        }
    }
    Ok(())
}

/// LayerNorm of `x` (scale and shift random) and the gradients of `Σ g·y` with respect to `x`,
/// `γ` and `β`, under `kernels`.
fn layer_norm_and_grads(kernels: Kernels, x: &Tensor<3>, g: &Tensor<3>, seed: u64) -> [Vec<f32>; 4] {
    let width = x.dims()[2];
    let device = x.device().autodiff();
    device.seed(seed);
    let mut layer = burn::nn::LayerNormConfig::new(width).with_epsilon(1e-5).init(&device);
    layer.gamma = burn::module::Param::from_tensor(Tensor::<1>::random([width], Distribution::Normal(1.0, 0.5), &device));
    layer.beta = Some(burn::module::Param::from_tensor(Tensor::<1>::random([width], Distribution::Normal(0.0, 0.5), &device)));
    let x = x.clone().inner().autodiff().require_grad();
    let y = layer_norm_with(kernels, &layer, 1e-5, x.clone());
    let grads = (y.clone() * g.clone().inner().autodiff()).sum().backward();
    let beta = layer.beta.as_ref().expect("set above").val();
    [values(y), values(x.grad(&grads).expect("a leaf")), values(layer.gamma.val().grad(&grads).expect("a parameter")), values(beta.grad(&grads).expect("a parameter"))]
}

/// A `[k, n]` weight laid out as `layout` says: 0 row-major, 1 the transposed view of an
/// `[n, k]` matrix (as the tied LM head's `wteᵀ`), 2 a view past the start of its storage.
fn weight_laid_out(layout: u8, [k, n]: [usize; 2], device: &Device) -> Tensor<2> {
    match layout {
        0 => Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), device),
        1 => Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), device).transpose(),
        _ => Tensor::<2>::random([k + 2, n], Distribution::Normal(0.0, 1.0), device).narrow(0, 2, k),
    }
}

/// `Σ_j a[i, j]·b[j, l]` in f64 for row-major `a` `[m, inner]` and `b` `[inner, n]`, and the
/// sum of the terms' magnitudes (what an f32 sum's rounding error is proportional to).
fn reference_product(a: &[f32], b: &[f32], m: usize, inner: usize, n: usize) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0); m * n];
    for i in 0..m {
        for j in 0..inner {
            let a = a[i * inner + j] as f64;
            for l in 0..n {
                let term = a * b[j * n + l] as f64;
                out[i * n + l].0 += term;
                out[i * n + l].1 += term.abs();
            }
        }
    }
    out
}

/// `y = x·W`, `∂x` and `∂W` (with `∂y = g`) of both implementations against an f64 reference,
/// within the rounding bound of an f32 sum; the first element outside it as the error.
fn products_match_the_reference(x: &Tensor<3>, weight: &Tensor<2>, g: &Tensor<3>) -> Result<(), String> {
    let [batch, seq, k] = x.dims();
    let (rows, n) = (batch * seq, weight.dims()[1]);
    let (xv, wv, gv) = (values(x.clone()), values(weight.clone()), values(g.clone()));
    let want = [
        reference_product(&xv, &wv, rows, k, n),
        reference_product(&gv, &transpose(&wv, k, n), rows, n, k),
        reference_product(&transpose(&xv, rows, k), &gv, k, rows, n),
    ];
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let got = product_and_grads(kernels, x, weight, g);
        for (what, (got, want)) in ["y", "∂x", "∂W"].iter().zip(got.iter().zip(&want)) {
            if got.len() != want.len() {
                return Err(format!("{kernels:?} {what}: {} elements, expected {}", got.len(), want.len()));
            }
            for (i, (&got, &(exact, magnitude))) in got.iter().zip(want).enumerate() {
                // A sum of `inner` f32 products errs by at most about inner·u·Σ|terms|.
                let inner = (magnitude.max(1e-30) as f32) * 6e-8 * (k.max(n).max(rows) as f32);
                if (got - exact as f32).abs() > inner + 1e-30 {
                    return Err(format!("{kernels:?} {what}[{i}] = {got}, exact {exact}"));
                }
            }
        }
    }
    Ok(())
}

/// `[cols, rows]` of a row-major `[rows, cols]` matrix.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|i| a[(i % rows) * cols + i / rows]).collect()
}

fn close(a: f32, b: f32, rtol: f32, atol: f32) -> bool {
    (a - b).abs() <= atol + rtol * b.abs()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fused_cross_entropy_equals_the_composed_one(batch in 1usize..4, seq in 1usize..9, vocab in prop_oneof![1usize..300, 300usize..3000], scale in prop_oneof![Just(1.0f64), Just(30.0f64)], seed in 0u64..1000, layout in 0u8..4) {
        let device = device();
        device.seed(seed);
        let logits = laid_out(layout, [batch, seq, vocab], scale, &device);
        let targets = Tensor::<2, Int>::random([batch, seq], Distribution::Uniform(0.0, vocab as f64), &device);
        let (composed, composed_grad) = loss_and_grad(Kernels::Composed, GradientCheckpointingStrategy::Disabled, &logits, &targets);
        // `x − lse` carries an absolute rounding error of a few ulps of the largest logit in both
        // implementations, so a probability near 1 (the target's `p − 1`) is known only to that.
        let largest = logits.clone().abs().max().into_scalar::<f32>();
        let rows = (batch * seq) as f32;
        // The fused kernel with and without gradient checkpointing (flex takes the composed
        // operations under checkpointing, the CubeCL backends their kernels).
        for strategy in [GradientCheckpointingStrategy::Disabled, GradientCheckpointingStrategy::Balanced] {
            let (fused, fused_grad) = loss_and_grad(Kernels::Fused, strategy, &logits, &targets);
            prop_assert!((fused - composed).abs() <= 1e-5 * (1.0 + composed.abs()), "{strategy:?}: loss {fused} vs {composed}");
            for (i, (&f, &c)) in fused_grad.iter().zip(&composed_grad).enumerate() {
                prop_assert!(close(f, c, 1e-4, 1e-7 + 1e-6 * largest / rows), "{strategy:?}: gradient {i}: {f} vs {c}");
            }
        }
    }

    #[test]
    fn fused_gelu_matches_the_reference_and_the_composed_one(batch in 1usize..4, seq in 1usize..40, width in 1usize..700, scale in prop_oneof![Just(1.0f64), Just(6.0f64)], seed in 0u64..1000, layout in 0u8..4) {
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
    fn both_products_and_their_gradients_match_an_f64_reference(batch in 1usize..4, seq in 1usize..40, k in 1usize..160, n in 1usize..160, seed in 0u64..1000, x_layout in 0u8..4, w_layout in 0u8..3) {
        let device = device();
        device.seed(seed);
        let x = laid_out(x_layout, [batch, seq, k], 1.0, &device);
        let weight = weight_laid_out(w_layout, [k, n], &device);
        let g = Tensor::<3>::random([batch, seq, n], Distribution::Normal(0.0, 1.0), &device);
        if let Err(message) = products_match_the_reference(&x, &weight, &g) {
            prop_assert!(false, "{}", message);
        }
    }

    #[test]
    fn causal_attention_and_its_gradient_match_an_f64_reference(batch in 1usize..4, seq in 1usize..70, heads in 1usize..5, head_dim in 1usize..40, seed in 0u64..1000, layout in 0u8..4) {
        let device = device();
        device.seed(seed);
        let width = heads * head_dim;
        let qkv = laid_out(layout, [batch, seq, 3 * width], 1.0, &device);
        let g = Tensor::<3>::random([batch, seq, width], Distribution::Normal(0.0, 1.0), &device);
        let (y, dqkv) = attention_f64(&values(qkv.clone()), &values(g.clone()), [batch, seq, width], heads);
        // Both paths against the definition: the composed one checks the reference as much as
        // the reference checks the fused one.
        for kernels in [Kernels::Fused, Kernels::Composed] {
            let (got_y, got_dqkv) = attention_and_grad(kernels, &qkv, &g, heads);
            for (what, got, want) in [("y", &got_y, &y), ("∂qkv", &got_dqkv, &dqkv)] {
                prop_assert_eq!(got.len(), want.len());
                for (i, (&got, &want)) in got.iter().zip(want.iter()).enumerate() {
                    prop_assert!(close(got, want as f32, 1e-4, 2e-5 * (seq as f32).sqrt()), "{:?} {}[{}]: {} vs f64 {}", kernels, what, i, got, want);
                }
            }
        }
    }

    #[test]
    fn fused_layer_norm_equals_the_composed_one(batch in 1usize..4, seq in 1usize..70, width in 1usize..300, scale in prop_oneof![Just(1.0f64), Just(20.0f64)], seed in 0u64..1000, layout in 0u8..4) {
        let device = device();
        device.seed(seed);
        let x = laid_out(layout, [batch, seq, width], scale, &device);
        let g = Tensor::<3>::random([batch, seq, width], Distribution::Normal(0.0, 1.0), &device);
        let fused = layer_norm_and_grads(Kernels::Fused, &x, &g, seed);
        let composed = layer_norm_and_grads(Kernels::Composed, &x, &g, seed);
        let rows = (batch * seq) as f32;
        // ∂x of a row is O(|g|/σ) per element, and computing `x − μ` in f32 loses the digits of
        // `|x|/σ` (a narrow row of nearby large values): its rounding bound grows with that.
        let xs = values(x.clone());
        let dx_atol: Vec<f32> = xs
            .chunks_exact(width)
            .map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let sigma = (row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64 + 1e-5).sqrt();
                let condition = row.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs())) / sigma + 1.0;
                (2e-4 / scale).max(2e-6 * condition / sigma) as f32
            })
            .collect();
        // y is O(1) per element (times γ); ∂γ and ∂β sum over the rows.
        let atol = |what: &str, i: usize| match what {
            "y" => 1e-5,
            "∂x" => dx_atol[i / width],
            "∂γ" => 1e-4 * rows.sqrt(),
            _ => 1e-5 * rows,
        };
        for (what, (f, c)) in ["y", "∂x", "∂γ", "∂β"].into_iter().zip(fused.iter().zip(&composed)) {
            prop_assert_eq!(f.len(), c.len());
            for (i, (&f, &c)) in f.iter().zip(c).enumerate() {
                prop_assert!(close(f, c, 1e-4, atol(what, i)), "{what}[{i}]: fused {f} vs composed {c}");
            }
        }
    }

    #[test]
    fn the_linear_cross_entropy_and_its_gradients_match_an_f64_reference(rows in 1usize..600, width in prop_oneof![1usize..48, 128usize..140], vocab in 1usize..5000, seed in 0u64..1000, x_layout in 0u8..3, w_layout in 0u8..3) {
        let device = device();
        device.seed(seed);
        // Large enough a vocabulary and enough rows for several chunks in several groups.
        let x = weight_laid_out(x_layout, [rows, width], &device);
        let weight = weight_laid_out(w_layout, [vocab, width], &device).div_scalar((width as f64).sqrt());
        let targets = Tensor::<1, Int>::random([rows], Distribution::Uniform(0.0, vocab as f64), &device);
        if let Err(message) = linear_cross_entropy_matches_the_reference(&x, &weight, &targets) {
            prop_assert!(false, "{}", message);
        }
    }

    #[test]
    fn labels_drawn_inside_the_linear_cross_entropy_follow_the_logits(rows in 1usize..300, width in prop_oneof![1usize..48, 128usize..140], vocab in 1usize..3000, seed in 0u64..1000, x_layout in 0u8..3, w_layout in 0u8..3) {
        let device = device();
        device.seed(seed);
        let x = weight_laid_out(x_layout, [rows, width], &device);
        // Logits of order one to a few: the labels spread over the vocabulary.
        let weight = weight_laid_out(w_layout, [vocab, width], &device).mul_scalar(2.0 / (width as f64).sqrt());
        let uniforms = Tensor::<1>::random([rows], Distribution::Uniform(0.0, 1.0), &device);
        if let Err(message) = sampled_linear_cross_entropy_matches_the_reference(&x, &weight, &uniforms) {
            prop_assert!(false, "{}", message);
        }
    }

    #[test]
    fn fused_labels_equal_the_composed_ones(rows in 1usize..64, vocab in prop_oneof![1usize..200, 200usize..5000], seed in 0u64..1000, layout in 0u8..4) {
        let device = device();
        device.seed(seed);
        let logits = laid_out(layout, [1, rows, vocab], 2.0, &device);
        let uniforms = Tensor::<2>::random([1, rows], Distribution::Uniform(0.0, 1.0), &device);
        let labels = |kernels| sample_labels_with(kernels, logits.clone(), uniforms.clone()).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        let (fused, composed) = (labels(Kernels::Fused), labels(Kernels::Composed));
        prop_assert!(fused.iter().all(|&l| (0..vocab as i64).contains(&l)));
        // Where the two differ, the uniform must lie within rounding of a cumulative-probability
        // boundary between their labels (the f32 sums of either implementation may put it on
        // either side); anything else must agree.
        let (x, u) = (values(logits.clone()), values(uniforms.clone()));
        for (i, (&f, &c)) in fused.iter().zip(&composed).enumerate().filter(|(_, (f, c))| f != c) {
            let row = &x[i * vocab..(i + 1) * vocab];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let boundary: f64 = row[..f.min(c) as usize + 1].iter().map(|&v| (v as f64 - max).exp()).sum::<f64>() / total;
            prop_assert!((u[i] as f64 - boundary).abs() <= 1e-5, "row {i}: labels {f} vs {c}, uniform {} and the boundary {boundary}", u[i]);
        }
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

/// Products with every dimension large, the inner one beyond 512 (where the kernel sums over
/// several blocks of it), match the reference.
#[test]
fn large_products_and_their_gradients_match_an_f64_reference() {
    let device = device();
    device.seed(11);
    for (x_layout, w_layout) in [(0, 1), (1, 0)] {
        let x = laid_out(x_layout, [2, 150, 600], 1.0, &device);
        let weight = weight_laid_out(w_layout, [600, 261], &device);
        let g = Tensor::<3>::random([2, 150, 261], Distribution::Normal(0.0, 1.0), &device);
        products_match_the_reference(&x, &weight, &g).unwrap();
    }
}

/// The fused product is one call of a kernel that splits it over rayon's threads; every element
/// is summed in the same order whatever the split, so one, two or three threads give the same
/// bits, on small shapes and on large ones (an inner dimension beyond 512 included).
#[test]
fn the_fused_product_does_not_depend_on_the_number_of_threads() {
    let device = device();
    device.seed(7);
    for [batch, seq, k, n] in [[4, 37, 96, 131], [2, 150, 600, 261]] {
        let x = laid_out(0, [batch, seq, k], 1.0, &device);
        let weight = weight_laid_out(1, [k, n], &device);
        let g = Tensor::<3>::random([batch, seq, n], Distribution::Normal(0.0, 1.0), &device);
        assert_same_on_one_two_and_three_threads("the product or its gradients", || product_and_grads(Kernels::Fused, &x, &weight, &g));
    }
}

/// Likewise the fused LayerNorm, whose `∂γ` and `∂β` sum over blocks of rows.
#[test]
fn the_fused_layer_norm_does_not_depend_on_the_number_of_threads() {
    let device = device();
    device.seed(8);
    let x = laid_out(0, [5, 61, 96], 3.0, &device);
    let g = Tensor::<3>::random([5, 61, 96], Distribution::Normal(0.0, 1.0), &device);
    assert_same_on_one_two_and_three_threads("the LayerNorm or its gradients", || layer_norm_and_grads(Kernels::Fused, &x, &g, 3));
}

/// Likewise the fused attention, one (sequence, head) per task.
#[test]
fn the_fused_attention_does_not_depend_on_the_number_of_threads() {
    let device = device();
    device.seed(9);
    let qkv = laid_out(0, [3, 45, 3 * 96], 1.0, &device);
    let g = Tensor::<3>::random([3, 45, 96], Distribution::Normal(0.0, 1.0), &device);
    assert_same_on_one_two_and_three_threads("the attention or its gradient", || attention_and_grad(Kernels::Fused, &qkv, &g, 4));
}

/// A `qkv` whose width does not split into three times the heads is refused on both paths.
#[test]
fn causal_attention_refuses_a_qkv_that_does_not_split_into_heads() {
    let qkv = Tensor::<3>::zeros([1, 4, 3 * 8 + 3], &device());
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| causal_attention_with(kernels, qkv.clone(), 2)));
        assert!(result.is_err(), "{kernels:?} accepted 27 columns for 2 heads");
    }
}

/// A vocabulary of many chunks per group (the random shapes above have at most a few per
/// group), with the logits recomputed (a narrow hidden state) and kept (a wider one).
#[test]
fn the_linear_cross_entropy_over_many_chunks_matches_an_f64_reference() {
    for (x, weight, targets) in linear_cases(12, 500, 17001, [16, 130]) {
        linear_cross_entropy_matches_the_reference(&x, &weight, &targets).unwrap();
    }
}

/// A hidden state 256 or more wide: the chunks' products run on the packed kernel, not on the
/// register tiles, and still match the reference.
#[test]
fn the_linear_cross_entropy_of_a_wide_hidden_state_matches_an_f64_reference() {
    for (x, weight, targets) in linear_cases(14, 300, 3001, [260]) {
        linear_cross_entropy_matches_the_reference(&x, &weight, &targets).unwrap();
    }
}

/// Labels drawn inside the linear cross-entropy over many chunks per group, from a narrow and a
/// wide hidden state, and the same labels, loss and gradients on one, two and three threads.
#[test]
fn labels_drawn_inside_the_linear_cross_entropy_over_many_chunks() {
    for (x, weight, _) in linear_cases(13, 300, 17001, [16, 130]) {
        let uniforms = Tensor::<1>::random([300], Distribution::Uniform(0.0, 1.0), &device());
        let weight = weight.mul_scalar(2.0);
        sampled_linear_cross_entropy_matches_the_reference(&x, &weight, &uniforms).unwrap();
        assert_same_on_one_two_and_three_threads("the drawn labels, the loss or its gradients", || {
            let (labels, loss, grads) = sampled_linear_loss_and_grads(Kernels::Fused, &x, &weight, &uniforms);
            (labels, loss.to_bits(), grads)
        });
    }
}

/// Likewise the fused linear cross-entropy, whose chunks of the vocabulary are grouped and the
/// groups merged in a fixed order, with the logits recomputed in the backward pass (a narrow
/// hidden state) and kept from the forward pass (wider ones, on the register tiles and on the
/// packed kernel).
#[test]
fn the_fused_linear_cross_entropy_does_not_depend_on_the_number_of_threads() {
    for (x, weight, targets) in linear_cases(9, 300, 3001, [24, 130, 260]) {
        assert_same_on_one_two_and_three_threads("the linear cross-entropy or its gradients", || {
            let (loss, grads) = linear_loss_and_grads(Kernels::Fused, &x, &weight, &targets);
            (loss.to_bits(), grads)
        });
    }
}

/// Row-major `x` `[rows, width]`, `W` `[vocab, width]` (scaled by `1/√width`, so the logits are
/// of order one) and random targets, one case per width, from `seed`.
fn linear_cases<const W: usize>(seed: u64, rows: usize, vocab: usize, widths: [usize; W]) -> Vec<(Tensor<2>, Tensor<2>, Tensor<1, Int>)> {
    let device = device();
    device.seed(seed);
    widths
        .into_iter()
        .map(|width| {
            let x = weight_laid_out(0, [rows, width], &device);
            let weight = weight_laid_out(0, [vocab, width], &device).div_scalar((width as f64).sqrt());
            (x, weight, Tensor::<1, Int>::random([rows], Distribution::Uniform(0.0, vocab as f64), &device))
        })
        .collect()
}

/// Causal attention of `qkv` and the gradient of `Σ g·y` under `kernels`.
fn attention_and_grad(kernels: Kernels, qkv: &Tensor<3>, g: &Tensor<3>, heads: usize) -> (Vec<f32>, Vec<f32>) {
    let leaf = qkv.clone().inner().autodiff().require_grad();
    let y = causal_attention_with(kernels, leaf.clone(), heads);
    let output = values(y.clone().inner());
    let grads = (y * g.clone().inner().autodiff()).sum().backward();
    (output, values(leaf.grad(&grads).expect("qkv is a leaf")))
}

/// Causal attention and the gradient of `Σ g·y` in f64, straight from the definition
/// (`qkv` `[batch, seq, 3·C]` row-major, `g` `[batch, seq, C]`).
fn attention_f64(qkv: &[f32], g: &[f32], [batch, seq, width]: [usize; 3], heads: usize) -> (Vec<f64>, Vec<f64>) {
    let d = width / heads;
    let at = |b: usize, t: usize, part: usize, h: usize, i: usize| ((b * seq + t) * 3 + part) * width + h * d + i;
    let mut y = vec![0.0f64; batch * seq * width];
    let mut dqkv = vec![0.0f64; qkv.len()];
    let root = (d as f64).sqrt();
    for b in 0..batch {
        for h in 0..heads {
            let q = |t: usize, i: usize| qkv[at(b, t, 0, h, i)] as f64;
            let k = |t: usize, i: usize| qkv[at(b, t, 1, h, i)] as f64;
            let v = |t: usize, i: usize| qkv[at(b, t, 2, h, i)] as f64;
            let dy = |t: usize, i: usize| g[(b * seq + t) * width + h * d + i] as f64;
            for t in 0..seq {
                let scores: Vec<f64> = (0..=t).map(|j| (0..d).map(|i| q(t, i) * k(j, i)).sum::<f64>() / root).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / total).collect();
                for i in 0..d {
                    y[(b * seq + t) * width + h * d + i] = (0..=t).map(|j| p[j] * v(j, i)).sum();
                }
                // ∂p_j = Σ_i ∂y_i v_ji; ∂s_j = p_j (∂p_j − Σ_l p_l ∂p_l).
                let dp: Vec<f64> = (0..=t).map(|j| (0..d).map(|i| dy(t, i) * v(j, i)).sum()).collect();
                let mean: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
                for j in 0..=t {
                    let ds = p[j] * (dp[j] - mean) / root;
                    for i in 0..d {
                        dqkv[at(b, t, 0, h, i)] += ds * k(j, i);
                        dqkv[at(b, j, 1, h, i)] += ds * q(t, i);
                        dqkv[at(b, j, 2, h, i)] += p[j] * dy(t, i);
                    }
                }
            }
        }
    }
    (y, dqkv)
}

/// `run` gives the same result in rayon pools of two and three threads as in one of one thread.
fn assert_same_on_one_two_and_three_threads<T: PartialEq + Send>(what: &str, run: impl Fn() -> T + Sync) {
    let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(&run);
    let one = on(1);
    for threads in [2, 3] {
        assert!(one == on(threads), "{threads} threads changed {what}");
    }
}

#[test]
fn the_fused_path_is_the_one_taken_on_flex() {
    assert_eq!(sophia_gpt2::kernels::fused_available(&Device::flex()), cfg!(feature = "flex"));
}
