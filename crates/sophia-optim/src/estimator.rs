//! Hessian estimators: what a Sophia refresh folds into its diagonal Hessian EMA `h`.
//!
//! A [`Sophia`](crate::Sophia) optimizer owns *when* it refreshes and *how* the estimate is
//! clipped and folded into `h` (see [`SophiaOptimizer::step`](crate::SophiaOptimizer::step)); an
//! estimator only says *what* the estimate is, for a module at the moment the optimizer asks:
//!
//! | estimator | estimate | variant |
//! |---|---|---|
//! | Gauss-Newton-Bartlett (sampled labels, e.g. `sophia_gpt2::SampledLabels`) | `ĝ`, the gradient of the loss on labels drawn from the model (squared by the optimizer) | SophiaG |
//! | [`Hutchinson`](crate::Hutchinson) | `u ⊙ (H u)`, `u` Rademacher | SophiaH |
//!
//! The optimizer calls [`HessianEstimator::estimate`] at most once per update, with the
//! [`Refresh`] that says which update it belongs to, so an estimator can derive its batch and
//! its random draw from it and a resumed run draws what the uninterrupted run drew.

use burn::optim::GradientsParams;

/// The refresh an estimate is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// Index (from 0) of the update the refresh belongs to: SophiaG refreshes right after that
    /// update (official training loop), SophiaH right before it (paper, Algorithm 3).
    pub update: usize,
}

/// Produces the refresh input of a Sophia optimizer for a module of type `M`.
///
/// The returned gradients are keyed by the module's parameters; every parameter the optimizer
/// updates must have an entry (the optimizer refuses an estimate that misses some).
pub trait HessianEstimator<M> {
    /// Why an estimate could not be made.
    type Error;

    /// The estimate for `module` (the weights the optimizer holds at the refresh).
    fn estimate(&mut self, module: &M, refresh: Refresh) -> Result<GradientsParams, Self::Error>;
}

impl<M, T: HessianEstimator<M> + ?Sized> HessianEstimator<M> for &mut T {
    type Error = T::Error;

    fn estimate(&mut self, module: &M, refresh: Refresh) -> Result<GradientsParams, Self::Error> {
        (**self).estimate(module, refresh)
    }
}

impl<M, T: HessianEstimator<M> + ?Sized> HessianEstimator<M> for Box<T> {
    type Error = T::Error;

    fn estimate(&mut self, module: &M, refresh: Refresh) -> Result<GradientsParams, Self::Error> {
        (**self).estimate(module, refresh)
    }
}

/// `f(module, refresh)` as an estimator, for estimates computed by a closure.
pub struct EstimateFn<F>(pub F);

impl<M, E, F: FnMut(&M, Refresh) -> Result<GradientsParams, E>> HessianEstimator<M> for EstimateFn<F> {
    type Error = E;

    fn estimate(&mut self, module: &M, refresh: Refresh) -> Result<GradientsParams, E> {
        (self.0)(module, refresh)
    }
}

/// The seed of random draw number `draw` of a stream seeded with `seed`: the SplitMix64
/// finaliser of `seed ^ (draw + φ)`, so neighbouring draws get unrelated seeds. Every estimator
/// of the workspace derives its per-refresh randomness with it.
pub fn draw_seed(seed: u64, draw: u64) -> u64 {
    let mut z = seed ^ draw.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
