//! Tasks and graders for RISE: dataset loaders (GSM8K, MATH, any JSONL), a deterministic
//! synthetic arithmetic task, answer extraction and grading, and the RISE multi-turn
//! conversation format with per-token loss masks.
//!
//! This crate never links torch: the `rise` binary grades and renders with it directly.
//!
//! - [`task`]: [`Problem`] and the loaders.
//! - [`synthetic`]: GSM8K-shaped arithmetic word problems from a seed.
//! - [`grade`]: [`extract_boxed`], [`grade()`](grade::grade), rewards and verdicts.
//! - [`conversation`]: the RISE message sequence, chat templates and training masks.
#![deny(missing_docs)]

pub mod conversation;
mod error;
pub mod grade;
mod number;
pub mod synthetic;
pub mod task;

pub use error::DataError;
pub use grade::{extract_boxed, TaskKind, Verdict};
pub use task::Problem;
