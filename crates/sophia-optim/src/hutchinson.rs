//! Hessian-vector products by finite differences, and the Hutchinson diagonal estimate that
//! SophiaH refreshes from.
//!
//! Burn has no double backward, so `H u` is computed from two extra gradient evaluations:
//!
//! ```text
//! H u ≈ (∇f(θ + ε u) − ∇f(θ − ε u)) / (2 ε)
//! ```
//!
//! The truncation error is `O(ε²)` (exact for quadratics), the rounding error `O(δ / ε)` with
//! `δ` the float32 noise of a gradient, so `ε` around `1e-3` (the default) balances both for
//! weights of order one. **Cost**: two forward + backward passes per estimate, on top of the
//! training step. The Hutchinson estimate of the Hessian diagonal is `u ⊙ (H u)` for a
//! Rademacher `u` (entries ±1 with probability ½), unbiased because `E[u uᵀ] = I`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ConfigError, Validator};
use crate::estimator::{HessianEstimator, Refresh, draw_seed};

/// Draws Rademacher directions and turns them into `u ⊙ Hu` estimates for SophiaH.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hutchinson {
    epsilon: f64,
    seed: u64,
}

impl Hutchinson {
    /// Finite-difference step `epsilon` (> 0) and the `seed` of the Rademacher draws.
    pub fn new(epsilon: f64, seed: u64) -> Result<Self, ConfigError> {
        Validator::new("Hutchinson").positive("epsilon", epsilon)?;
        Ok(Self { epsilon, seed })
    }

    /// The diagonal estimate `u ⊙ (H u)` at `module`'s parameters for draw number `draw`
    /// (same seed and draw, same `u`: a resumed run draws what the uninterrupted one did).
    ///
    /// `gradient` returns the gradients of the loss at the parameters of the module it is
    /// given; it is called twice. The module's weights are not changed.
    pub fn estimate<M: Module, E>(&self, module: &M, draw: u64, gradient: impl FnMut(&M) -> Result<GradientsParams, E>) -> Result<GradientsParams, E> {
        let direction = rademacher(module, draw_seed(self.seed, draw));
        let hv = hessian_vector_product(module, &direction, self.epsilon, gradient)?;
        let mut product = ElementwiseProduct { a: &direction, b: &hv, out: GradientsParams::new() };
        module.visit(&mut product);
        Ok(product.out)
    }

    /// This estimator as a SophiaH [`HessianEstimator`]: `gradient(module, refresh)` returns the
    /// gradients of the loss on the refresh's batch (the same batch for both calls of one
    /// refresh); the draw is the refresh's update index.
    pub fn with_gradient<M, E, F>(self, gradient: F) -> HutchinsonEstimator<F>
    where
        M: Module,
        F: FnMut(&M, Refresh) -> Result<GradientsParams, E>,
    {
        HutchinsonEstimator { hutchinson: self, gradient }
    }
}

/// [`Hutchinson`] bound to a loss gradient: the estimator SophiaH refreshes from.
pub struct HutchinsonEstimator<F> {
    hutchinson: Hutchinson,
    gradient: F,
}

impl<M, E, F> HessianEstimator<M> for HutchinsonEstimator<F>
where
    M: Module,
    F: FnMut(&M, Refresh) -> Result<GradientsParams, E>,
{
    type Error = E;

    fn estimate(&mut self, module: &M, refresh: Refresh) -> Result<GradientsParams, E> {
        let gradient = &mut self.gradient;
        self.hutchinson.estimate(module, refresh.update as u64, |m| gradient(m, refresh))
    }
}

/// A Rademacher direction (entries ±1, each with probability ½) for every float parameter of
/// `module`, drawn on the host from `seed`, so it is the same on every backend.
pub fn rademacher<M: Module>(module: &M, seed: u64) -> GradientsParams {
    let mut draw = RademacherDraw { rng: ChaCha8Rng::seed_from_u64(seed), out: GradientsParams::new() };
    module.visit(&mut draw);
    draw.out
}

/// `H u` at `module`'s parameters by central differences of `gradient` with step `epsilon`;
/// `direction` holds `u` per parameter (parameters without an entry are not perturbed).
pub fn hessian_vector_product<M: Module, E>(
    module: &M,
    direction: &GradientsParams,
    epsilon: f64,
    mut gradient: impl FnMut(&M) -> Result<GradientsParams, E>,
) -> Result<GradientsParams, E> {
    let plus = gradient(&module.clone().map(&mut Perturb { direction, step: epsilon }))?;
    let minus = gradient(&module.clone().map(&mut Perturb { direction, step: -epsilon }))?;
    let mut difference = CentralDifference { plus, minus, epsilon, out: GradientsParams::new() };
    module.visit(&mut difference);
    Ok(difference.out)
}

struct RademacherDraw {
    rng: ChaCha8Rng,
    out: GradientsParams,
}

impl ModuleVisitor for RademacherDraw {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.shape();
        let signs: Vec<f32> = (0..shape.num_elements()).map(|_| if self.rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
        let device = value.device().inner();
        self.out.register(param.id, Tensor::<D>::from_data(TensorData::new(signs, shape), &device));
    }
}

struct Perturb<'a> {
    direction: &'a GradientsParams,
    step: f64,
}

impl ModuleMapper for Perturb<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(u) = self.direction.get::<D>(param.id) else {
            return param;
        };
        let step = self.step;
        param.map(|value| {
            let require_grad = value.is_require_grad();
            let moved = Tensor::from_inner(value.inner().add(u.mul_scalar(step)));
            if require_grad { moved.require_grad() } else { moved }
        })
    }
}

struct CentralDifference {
    plus: GradientsParams,
    minus: GradientsParams,
    epsilon: f64,
    out: GradientsParams,
}

impl ModuleVisitor for CentralDifference {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let (Some(plus), Some(minus)) = (self.plus.remove::<D>(param.id), self.minus.remove::<D>(param.id)) {
            self.out.register(param.id, plus.sub(minus).div_scalar(2.0 * self.epsilon));
        }
    }
}

struct ElementwiseProduct<'a> {
    a: &'a GradientsParams,
    b: &'a GradientsParams,
    out: GradientsParams,
}

impl ModuleVisitor for ElementwiseProduct<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let (Some(a), Some(b)) = (self.a.get::<D>(param.id), self.b.get::<D>(param.id)) {
            self.out.register(param.id, a.mul(b));
        }
    }
}
