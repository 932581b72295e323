//! Train a small MLP on a synthetic regression task with SophiaG through Burn's module
//! optimizer, and print the loss going down.
//!
//! The Gauss-Newton-Bartlett estimator works for any model with a likelihood: for a mean
//! squared error (a Gaussian likelihood with unit variance) the "sampled labels" are
//! `ŷ ~ N(f(x), 1)`, and `ĝ` is the gradient of `½·mean((f(x) − ŷ)²)` — the same recipe the
//! GPT-2 trainer uses with labels sampled from the softmax.
//!
//! ```text
//! cargo run -p sophia-examples --bin sophia_regression -- [steps]
//! ```

use anyhow::Context;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use sophia_optim::{EstimateFn, GlobalNormClip, Refresh, SophiaGConfig, WarmupCosineConfig};

#[derive(Module, Debug)]
struct Mlp {
    input: Linear,
    hidden: Linear,
    output: Linear,
    activation: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            input: LinearConfig::new(8, 64).init(device),
            hidden: LinearConfig::new(64, 64).init(device),
            output: LinearConfig::new(64, 1).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.activation.forward(self.input.forward(x));
        let x = self.activation.forward(self.hidden.forward(x));
        self.output.forward(x)
    }
}

/// y = sin(x · w) + 0.1·‖x‖² plus a little noise.
fn batch(batch_size: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let x = Tensor::<2>::random([batch_size, 8], Distribution::Normal(0.0, 1.0), device);
    let w = Tensor::<2>::from_floats([[0.5], [-1.0], [0.25], [0.8], [-0.3], [0.0], [1.2], [-0.7]], device);
    let y = x.clone().matmul(w).sin() + x.clone().square().sum_dim(1).mul_scalar(0.1);
    let noise = Tensor::<2>::random([batch_size, 1], Distribution::Normal(0.0, 0.05), device);
    (x, y + noise)
}

fn mse(prediction: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    prediction.sub(target).square().mean().mul_scalar(0.5)
}

fn main() -> anyhow::Result<()> {
    let steps: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().with_context(|| format!("steps must be a whole number, got `{arg}`"))?,
        None => 300,
    };
    let device = Device::flex().autodiff();
    device.seed(0);
    let batch_size = 64;

    let mut model = Mlp::new(&device);
    // bs = samples per optimizer step; refresh h every 10 updates.
    let mut optim = SophiaGConfig::new(batch_size).with_rho(0.05).with_weight_decay(0.0).try_init()?;
    let schedule = WarmupCosineConfig::new(3e-3, steps / 20, steps).with_min_lr(3e-4).try_init()?;
    let clip = GlobalNormClip::new(1.0)?;
    // Count clipped coordinates on every step (cheap at this size; a large model logs sparsely).
    optim.control().collect_win_rate(true);

    let (x_val, y_val) = batch(1024, &device);
    let val_loss = |model: &Mlp| mse(model.forward(x_val.clone()), y_val.clone()).into_scalar::<f64>();
    println!("step {:>5}  val loss {:.5}", 0, val_loss(&model));

    // Gauss-Newton-Bartlett for a Gaussian likelihood: labels sampled from N(f(x), 1) on a fresh
    // batch; the optimizer asks for it every k updates, clips it and folds it into h.
    let mut estimator = EstimateFn(|model: &Mlp, _: Refresh| {
        let (x, _) = batch(batch_size, &device);
        let prediction = model.forward(x);
        let sampled = prediction.clone().detach() + prediction.random_like(Distribution::Normal(0.0, 1.0));
        Ok::<_, std::convert::Infallible>(GradientsParams::from_grads(mse(prediction, sampled).backward(), model))
    });
    for step in 0..steps {
        let (x, y) = batch(batch_size, &device);
        let loss = mse(model.forward(x), y);
        let (grads, _norm) = clip.clip(&model, GradientsParams::from_grads(loss.backward(), &model));
        model = optim.step(schedule.lr_at(step), model, grads, &mut estimator)?;
        if (step + 1) % (steps / 10).max(1) == 0 {
            let stats = optim.stats();
            println!(
                "step {:>5}  val loss {:.5}  lr {:.2e}  win rate {:.3}  refreshes {}",
                step + 1,
                val_loss(&model),
                schedule.lr_at(step),
                stats.win_rate.unwrap_or(0.0),
                stats.refreshes
            );
        }
    }
    Ok(())
}
