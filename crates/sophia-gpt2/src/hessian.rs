//! The sampled-label Hessian step of SophiaG (Gauss-Newton-Bartlett estimator).
//!
//! For a batch of inputs: run the forward pass, sample one label per position from the model's
//! own `softmax(logits)`, take the mean cross-entropy against the sampled labels and
//! back-propagate. The resulting gradient `ĝ` is what
//! [`SophiaOptimizer::refresh`](sophia_optim::SophiaOptimizer::refresh) squares into
//! `h ← β₂ h + (1 − β₂) ĝ ⊙ ĝ` (Liu et al. 2023, Algorithm 2; official `train_sophiag.py`).
//!
//! Labels are drawn with the Gumbel-max trick on detached logits,
//! `argmax(logits + G)`, `G = −log(−log U)`, `U ~ Uniform(0, 1)`: an exact sample of the
//! categorical distribution that needs one noise tensor the size of the logits and never a
//! one-hot. The noise comes from the device generator, seeded from `(seed, draw)` before every
//! draw, so the same draw gives the same labels, also after a resume. Seeding and drawing hold
//! one process-wide lock, so threads sharing a device (Burn's multi-device training workers)
//! each get the noise of their own draw.
//!
//! **Dropout**: the step runs the model as it is given. A model in training mode with
//! `dropout > 0` estimates the Hessian of the same stochastic loss that is optimized, as the
//! official loop does (it calls the model in training mode); pass `model.valid()`-style
//! inference copies for a dropout-free estimate. GPT-2 pre-training uses `dropout = 0`.

use std::sync::{Mutex, PoisonError};

use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Int, Tensor};

use crate::error::ModelError;
use crate::model::{Gpt2, cross_entropy};

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
        /// Held from seeding the device generator until the noise is drawn from it.
        static GENERATOR: Mutex<()> = Mutex::new(());
        let logits = logits.detach();
        let uniform = {
            let _generator = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
            logits.device().seed(self.seed_of(draw));
            logits.random_like(Distribution::Uniform(0.0, 1.0))
        };
        let gumbel = uniform.log().neg().log().neg();
        logits.add(gumbel).argmax(2).squeeze_dim::<2>(2)
    }

    /// `ĝ`: the gradient of the mean cross-entropy of `model` on `inputs` `[batch, seq]`
    /// against labels sampled from the model itself. The model's weights are not changed.
    pub fn gradients(&self, model: &Gpt2, inputs: Tensor<2, Int>, draw: u64) -> Result<SampledLabelGradients, ModelError> {
        self.gradients_of_share(model, inputs, draw, 1)
    }

    /// `ĝ / shares`: [`gradients`](Self::gradients) for one of `shares` equal parts of a batch
    /// split across devices, so that the sum of the parts' results is `ĝ` of the whole batch
    /// (the mean cross-entropy of the whole batch is the mean of the parts' means). The
    /// returned `loss` is the part's own mean cross-entropy, not divided.
    pub fn gradients_of_share(&self, model: &Gpt2, inputs: Tensor<2, Int>, draw: u64, shares: usize) -> Result<SampledLabelGradients, ModelError> {
        let logits = model.forward(inputs)?;
        let labels = self.sample_labels(logits.clone(), draw);
        let loss = cross_entropy(logits, labels.clone());
        let grads = GradientsParams::from_grads(share_of(loss.clone(), shares).backward(), model);
        Ok(SampledLabelGradients { grads, labels, loss: loss.detach() })
    }

    /// `ĝ` for fixed labels (the golden tests check this against the reference).
    pub fn gradients_for_labels(model: &Gpt2, inputs: Tensor<2, Int>, labels: Tensor<2, Int>) -> Result<GradientsParams, ModelError> {
        let loss = cross_entropy(model.forward(inputs)?, labels);
        Ok(GradientsParams::from_grads(loss.backward(), model))
    }

    fn seed_of(&self, draw: u64) -> u64 {
        // SplitMix64 finaliser: neighbouring draws get unrelated seeds.
        let mut z = self.seed ^ draw.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `loss / shares`: the part of a batch-mean loss that one of `shares` equal parts contributes.
pub fn share_of(loss: Tensor<1>, shares: usize) -> Tensor<1> {
    if shares == 1 { loss } else { loss.div_scalar(shares as f64) }
}
