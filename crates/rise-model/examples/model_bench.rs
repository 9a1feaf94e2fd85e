//! Throughput of rise's sampler and trainer, for `benches/model.sh` (CPU, the default tiny
//! model) and `benches/gpu.sh` (CUDA), which run transformers on the same weights next to it.
//!
//! `model_bench prepare DIR [tiny|medium]` writes the model (HF layout) and a tokenizer;
//! `medium` is Qwen2.5-0.5B's shape (24 layers, hidden 896, 14/2 heads) with a small vocab.
//! `model_bench run DIR THREADS [cpu|cuda]` prints one JSON object with tokens/s figures.
//! On CUDA, sampling runs in bf16 and training keeps fp32 master weights with bf16 compute,
//! as `rise-worker` does.
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rise_model::checkpoint;
use rise_model::sampler::{generate, FinishReason, SamplingParams};
use rise_model::tokenizer::Tokenizer;
use rise_model::trainer::{Duration, TrainConfig, TrainExample, Trainer};
use rise_model::LlamaConfig;
use tch::{Device, Kind};

const VOCAB: usize = 1024;
const SAMPLE_BATCH: usize = 32;
const PROMPT_LEN: usize = 32;
const NEW_TOKENS: usize = 128;
const TRAIN_BATCH: usize = 16;
const TRAIN_LEN: usize = 256;
const TRAIN_STEPS: usize = 5;

fn random_ids(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(3..VOCAB as u32)).collect()
}

/// Waits for queued CUDA work, so that the clock measures it.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: model_bench prepare DIR [tiny|medium] | model_bench run DIR THREADS [cpu|cuda]";
    let dir = std::path::PathBuf::from(args.get(2).ok_or(usage)?);
    match args.get(1).map(String::as_str) {
        Some("prepare") => {
            let mut cfg = LlamaConfig::tiny(VOCAB);
            match args.get(3).map(String::as_str) {
                None | Some("tiny") => {}
                Some("medium") => {
                    cfg.hidden_size = 896;
                    cfg.intermediate_size = 4864;
                    cfg.num_hidden_layers = 24;
                    cfg.num_attention_heads = 14;
                    cfg.num_key_value_heads = 2;
                    cfg.head_dim = 64;
                }
                Some(other) => return Err(format!("unknown size {other:?}; {usage}").into()),
            }
            let model = checkpoint::init_random(&cfg, 0);
            checkpoint::save(&dir, &model, &cfg)?;
            // The tokenizer only decodes sampled ids here; a byte-level BPE covers any id < its size.
            let text: Vec<String> = (0..4000)
                .map(|i| format!("{i} + {} = {}", i * 7 % 97, i + i * 7 % 97))
                .collect();
            Tokenizer::train_bpe(text.iter().map(String::as_str), VOCAB, &["<|pad|>"])?
                .save(&dir)?;
        }
        Some("run") => {
            let threads: i32 = args.get(3).ok_or(usage)?.parse()?;
            tch::set_num_threads(threads);
            let device = match args.get(4).map(String::as_str) {
                None | Some("cpu") => Device::Cpu,
                Some("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
                Some("cuda") => return Err("CUDA is not available".into()),
                Some(other) => return Err(format!("unknown device {other:?}; {usage}").into()),
            };
            let sample_kind = if device.is_cuda() {
                Kind::BFloat16
            } else {
                Kind::Float
            };
            let (_, sampler_model) = checkpoint::load(&dir, device, sample_kind)?;
            let tok = Tokenizer::from_dir(&dir)?;
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let prompts: Vec<Vec<u32>> = (0..SAMPLE_BATCH)
                .map(|_| random_ids(&mut rng, PROMPT_LEN))
                .collect();
            let params = SamplingParams {
                temperature: 1.0,
                max_new_tokens: NEW_TOKENS,
                ..Default::default()
            };
            // Warm up with the full batch: CUDA picks and caches kernels per shape.
            generate(
                &sampler_model,
                &tok,
                &prompts,
                &SamplingParams {
                    max_new_tokens: 8,
                    ..params.clone()
                },
                device,
            )?;
            sync(device);
            let t0 = Instant::now();
            let out = generate(&sampler_model, &tok, &prompts, &params, device)?;
            sync(device);
            let sample_secs = t0.elapsed().as_secs_f64();
            // Training wants fp32 master weights: reload only if sampling used bf16.
            let mut model = if sample_kind == Kind::Float {
                sampler_model
            } else {
                drop(sampler_model);
                checkpoint::load(&dir, device, Kind::Float)?.1
            };
            let generated: usize = out.iter().flatten().map(|c| c.tokens.len()).sum();
            assert!(out
                .iter()
                .flatten()
                .all(|c| c.finish_reason == FinishReason::Length));

            let examples: Vec<TrainExample> = (0..TRAIN_BATCH)
                .map(|_| TrainExample {
                    ids: random_ids(&mut rng, TRAIN_LEN),
                    loss_mask: vec![true; TRAIN_LEN],
                    weight: 1.0,
                })
                .collect();
            let cfg = TrainConfig {
                lr: 1e-4,
                warmup: 0.0,
                batch_size: TRAIN_BATCH,
                duration: Duration::Steps(TRAIN_STEPS + 1),
                max_len: TRAIN_LEN,
                ..Default::default()
            };
            let mut trainer = Trainer::new(&mut model, cfg, examples)?;
            let mut start = None;
            trainer.run(
                |p| {
                    if p.step == 1 {
                        sync(device);
                        start = Some(Instant::now()); // the first step warms up allocators
                    }
                },
                &AtomicBool::new(false),
            )?;
            sync(device);
            let train_secs = start.ok_or("no steps ran")?.elapsed().as_secs_f64();
            let train_tokens = TRAIN_BATCH * TRAIN_LEN * TRAIN_STEPS;
            println!(
                "{}",
                serde_json::json!({
                    "impl": "rise",
                    "threads": threads,
                    "device": format!("{device:?}"),
                    "sample_tokens": generated,
                    "sample_secs": sample_secs,
                    "sample_tokens_per_s": generated as f64 / sample_secs,
                    "train_tokens": train_tokens,
                    "train_secs": train_secs,
                    "train_tokens_per_s": train_tokens as f64 / train_secs,
                })
            );
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
