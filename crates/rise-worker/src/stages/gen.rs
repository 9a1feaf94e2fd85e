//! Responses for conversations: render with the model's template, sample with rise-model's
//! batched sampler, return the texts.
use rise_data::conversation::{ChatTemplate, Message, TokenizeText};
use rise_model::sampler::{self, generate_seeded};
use rise_stages::kinds::SamplingParams;
use rise_stages::rise_engine::{StageContext, StageError};

use super::common::Loaded;

/// Sampling as sample, relabel and evaluate do it.
pub struct Sampling {
    pub params: sampler::SamplingParams,
    pub window: usize,
    pub batch_size: usize,
}

impl Sampling {
    /// The stage's sampling params as the sampler's; stop strings come from the model's
    /// template, `n` and the seed from each call of [`respond`].
    pub fn new(p: &SamplingParams, loaded: &Loaded) -> Self {
        Sampling {
            params: sampler::SamplingParams {
                n: 1,
                temperature: p.temperature,
                top_p: p.top_p,
                top_k: 0,
                max_new_tokens: p.max_new_tokens,
                stop_strings: stop_strings(loaded),
                seed: 0,
            },
            window: p.window,
            batch_size: p.batch_size,
        }
    }
}

/// The template's end-of-turn strings, minus those that are the EOS token itself: the sampler
/// already stops on EOS, and checking a stop string costs a decode per row per step.
fn stop_strings(loaded: &Loaded) -> Vec<String> {
    let eos: Vec<u32> = loaded
        .cfg
        .eos_token_ids
        .iter()
        .copied()
        .chain(loaded.tokenizer.eos_token_id())
        .collect();
    loaded
        .template
        .stop_strings()
        .into_iter()
        .filter(|s| {
            loaded
                .tokenizer
                .token_to_id(s)
                .is_none_or(|id| !eos.contains(&id))
        })
        .collect()
}

/// Counts for progress lines.
#[derive(Default)]
pub struct Counts {
    pub responses: u64,
    pub tokens: u64,
}

/// One conversation to answer: its messages and the random stream its samples use. Streams
/// are derived from what the conversation is (prompt id, turn), never from its position in
/// a batch or shard, so a resumed run draws exactly what an uninterrupted one would.
pub struct Request {
    pub messages: Vec<Message>,
    pub stream: u64,
}

/// `n` sampled responses for each request, in batches of `s.batch_size` requests.
pub fn respond(
    ctx: &StageContext,
    loaded: &Loaded,
    requests: &[Request],
    n: usize,
    s: &Sampling,
    seed: u64,
    counts: &mut Counts,
) -> Result<Vec<Vec<String>>, StageError> {
    let mut params = s.params.clone();
    params.n = n;
    params.seed = seed;
    let mut out = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(s.batch_size.max(1)) {
        ctx.check_cancelled()?;
        let mut prompts = Vec::with_capacity(chunk.len());
        for r in chunk {
            let text = loaded.template.render(&r.messages, true).map_err(|e| {
                StageError::msg(format!("stage {}: rendering a prompt: {e}", ctx.stage))
            })?;
            prompts.push(loaded.tokenizer.encode(&text));
        }
        let seeds: Vec<(u64, u64)> = chunk.iter().map(|r| (seed, r.stream)).collect();
        let completions = generate_seeded(
            &loaded.model,
            &loaded.tokenizer,
            &prompts,
            &seeds,
            &params,
            loaded.model.device(),
        )
        .map_err(|e| match e {
            // The sampler refuses a batch its memory cannot hold before allocating it; the
            // params that size it are the stage author's to lower.
            sampler::SampleError::TooLarge(e) => StageError::msg(format!(
                "stage {}: sampling params.batch_size = {} prompts per batch (this one has \
                 {}), {} samples each (params.n or params.parallel), params.max_new_tokens = \
                 {}: {e}",
                ctx.stage,
                s.batch_size,
                prompts.len(),
                params.n,
                params.max_new_tokens
            )),
            e => StageError::msg(format!("stage {}: sampling: {e}", ctx.stage)),
        })?;
        for samples in completions {
            counts.responses += samples.len() as u64;
            counts.tokens += samples.iter().map(|c| c.tokens.len() as u64).sum::<u64>();
            out.push(samples.into_iter().map(|c| c.text).collect());
        }
    }
    Ok(out)
}

/// A stream id for (text, salt): FNV-1a of the text mixed with the salt, so a prompt id and a
/// turn number name one stream.
pub fn stream(text: &str, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h, salt)
}

/// SplitMix64 of a pair: nearby inputs give unrelated outputs.
pub fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed
        ^ salt
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
