//! Properties of Sophia that hold for any input (proptest), checkpoint resume, and the
//! finite-difference Hessian-vector product on functions whose Hessian is known.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;
use sophia_optim::hutchinson::{hessian_vector_product, rademacher};
use std::convert::Infallible;

use sophia_optim::{AutoRho, EstimateFn, Hutchinson, Refresh, RefreshError, RefreshMismatch, SophiaGConfig, SophiaHConfig, SophiaOptimizer};

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
    SophiaGConfig::new(64).with_hessian_interval(2).with_refresh_grad_clip(None).try_init().unwrap()
}

/// An estimator that always returns `values` as the estimate.
fn fixed(values: &[f32]) -> impl sophia_optim::HessianEstimator<Vector, Error = Infallible> + '_ {
    EstimateFn(move |m: &Vector, _: Refresh| Ok::<_, Infallible>(grads(m, values)))
}

/// One Sophia step with gradient `g`, refreshing from `estimate` where the schedule says.
fn step(optim: &mut SophiaOptimizer, lr: f64, module: Vector, g: &[f32], estimate: &[f32]) -> Vector {
    let g = grads(&module, g);
    optim.step(lr, module, g, &mut fixed(estimate)).unwrap()
}

/// An update with an interval so long that no refresh comes due.
fn never() -> usize {
    usize::MAX
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A Hessian refresh never changes a bit of the weights (SophiaG and SophiaH).
    #[test]
    fn refresh_leaves_weights_bit_identical((w, g1, ghat, _) in inputs()) {
        for mut optim in [sophia_g(), SophiaHConfig::new().try_init().unwrap()] {
            let module = step(&mut optim, 0.01, vector(&w), &g1, &ghat);
            let before = bits(&values(&module));
            let h = grads(&module, &ghat);
            let module = optim.refresh(module, h).unwrap();
            prop_assert_eq!(bits(&values(&module)), before);
        }
    }

    /// |θ' − θ| never exceeds lr plus the decay term lr·λ·|θ|, whatever h is.
    #[test]
    fn step_is_bounded_by_lr_plus_decay((w, g1, ghat, g2) in inputs(), lr in 1e-4f64..0.5) {
        let weight_decay = 0.1;
        let mut optim = SophiaGConfig::new(8).with_weight_decay(weight_decay).with_hessian_interval(1).try_init().unwrap();
        let mut module = vector(&w);
        let h = grads(&module, &ghat);
        module = optim.refresh(module, h).unwrap();
        for g in [&g1, &g2] {
            let before = values(&module);
            module = step(&mut optim, lr, module, g, &ghat);
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
        let mut optim = SophiaGConfig::new(8).with_hessian_interval(never()).try_init().unwrap();
        let module = step(&mut optim, lr, vector(&w), &g, &g);
        for ((&after, &before), &g) in values(&module).iter().zip(&w).zip(&g) {
            let decayed = (before as f64) * (1.0 - lr * 0.1);
            let expected = decayed - lr * (g as f64).signum() * if g == 0.0 { 0.0 } else { 1.0 };
            prop_assert!((after as f64 - expected).abs() <= 4.0 * f32::EPSILON as f64 * (decayed.abs() + lr));
        }
    }

    /// Save → load → step equals the uninterrupted step, bit for bit.
    #[test]
    fn resume_from_checkpoint_is_bit_exact((w, g1, ghat, g2) in inputs()) {
        // Interval 2: a refresh after the second update; the resumed optimizer must refresh after
        // the fourth, exactly as the uninterrupted one.
        let mut original = sophia_g();
        let mut module = vector(&w);
        for g in [&g1, &g2, &g1] {
            module = step(&mut original, 0.02, module, g, &ghat);
        }

        let bytes = original.into_bytes().unwrap();
        let mut restored = sophia_g().from_bytes(bytes).unwrap();
        prop_assert_eq!(restored.stats().hessian_mean, original.stats().hessian_mean);

        let expected = step(&mut original, 0.01, module.clone(), &g2, &g1);
        let actual = step(&mut restored, 0.01, module.clone(), &g2, &g1);
        prop_assert_eq!(bits(&values(&actual)), bits(&values(&expected)));
        prop_assert_eq!(restored.stats().refreshes, 1);
        let state = |o: &SophiaOptimizer| o.into_bytes().unwrap().to_vec();
        prop_assert_eq!(state(&restored), state(&original));
    }
}

#[test]
fn stats_report_win_rate_and_hessian() {
    let mut optim = SophiaGConfig::new(1).with_rho(1.0).with_refresh_grad_clip(None).with_hessian_interval(never()).try_init().unwrap();
    let module = vector(&[0.0; 4]);
    // h = (1 − β₂)·ĝ² = 0.01·[0, 1, 100, 10000]
    let h = grads(&module, &[0.0, 1.0, 10.0, 100.0]);
    let module = optim.refresh(module, h).unwrap();
    optim.control().collect_win_rate(true);
    // m = (1 − β₁)·g = 0.035·100 = 3.5
    let _ = step(&mut optim, 0.0, module, &[100.0; 4], &[0.0; 4]);
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
fn gradient_of_test_function(a: &Tensor<2>) -> impl Fn(&Vector) -> Result<GradientsParams, Infallible> + '_ {
    move |module: &Vector| {
        let w = module.w.val();
        let n = w.dims()[0];
        let quadratic = w.clone().reshape([1, n]).matmul(a.clone().to_device(&w.device())).matmul(w.clone().reshape([n, 1]));
        let loss = quadratic.reshape([1]).mul_scalar(0.5) + w.powi_scalar(4).sum().div_scalar(4.0);
        Ok(GradientsParams::from_grads(loss.backward(), module))
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
    let hv = hessian_vector_product(&module, &direction, 1e-2, gradient_of_test_function(&a)).unwrap();
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
        let estimate = hutchinson.estimate(&module, draw, gradient_of_test_function(&a)).unwrap();
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

// ---------------------------------------------------------------------------------------------
// The schedule the optimizer owns, and loud failures.

/// The updates (counted from 0) whose refresh the optimizer asked for, over `updates` steps.
fn asked_for(mut optim: SophiaOptimizer, updates: usize) -> Vec<usize> {
    let mut asked = Vec::new();
    let mut module = vector(&[1.0, -2.0]);
    for _ in 0..updates {
        let g = grads(&module, &[0.5, 0.25]);
        let mut estimator = EstimateFn(|m: &Vector, refresh: Refresh| {
            asked.push(refresh.update);
            Ok::<_, Infallible>(grads(m, &[1.0, 1.0]))
        });
        module = optim.step(0.01, module, g, &mut estimator).unwrap();
    }
    asked
}

#[test]
fn sophia_g_refreshes_after_every_kth_update_and_sophia_h_before() {
    assert_eq!(asked_for(SophiaGConfig::new(8).with_hessian_interval(3).try_init().unwrap(), 10), vec![2, 5, 8]);
    assert_eq!(asked_for(SophiaHConfig::new().with_hessian_interval(3).try_init().unwrap(), 10), vec![0, 3, 6, 9]);
}

#[test]
fn the_refresh_clips_the_estimate_to_its_global_norm() {
    // ĝ = [30, 40] has norm 50; clipped to norm 1 it is [0.6, 0.8] (up to clip_grad_norm_'s 1e-6).
    let mut optim = SophiaGConfig::new(8).with_beta_2(0.0).try_init().unwrap();
    let module = optim.refresh(vector(&[0.0, 0.0]), grads(&vector(&[0.0, 0.0]), &[30.0, 40.0]));
    // The estimate above was keyed by another module's parameter: refused, not ignored.
    assert!(matches!(module, Err(RefreshMismatch::ForeignParameters { given: 1, refreshed: 0 })), "{:?}", module.err());
    let module = vector(&[0.0, 0.0]);
    let estimate = grads(&module, &[30.0, 40.0]);
    let _ = optim.refresh(module, estimate).unwrap();
    let mean = optim.stats().hessian_mean.unwrap();
    assert!((mean - (0.36 + 0.64) / 2.0).abs() < 1e-5, "mean h {mean}");
}

#[test]
fn an_estimate_missing_trained_parameters_is_an_error() {
    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<1>>,
        b: Param<Tensor<1>>,
    }
    let two = Two { a: Param::from_data(TensorData::from([1.0f32]), &device()), b: Param::from_data(TensorData::from([2.0f32]), &device()) };
    let only_a = |m: &Two| {
        let mut g = GradientsParams::new();
        g.register(m.a.id, Tensor::<1>::from_data(TensorData::from([1.0f32]), &Device::flex()));
        g
    };
    let both = |m: &Two| {
        let mut g = only_a(m);
        g.register(m.b.id, Tensor::<1>::from_data(TensorData::from([1.0f32]), &Device::flex()));
        g
    };
    let mut optim = SophiaGConfig::new(8).with_hessian_interval(1).try_init().unwrap();
    let grads = both(&two);
    let result = optim.step(0.01, two, grads, &mut EstimateFn(|m: &Two, _| Ok::<_, Infallible>(only_a(m))));
    assert!(matches!(result, Err(RefreshError::Mismatch(RefreshMismatch::Incomplete { refreshed: 1, updated: 2 }))), "{:?}", result.err());
}

#[test]
#[should_panic(expected = "outside SophiaControl::step")]
fn a_plain_module_optimizer_step_is_refused() {
    let (mut optim, _) = SophiaGConfig::new(8).try_init().unwrap().into_parts();
    let module = vector(&[1.0]);
    let g = grads(&module, &[1.0]);
    let _ = optim.step(0.01, module, g);
}

// ---------------------------------------------------------------------------------------------
// Automatic ρ.

proptest! {
    /// The rule leaves ρ alone inside the band, moves it toward the band outside it, never by
    /// more than `max_step`, and more for win rates further from the band.
    #[test]
    fn auto_rho_moves_toward_the_band_by_bounded_steps(rho in 1e-4f64..10.0, w in 0.0f64..1.0, w2 in 0.0f64..1.0) {
        let auto = AutoRho::default();
        let next = auto.next(rho, w);
        prop_assert!(next >= rho / auto.max_step * (1.0 - 1e-12) && next <= rho * auto.max_step * (1.0 + 1e-12));
        if (auto.low..=auto.high).contains(&w) {
            prop_assert_eq!(next, rho);
        } else if w < auto.low {
            prop_assert!(next > rho);
        } else {
            prop_assert!(next < rho);
        }
        // Monotone: a lower win rate never asks for a smaller ρ.
        if w < w2 {
            prop_assert!(auto.next(rho, w) >= auto.next(rho, w2));
        }
    }
}

#[test]
fn auto_rho_rule_at_known_points() {
    let auto = AutoRho::default();
    assert_eq!(auto.next(0.05, 0.3), 0.05, "inside the band");
    assert_eq!(auto.next(0.05, 0.0), 0.1, "no win at all: the largest step up");
    // Win rate 0.025, band starts at 0.1: (0.1 / 0.025)^0.5 = 2.
    assert!((auto.next(0.05, 0.025) - 0.1).abs() < 1e-15);
    // Win rate 0.9, band ends at 0.5: (0.5 / 0.9)^0.5 ≈ 0.745.
    assert!((auto.next(0.05, 0.9) - 0.05 * (0.5f64 / 0.9).sqrt()).abs() < 1e-15);
    assert!(AutoRho { low: 0.5, high: 0.1, ..auto }.validate().is_err());
    assert!(AutoRho { max_step: 1.0, ..auto }.validate().is_err());
    assert!(auto.validate().is_ok());
}

#[test]
fn auto_rho_raises_rho_until_coordinates_win_and_resumes_with_it() {
    // ρ starts so small that every step is clipped; each refresh then doubles it until the win
    // rate enters the band.
    let config = SophiaGConfig::new(8).with_rho(1e-9).with_auto_rho(true).with_hessian_interval(1).with_refresh_grad_clip(None);
    let mut optim = config.try_init().unwrap();
    let mut module = vector(&[0.5, -0.25, 1.0, 2.0]);
    let mut scales = Vec::new();
    for _ in 0..40 {
        module = step(&mut optim, 1e-3, module, &[0.1, -0.2, 0.3, 0.05], &[1.0, 2.0, 0.5, 1.5]);
        scales.push(optim.control().scale());
    }
    assert!(scales.windows(2).take(10).all(|w| w[1] == 2.0 * w[0]), "doubles while nothing wins: {scales:?}");
    assert!(scales[39] > 1e-6, "{scales:?}");
    // The scale travels with the record; a fixed-ρ optimizer keeps its configured ρ.
    let bytes = optim.into_bytes().unwrap();
    let restored = config.try_init().unwrap().from_bytes(bytes.clone()).unwrap();
    assert_eq!(restored.control().scale(), scales[39]);
    let fixed = SophiaGConfig::new(8).with_rho(1e-9).with_hessian_interval(1).try_init().unwrap().from_bytes(bytes).unwrap();
    assert_eq!(fixed.control().scale(), 1e-9);
}
