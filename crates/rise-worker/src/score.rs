//! `rise-worker score`: the log-probability a model assigns to sequences.
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rise_model::checkpoint;
use rise_model::score::score_batch;
use rise_model::tokenizer::Tokenizer;
use serde::Deserialize;

use crate::model_opts::ModelOpts;

/// Score sequences: for each JSONL line print `{"logprob": Σ_{i≥1} log p(t_i | t_<i), "n_tokens": n-1}`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Input lines are {\"tokens\": [ids]} or {\"text\": \"...\"}. Text is tokenized as \
transformers' `tokenizer(text)` does (the tokenizer's post-processor may add BOS). \
The first token is conditioned on, not scored, so n_tokens = len - 1.\n\n\
Example:\n  rise score --model runs/sft --jsonl answers.jsonl > scores.jsonl")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// The sequences, one JSON object per line (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub jsonl: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    tokens: Option<Vec<i64>>,
    text: Option<String>,
}

/// Reads and tokenizes every line first, so that a malformed line fails before any work.
fn read_sequences(args: &Args, vocab: usize) -> Result<Vec<Vec<i64>>> {
    let name = args.jsonl.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.jsonl).with_context(|| format!("cannot open {name}"))?,
        ))
    };
    let mut tokenizer: Option<Tokenizer> = None;
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let lineno = i + 1;
        let line = line.with_context(|| format!("{name}:{lineno}: cannot read"))?;
        if line.trim().is_empty() {
            bail!("{name}:{lineno}: empty line (expected {{\"tokens\": [...]}} or {{\"text\": \"...\"}})");
        }
        let parsed: Line = serde_json::from_str(&line)
            .with_context(|| format!("{name}:{lineno}: invalid JSON line"))?;
        let ids = match (parsed.tokens, parsed.text) {
            (Some(t), None) => {
                if let Some(bad) = t.iter().find(|&&x| x < 0 || x as usize >= vocab) {
                    bail!("{name}:{lineno}: field `tokens`: id {bad} is outside the vocabulary (size {vocab})");
                }
                t
            }
            (None, Some(text)) => {
                if tokenizer.is_none() {
                    tokenizer = Some(args.model.tokenizer()?);
                }
                let tok = tokenizer.as_ref().expect("just loaded");
                tok.encode_with(&text, true)
                    .with_context(|| format!("{name}:{lineno}: field `text`"))?
                    .into_iter()
                    .map(i64::from)
                    .collect()
            }
            _ => bail!("{name}:{lineno}: expected exactly one of the fields `tokens` or `text`"),
        };
        if ids.is_empty() {
            bail!("{name}:{lineno}: the sequence has no tokens");
        }
        out.push(ids);
    }
    Ok(out)
}

pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (cfg, model, device) = args.model.load()?;
    let seqs = read_sequences(&args, cfg.vocab_size)?;
    // Similar lengths share a batch, so little compute goes to padding; output keeps input order.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    // Every batch is checked before any is scored: its logits (sequences × length ×
    // vocabulary) must fit, or libtorch would panic mid-way.
    let placement = checkpoint::placement(device, model.compute_kind());
    let budget = args.model.budget();
    for chunk in order.chunks(args.batch_size) {
        let longest = chunk.iter().map(|&i| seqs[i].len()).max().unwrap_or(0);
        cfg.check_scoring(chunk.len(), longest, placement, &budget)
            .with_context(|| {
                format!(
                    "--batch-size {}: a batch of {} sequence(s), the longest {longest} tokens",
                    args.batch_size,
                    chunk.len()
                )
            })?;
    }
    let mut results = vec![(0.0, 0); seqs.len()];
    for chunk in order.chunks(args.batch_size) {
        let batch: Vec<&[i64]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
        for (&i, r) in chunk.iter().zip(score_batch(&model, &batch, device)) {
            results[i] = r;
        }
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (logprob, n_tokens) in results {
        // fp32 precision is what the model computes; print it as an f32 would round-trip.
        writeln!(
            out,
            "{}",
            serde_json::json!({"logprob": logprob as f32, "n_tokens": n_tokens})
        )?;
    }
    out.flush()?;
    Ok(())
}
