//! rise's sampler on a real checkpoint, for `benches/model.sh` (which runs transformers on the
//! same directory, prompt and settings next to it, `benches/model_peer.py sample`).
//!
//! `sampling_bench DIR THREADS PROMPT_FILE NEW_TOKENS BATCH...` loads DIR in fp32 on the CPU,
//! tokenizes PROMPT_FILE's text as is (it is already chat-rendered), and for each BATCH samples
//! that many rows of NEW_TOKENS tokens at temperature 1 (top-p 1, no top-k) after one warm-up
//! call. DIR must name no EOS token, so that every row runs to NEW_TOKENS (model.sh writes such
//! a copy). Prints one JSON object: seconds and tokens/s per batch size, and the prefill's
//! share (one call with a single new token).
use std::collections::BTreeMap;
use std::time::Instant;

use rise_model::checkpoint;
use rise_model::sampler::{generate, FinishReason, SamplingParams};
use rise_model::tokenizer::Tokenizer;
use serde_json::json;
use tch::{Device, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: sampling_bench DIR THREADS PROMPT_FILE NEW_TOKENS BATCH...";
    if args.len() < 6 {
        return Err(usage.into());
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let threads: i32 = args[2].parse()?;
    let prompt_text = std::fs::read_to_string(&args[3])?;
    let new_tokens: usize = args[4].parse()?;
    let batches: Vec<usize> = args[5..]
        .iter()
        .map(|b| b.parse())
        .collect::<Result<_, _>>()?;
    tch::set_num_threads(threads);
    let (cfg, model) = checkpoint::load(&dir, Device::Cpu, Kind::Float)?;
    let tok = Tokenizer::from_dir(&dir)?;
    if tok.eos_token_id().is_some() || !cfg.eos_token_ids.is_empty() {
        return Err(format!(
            "{}: names an EOS token; rows would stop early",
            dir.display()
        )
        .into());
    }
    let prompt = tok.encode_with(&prompt_text, false)?;
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: new_tokens,
        seed: 1,
        ..Default::default()
    };
    let mut results = BTreeMap::new();
    for &batch in &batches {
        let prompts = vec![prompt.clone(); batch];
        let short = SamplingParams {
            max_new_tokens: 8,
            ..params.clone()
        };
        generate(&model, &tok, &prompts, &short, Device::Cpu)?; // warm-up
        let t0 = Instant::now();
        generate(
            &model,
            &tok,
            &prompts,
            &SamplingParams {
                max_new_tokens: 1,
                ..params.clone()
            },
            Device::Cpu,
        )?;
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let out = generate(&model, &tok, &prompts, &params, Device::Cpu)?;
        let secs = t0.elapsed().as_secs_f64();
        let tokens: usize = out.iter().flatten().map(|c| c.tokens.len()).sum();
        assert!(out
            .iter()
            .flatten()
            .all(|c| c.finish_reason == FinishReason::Length && c.tokens.len() == new_tokens));
        results.insert(
            batch.to_string(),
            json!({
                "secs": secs,
                "tokens": tokens,
                "tokens_per_s": tokens as f64 / secs,
                "prefill_secs": prefill_secs,
                "ms_per_step": 1e3 * (secs - prefill_secs) / (new_tokens - 1).max(1) as f64,
            }),
        );
    }
    println!(
        "{}",
        json!({
            "impl": "rise",
            "threads": threads,
            "prompt_tokens": prompt.len(),
            "new_tokens": new_tokens,
            "batches": results,
        })
    );
    Ok(())
}
