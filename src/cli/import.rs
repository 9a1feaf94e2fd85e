//! `rise import gguf FILE --to DIR`: a llama.cpp GGUF checkpoint as a Hugging Face model
//! directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json), which
//! `rise score`/`generate`, the `model` stage's `hf_dir` and transformers all load.
//!
//! Runs in-process: the import is pure Rust (`rise-gguf`, on candle's GGUF reader and
//! dequantizers), so it needs no libtorch and no Python.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rise_gguf::{ImportOptions, ImportSummary, OutDtype};

use super::Global;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Convert a checkpoint from another format into a Hugging Face model directory.
    #[command(subcommand)]
    Import(Format),
}

#[derive(clap::Subcommand)]
pub enum Format {
    /// A llama.cpp GGUF file (Llama-architecture, byte-level BPE tokenizer).
    #[command(after_help = "\
The weights are dequantized (by candle's GGML kernels: F32, F16, BF16, Q4_0 … Q8_0, Q2_K … \
Q8_K) to fp32 (exact) or bf16, and llama.cpp's permutation of the q/k projection rows is \
undone. The tokenizer is rebuilt from the file's tokens, merges and token types, with the \
pre-tokenizer that tokenizer.ggml.pre names; the chat template goes to tokenizer_config.json.\n\n\
Everything is written into a staging directory next to DIR and renamed into place at the end: \
an unsupported type or architecture, or a truncated file, leaves DIR untouched.\n\n\
Examples:\n  rise import gguf SmolLM2-135M-Instruct.Q4_1.gguf --to checkpoints/smollm2-135m-instruct\n  \
rise import gguf model.gguf --check            # read and check only, write nothing\n  \
rise generate --model checkpoints/smollm2-135m-instruct --chat --show-prompt --prompt 'Hi'\n\n\
In a pipeline, the `model` stage imports a GGUF itself: params = { gguf = \"model.gguf\" }.")]
    Gguf(GgufArgs),
}

#[derive(clap::Args)]
pub struct GgufArgs {
    /// The .gguf file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The model directory to create.
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    pub to: Option<PathBuf>,
    /// Weight dtype in model.safetensors: f32 (every dequantized value exactly) or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Replace DIR if it exists and is not empty (the old one is removed only after the new
    /// one is complete).
    #[arg(long)]
    pub force: bool,
    /// Only read and check the file (architecture, tensors, tokenizer); write nothing.
    #[arg(long, conflicts_with_all = ["to", "force"])]
    pub check: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Command, _global: &Global) -> Result<ExitCode> {
    let Command::Import(Format::Gguf(args)) = cmd;
    let summary = if args.check {
        // The library's errors name the file and what in it is wrong.
        rise_gguf::inspect(&args.file)?
    } else {
        let to = args.to.clone().context("--to DIR is required")?;
        let options = ImportOptions {
            dtype: if args.dtype == "bf16" {
                OutDtype::Bf16
            } else {
                OutDtype::F32
            },
            replace: args.force,
        };
        rise_gguf::import(&args.file, &to, &options)?
    };
    if args.json {
        println!("{}", summary_json(&summary, &args));
    } else {
        print_summary(&summary, &args);
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_json(s: &ImportSummary, args: &GgufArgs) -> serde_json::Value {
    let a = &s.architecture;
    serde_json::json!({
        "file": args.file,
        "to": args.to,
        "name": s.name,
        "architecture": a.name,
        "layers": a.num_layers,
        "hidden_size": a.hidden_size,
        "heads": a.num_heads,
        "kv_heads": a.num_kv_heads,
        "vocab_size": a.vocab_size,
        "parameters": s.parameters,
        "tensor_types": s.tensor_types,
        "tied_embeddings": s.tied_embeddings,
        "pre_tokenizer": s.pre_tokenizer,
        "chat_templates": s.chat_templates,
        "files": s.files,
    })
}

fn print_summary(s: &ImportSummary, args: &GgufArgs) {
    let a = &s.architecture;
    let types: Vec<String> = s
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "{}: {} ({}), {} layers, width {}, {}/{} heads, vocabulary {}, {:.1}M parameters",
        args.file.display(),
        s.name.as_deref().unwrap_or("unnamed"),
        a.name,
        a.num_layers,
        a.hidden_size,
        a.num_heads,
        a.num_kv_heads,
        a.vocab_size,
        s.parameters as f64 / 1e6
    );
    println!(
        "  tensors: {}; tokenizer pre-split `{}`; chat templates: {}",
        types.join(", "),
        s.pre_tokenizer,
        if s.chat_templates.is_empty() {
            "none".to_string()
        } else {
            s.chat_templates.join(", ")
        }
    );
    match &args.to {
        Some(to) if !args.check => println!(
            "  wrote {} ({}, {})",
            to.display(),
            s.files.join(", "),
            args.dtype
        ),
        _ => println!("  checked; nothing written"),
    }
}
