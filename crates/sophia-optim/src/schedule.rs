//! Linear warmup followed by cosine decay, as nanoGPT's `get_lr`.
//!
//! For iteration `t` (0-based), peak `η_max`, floor `η_min`, `W` warmup and `T` decay iterations:
//!
//! ```text
//! t < W:       η = η_max · (t + 1) / (W + 1)               (nanoGPT)
//!              η = η₀ + (η_max − η₀) · t / W                (with an explicit initial lr η₀)
//! W ≤ t ≤ T:   η = η_min + ½ (1 + cos(π (t − W) / (T − W))) (η_max − η_min)
//! t > T:       η = η_min
//! ```

use burn::config::Config;
use burn::optim::RecordState;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

use crate::LearningRate;
use crate::error::{ConfigError, Validator};

/// Configuration of [`WarmupCosine`].
#[derive(Config, Debug, PartialEq)]
pub struct WarmupCosineConfig {
    /// Peak learning rate `η_max`, reached at the end of the warmup.
    pub peak_lr: f64,
    /// Number of warmup iterations `W`.
    pub warmup_iters: usize,
    /// Iteration `T` at which the cosine reaches `min_lr` (must exceed `warmup_iters`).
    pub decay_iters: usize,
    /// Floor `η_min` after the decay.
    #[config(default = 0.0)]
    pub min_lr: f64,
    /// Explicit learning rate `η₀` at iteration 0 ("initial_lr → peak_lr" warmup). `None` gives
    /// nanoGPT's warmup, which starts at `η_max / (W + 1)`.
    #[config(default = "None")]
    pub initial_lr: Option<f64>,
}

/// The warmup + cosine schedule, a Burn [`LrScheduler`]. Each [`step`](LrScheduler::step)
/// returns the learning rate of the next iteration, starting with iteration 0.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupCosine {
    config: WarmupCosineConfig,
    /// Iterations already handed out.
    next_iter: usize,
}

#[derive(RecordState, Clone, Debug)]
struct WarmupCosineState {
    next_iter: usize,
}

impl WarmupCosineConfig {
    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("WarmupCosine");
        v.positive("peak_lr", self.peak_lr)?;
        v.require(self.min_lr >= 0.0 && self.min_lr <= self.peak_lr, "min_lr", self.min_lr, "a number in [0, peak_lr]")?;
        v.require(self.decay_iters > self.warmup_iters, "decay_iters", self.decay_iters, "an integer > warmup_iters")?;
        if let Some(initial) = self.initial_lr {
            v.non_negative("initial_lr", initial)?;
        }
        Ok(())
    }

    /// Build the schedule, or say which field is invalid.
    pub fn try_init(&self) -> Result<WarmupCosine, ConfigError> {
        self.validate()?;
        Ok(WarmupCosine { config: self.clone(), next_iter: 0 })
    }
}

impl WarmupCosine {
    /// The learning rate at iteration `it` (0-based), without advancing the schedule.
    pub fn lr_at(&self, it: usize) -> LearningRate {
        let c = &self.config;
        if it < c.warmup_iters {
            return match c.initial_lr {
                None => c.peak_lr * (it + 1) as f64 / (c.warmup_iters + 1) as f64,
                Some(initial) => initial + (c.peak_lr - initial) * it as f64 / c.warmup_iters as f64,
            };
        }
        if it > c.decay_iters {
            return c.min_lr;
        }
        let ratio = (it - c.warmup_iters) as f64 / (c.decay_iters - c.warmup_iters) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        c.min_lr + coeff * (c.peak_lr - c.min_lr)
    }

    /// The iteration the next [`step`](LrScheduler::step) returns the learning rate of.
    pub fn next_iter(&self) -> usize {
        self.next_iter
    }

    /// Continue from iteration `it` (e.g. when resuming a run from its step counter).
    pub fn seek(&mut self, it: usize) {
        self.next_iter = it;
    }
}

impl LrScheduler for WarmupCosine {
    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.next_iter);
        self.next_iter += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::from_state(&WarmupCosineState { next_iter: self.next_iter })
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(state) = record.into_state::<WarmupCosineState>() {
            self.next_iter = state.next_iter;
        }
    }
}
