//! Batched sampling with a preallocated KV cache.
//!
//! Prompts are left-padded into one batch and prefilled once; the cache is then expanded so
//! that the `n` samples of a prompt share that prefill. Each (prompt, sample) row draws its
//! random numbers from its own ChaCha stream seeded by `(seed, prompt index, sample index)`,
//! so a row's tokens do not depend on which other prompts share the batch, and a seed
//! reproduces the samples exactly on the CPU.
//!
//! Filtering (temperature, top-k, top-p) runs on the model's device; only one uniform
//! number per row goes in and one token id per row comes out each step.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::checkpoint;
use crate::config::{BatchTooLarge, MemoryBudget, SamplingShape};
use crate::llama::{KvCache, Llama};
use crate::tokenizer::Tokenizer;

/// How to sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Samples per prompt (they share one prefill).
    pub n: usize,
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens whose cumulative probability first
    /// reaches `top_p` (`1.0` keeps all).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (`0` keeps all).
    pub top_k: usize,
    /// Most tokens generated per sample.
    pub max_new_tokens: usize,
    /// Stop a sample when its text contains one of these (the text excludes it).
    pub stop_strings: Vec<String>,
    /// The seed of every row's random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

/// Why a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached a stop string.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// One generated sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated token ids, including a final EOS or the token that completed a stop string.
    pub tokens: Vec<u32>,
    /// The decoded text, without the EOS token and cut before a stop string.
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// Invalid sampling requests.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A parameter is out of range.
    #[error("sampling parameter `{field}`: {message}")]
    Param {
        /// The field name.
        field: &'static str,
        /// What is accepted.
        message: String,
    },
    /// A prompt is empty or holds an id outside the vocabulary.
    #[error("prompt {index}: {message}")]
    Prompt {
        /// Its position in the request.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The batch would not fit in memory (checked before anything is allocated).
    #[error(transparent)]
    TooLarge(#[from] BatchTooLarge),
    /// A libtorch call failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl SamplingParams {
    /// Checks ranges, naming the first bad field.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |field, message: &str| {
            Err(SampleError::Param {
                field,
                message: message.into(),
            })
        };
        if self.n == 0 {
            return bad("n", "must be at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0 (0 = greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop_strings", "must not contain an empty string");
        }
        Ok(())
    }
}

/// A row's private random stream: the seed mixed with its prompt and sample index.
fn row_rng((seed, stream): (u64, u64), sample: usize) -> ChaCha8Rng {
    // ChaCha's 64-bit stream id separates rows; fold (stream, sample) into the key so
    // any u64 stream id and sample index give distinct, independent sequences.
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&(sample as u64).to_le_bytes());
    key[24..].copy_from_slice(b"rise-smp");
    ChaCha8Rng::from_seed(key)
}

/// The next uniform number in `[0, 1)` of a row's stream: one per row per decoding step.
fn row_uniform(rng: &mut ChaCha8Rng) -> f64 {
    // rand 0.9's `random::<f64>()` is rand 0.8's `gen::<f64>()`: the high 53 bits of
    // `next_u64()` times 2^-53, and rand_chacha 0.9's ChaCha8 is the 0.3 stream, so seeds
    // sampled before the move draw the same numbers (pinned in the tests below).
    rng.random::<f64>()
}

/// Picks one token per row of `logits` `[rows, vocab]` (fp32).
fn sample_tokens(logits: &Tensor, params: &SamplingParams, uniforms: &[f64]) -> Vec<i64> {
    if params.temperature == 0.0 {
        let picks = logits
            .argmax(-1, false)
            .to_device(Device::Cpu)
            .to_kind(Kind::Int64);
        return Vec::<i64>::try_from(picks).expect("1-d int64 tensor");
    }
    // x / 1.0 is x, bit for bit: skip the pass over the vocabulary at the default temperature.
    let scaled = if params.temperature == 1.0 {
        logits.shallow_clone()
    } else {
        logits / params.temperature
    };
    let vocab = scaled.size()[1];
    let top_k = (params.top_k > 0 && (params.top_k as i64) < vocab).then_some(params.top_k as i64);
    let filtered = top_k.is_some() || params.top_p < 1.0;
    // Inverse-CDF sampling is exact in any token order: sort only when top-k or top-p
    // must cut the tail, since the sort costs about as much as a decoder layer here.
    let (sorted, order) = if filtered {
        let (sorted, order) = scaled.sort(-1, true);
        (sorted, Some(order))
    } else {
        (scaled, None)
    };
    if let Some(k) = top_k {
        let _ = sorted.narrow(1, k, vocab - k).fill_(f64::NEG_INFINITY);
    }
    let mut probs = sorted.softmax(-1, Kind::Float);
    if params.top_p < 1.0 {
        // Drop a token when the tokens ranked above it already reach top_p.
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        probs = probs.masked_fill(&before.gt(params.top_p), 0.0);
    }
    let cdf = probs.cumsum(-1, Kind::Float);
    let total = cdf.narrow(1, vocab - 1, 1);
    let u = Tensor::from_slice(uniforms)
        .to_device(logits.device())
        .to_kind(Kind::Float)
        .unsqueeze(1)
        * &total;
    // The first token whose cdf exceeds u has mass (its cdf rose past u). Only when rounding
    // puts u at the very top of the cdf is there no such token (index = vocab); that row then
    // takes its last token with mass, found for it alone: a pass over the whole vocabulary
    // for every row at every step would cost more than the draw.
    let idx = u.searchsorted::<Tensor>(&cdf, false, true, "right", None);
    // Sorted: the token ids of the clamped positions come back in the same transfer.
    let fetched = match &order {
        Some(order) => Tensor::cat(
            &[&idx, &order.gather(1, &idx.clamp_max(vocab - 1), false)],
            1,
        ),
        None => idx,
    };
    let fetched = Vec::<Vec<i64>>::try_from(fetched.to_device(Device::Cpu).to_kind(Kind::Int64))
        .expect("2-d int64 tensor");
    fetched
        .into_iter()
        .enumerate()
        .map(|(row, f)| {
            let (position, token) = (f[0], f.get(1).copied().unwrap_or(f[0]));
            if position < vocab {
                return token;
            }
            let has_mass = probs.get(row as i64).gt(0.0);
            match &order {
                // Sorted, the tokens with mass are a prefix.
                Some(order) => {
                    let last = has_mass.sum(Kind::Int64).int64_value(&[]) - 1;
                    order.get(row as i64).int64_value(&[last])
                }
                None => {
                    let index = Tensor::arange(vocab, (Kind::Int64, probs.device()));
                    (has_mass.to_kind(Kind::Int64) * index)
                        .max()
                        .int64_value(&[])
                }
            }
        })
        .collect()
}

/// Does the end of `tokens` contain a stop string? Only the tail is decoded: a stop string
/// of L bytes spans at most L tokens, and earlier text was checked at earlier steps.
fn hits_stop(tokenizer: &Tokenizer, tokens: &[u32], stops: &[String], window: usize) -> bool {
    let start = tokens.len().saturating_sub(window);
    let tail = tokenizer
        .decode_with(&tokens[start..], false)
        .unwrap_or_default();
    stops.iter().any(|s| tail.contains(s.as_str()))
}

/// Samples `params.n` completions for each prompt (token ids, without padding).
///
/// Returns one `Vec<Completion>` per prompt, in order. `device` must be the model's device.
/// Sampling stops per row at an EOS token (the tokenizer's or the model config's), at a
/// stop string, or after `max_new_tokens`. Prompt `i` draws from the streams of seed
/// `params.seed` and index `i`; use [`generate_seeded`] to make a prompt's samples
/// independent of its position in the request (e.g. across shards).
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    device: Device,
) -> Result<Vec<Vec<Completion>>, SampleError> {
    let seeds: Vec<(u64, u64)> = (0..prompts.len() as u64)
        .map(|i| (params.seed, i))
        .collect();
    generate_seeded(model, tokenizer, prompts, &seeds, params, device)
}

/// [`generate`] with an explicit `(seed, stream)` per prompt: sample `j` of a prompt uses
/// the ChaCha stream `(seed, stream, j)`, whatever else is in the batch.
pub fn generate_seeded(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    seeds: &[(u64, u64)],
    params: &SamplingParams,
    device: Device,
) -> Result<Vec<Vec<Completion>>, SampleError> {
    params.validate()?;
    if seeds.len() != prompts.len() {
        return Err(SampleError::Param {
            field: "seeds",
            message: format!("{} seeds for {} prompts", seeds.len(), prompts.len()),
        });
    }
    if device != model.device() {
        return Err(SampleError::Param {
            field: "device",
            message: format!("{device:?} is not the model's device {:?}", model.device()),
        });
    }
    let cfg = model.config();
    for (index, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(SampleError::Prompt {
                index,
                message: "is empty".into(),
            });
        }
        if let Some(bad) = p.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(SampleError::Prompt {
                index,
                message: format!(
                    "token id {bad} is outside the vocabulary of {}",
                    cfg.vocab_size
                ),
            });
        }
    }
    // Before any allocation, also the early return's: prompts × n completions.
    let shape = SamplingShape {
        prompts: prompts.len(),
        samples: params.n,
        longest_prompt: prompts.iter().map(Vec::len).max().unwrap_or(0),
        max_new_tokens: params.max_new_tokens,
    };
    cfg.check_sampling(
        &shape,
        checkpoint::placement(device, model.compute_kind()),
        &MemoryBudget::of_this_machine(),
    )?;
    if prompts.is_empty() || params.max_new_tokens == 0 {
        return Ok(prompts
            .iter()
            .map(|_| {
                (0..params.n)
                    .map(|_| Completion {
                        tokens: vec![],
                        text: String::new(),
                        finish_reason: FinishReason::Length,
                    })
                    .collect()
            })
            .collect());
    }
    tch::no_grad(|| generate_inner(model, tokenizer, prompts, seeds, params, device))
}

fn generate_inner(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    seeds: &[(u64, u64)],
    params: &SamplingParams,
    device: Device,
) -> Result<Vec<Vec<Completion>>, SampleError> {
    let cfg = model.config();
    let mut eos: Vec<u32> = cfg.eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    let pad = i64::from(tokenizer.pad_token_id().or(cfg.pad_token_id).unwrap_or(0));
    let stop_window = params
        .stop_strings
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        + 4;

    let b = prompts.len();
    let n = params.n;
    let plen = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = plen + params.max_new_tokens;

    // Left-pad so every prompt ends at column plen - 1 and decoding writes one column per step.
    let mut ids = vec![pad; b * plen];
    let mut mask = vec![0i64; b * capacity];
    for (i, p) in prompts.iter().enumerate() {
        let off = plen - p.len();
        for (j, &t) in p.iter().enumerate() {
            ids[i * plen + off + j] = i64::from(t);
            mask[i * capacity + off + j] = 1;
        }
    }
    let ids = Tensor::from_slice(&ids)
        .view([b as i64, plen as i64])
        .to_device(device);
    let mask_all = Tensor::from_slice(&mask)
        .view([b as i64, capacity as i64])
        .to_device(device);

    let mut cache = KvCache::new(cfg, b, capacity, model.compute_kind(), device)?;
    // Without left padding the mask is all ones and plain causal attention is exact: the
    // forward pass then builds no mask and attention takes no bias, on every step.
    let padded = prompts.iter().any(|p| p.len() != plen);
    let prompt_mask = padded.then(|| mask_all.narrow(1, 0, plen as i64));
    let hidden = model.hidden(&ids, prompt_mask.as_ref(), Some(&mut cache), None);
    let last = model.logits(&hidden.select(1, -1));

    // Expand prompts to rows: row r is prompt r / n, sample r % n.
    let expand = Tensor::arange(b as i64, (Kind::Int64, device))
        .repeat_interleave_self_int(n as i64, 0, None);
    let mut cache = if n > 1 {
        cache.select_rows(&expand)?
    } else {
        cache
    };
    let mut logits = if n > 1 {
        last.index_select(0, &expand)
    } else {
        last
    };
    let mut mask_all = if n > 1 {
        mask_all.index_select(0, &expand)
    } else {
        mask_all
    };

    struct Row {
        prompt: usize,
        sample: usize,
        rng: ChaCha8Rng,
        next_pos: i64,
        tokens: Vec<u32>,
        finish: Option<FinishReason>,
    }
    let mut rows: Vec<Row> = (0..b * n)
        .map(|r| Row {
            prompt: r / n,
            sample: r % n,
            rng: row_rng(seeds[r / n], r % n),
            next_pos: prompts[r / n].len() as i64,
            tokens: Vec::with_capacity(params.max_new_tokens),
            finish: None,
        })
        .collect();
    // `live[i]` = index into `rows` of the batch row i currently in the cache.
    let mut live: Vec<usize> = (0..rows.len()).collect();
    let mut done: Vec<Row> = Vec::with_capacity(rows.len());

    for step in 0..params.max_new_tokens {
        let uniforms: Vec<f64> = live
            .iter()
            .map(|&r| row_uniform(&mut rows[r].rng))
            .collect();
        let picks = sample_tokens(&logits, params, &uniforms);
        for (&r, &tok) in live.iter().zip(&picks) {
            let row = &mut rows[r];
            if row.finish.is_some() {
                continue;
            }
            row.tokens.push(tok as u32);
            row.next_pos += 1;
            if eos.contains(&(tok as u32)) {
                row.finish = Some(FinishReason::Eos);
            } else if !params.stop_strings.is_empty()
                && hits_stop(tokenizer, &row.tokens, &params.stop_strings, stop_window)
            {
                row.finish = Some(FinishReason::Stop);
            } else if row.tokens.len() == params.max_new_tokens {
                row.finish = Some(FinishReason::Length);
            }
        }
        let unfinished = live.iter().filter(|&&r| rows[r].finish.is_none()).count();
        if unfinished == 0 || step + 1 == params.max_new_tokens {
            break;
        }
        // Drop finished rows from the batch once they are a quarter of it: each drop copies
        // the cache, so doing it for every single finished row would cost more than it saves.
        let finished_present = live.len() - unfinished;
        if finished_present > 0 && finished_present * 4 >= live.len() {
            let keep: Vec<i64> = (0..live.len())
                .filter(|&i| rows[live[i]].finish.is_none())
                .map(|i| i as i64)
                .collect();
            let keep_t = Tensor::from_slice(&keep).to_device(device);
            cache = cache.select_rows(&keep_t)?;
            mask_all = mask_all.index_select(0, &keep_t);
            live = keep.iter().map(|&i| live[i as usize]).collect();
        }
        let next: Vec<i64> = live
            .iter()
            .map(|&r| {
                rows[r].tokens.last().map_or(pad, |&t| {
                    if rows[r].finish.is_some() {
                        pad
                    } else {
                        i64::from(t)
                    }
                })
            })
            .collect();
        let pos: Vec<i64> = live.iter().map(|&r| rows[r].next_pos - 1).collect();
        let col = (plen + step) as i64;
        let _ = mask_all.narrow(1, col, 1).fill_(1);
        let x = Tensor::from_slice(&next)
            .view([live.len() as i64, 1])
            .to_device(device);
        let p = Tensor::from_slice(&pos)
            .view([live.len() as i64, 1])
            .to_device(device);
        let m = padded.then(|| mask_all.narrow(1, 0, col + 1));
        logits = model
            .forward(&x, m.as_ref(), Some(&mut cache), Some(&p))
            .squeeze_dim(1);
    }
    done.append(&mut rows);

    let mut out: Vec<Vec<Completion>> = (0..b).map(|_| Vec::with_capacity(n)).collect();
    done.sort_by_key(|r| (r.prompt, r.sample));
    for row in done {
        let finish = row.finish.unwrap_or(FinishReason::Length);
        let text_tokens = match finish {
            FinishReason::Eos => &row.tokens[..row.tokens.len() - 1],
            _ => &row.tokens[..],
        };
        let mut text = tokenizer
            .decode_with(text_tokens, false)
            .unwrap_or_default();
        if finish == FinishReason::Stop {
            if let Some(cut) = params
                .stop_strings
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(cut);
            }
        }
        out[row.prompt].push(Completion {
            tokens: row.tokens,
            text,
            finish_reason: finish,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draw at the very top of the cdf (u = 1, which rounding can produce) has no token whose
    /// cdf exceeds it: the row takes its last token with mass, never one with none.
    #[test]
    fn a_draw_at_the_top_of_the_cdf_takes_the_last_token_with_mass() {
        let neg = f32::NEG_INFINITY;
        // Rows: tokens 3 and 4 impossible; all tokens possible.
        let logits =
            Tensor::from_slice(&[0.5f32, 2.0, 1.0, neg, neg, 0.1, 0.2, 0.3, 0.4, 0.5]).view([2, 5]);
        let plain = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        assert_eq!(sample_tokens(&logits, &plain, &[1.0, 1.0]), [2, 4]);
        assert_eq!(sample_tokens(&logits, &plain, &[0.0, 0.0]), [0, 0]);
        // Sorted (top-k 2): the mass is on the two best tokens; the top draw takes the second.
        let top2 = SamplingParams {
            temperature: 0.5,
            top_k: 2,
            ..Default::default()
        };
        assert_eq!(sample_tokens(&logits, &top2, &[1.0, 1.0]), [2, 3]);
        assert_eq!(sample_tokens(&logits, &top2, &[0.0, 0.0]), [1, 4]);
    }

    /// A seed reproduces its samples across versions: the draws of a row's stream are part of
    /// every sampled result, so a change of `rand`/`rand_chacha` (or of the key layout) that
    /// moves them must fail here rather than silently change what a seed samples.
    #[test]
    fn row_streams_draw_pinned_numbers() {
        let draws = |seed: (u64, u64), sample: usize| {
            let mut rng = row_rng(seed, sample);
            (0..4).map(|_| row_uniform(&mut rng)).collect::<Vec<f64>>()
        };
        assert_eq!(
            draws((42, 7), 3),
            [
                0.5955750230844921,
                0.8787175843149454,
                0.996267142855365,
                0.7736244530851076
            ]
        );
        assert_eq!(
            draws((0xdead_beef_0123_4567, u64::MAX), 1000),
            [
                0.5270659464693295,
                0.4449478280638546,
                0.7001562215048672,
                0.644530463986658
            ]
        );
    }
}
