//! rise-stages: the RISE stage kinds for the rise engine, and the pure-Rust pieces of the method.
//!
//! - [`rollout`]: the trajectory data model and its JSON Lines shards;
//! - [`select`]: best-of-N relabel selection and the degenerate-sample filter (RISE.md §4);
//! - [`examples`]: reward-weighted training examples (RISE.md §5);
//! - [`metrics`]: every evaluation metric of RISE.md §6 with Wilson intervals;
//! - [`report`]: the markdown / PNG / JSON experiment report.
//!
//! No torch here: the torch kinds' parameter schemas live in this crate so that `rise plan` can
//! validate a pipeline without libtorch, while their implementations live in `rise-worker`.
pub mod examples;
pub mod format;
pub mod kinds;
pub mod metrics;
pub mod params;
pub mod report;
pub mod rollout;
pub mod select;
pub mod sharding;

use kinds::KindStage;

/// Re-exported so that rise-worker implements stages against the same engine types.
pub use rise_engine;

/// Registers every RISE kind: the in-process kinds with their implementations, the torch kinds
/// as schemas (rise-worker replaces them with implementations in its own registry).
pub fn register_all(registry: &mut rise_engine::Registry) {
    registry.register(Box::new(KindStage::with_run(
        &kinds::dataset::SCHEMA,
        kinds::dataset::run,
    )));
    registry.register(Box::new(KindStage::with_run(
        &kinds::grade::SCHEMA,
        kinds::grade::run,
    )));
    registry.register(Box::new(KindStage::with_run(
        &kinds::report::SCHEMA,
        kinds::report::run,
    )));
    registry.register(Box::new(KindStage::with_run(
        &sharding::SAMPLE_MERGE,
        sharding::run_rollouts_merge,
    )));
    registry.register(Box::new(KindStage::with_run(
        &sharding::RELABEL_MERGE,
        sharding::run_rollouts_merge,
    )));
    registry.register(Box::new(KindStage::with_run(
        &sharding::EVALUATE_MERGE,
        sharding::run_evaluate_merge,
    )));
    for schema in kinds::WORKER_KINDS {
        registry.register(Box::new(KindStage::new(schema)));
    }
}
