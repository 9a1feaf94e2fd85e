//! Shared by rise-model's integration tests: the tiny HF fixtures, built on demand.
#![allow(dead_code)]
#[path = "fixtures.rs"]
mod fixtures;
#[allow(unused_imports)] // the trainer tests use only the helpers below
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

/// The trainer tests' model: 2 layers, width 32, GQA 4/2 heads, vocabulary 48.
pub fn tiny_cfg() -> rise_model::LlamaConfig {
    let mut c = rise_model::LlamaConfig::tiny(48);
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c
}

/// An example over `ids`, its loss on the tokens from `trained_from` on, weighted `weight`.
pub fn example(ids: &[u32], trained_from: usize, weight: f32) -> rise_model::trainer::TrainExample {
    rise_model::trainer::TrainExample {
        ids: ids.to_vec(),
        loss_mask: (0..ids.len()).map(|i| i >= trained_from).collect(),
        weight,
    }
}

/// Five examples of different lengths, masks and weights.
pub fn data() -> Vec<rise_model::trainer::TrainExample> {
    vec![
        example(&[1, 5, 9, 13, 17, 21, 25, 29], 3, 12.18),
        example(&[2, 6, 10, 14, 18, 22], 2, 1.0),
        example(&[3, 7, 11, 15, 19, 23, 27, 31, 35, 39], 5, 0.082),
        example(&[4, 8, 12, 16], 1, 1.0),
        example(&[40, 41, 42, 43, 44, 45, 46], 4, 2.0),
    ]
}
