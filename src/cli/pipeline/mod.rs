//! Pipeline commands: run, plan, explain, status, dag, show, lineage, export, audit, lock.
//!
//! Each command parses its arguments, asks `rise-engine` for a typed report, and prints it as
//! text or serializes it (`--json`); what the report says is decided in the engine.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use rise_engine::hash_cache::HashCache;
use rise_engine::resolve::{resolve_with_cache, Resolved};
use rise_engine::{pipeline::Pipeline, Registry};
use rise_store::Store;
use serde::Serialize;

use super::{outln, Global};

mod audit;
mod lock;
mod plan;
mod run;
mod show;

/// The stage kinds the `rise` binary knows: the built-in `shell` and every RISE kind.
fn registry() -> Registry {
    let mut registry = Registry::new();
    rise_stages::register_all(&mut registry);
    registry
}

const PIPELINE_HELP: &str =
    "PIPELINE is a TOML file: [pipeline] name/seed, one [stage.NAME] per stage \
(kind, inputs = { INPUT = \"STAGE\" }, params = { ... }), optional [iterations] count/init and \
[iter.stage.NAME] templates instantiated as iter1/NAME, iter2/NAME, ... A sample, relabel or \
evaluate stage may set `shards = N`: it runs as NAME/shard-1-of-N ... (each cached on its own) \
merged into NAME, the same artifact as unsharded. See README, \"Pipelines\".";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run a pipeline: execute every stage whose cache key has no valid result.
    #[command(
        long_about = "Run a pipeline. Each stage's cache key covers its kind and version, resolved \
params (files named by params by content), input artifacts and seed; a stage runs only if no valid \
result exists for its key, so a no-op re-run executes nothing and an edit re-runs exactly the stages \
it affects. Independent stages run in parallel (--jobs); at most one GPU stage runs at a time, or one \
per GPU with --gpus 0,1,... (each sees only its card as CUDA_VISIBLE_DEVICES).\n\n\
A failing stage does not stop independent branches; its dependents are skipped and the run exits 1 \
naming the stage and its log. Ctrl-C stops cleanly: running stages are killed, nothing of them is \
committed, their scratch (resumable state) is kept; run again to continue.\n\n\
Two runs of one pipeline on one store execute each stage once: the second waits for and reuses \
the first's result.\n\n\
Models are sized from their config.json before anything is allocated: a stage that would load a \
model whose weights take more than half of this machine's memory (on the CPU) fails naming the \
fields behind its size. RISE_MAX_PARAMS=N (e.g. 7B, 125M) caps the parameters of every model any \
stage loads; it is an environment variable, not a param, so it never changes cache keys.",
        after_help = "Examples:\n  rise run pipelines/rise.toml\n  rise run pipelines/rise.toml --jobs 4\n  \
rise run pipelines/rise.toml --stage self.iter1.train    # only that stage and what it needs\n  \
rise run p.toml --json | jq .stages\n\nExit status: 0 all stages have results; 1 a stage failed \
or was skipped; 130 interrupted; 2 the pipeline file or store is unusable."
    )]
    Run(RunArgs),

    /// Show what `rise run` would do, and why each stage would run.
    #[command(after_help = "Example:\n  rise plan pipelines/rise.toml")]
    Plan(PipelineArgs),

    /// Show one stage's key fields next to its last committed result, marking differences.
    #[command(after_help = "Example:\n  rise explain pipelines/rise.toml distill.iter1.train")]
    Explain {
        #[command(flatten)]
        p: PipelineArgs,
        /// The stage, e.g. `distill.iter1.train` or `iter1/train`.
        stage: String,
    },

    /// Each stage's last result, whether it is current, and runs in progress.
    #[command(after_help = "Example:\n  rise status pipelines/rise.toml")]
    Status(PipelineArgs),

    /// Print the stage graph (text, Graphviz with --dot, or JSON).
    #[command(after_help = "Example:\n  rise dag pipelines/rise.toml --dot | dot -Tsvg > dag.svg")]
    Dag {
        #[command(flatten)]
        p: PipelineArgs,
        /// Graphviz dot output.
        #[arg(long)]
        dot: bool,
    },

    /// Print a result: params, inputs, output files with ids, metrics, and the output's path.
    #[command(
        long_about = "Print a committed result: stage, kind, key, params, input artifacts, output \
files (with blob ids and sizes), metrics, and the path of a read-only checkout of the output, so \
you can open a report directly.\n\nWHAT is a result id, an artifact id (the result that produced \
it), a unique prefix of either (at least 6 hex digits), or a stage name (its latest result; \
with --pipeline NAME when several pipelines have that stage).",
        after_help = "Examples:\n  rise show report\n  rise show distill.iter2.evaluate --json | jq .metrics\n  \
rise show 3fa9c1"
    )]
    Show {
        /// Result id, artifact id, hex prefix, or stage name.
        what: String,
        /// Pipeline name, to pick among stages of the same name.
        #[arg(long)]
        pipeline: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },

    /// Copy a model stage's output out of the store as a Hugging Face directory.
    #[command(
        long_about = "Copy a model out of the store as a Hugging Face directory (config.json, \
model.safetensors, tokenizer.json, tokenizer_config.json) that transformers and vLLM load. WHAT is a \
stage name (its latest result), a result id, an artifact id or a hex prefix; the stage must produce \
a model (model, sft, train, export). Every file is verified against its hash while it is copied. \
DIR must not exist or must be empty.",
        after_help = "Examples:\n  rise export distill.iter2.train --to out/rise-distill-iter2\n  \
python -c \"import transformers as t; t.AutoModelForCausalLM.from_pretrained('out/rise-distill-iter2')\""
    )]
    Export {
        /// Stage name, result id, artifact id, or hex prefix.
        what: String,
        /// Destination directory (created; must be empty if it exists).
        #[arg(long)]
        to: PathBuf,
        /// Pipeline name, to pick among stages of the same name.
        #[arg(long)]
        pipeline: Option<String>,
    },

    /// Print the results a result was built from, recursively, down to its roots.
    #[command(after_help = "Example:\n  rise lineage report")]
    Lineage {
        /// Result id, artifact id, hex prefix, or stage name.
        what: String,
        /// Pipeline name, to pick among stages of the same name.
        #[arg(long)]
        pipeline: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },

    /// Verify the store: every blob, lineage closure; optionally a determinism re-run or a lock file.
    #[command(
        long_about = "Audit the store. Always: re-hash every blob and check every result (as \
`rise store verify`), and check lineage closure: every input artifact of every result must have a \
producing result or be pinned.\n\n--rerun STAGE (with --pipeline FILE) re-executes that stage in a \
temporary store seeded with its inputs' artifacts and compares the output id with the stored \
result: it prints \"reproducible\" or the differing files.\n\n--lock FILE checks that, for every \
stage in the lock file, this store's result for the same key has the same output.",
        after_help = "Examples:\n  rise audit\n  rise audit --pipeline pipelines/rise.toml --rerun self.iter1.grade\n  \
rise audit --lock rise.lock\n\nExit status: 0 clean; 1 a problem was found."
    )]
    Audit(AuditArgs),

    /// Write (or print) the pipeline's lock file: stage -> key -> output id, for git.
    #[command(
        long_about = "Write the pipeline's lock: for every stage, its cache key and output artifact \
id, as deterministic TOML (sorted, no timestamps), so two machines that ran the same pipeline can \
compare with `diff` or `rise audit --lock`. Every stage must have a result: run the pipeline first.",
        after_help = "Examples:\n  rise lock pipelines/rise.toml -o rise.lock\n  rise lock pipelines/rise.toml | diff - rise.lock"
    )]
    Lock {
        #[command(flatten)]
        p: PipelineArgs,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct PipelineArgs {
    /// The pipeline file.
    #[arg(help = PIPELINE_HELP)]
    pub pipeline: PathBuf,
    /// JSON output for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    p: PipelineArgs,
    /// Stages to execute at once.
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Device for torch stages: cpu, cuda, cuda:N (default: the pipeline's `device`, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// Threads per stage (default: cores / jobs). Not part of cache keys.
    #[arg(long)]
    threads: Option<usize>,
    /// Run only this stage and what it needs (repeatable).
    #[arg(long = "stage", value_name = "STAGE")]
    stages: Vec<String>,
    /// Where stages execute: local, or slurm (one sbatch job per stage); default: the
    /// pipeline's `executor`, else local. Not part of cache keys.
    #[arg(long, value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// This machine's GPUs for the local executor, e.g. `--gpus 0,1,2,3`: one GPU stage per
    /// GPU at once (the shards of a sharded stage side by side), each seeing only its own card
    /// (CUDA_VISIBLE_DEVICES). Default: one GPU stage at a time. Not part of cache keys.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    gpus: Vec<String>,
    /// Plain progress lines even on a terminal.
    #[arg(long, conflicts_with = "quiet")]
    plain: bool,
    /// No progress output (the run log in the store is still written).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Re-execute this stage in a temporary store and compare its output (needs --pipeline).
    #[arg(long, value_name = "STAGE", requires = "pipeline")]
    rerun: Option<String>,
    /// The pipeline file, for --rerun.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    /// Compare the store's results with this lock file.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Skip re-hashing every blob (only lineage, --rerun, --lock).
    #[arg(long)]
    no_verify: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl Command {
    /// Whether this command may execute stages (`run`, `audit --rerun`): it must then outlive
    /// a closed stdout, to stop its stage processes and finish its commits.
    pub fn runs_stages(&self) -> bool {
        match self {
            Command::Run(_) => true,
            Command::Audit(args) => args.rerun.is_some(),
            _ => false,
        }
    }
}

pub fn run(cmd: Command, global: &Global) -> Result<ExitCode> {
    match cmd {
        Command::Run(args) => run::run(args, global),
        Command::Plan(p) => plan::plan(&p, global),
        Command::Explain { p, stage } => plan::explain(&p, &stage, global),
        Command::Status(p) => plan::status(&p, global),
        Command::Dag { p, dot } => plan::dag(&p, dot),
        Command::Show {
            what,
            pipeline,
            json,
        } => show::show(&what, pipeline.as_deref(), json, global),
        Command::Lineage {
            what,
            pipeline,
            json,
        } => show::lineage(&what, pipeline.as_deref(), json, global),
        Command::Export { what, to, pipeline } => {
            show::export(&what, &to, pipeline.as_deref(), global)
        }
        Command::Audit(args) => audit::audit(args, global),
        Command::Lock { p, output } => lock::lock(&p, output, global),
    }
}

/// Parse and validate before touching the store, so a bad file leaves the store unchanged.
/// Content hashes of large files named by params (checkpoints) are remembered in the store's
/// `cache/` once the store exists, so later commands do not read them again.
/// `rise dag` passes no store: it computes no keys worth remembering.
fn load(path: &Path, registry: &Registry, store: Option<&Path>) -> Result<Resolved> {
    let pipeline = Pipeline::load(path).map_err(|e| anyhow!("{e}"))?;
    let cache = store
        .and_then(Store::cache_dir)
        .map(|dir| HashCache::open(&dir));
    let resolved =
        resolve_with_cache(pipeline, registry, cache.as_ref()).map_err(|e| anyhow!("{e}"))?;
    if let Some(cache) = &cache {
        cache.save();
    }
    Ok(resolved)
}

fn open_store(global: &Global) -> Result<Store> {
    let root = std::path::absolute(&global.store).unwrap_or_else(|_| global.store.clone());
    Store::open(&root).with_context(|| format!("cannot open store {}", global.store.display()))
}

/// Pretty JSON of a report. Through a `Value`, whose objects are sorted by key (serde_json
/// without `preserve_order`), so the output's key order is what it always was, whatever the
/// order of the report's fields.
fn print_json(report: &impl Serialize) -> Result<()> {
    let v = serde_json::to_value(report)?;
    outln!("{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

/// Left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> Result<()> {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        outln!("{}", out.trim_end())?;
        Ok(())
    };
    line(header.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}
