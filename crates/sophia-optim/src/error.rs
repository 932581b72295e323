//! Typed configuration errors shared by every optimizer, clipper and schedule of this crate.

use core::fmt;

/// A hyperparameter was rejected when a config was validated.
///
/// The message names the component, the field, the offending value and the allowed range, so a
/// user can fix the config without reading the source:
///
/// ```text
/// SophiaG: `beta_1` = 1.5 is invalid: expected a number in [0, 1)
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{component}: `{field}` = {value} is invalid: expected {expected}")]
pub struct ConfigError {
    /// The component whose config was rejected (`SophiaG`, `Tiger`, ...).
    pub component: &'static str,
    /// The config field that holds the bad value.
    pub field: &'static str,
    /// The bad value, as written by the user.
    pub value: String,
    /// The allowed range, in words.
    pub expected: &'static str,
}

/// Field-by-field checks for one component's config.
///
/// Every check is written so that NaN fails it (comparisons with NaN are false).
pub struct Validator {
    component: &'static str,
}

impl Validator {
    /// Checks for the config of `component` (named in every error).
    pub fn new(component: &'static str) -> Self {
        Self { component }
    }

    fn error(&self, field: &'static str, value: impl fmt::Display, expected: &'static str) -> ConfigError {
        ConfigError { component: self.component, field, value: value.to_string(), expected }
    }

    /// `0 <= value < 1`: EMA coefficients (betas).
    pub fn unit_interval(&self, field: &'static str, value: f64) -> Result<(), ConfigError> {
        if (0.0..1.0).contains(&value) { Ok(()) } else { Err(self.error(field, value, "a number in [0, 1)")) }
    }

    /// `0 < value < inf`.
    pub fn positive(&self, field: &'static str, value: f64) -> Result<(), ConfigError> {
        if value > 0.0 && value.is_finite() { Ok(()) } else { Err(self.error(field, value, "a finite number > 0")) }
    }

    /// `0 <= value < inf`.
    pub fn non_negative(&self, field: &'static str, value: f64) -> Result<(), ConfigError> {
        if value >= 0.0 && value.is_finite() { Ok(()) } else { Err(self.error(field, value, "a finite number >= 0")) }
    }

    /// A count that must be at least one.
    pub fn at_least_one(&self, field: &'static str, value: usize) -> Result<(), ConfigError> {
        if value >= 1 { Ok(()) } else { Err(self.error(field, value, "an integer >= 1")) }
    }

    /// A custom condition with its own wording of the allowed range.
    pub fn require(&self, ok: bool, field: &'static str, value: impl fmt::Display, expected: &'static str) -> Result<(), ConfigError> {
        if ok { Ok(()) } else { Err(self.error(field, value, expected)) }
    }
}
