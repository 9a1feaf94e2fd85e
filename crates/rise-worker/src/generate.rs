//! `rise-worker generate`: sample completions from a model.
use std::io::Write;

use anyhow::{bail, Context, Result};
use rise_data::conversation::{ChatTemplate, Message, Role, TokenizeText};
use rise_model::sampler::{self, SamplingParams};

use crate::model_opts::ModelOpts;

/// Sample completions for one or more prompts.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Without --chat the prompt is tokenized as-is (plus the tokenizer's BOS, as transformers does). \
With --chat it becomes a user message rendered by the model's chat template, found where \
transformers 5 looks: chat_template.jinja (and additional_chat_templates/NAME.jinja), else \
chat_template.json, else tokenizer_config.json's chat_template. A model without any template \
gets rise's plain role markers, unless its vocabulary has chat tokens such as <|im_start|>: \
that is an error, never a silent fallback. The template's end-of-turn strings are added to \
the stop strings. --show-prompt prints each rendered prompt first, so you can check it.\n\n\
Examples:\n  rise generate --model runs/sft --prompt 'What is 7 * 6?' --chat --show-prompt\n  \
rise generate --model runs/sft --prompt 'Once upon a time' --n 4 --temperature 0.8 --json")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// A prompt (repeat for a batch).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Samples per prompt (they share one prefill).
    #[arg(long, default_value_t = SamplingParams::default().n)]
    pub n: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = SamplingParams::default().temperature)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = SamplingParams::default().top_p)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = SamplingParams::default().top_k)]
    pub top_k: usize,
    /// Most new tokens per sample.
    #[arg(long, default_value_t = SamplingParams::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Random seed; the same seed gives the same samples on the CPU.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop a sample at this string (repeatable; the text excludes it).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Render the prompt as a chat user turn with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// With --chat, use the chat template of this name (for a model that ships several, e.g.
    /// `tool_use`); default: the one called `default`.
    #[arg(long, requires = "chat", value_name = "NAME")]
    pub chat_template: Option<String>,
    /// Print each prompt as the model will see it (after the chat template) before sampling:
    /// a `=== prompt N ===` header and the text on stdout; with --json, a field
    /// `rendered_prompt` on every line instead.
    #[arg(long)]
    pub show_prompt: bool,
    /// Print one JSON object per sample (prompt, sample, text, tokens, finish_reason).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    // The tokenizer and template first: a template error needs no model load to report.
    let tokenizer = match &args.chat_template {
        None => args.model.tokenizer()?,
        Some(name) => {
            rise_model::tokenizer::Tokenizer::from_dir_with_template(&args.model.model, Some(name))
                .with_context(|| {
                    format!("loading the tokenizer of {}", args.model.model.display())
                })?
        }
    };
    let mut stop = args.stop.clone();
    let mut rendered: Vec<String> = Vec::new();
    let prompts: Vec<Vec<u32>> = if args.chat {
        // The error names the model directory and what was looked for.
        let template = tokenizer.chat_template().context("--chat")?;
        for s in template.stop_strings() {
            if !stop.contains(&s) {
                stop.push(s);
            }
        }
        args.prompt
            .iter()
            .map(|p| {
                let mut messages = Vec::new();
                if let Some(s) = &args.system {
                    messages.push(Message::new(Role::System, s.clone()));
                }
                messages.push(Message::new(Role::User, p.clone()));
                let text = template
                    .render(&messages, true)
                    .context("rendering the chat template")?;
                let ids = tokenizer.encode(&text);
                rendered.push(text);
                Ok(ids)
            })
            .collect::<Result<_>>()?
    } else {
        rendered = args.prompt.clone();
        args.prompt
            .iter()
            .map(|p| {
                tokenizer
                    .encode_with(p, true)
                    .context("tokenizing the prompt")
            })
            .collect::<Result<_>>()?
    };
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        bail!("--prompt number {}: tokenizes to nothing", i + 1);
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if args.show_prompt && !args.json {
        for (i, text) in rendered.iter().enumerate() {
            writeln!(w, "=== prompt {} ===\n{text}", i + 1)?;
        }
        writeln!(w, "=== completion ===")?;
        w.flush()?;
    }
    let (_, model, device) = args.model.load()?;
    let params = SamplingParams {
        n: args.n,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop_strings: stop,
        seed: args.seed,
    };
    // Every prompt's n samples share one batch, which the sampler refuses before allocating
    // when its KV cache and logits cannot fit: say which flags size it.
    let out = sampler::generate(&model, &tokenizer, &prompts, &params, device).map_err(|e| {
        let too_large = matches!(e, sampler::SampleError::TooLarge(_));
        let e = anyhow::Error::from(e);
        if too_large {
            e.context(format!(
                "--n {} samples for each of {} --prompt(s), --max-new-tokens {}, in one batch",
                args.n,
                prompts.len(),
                args.max_new_tokens
            ))
        } else {
            e
        }
    })?;
    let single = out.len() == 1 && args.n == 1;
    for (i, samples) in out.iter().enumerate() {
        for (j, c) in samples.iter().enumerate() {
            if args.json {
                let mut line = serde_json::json!({
                    "prompt": args.prompt[i],
                    "prompt_index": i,
                    "sample": j,
                    "text": c.text,
                    "tokens": c.tokens,
                    "finish_reason": c.finish_reason,
                });
                if args.show_prompt {
                    line["rendered_prompt"] = rendered[i].clone().into();
                }
                writeln!(w, "{line}")?;
            } else if single {
                writeln!(w, "{}", c.text)?;
            } else {
                writeln!(
                    w,
                    "--- prompt {} sample {} ({:?})",
                    i + 1,
                    j + 1,
                    c.finish_reason
                )?;
                writeln!(w, "{}", c.text)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}
