//! Checkpoints rise writes load in transformers with the logits rise computes.
mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;

use common::{fixture, python, repo_root};
use rise_model::checkpoint;
use rise_model::trainer::{Duration, TrainConfig, TrainExample, Trainer};
use rise_model::{LlamaConfig, Model, RopeScaling};
use tch::{Device, Kind, Tensor};

/// Saves `model` with rise, loads it with transformers, and compares logits on `seqs`.
fn assert_transformers_agrees(model: &Model, cfg: &LlamaConfig, seqs: &[Vec<i64>], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(dir.path(), model, cfg).unwrap();
    let ids_path = dir.path().join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(seqs).unwrap()).unwrap();
    let out = dir.path().join("hf_logits.safetensors");
    let status = Command::new(python())
        .arg(repo_root().join("tests/fixtures/model_hf_logits.py"))
        .arg(dir.path())
        .arg(&ids_path)
        .arg(&out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{what}: transformers could not load the checkpoint rise wrote"
    );
    let hf = checkpoint::read_safetensors(&out).unwrap();
    for (i, seq) in seqs.iter().enumerate() {
        let ours =
            tch::no_grad(|| model.forward(&Tensor::from_slice(seq).unsqueeze(0), None, None, None))
                .squeeze_dim(0);
        let diff = (&ours - &hf[&format!("logits.{i}")])
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            diff < 1e-4,
            "{what}: transformers' logits differ from rise's by {diff:e}"
        );
    }
}

#[test]
fn fine_tuned_fixtures_round_trip_through_transformers() {
    for arch in common::ARCHS {
        let dir = fixture(arch);
        let (cfg, mut model) = checkpoint::load(&dir, Device::Cpu, Kind::Float).unwrap();
        // Train a few steps so the saved weights are rise's own, not the fixture's.
        let ex = TrainExample {
            ids: vec![1, 20, 30, 40, 50, 60],
            loss_mask: vec![false, true, true, true, true, true],
            weight: 1.0,
        };
        let tc = TrainConfig {
            lr: 1e-2,
            warmup: 0.0,
            batch_size: 1,
            duration: Duration::Steps(3),
            ..Default::default()
        };
        Trainer::new(&mut model, tc, vec![ex])
            .unwrap()
            .run(|_| {}, &AtomicBool::new(false))
            .unwrap();
        let seqs = vec![vec![1, 20, 30, 40, 50, 60, 70, 80], vec![5; 20]];
        assert_transformers_agrees(&model, &cfg, &seqs, arch);
    }
}

#[test]
fn from_scratch_models_load_in_transformers() {
    let mut cfg = LlamaConfig::tiny(100);
    cfg.hidden_size = 48;
    cfg.intermediate_size = 80;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 6;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 8;
    cfg.eos_token_ids = vec![2];
    cfg.bos_token_id = Some(1);
    for (tie, rope) in [
        (false, RopeScaling::Default),
        (true, RopeScaling::Linear { factor: 2.0 }),
        (
            false,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 32,
            },
        ),
    ] {
        cfg.tie_word_embeddings = tie;
        cfg.rope_scaling = rope.clone();
        let model = checkpoint::init_random(&cfg, 9);
        // normal(0, 0.02) weights give near-constant logits; scale up so a mismatch would show.
        tch::no_grad(|| {
            for (name, t) in model.vs.variables() {
                if !name.contains("norm") {
                    let _ = t.shallow_clone().g_mul_scalar_(20.0);
                }
            }
        });
        assert_transformers_agrees(
            &model,
            &cfg,
            &[(0..40).map(|i| (i * 7) % 100).collect()],
            &format!("tie={tie} {rope:?}"),
        );
    }
}

#[test]
fn bf16_save_and_load_keeps_the_values() {
    let dir = fixture("qwen2");
    let (cfg, model) = checkpoint::load(&dir, Device::Cpu, Kind::BFloat16).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkpoint::save(out.path(), &model, &cfg).unwrap();
    let text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    assert!(text.contains("\"torch_dtype\": \"bfloat16\""), "{text}");
    let (_, again) = checkpoint::load(out.path(), Device::Cpu, Kind::BFloat16).unwrap();
    for ((n, a), (_, b)) in checkpoint::named_tensors(&model)
        .iter()
        .zip(checkpoint::named_tensors(&again))
    {
        assert_eq!(a.kind(), Kind::BFloat16);
        assert!(a.equal(&b), "{n}");
    }
}

#[test]
fn sharded_checkpoints_load() {
    let dir = fixture("llama");
    let (cfg, model) = checkpoint::load(&dir, Device::Cpu, Kind::Float).unwrap();
    // Split the fixture into two shards with an index, as transformers does for big models.
    let tmp = tempfile::tempdir().unwrap();
    let tensors = checkpoint::named_tensors(&model);
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, name) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let owned: Vec<(String, Tensor)> = part
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        std::fs::write(
            tmp.path().join(name),
            checkpoint::safetensors_bytes(&owned).unwrap(),
        )
        .unwrap();
        for (n, _) in part {
            map.insert(n.clone(), serde_json::json!(name));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    cfg.save(tmp.path()).unwrap();
    let (_, sharded) = checkpoint::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    for ((n, x), (_, y)) in tensors.iter().zip(checkpoint::named_tensors(&sharded)) {
        assert!(x.equal(&y), "{n}");
    }
}
