//! GPT-2 in the Hugging Face weight layout (Radford et al. 2019), device-generic.
//!
//! ```text
//! x = wte[ids] + wpe[0..T)                       (no wpe with rotary embeddings)
//! per block:  x += attn(ln_1(x));  x += mlp(ln_2(x))
//! logits = ln_f(x) · wteᵀ                        (or a separate lm_head)
//! ```

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm};
use burn::tensor::{Device, Int, Tensor};

use crate::Kernels;
use crate::attention::CausalSelfAttention;
use crate::config::Gpt2Config;
use crate::error::ModelError;
use crate::init::ParamInit;
use crate::loss::{cross_entropy_with, linear_cross_entropy_on_sampled_labels, linear_cross_entropy_with, sample_labels_with};
use crate::mlp::Mlp;
use crate::norm::layer_norm_with;
use crate::precision::Precision;

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: CausalSelfAttention,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl Block {
    /// The block with its LayerNorms in `kernels`' implementation and their `epsilon`.
    fn forward(&self, x: Tensor<3>, kernels: Kernels, epsilon: f64) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(layer_norm_with(kernels, &self.ln_1, epsilon, x));
        x.clone() + self.mlp.forward(layer_norm_with(kernels, &self.ln_2, epsilon, x))
    }
}

/// A separate (untied) LM head, stored `[vocab_size, n_embd]` as Hugging Face's `lm_head`.
#[derive(Module, Debug)]
pub struct LmHead {
    /// `[vocab_size, n_embd]`.
    pub weight: Param<Tensor<2>>,
}

/// The GPT-2 language model.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding `[vocab_size, n_embd]`, also the LM head unless `untied_head`.
    pub wte: Embedding,
    /// Learned position embedding `[block_size, n_embd]` (absent with rotary embeddings).
    pub wpe: Option<Embedding>,
    /// The transformer blocks.
    pub h: Vec<Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// Separate LM head with `untied_head`.
    pub lm_head: Option<LmHead>,
    dropout: Dropout,
    #[module(skip)]
    config: Gpt2Config,
    #[module(skip)]
    precision: Precision,
    #[module(skip)]
    kernels: Kernels,
}

impl Gpt2 {
    /// A freshly initialised model (GPT-2 / nanoGPT init) on `device`, from `seed`.
    pub fn new(config: &Gpt2Config, device: &Device, seed: u64) -> Result<Self, ModelError> {
        config.validate()?;
        device.seed(seed);
        let init = ParamInit::new(config, device);
        let model = Self {
            wte: init.embedding(config.vocab_size, config.n_embd),
            wpe: (!config.rope).then(|| init.embedding(config.block_size, config.n_embd)),
            h: (0..config.n_layer)
                .map(|_| Block {
                    ln_1: init.layer_norm(config.n_embd),
                    attn: CausalSelfAttention::new(config, &init),
                    ln_2: init.layer_norm(config.n_embd),
                    mlp: Mlp::new(config, &init),
                })
                .collect(),
            ln_f: init.layer_norm(config.n_embd),
            lm_head: config.untied_head.then(|| LmHead { weight: init.normal([config.vocab_size, config.n_embd], 0.02) }),
            dropout: DropoutConfig::new(config.dropout).init(),
            config: config.clone(),
            precision: Precision::F32,
            kernels: Kernels::default(),
        };
        Ok(model.with_stable_ids())
    }

    /// The same model computing its matrix products in `precision` (see
    /// [`precision`](crate::precision)); the weights are unchanged.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        for block in &mut self.h {
            block.attn.precision = precision;
            block.mlp.precision = precision;
        }
        self
    }

    /// The same model computing its matrix products, LayerNorms, loss, sampled labels and
    /// activations with `kernels` (see [`kernels`](crate::kernels)); the weights are unchanged.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        for block in &mut self.h {
            block.attn.kernels = kernels;
            block.mlp.kernels = kernels;
        }
        self
    }

    /// The implementation of the matrix products, the LayerNorms, the loss, the sampled labels
    /// and the activations.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The precision of the model's matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Logits `[batch, seq, vocab_size]` for token ids `[batch, seq]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>, ModelError> {
        let [batch, seq] = ids.dims();
        let x = self.hidden(ids)?;
        let logits = self.precision.product(self.kernels, x, self.head().transpose()).reshape([batch, seq, self.config.vocab_size]);
        Ok(match self.config.logit_softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        })
    }

    /// Mean cross-entropy of the next-token prediction: `forward(ids)` against `targets`.
    ///
    /// In f32 without a logit soft-cap the LM head and the loss are one operation
    /// ([`linear_cross_entropy_with`]): with the fused kernels one pass over chunks of the
    /// vocabulary each way, the `[batch × seq × vocab]` logits at most kept once for the
    /// backward pass.
    pub fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Result<Tensor<1>, ModelError> {
        if self.head_and_loss_together() {
            let [batch, seq] = targets.dims();
            return Ok(linear_cross_entropy_with(self.kernels, self.hidden(ids)?, self.head(), targets.reshape([batch * seq])));
        }
        Ok(cross_entropy_with(self.kernels, self.forward(ids)?, targets))
    }

    /// The loss against labels the model draws from its own predictions (SophiaG's sampled-label
    /// refresh): one label per position from `softmax(logits)` by inverse transform sampling with
    /// `uniforms` `[batch, seq]` (in `[0, 1)`, on the inner device), then [`loss`](Self::loss)
    /// against them. Where `loss`'s LM head and cross-entropy are one operation, the draw is in
    /// it too: the logits are computed once. Returns the loss and the labels `[batch, seq]`.
    pub fn loss_on_sampled_labels(&self, ids: Tensor<2, Int>, uniforms: Tensor<2>) -> Result<(Tensor<1>, Tensor<2, Int>), ModelError> {
        let [batch, seq] = ids.dims();
        if self.head_and_loss_together() {
            let (x, head) = (self.hidden(ids)?, self.head());
            let (loss, labels) = linear_cross_entropy_on_sampled_labels(self.kernels, x, head, uniforms.reshape([batch * seq]));
            return Ok((loss, labels.reshape([batch, seq])));
        }
        let logits = self.forward(ids)?;
        let labels = sample_labels_with(self.kernels, logits.clone(), uniforms);
        Ok((cross_entropy_with(self.kernels, logits, labels.clone()), labels))
    }

    /// Whether the LM head and the loss are one operation (f32 products, no logit soft-cap).
    fn head_and_loss_together(&self) -> bool {
        self.precision == Precision::F32 && self.config.logit_softcap.is_none()
    }

    /// The final LayerNorm's output `[batch × seq, n_embd]` for token ids `[batch, seq]`.
    fn hidden(&self, ids: Tensor<2, Int>) -> Result<Tensor<2>, ModelError> {
        let [batch, seq] = ids.dims();
        if seq > self.config.block_size {
            return Err(ModelError::SequenceTooLong { len: seq, block_size: self.config.block_size });
        }
        let mut x = self.wte.forward(ids);
        if let Some(wpe) = &self.wpe {
            x = x + wpe.weight.val().narrow(0, 0, seq).unsqueeze::<3>();
        }
        let mut x = self.dropout.forward(x);
        for block in &self.h {
            x = block.forward(x, self.kernels, self.config.layer_norm_epsilon);
        }
        Ok(layer_norm_with(self.kernels, &self.ln_f, self.config.layer_norm_epsilon, x).reshape([batch * seq, self.config.n_embd]))
    }

    /// The LM head's weight `[vocab_size, n_embd]`: `lm_head` when untied, else `wte`.
    fn head(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.wte.weight.val(),
        }
    }

    /// Number of parameters (the tied head counted once).
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl AsRef<Gpt2> for Gpt2 {
    fn as_ref(&self) -> &Gpt2 {
        self
    }
}
