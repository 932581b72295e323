//! Parameter initialisation as in GPT-2 / nanoGPT: `N(0, 0.02)` weights, zero biases, unit
//! LayerNorm gains, and residual output projections scaled by `1/√(2·n_layer)` (or zero with
//! `zero_init_projections`).

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Distribution, Tensor};

use crate::config::Gpt2Config;

pub(crate) struct ParamInit {
    device: Device,
    std: f64,
    projection_std: f64,
    bias: bool,
    layer_norm_epsilon: f64,
}

impl ParamInit {
    pub(crate) fn new(config: &Gpt2Config, device: &Device) -> Self {
        let std = 0.02;
        let projection_std = if config.zero_init_projections { 0.0 } else { std / (2.0 * config.n_layer as f64).sqrt() };
        Self { device: device.clone(), std, projection_std, bias: config.bias, layer_norm_epsilon: config.layer_norm_epsilon }
    }

    pub(crate) fn normal<const D: usize>(&self, shape: [usize; D], std: f64) -> Param<Tensor<D>> {
        if std == 0.0 {
            return Param::from_tensor(Tensor::zeros(shape, &self.device));
        }
        Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, std), &self.device))
    }

    /// A Conv1D-layout linear layer `[d_in, d_out]`; `projection` marks a residual output.
    pub(crate) fn linear(&self, d_in: usize, d_out: usize, bias: bool, projection: bool) -> Linear {
        let std = if projection { self.projection_std } else { self.std };
        Linear { weight: self.normal([d_in, d_out], std), bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], &self.device))) }
    }

    pub(crate) fn embedding(&self, n: usize, d: usize) -> Embedding {
        Embedding { weight: self.normal([n, d], self.std) }
    }

    pub(crate) fn layer_norm(&self, d: usize) -> LayerNorm {
        LayerNormConfig::new(d).with_epsilon(self.layer_norm_epsilon).with_bias(self.bias).init(&self.device)
    }
}
