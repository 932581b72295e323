//! The position-wise MLP of a GPT-2 block.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use crate::Kernels;
use crate::activation::gelu_with;
use crate::config::{Activation, Gpt2Config};
use crate::init::ParamInit;
use crate::precision::Precision;

/// `c_proj(act(c_fc(x)))` with a 4× hidden width.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[n_embd, 4·n_embd]`.
    pub c_fc: Linear,
    /// `[4·n_embd, n_embd]`.
    pub c_proj: Linear,
    dropout: Dropout,
    relu_squared: bool,
    #[module(skip)]
    pub(crate) precision: Precision,
    #[module(skip)]
    pub(crate) kernels: Kernels,
}

impl Mlp {
    pub(crate) fn new(config: &Gpt2Config, init: &ParamInit) -> Self {
        let c = config.n_embd;
        Self {
            c_fc: init.linear(c, 4 * c, config.bias, false),
            c_proj: init.linear(4 * c, c, config.bias, true),
            dropout: DropoutConfig::new(config.dropout).init(),
            relu_squared: config.activation == Activation::ReluSquared,
            precision: Precision::F32,
            kernels: Kernels::default(),
        }
    }

    /// `[batch, seq, n_embd]` → `[batch, seq, n_embd]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = self.precision.linear(self.kernels, &self.c_fc, x);
        let hidden = if self.relu_squared { relu(hidden).square() } else { gelu_with(self.kernels, hidden) };
        self.dropout.forward(self.precision.linear(self.kernels, &self.c_proj, hidden))
    }
}
