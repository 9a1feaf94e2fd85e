//! Shared by rise-model's integration tests: the tiny HF fixtures, built on demand.
#![allow(dead_code)]
#[path = "fixtures.rs"]
mod fixtures;
pub use fixtures::*;

/// Where the device-independent tests run their model: `RISE_TEST_DEVICE` (`cpu`,
/// `cuda`, `cuda:N`), default CPU. CI has no GPU; `benches/gpu/run.sh` runs the same parity
/// and sampler tests with `RISE_TEST_DEVICE=cuda` on the lent card.
pub fn device() -> tch::Device {
    match std::env::var("RISE_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") => tch::Device::Cpu,
        Ok(name) => rise_model::parse_device(name)
            .unwrap_or_else(|| panic!("RISE_TEST_DEVICE={name:?}: expected cpu, cuda or cuda:N")),
    }
}

pub fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}
