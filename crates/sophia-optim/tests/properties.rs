//! Properties of Sophia that hold for any input (proptest), checkpoint resume, and the
//! finite-difference Hessian-vector product on functions whose Hessian is known.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;
use sophia_optim::hutchinson::{hessian_vector_product, rademacher};
use sophia_optim::{Hutchinson, SophiaGConfig, SophiaHConfig, SophiaOptimizer};

#[derive(Module, Debug)]
struct Vector {
    w: Param<Tensor<1>>,
}

/// Parameters live on the autodiff device, gradients on its inner device, as after a backward.
fn device() -> Device {
    Device::flex().autodiff()
}

fn vector(values: &[f32]) -> Vector {
    Vector { w: Param::from_data(TensorData::from(values), &device()) }
}

fn grads(module: &Vector, values: &[f32]) -> GradientsParams {
    let mut grads = GradientsParams::new();
    grads.register(module.w.id, Tensor::<1>::from_data(TensorData::from(values), &Device::flex()));
    grads
}

fn values(module: &Vector) -> Vec<f32> {
    module.w.val().into_data().try_to_vec::<f32>().unwrap()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Weights, two gradients and a refresh input of the same length.
fn inputs() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (1usize..24).prop_flat_map(|n| {
        let v = || prop::collection::vec(-10.0f32..10.0, n);
        (v(), v(), v(), v())
    })
}

fn sophia_g() -> SophiaOptimizer {
    SophiaGConfig::new(64).with_hessian_interval(2).try_init().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A Hessian refresh never changes a bit of the weights (SophiaG and SophiaH).
    #[test]
    fn refresh_leaves_weights_bit_identical((w, g1, ghat, _) in inputs()) {
        for mut optim in [sophia_g(), SophiaHConfig::new().try_init().unwrap()] {
            let module = vector(&w);
            let g = grads(&module, &g1);
            let module = optim.step(0.01, module, g);
            let before = bits(&values(&module));
            let h = grads(&module, &ghat);
            let module = optim.refresh(module, h);
            prop_assert_eq!(bits(&values(&module)), before);
        }
    }

    /// |θ' − θ| never exceeds lr plus the decay term lr·λ·|θ|, whatever h is.
    #[test]
    fn step_is_bounded_by_lr_plus_decay((w, g1, ghat, g2) in inputs(), lr in 1e-4f64..0.5) {
        let weight_decay = 0.1;
        let mut optim = SophiaGConfig::new(8).with_weight_decay(weight_decay).try_init().unwrap();
        let mut module = vector(&w);
        let h = grads(&module, &ghat);
        module = optim.refresh(module, h);
        for g in [&g1, &g2] {
            let before = values(&module);
            let g = grads(&module, g);
            module = optim.step(lr, module, g);
            for (&after, &before) in values(&module).iter().zip(&before) {
                let bound = lr * (1.0 + weight_decay * before.abs() as f64);
                let slack = 4.0 * f32::EPSILON as f64 * (before.abs() as f64 + lr);
                prop_assert!(((after - before) as f64).abs() <= bound + slack,
                    "step {} > bound {}", after - before, bound);
            }
        }
    }

    /// With h = 0 the update is the sign step θ·(1 − lr·λ) − lr·sign(m).
    #[test]
    fn zero_hessian_gives_sign_step((w, g, _, _) in inputs(), lr in 1e-4f64..0.5) {
        let mut optim = SophiaGConfig::new(8).try_init().unwrap();
        let module = vector(&w);
        let g_params = grads(&module, &g);
        let module = optim.step(lr, module, g_params);
        for ((&after, &before), &g) in values(&module).iter().zip(&w).zip(&g) {
            let decayed = (before as f64) * (1.0 - lr * 0.1);
            let expected = decayed - lr * (g as f64).signum() * if g == 0.0 { 0.0 } else { 1.0 };
            prop_assert!((after as f64 - expected).abs() <= 4.0 * f32::EPSILON as f64 * (decayed.abs() + lr));
        }
    }

    /// Save → load → step equals the uninterrupted step, bit for bit.
    #[test]
    fn resume_from_checkpoint_is_bit_exact((w, g1, ghat, g2) in inputs()) {
        let mut original = sophia_g();
        let mut module = vector(&w);
        for (lr, input, refresh) in [(0.02, &g1, false), (0.0, &ghat, true), (0.02, &g2, false)] {
            let g = grads(&module, input);
            module = if refresh { original.refresh(module, g) } else { original.step(lr, module, g) };
        }

        let bytes = original.into_bytes().unwrap();
        let mut restored = sophia_g().from_bytes(bytes).unwrap();

        let expected = original.step(0.01, module.clone(), grads(&module, &g1));
        let actual = restored.step(0.01, module.clone(), grads(&module, &g1));
        prop_assert_eq!(bits(&values(&actual)), bits(&values(&expected)));
        let state = |o: &SophiaOptimizer| o.into_bytes().unwrap().to_vec();
        prop_assert_eq!(state(&restored), state(&original));
    }
}

#[test]
fn stats_report_win_rate_and_hessian() {
    let mut optim = SophiaGConfig::new(1).with_rho(1.0).try_init().unwrap();
    let module = vector(&[0.0; 4]);
    // h = (1 − β₂)·ĝ² = 0.01·[0, 1, 100, 10000]
    let h = grads(&module, &[0.0, 1.0, 10.0, 100.0]);
    let module = optim.refresh(module, h);
    optim.control().collect_win_rate(true);
    // m = (1 − β₁)·g = 0.035·100 = 3.5
    let g = grads(&module, &[100.0; 4]);
    let _ = optim.step(0.0, module, g);
    let stats = optim.stats();
    // |m| / (h + ε) = 3.5 / [1e-15, 0.01, 1, 100] → not clipped only where h = 100.
    assert_eq!(stats.win_rate, Some(0.25));
    assert_eq!(stats.refreshes, 1);
    let mean = (0.0 + 0.01 + 1.0 + 100.0) / 4.0;
    assert!((stats.hessian_mean.unwrap() - mean).abs() < 1e-5, "{stats:?}");
    assert!((stats.hessian_max.unwrap() - 100.0).abs() < 1e-4, "{stats:?}");
    // Counters were consumed by the read.
    assert_eq!(optim.stats().win_rate, None);
}

// ---------------------------------------------------------------------------------------------
// Hessian-vector products.

/// f(w) = ½ wᵀ A w + Σ w⁴/4, gradient A w + w³, Hessian A + diag(3 w²).
fn gradient_of_test_function(a: &Tensor<2>) -> impl Fn(&Vector) -> GradientsParams + '_ {
    move |module: &Vector| {
        let w = module.w.val();
        let n = w.dims()[0];
        let quadratic = w.clone().reshape([1, n]).matmul(a.clone().to_device(&w.device())).matmul(w.clone().reshape([n, 1]));
        let loss = quadratic.reshape([1]).mul_scalar(0.5) + w.powi_scalar(4).sum().div_scalar(4.0);
        GradientsParams::from_grads(loss.backward(), module)
    }
}

#[test]
fn hessian_vector_product_matches_the_analytic_hessian() {
    let device = Device::flex();
    let w = [0.5f32, -1.0, 2.0];
    let a = Tensor::<2>::from_data(TensorData::from([[2.0f32, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 4.0]]), &device);
    let module = vector(&w);
    let u = [1.0f32, -1.0, 1.0];
    let direction = grads(&module, &u);
    let hv = hessian_vector_product(&module, &direction, 1e-2, gradient_of_test_function(&a));
    let got = hv.get::<1>(module.w.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
    // (A + diag(3 w²)) u
    let a_rows = [[2.0f64, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 4.0]];
    for i in 0..3 {
        let expected: f64 = (0..3).map(|j| a_rows[i][j] * u[j] as f64).sum::<f64>() + 3.0 * (w[i] as f64).powi(2) * u[i] as f64;
        // Truncation error ε² w u³ = 1e-4·|w|, plus float32 rounding of the gradients / 2ε.
        assert!((got[i] as f64 - expected).abs() < 2e-3, "Hu[{i}] = {} expected {expected}", got[i]);
    }
}

#[test]
fn hutchinson_estimate_is_unbiased_for_the_diagonal() {
    let device = Device::flex();
    let a_rows = [[2.0f32, 0.5, -0.7], [0.5, -1.0, 0.3], [-0.7, 0.3, 4.0]];
    let a = Tensor::<2>::from_data(TensorData::from(a_rows), &device);
    let w = [0.0f32; 3];
    let module = vector(&w);
    let hutchinson = Hutchinson::new(1e-2, 7).unwrap();
    let draws = 200;
    let mut mean = [0.0f64; 3];
    for draw in 0..draws {
        let estimate = hutchinson.estimate(&module, draw, gradient_of_test_function(&a));
        let values = estimate.get::<1>(module.w.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for i in 0..3 {
            mean[i] += values[i] as f64 / draws as f64;
        }
    }
    // u ⊙ Au = diag(A) + Σ_{j≠i} A_ij u_i u_j: mean over 200 draws within ~4 standard errors.
    for i in 0..3 {
        let off: f64 = (0..3).filter(|&j| j != i).map(|j| (a_rows[i][j] as f64).powi(2)).sum();
        let tolerance = 4.0 * (off / draws as f64).sqrt() + 1e-3;
        assert!((mean[i] - a_rows[i][i] as f64).abs() < tolerance, "diag[{i}] mean {} vs {}", mean[i], a_rows[i][i]);
    }
    // The same draw gives the same direction: resumable runs draw what they drew before.
    let once = rademacher(&module, 3).get::<1>(module.w.id).unwrap().into_data();
    let again = rademacher(&module, 3).get::<1>(module.w.id).unwrap().into_data();
    assert_eq!(once, again);
}

