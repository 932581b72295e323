#![warn(missing_docs)]
//! Benchmarks of sophia-burn. Every benchmark writes JSON first and plots from the JSON, so
//! results measured on one machine can be plotted anywhere.
//!
//! - [`step`]: the time of one optimizer step of SophiaG, SophiaH, AdamW, Lion, Tiger and Muon
//!   on GPT-2-shaped parameter sets, measured in one process and reported as ratios to AdamW.

pub mod step;
