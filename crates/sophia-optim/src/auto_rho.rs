//! Automatic `ρ` for SophiaG: keep the win rate in a band by adjusting `ρ` between refreshes.
//!
//! Sophia's clipping scale `ρ` decides how many coordinates take a Newton-like step
//! (`|m| / (ρ·bs·h) < 1`, a "win") and how many fall back to sign momentum. The official
//! guidance is to tune `ρ` so that the win rate stays between 0.1 and 0.5; the right `ρ`
//! depends on the model, the batch and the phase of training. [`AutoRho`] measures the win rate
//! over the updates between two refreshes and, at each refresh, moves `ρ` toward the band in
//! log space:
//!
//! ```text
//! w  = wins / coordinates over the updates since the last refresh
//! w* = clamp(w, low, high)                       (w inside the band: no change)
//! ρ ← ρ · clamp((w* / w)^gain, 1/max_step, max_step)    (w = 0: ρ · max_step)
//! ```
//!
//! The win rate grows with `ρ` (a larger `ρ` enlarges the preconditioner `ρ·bs·h`), so a rate
//! below the band raises `ρ` and one above it lowers `ρ`; the step is bounded, so one noisy
//! measurement moves `ρ` by at most `max_step`. The current `ρ` is part of the optimizer state,
//! so a resumed run continues with the `ρ` it had.
//!
//! Two consequences to keep in mind when comparing it with a fixed `ρ`: a larger `ρ` shrinks
//! every step that is not clipped, so the best learning rate with automatic `ρ` is generally not
//! the best with a fixed one (tune it again); and the win rate is counted over all coordinates,
//! so the largest tensors steer `ρ` (in a small GPT-2 with the 50257-token vocabulary, the tied
//! embedding is 94% of the coordinates, and `ρ` rises until the embedding's win rate nears the
//! band while the blocks' matrices are already far inside it; see the project's results page).

use crate::error::{ConfigError, Validator};

/// The controller's settings; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoRho {
    /// Lower end of the win-rate band.
    pub low: f64,
    /// Upper end of the win-rate band.
    pub high: f64,
    /// Exponent of the correction: 1 would jump to where a win rate proportional to `ρ` would
    /// land in one refresh; smaller is smoother.
    pub gain: f64,
    /// The largest factor `ρ` changes by at one refresh.
    pub max_step: f64,
}

impl Default for AutoRho {
    /// The official guidance's band (0.1 to 0.5), half the log-distance per refresh, at most
    /// doubling or halving.
    fn default() -> Self {
        Self { low: 0.1, high: 0.5, gain: 0.5, max_step: 2.0 }
    }
}

impl AutoRho {
    /// Check the settings; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("auto rho");
        v.require(self.low > 0.0 && self.low < 1.0, "low", self.low, "a number in (0, 1)")?;
        v.require(self.high > self.low && self.high <= 1.0, "high", self.high, "a number in (low, 1]")?;
        v.require(self.gain > 0.0 && self.gain <= 1.0, "gain", self.gain, "a number in (0, 1]")?;
        v.require(self.max_step > 1.0 && self.max_step.is_finite(), "max_step", self.max_step, "a finite number > 1")
    }

    /// The `ρ` after a refresh at which the win rate since the previous one was `win_rate`.
    pub fn next(&self, rho: f64, win_rate: f64) -> f64 {
        let factor = if win_rate <= 0.0 || !win_rate.is_finite() {
            self.max_step
        } else {
            (win_rate.clamp(self.low, self.high) / win_rate).powf(self.gain).clamp(1.0 / self.max_step, self.max_step)
        };
        rho * factor
    }
}
