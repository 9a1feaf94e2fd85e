//! rise-engine: pipelines of cached, content-addressed stages.
//!
//! A pipeline file ([`pipeline`]) declares stages and how their inputs are wired; the engine
//! validates it against a [`registry::Registry`] of stage kinds, computes each stage's cache key
//! ([`key`]) from its kind, version, resolved params, input artifact ids and seed, and runs only
//! the stages whose keys have no valid committed result ([`exec`]). It knows nothing of RISE or
//! torch: stage kinds come from other crates through the [`stage::Stage`] trait.
pub mod audit;
pub mod child;
pub mod content_hash;
pub mod error;
pub mod exec;
pub mod explain;
pub mod hash_cache;
pub mod job;
pub mod key;
pub mod lineage;
pub mod lock;
pub mod lookup;
pub mod orphans;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod registry;
pub mod resolve;
pub mod shell;
pub mod stage;

pub use protocol::{Event, StageSpec};
pub use registry::Registry;
pub use stage::{Execution, InputSpec, ParamError, Progress, Stage, StageContext, StageError};
