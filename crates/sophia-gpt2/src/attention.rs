//! Causal self-attention in the Hugging Face GPT-2 layout, with the modern options of
//! [`Gpt2Config`]: grouped-query attention, rotary position embeddings and QK-norm. GPT-2's own
//! attention goes through [`causal_attention_with`], one fused kernel each way on flex.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::Kernels;
use crate::config::Gpt2Config;
use crate::init::ParamInit;
use crate::precision::Precision;

/// Causal self-attention: fused `c_attn` (queries, keys, values side by side, Conv1D layout
/// `[in, out]`), causal softmax, output projection `c_proj`.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// Fused query/key/value projection, `[n_embd, (n_head + 2·n_kv_head)·head_dim]`.
    pub c_attn: Linear,
    /// Output projection `[n_embd, n_embd]`.
    pub c_proj: Linear,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_head: usize,
    n_kv_head: usize,
    rope_theta: Option<f64>,
    qk_norm_epsilon: Option<f64>,
    #[module(skip)]
    pub(crate) precision: Precision,
    #[module(skip)]
    pub(crate) kernels: Kernels,
}

impl CausalSelfAttention {
    pub(crate) fn new(config: &Gpt2Config, init: &ParamInit) -> Self {
        let c = config.n_embd;
        let qkv = (config.n_head + 2 * config.kv_heads()) * config.head_dim();
        Self {
            c_attn: init.linear(c, qkv, config.bias, false),
            c_proj: init.linear(c, c, config.bias, true),
            attn_dropout: DropoutConfig::new(config.dropout).init(),
            resid_dropout: DropoutConfig::new(config.dropout).init(),
            n_head: config.n_head,
            n_kv_head: config.kv_heads(),
            rope_theta: config.rope.then_some(config.rope_theta),
            qk_norm_epsilon: config.qk_norm.then_some(config.layer_norm_epsilon),
            precision: Precision::F32,
            kernels: Kernels::default(),
        }
    }

    /// `x`: `[batch, seq, n_embd]` → `[batch, seq, n_embd]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let qkv = self.precision.linear(self.kernels, &self.c_attn, x);
        let y = if self.is_plain() { causal_attention_with(self.kernels, qkv, self.n_head) } else { self.modern(qkv) };
        self.resid_dropout.forward(self.precision.linear(self.kernels, &self.c_proj, y))
    }

    /// GPT-2's own attention: every head its own keys and values, no rotary embedding, no
    /// QK-norm, no attention dropout, f32 products ([`causal_attention_with`]).
    fn is_plain(&self) -> bool {
        self.n_kv_head == self.n_head && self.rope_theta.is_none() && self.qk_norm_epsilon.is_none() && self.attn_dropout.prob == 0.0 && self.precision == Precision::F32
    }

    /// Attention with the modern options (grouped-query attention, rotary embeddings, QK-norm),
    /// attention dropout or bf16 products: Burn's tensor operations.
    fn modern(&self, qkv: Tensor<3>) -> Tensor<3> {
        let (mut q, mut k, v) = split_heads(qkv, self.n_head, self.n_kv_head);
        if let Some(eps) = self.qk_norm_epsilon {
            q = rms_norm(q, eps);
            k = rms_norm(k, eps);
        }
        if let Some(theta) = self.rope_theta {
            let [_, _, seq, head_dim] = q.dims();
            let (cos, sin) = rotary_tables(seq, head_dim, theta, &q.device());
            q = rotate(q, cos.clone(), sin.clone());
            k = rotate(k, cos, sin);
        }
        let groups = self.n_head / self.n_kv_head;
        let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
        merge_heads(attend(q, k, v, self.precision, Some(&self.attn_dropout)))
    }
}

/// Causal self-attention of the fused projection's output `qkv` `[batch, seq, 3·C]` (the
/// queries, keys and values of `heads` heads of `C / heads` side by side) →
/// `[batch, seq, C]`, the heads side by side:
///
/// ```text
/// O_h = softmax(q_h·k_hᵀ/√d + M)·v_h,   M[i, j] = −∞ for a key j after the query i
/// ```
///
/// (Vaswani et al. 2017), with the implementation `kernels` asks for: Burn's tensor operations,
/// or on flex (this crate's `flex` feature) one fused kernel forward and one backward that read
/// the heads in place from `qkv` and keep the probabilities for the backward pass.
///
/// # Panics
/// When `qkv`'s last dimension is not `3·heads·d` for a whole `d` (a shape bug of the caller,
/// like Burn's own shape checks).
pub fn causal_attention_with(kernels: Kernels, qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let columns = qkv.dims()[2];
    assert!(heads > 0 && columns.is_multiple_of(3 * heads), "causal attention: qkv has {columns} columns, not 3 × {heads} heads × a head width");
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused
        && crate::fused::applies(&qkv)
        && let Some(y) = crate::fused::attention::causal_attention(qkv.clone(), heads)
    {
        return y;
    }
    let _ = kernels;
    let (q, k, v) = split_heads(qkv, heads, heads);
    merge_heads(attend(q, k, v, Precision::F32, None))
}

/// `qkv` `[batch, seq, (heads + 2·kv_heads)·d]` → `q` `[batch, heads, seq, d]`, `k` and `v`
/// `[batch, kv_heads, seq, d]`.
fn split_heads(qkv: Tensor<3>, heads: usize, kv_heads: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [batch, seq, columns] = qkv.dims();
    let head_dim = columns / (heads + 2 * kv_heads);
    let part = |start: usize, count: usize| qkv.clone().narrow(2, start * head_dim, count * head_dim).reshape([batch, seq, count, head_dim]).swap_dims(1, 2);
    (part(0, heads), part(heads, kv_heads), part(heads + kv_heads, kv_heads))
}

/// `[batch, heads, seq, d]` → `[batch, seq, heads·d]`.
fn merge_heads(y: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = y.dims();
    y.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// `softmax(q·kᵀ/√d + M)·v` per head, the probabilities through `dropout` where there is one.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, precision: Precision, dropout: Option<&Dropout>) -> Tensor<4> {
    let [batch, heads, seq, head_dim] = q.dims();
    let scores = precision.matmul(q, k.swap_dims(2, 3)).div_scalar((head_dim as f64).sqrt());
    let future = causal_mask(seq, &scores.device()).unsqueeze::<4>().expand([batch, heads, seq, seq]);
    let weights = softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3);
    let weights = match dropout {
        Some(dropout) => dropout.forward(weights),
        None => weights,
    };
    precision.matmul(weights, v)
}

/// `true` where a key position lies in the future of the query position (`key > query`).
fn causal_mask(seq: usize, device: &Device) -> Tensor<2, Bool> {
    Tensor::<2, Bool>::tril_mask([seq, seq], 0, device)
}

/// Each key/value head serves `groups` consecutive query heads.
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv, seq, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([batch, kv, groups, seq, head_dim]).reshape([batch, kv * groups, seq, head_dim])
}

/// Parameter-free RMS normalisation over the last dimension.
fn rms_norm(x: Tensor<4>, epsilon: f64) -> Tensor<4> {
    let rms = x.clone().square().mean_dim(3).add_scalar(epsilon).sqrt();
    x.div(rms)
}

/// Cosine and sine of the rotary angles `t · θ^(−2i/d)`, `[1, 1, seq, head_dim / 2]`.
fn rotary_tables(seq: usize, head_dim: usize, theta: f64, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let angles: Vec<f64> = (0..seq).flat_map(|t| (0..half).map(move |i| t as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64))).collect();
    let table = |f: fn(f64) -> f64| {
        let values: Vec<f32> = angles.iter().map(|&a| f(a) as f32).collect();
        Tensor::<4>::from_data(TensorData::new(values, [1, 1, seq, half]), device)
    };
    (table(f64::cos), table(f64::sin))
}

/// Rotate the two halves of each head (GPT-NeoX / Llama convention).
fn rotate(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(vec![x1.clone().mul(cos.clone()).sub(x2.clone().mul(sin.clone())), x2.mul(cos).add(x1.mul(sin))], 3)
}
