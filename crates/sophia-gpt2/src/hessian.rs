//! The sampled-label Hessian step of SophiaG (Gauss-Newton-Bartlett estimator).
//!
//! For a batch of inputs: run the forward pass, sample one label per position from the model's
//! own `softmax(logits)`, take the mean cross-entropy against the sampled labels and
//! back-propagate. The resulting gradient `ĝ` is what
//! [`SophiaOptimizer::refresh`](sophia_optim::SophiaOptimizer::refresh) squares into
//! `h ← β₂ h + (1 − β₂) ĝ ⊙ ĝ` (Liu et al. 2023, Algorithm 2; official `train_sophiag.py`).
//!
//! Labels are drawn by inverse transform sampling on detached logits: one uniform `u` per
//! position, the label is the first token whose cumulative probability exceeds `u` (an exact
//! sample of the categorical distribution; see [`loss`](crate::loss), which on the CPU draws it
//! inside the LM head's fused loss, from logits computed once). The uniforms are drawn on the
//! host from `(seed, draw)`, so the same draw gives the same labels on every backend and after a
//! resume, whichever thread draws.
//!
//! **Dropout**: the step runs the model as it is given. A model in training mode with
//! `dropout > 0` estimates the Hessian of the same stochastic loss that is optimized, as the
//! official loop does (it calls the model in training mode); pass `model.valid()`-style
//! inference copies for a dropout-free estimate. GPT-2 pre-training uses `dropout = 0`.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sophia_optim::{HessianEstimator, Refresh, draw_seed};

use crate::Kernels;
use crate::error::ModelError;
use crate::loss::sample_labels_with;
use crate::model::Gpt2;

/// Draws labels from the model and turns them into the gradient SophiaG refreshes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledLabelHessian {
    seed: u64,
}

/// The result of one sampled-label step.
pub struct SampledLabelGradients {
    /// `ĝ`, keyed by the model's parameters.
    pub grads: GradientsParams,
    /// The labels that were drawn, `[batch, seq]`.
    pub labels: Tensor<2, Int>,
    /// Mean cross-entropy against the sampled labels (a scalar tensor, not yet read).
    pub loss: Tensor<1>,
}

impl SampledLabelHessian {
    /// A sampler whose draws derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// Labels `[batch, seq]` drawn from `softmax(logits)` for `logits` `[batch, seq, vocab]`.
    pub fn sample_labels(&self, logits: Tensor<3>, draw: u64) -> Tensor<2, Int> {
        self.sample_labels_with(Kernels::default(), logits, draw)
    }

    /// [`sample_labels`](Self::sample_labels) with the implementation `kernels` asks for (the
    /// same uniforms either way).
    pub fn sample_labels_with(&self, kernels: Kernels, logits: Tensor<3>, draw: u64) -> Tensor<2, Int> {
        let [batch, seq, _] = logits.dims();
        let uniforms = self.uniforms([batch, seq], draw, &logits.device());
        sample_labels_with(kernels, logits, uniforms)
    }

    /// The uniforms `[batch, seq]` of draw number `draw`, on `device`'s inner device: one per
    /// position, drawn on the host.
    pub fn uniforms(&self, [batch, seq]: [usize; 2], draw: u64, device: &Device) -> Tensor<2> {
        let mut rng = ChaCha8Rng::seed_from_u64(draw_seed(self.seed, draw));
        let uniforms: Vec<f32> = (0..batch * seq).map(|_| rng.random::<f32>()).collect();
        Tensor::<2>::from_data(TensorData::new(uniforms, [batch, seq]), &device.clone().inner())
    }

    /// `ĝ`: the gradient of the mean cross-entropy of `model` on `inputs` `[batch, seq]`
    /// against labels sampled from the model itself. The model's weights are not changed.
    pub fn gradients(&self, model: &Gpt2, inputs: Tensor<2, Int>, draw: u64) -> Result<SampledLabelGradients, ModelError> {
        let uniforms = self.uniforms(inputs.dims(), draw, &inputs.device());
        let (loss, labels) = model.loss_on_sampled_labels(inputs, uniforms)?;
        let grads = GradientsParams::from_grads(loss.clone().backward(), model);
        Ok(SampledLabelGradients { grads, labels, loss: loss.detach() })
    }

    /// `ĝ` for fixed labels (the golden tests check this against the reference).
    pub fn gradients_for_labels(model: &Gpt2, inputs: Tensor<2, Int>, labels: Tensor<2, Int>) -> Result<GradientsParams, ModelError> {
        Ok(GradientsParams::from_grads(model.loss(inputs, labels)?.backward(), model))
    }
}

/// SophiaG's Hessian estimator for a GPT-2: `ĝ` on the batch that `inputs` returns for the
/// refresh, with the labels of draw number `refresh.update`, so a resumed run draws what the
/// uninterrupted run drew.
///
/// `M` is the GPT-2 itself or any module that holds one ([`AsRef<Gpt2>`]), e.g. a wrapper
/// trained by Burn's `Learner`; its parameter ids are the GPT-2's.
pub struct SampledLabels<F> {
    labels: SampledLabelHessian,
    inputs: F,
}

impl<F> SampledLabels<F> {
    /// Labels drawn from `seed`; `inputs(refresh)` gives the `[batch, seq]` token ids of a
    /// refresh.
    pub fn new(seed: u64, inputs: F) -> Self {
        Self { labels: SampledLabelHessian::new(seed), inputs }
    }
}

impl<M, E, F> HessianEstimator<M> for SampledLabels<F>
where
    M: AsRef<Gpt2>,
    E: From<ModelError>,
    F: FnMut(Refresh) -> Result<Tensor<2, Int>, E>,
{
    type Error = E;

    fn estimate(&mut self, module: &M, refresh: Refresh) -> Result<GradientsParams, E> {
        let inputs = (self.inputs)(refresh)?;
        Ok(self.labels.gradients(module.as_ref(), inputs, refresh.update as u64)?.grads)
    }
}
