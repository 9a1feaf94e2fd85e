//! Moved to `tests/support/pipeline.rs` (the one helper module of the integration tests). This
//! path remains only for tests/data_parallel.rs, whose owner is still at work on it; it goes
//! when that file says `mod support;`.
#[path = "../support/mod.rs"]
mod support;
pub use support::pipeline::*;
#[allow(unused_imports)]
pub use support::{describe, root};
