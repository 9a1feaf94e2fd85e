//! Pipeline commands: run, plan, explain, status, dag, show, lineage, audit, lock.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rise_engine::exec::{self, RunOptions, RunSummary, StageState};
use rise_engine::hash_cache::HashCache;
use rise_engine::lock::{LockEntry, LockFile, LockHeader};
use rise_engine::plan::{self, Cache, PlanStatus};
use rise_engine::progress::DisplayMode;
use rise_engine::resolve::{resolve_with_cache, Resolved};
use rise_engine::{key::KEY_SCHEME_VERSION, pipeline::Pipeline, Registry};
use rise_stages::format::HF_MODEL_FILES;
use rise_store::{ArtifactId, IndexSnapshot, ResultId, ResultManifest, Store};
use serde_json::json;

use super::{outln, Global};

/// The stage kinds the `rise` binary knows: the built-in `shell` and every RISE kind.
fn registry() -> Registry {
    let mut registry = Registry::new();
    rise_stages::register_all(&mut registry);
    registry
}

const PIPELINE_HELP: &str =
    "PIPELINE is a TOML file: [pipeline] name/seed, one [stage.NAME] per stage \
(kind, inputs = { INPUT = \"STAGE\" }, params = { ... }), optional [iterations] count/init and \
[iter.stage.NAME] templates instantiated as iter1/NAME, iter2/NAME, ... See README, \"Pipelines\".";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run a pipeline: execute every stage whose cache key has no valid result.
    #[command(
        long_about = "Run a pipeline. Each stage's cache key covers its kind and version, resolved \
params (files named by params by content), input artifacts and seed; a stage runs only if no valid \
result exists for its key, so a no-op re-run executes nothing and an edit re-runs exactly the stages \
it affects. Independent stages run in parallel (--jobs); at most one GPU stage runs at a time.\n\n\
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
rise run pipelines/rise.toml --stage iter1/train     # only that stage and what it needs\n  \
rise run p.toml --json | jq .stages\n\nExit status: 0 all stages have results; 1 a stage failed \
or was skipped; 130 interrupted; 2 the pipeline file or store is unusable."
    )]
    Run(RunArgs),

    /// Show what `rise run` would do, and why each stage would run.
    #[command(after_help = "Example:\n  rise plan pipelines/rise.toml")]
    Plan(PipelineArgs),

    /// Show one stage's key fields next to its last committed result, marking differences.
    #[command(after_help = "Example:\n  rise explain pipelines/rise.toml iter1/train")]
    Explain {
        #[command(flatten)]
        p: PipelineArgs,
        /// The stage, e.g. `iter1/train`.
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
        after_help = "Examples:\n  rise show report\n  rise show iter2/evaluate --json | jq .metrics\n  \
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
        after_help = "Examples:\n  rise export iter2/train --to out/rise-iter2\n  \
python -c \"import transformers as t; t.AutoModelForCausalLM.from_pretrained('out/rise-iter2')\""
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
        after_help = "Examples:\n  rise audit\n  rise audit --pipeline pipelines/rise.toml --rerun iter1/grade\n  \
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
        Command::Run(args) => cmd_run(args, global),
        Command::Plan(p) => cmd_plan(p, global),
        Command::Explain { p, stage } => cmd_explain(p, &stage, global),
        Command::Status(p) => cmd_status(p, global),
        Command::Dag { p, dot } => cmd_dag(p, dot),
        Command::Show {
            what,
            pipeline,
            json,
        } => cmd_show(&what, pipeline.as_deref(), json, global),
        Command::Lineage {
            what,
            pipeline,
            json,
        } => cmd_lineage(&what, pipeline.as_deref(), json, global),
        Command::Export { what, to, pipeline } => {
            cmd_export(&what, &to, pipeline.as_deref(), global)
        }
        Command::Audit(args) => cmd_audit(args, global),
        Command::Lock { p, output } => cmd_lock(p, output, global),
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

fn print_json(v: &serde_json::Value) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// `eprintln!` that does not panic when stderr is closed (there is nowhere else to report).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
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

fn cmd_run(args: RunArgs, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&args.p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let cancel = Arc::new(AtomicBool::new(false));
    exec::install_ctrlc(cancel.clone()).context("cannot install the Ctrl-C handler")?;
    let device = args
        .device
        .or_else(|| resolved.pipeline.device.clone())
        .unwrap_or_else(|| "cpu".into());
    let opts = RunOptions {
        jobs: args.jobs as usize,
        device,
        threads: args.threads,
        worker: super::worker::path().map_err(|e| format!("{e:#}")),
        targets: args.stages,
        display: if args.quiet {
            DisplayMode::Quiet
        } else if args.plain {
            DisplayMode::Plain
        } else {
            DisplayMode::Auto
        },
        cancel,
    };
    let summary = exec::run(&resolved, &registry, &store, &opts)?;
    if args.p.json {
        print_json(&serde_json::to_value(&summary)?)?;
    } else if !args.quiet {
        print_summary(&summary);
    }
    Ok(if summary.cancelled {
        ExitCode::from(130)
    } else if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_summary(summary: &RunSummary) {
    let counts: Vec<String> = summary
        .counts()
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    errln!(
        "run {} of {}: {}",
        summary.run_id,
        summary.pipeline,
        counts.join(", ")
    );
    for s in summary.failed() {
        if let StageState::Failed { error, log } = &s.state {
            errln!("FAILED {}: {error}\n       log: {}", s.stage, log.display());
        }
    }
    let skipped: Vec<&str> = summary
        .stages
        .iter()
        .filter(|s| matches!(s.state, StageState::Skipped { .. }))
        .map(|s| s.stage.as_str())
        .collect();
    if !skipped.is_empty() {
        errln!("skipped (an input failed): {}", skipped.join(", "));
    }
    if summary.cancelled {
        errln!("interrupted: finished stages are committed; run again to continue");
    }
    errln!("run log: {}", summary.log.display());
}

fn cmd_plan(p: PipelineArgs, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let cache = Cache::load(&store)?;
    let entries = plan::plan(&resolved, &cache)?;
    if p.json {
        print_json(&json!({ "pipeline": resolved.pipeline.name, "stages": entries }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let key = e.key.map_or("(after inputs)".to_string(), |k| k.short(12));
            match &e.status {
                PlanStatus::Cached { output, .. } => {
                    vec![
                        e.stage.clone(),
                        e.kind.clone(),
                        "cached".into(),
                        key,
                        format!("output {}", output.short(12)),
                    ]
                }
                PlanStatus::Run { why } => vec![
                    e.stage.clone(),
                    e.kind.clone(),
                    "run".into(),
                    key,
                    why.join("; "),
                ],
            }
        })
        .collect();
    table(&["STAGE", "KIND", "ACTION", "KEY", "WHY"], &rows)?;
    let runs = entries.iter().filter(|e| e.runs()).count();
    outln!("\n{runs} of {} stages would run", entries.len())?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_explain(p: PipelineArgs, stage_name: &str, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let i = resolved.find(stage_name).map_err(|e| anyhow!(e))?;
    let stage = &resolved.stages[i];
    let store = open_store(global)?;
    let cache = Cache::load(&store)?;
    let entries = plan::plan(&resolved, &cache)?;
    let entry = entries
        .iter()
        .find(|e| e.stage == stage.name)
        .context("stage missing from plan")?;
    let outputs: BTreeMap<&str, Option<ArtifactId>> = entries
        .iter()
        .map(|e| {
            (
                e.stage.as_str(),
                match &e.status {
                    PlanStatus::Cached { output, .. } => Some(*output),
                    _ => None,
                },
            )
        })
        .collect();
    let inputs: BTreeMap<String, Option<ArtifactId>> = stage
        .inputs
        .iter()
        .map(|(n, &pi)| {
            (
                n.clone(),
                outputs
                    .get(resolved.stages[pi].name.as_str())
                    .copied()
                    .flatten(),
            )
        })
        .collect();
    let last = cache.latest(&resolved.pipeline.name, &stage.name);
    let now_params = plan::flatten(&stage.recorded_params);
    let then_params = last
        .as_ref()
        .map(|(_, m)| plan::flatten(&m.params))
        .unwrap_or_default();
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "kind".into(),
            stage.kind.clone(),
            last.as_ref().map_or("-".into(), |(_, m)| m.kind.clone()),
        ),
        (
            "kind version".into(),
            stage.kind_version.to_string(),
            last.as_ref()
                .map_or("-".into(), |(_, m)| m.kind_version.to_string()),
        ),
        (
            "seed".into(),
            stage.seed.to_string(),
            "(not recorded)".into(),
        ),
    ];
    let paths: BTreeSet<&String> = now_params.keys().chain(then_params.keys()).collect();
    for path in paths {
        rows.push((
            format!("params.{path}"),
            now_params.get(path).cloned().unwrap_or("(unset)".into()),
            if last.is_some() {
                then_params.get(path).cloned().unwrap_or("(unset)".into())
            } else {
                "-".into()
            },
        ));
    }
    for (name, id) in &inputs {
        let producer = &resolved.stages[stage.inputs[name]].name;
        rows.push((
            format!("input {name} (from {producer})"),
            id.map_or("(will be rebuilt)".into(), |id| id.short(12)),
            last.as_ref()
                .and_then(|(_, m)| m.inputs.get(name))
                .map_or("-".into(), |id| id.short(12)),
        ));
    }
    let why = match &entry.status {
        PlanStatus::Cached { .. } => vec!["cached: a valid result exists for this key".to_string()],
        PlanStatus::Run { why } => why.clone(),
    };
    if p.json {
        print_json(&json!({
            "stage": stage.name,
            "key": entry.key,
            "last_result": last.as_ref().map(|(id, m)| json!({"result": id, "key": m.key, "finished_at": m.finished_at})),
            "status": entry.status,
            "fields": rows.iter().map(|(f, now, then)| json!({"field": f, "now": now, "last": then, "differs": last.is_some() && now != then && f != "seed"})).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "stage {} ({} v{}), defined at {}:{}",
        stage.name,
        stage.kind,
        stage.kind_version,
        resolved.pipeline.path.display(),
        stage.line
    )?;
    outln!(
        "key now:      {}",
        entry
            .key
            .map_or("(known once its inputs are built)".to_string(), |k| k
                .to_string())
    )?;
    match &last {
        Some((id, m)) => outln!(
            "last result:  {id} (key {}, {})",
            m.key.short(12),
            m.finished_at
        )?,
        None => outln!("last result:  none")?,
    }
    outln!()?;
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(f, now, then)| {
            let mark = if last.is_some() && now != then && f != "seed" {
                "*"
            } else {
                ""
            };
            vec![mark.to_string(), f.clone(), now.clone(), then.clone()]
        })
        .collect();
    table(&["", "FIELD", "NOW", "LAST RESULT"], &table_rows)?;
    outln!(
        "\n{}: {}",
        if entry.runs() {
            "will run"
        } else {
            "up to date"
        },
        why.join("; ")
    )?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_status(p: PipelineArgs, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let cache = Cache::load(&store)?;
    let entries = plan::plan(&resolved, &cache)?;
    let running = store.running();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for e in &entries {
        let last = cache.latest(&resolved.pipeline.name, &e.stage);
        let state = match (&e.status, &last) {
            (PlanStatus::Cached { .. }, _) => "up to date",
            (PlanStatus::Run { .. }, Some(_)) => "stale",
            (PlanStatus::Run { .. }, None) => "never run",
        };
        let holder = e.key.and_then(|k| store.key_lock_holder(&k).ok().flatten());
        let state = if holder.is_some() { "running" } else { state };
        rows.push(vec![
            e.stage.clone(),
            state.to_string(),
            last.as_ref()
                .map_or("-".into(), |(_, m)| m.finished_at.clone()),
            last.as_ref()
                .map_or("-".into(), |(_, m)| m.output.short(12)),
        ]);
        out.push(json!({
            "stage": e.stage, "state": state,
            "last_result": last.as_ref().map(|(id, m)| json!({"result": id, "output": m.output, "finished_at": m.finished_at, "metrics": m.metrics})),
            "running_pid": holder.map(|h| h.pid),
        }));
    }
    if p.json {
        print_json(
            &json!({ "pipeline": resolved.pipeline.name, "stages": out, "runs_in_progress": running.iter().map(|h| json!({"pid": h.pid, "command": h.command})).collect::<Vec<_>>() }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    table(&["STAGE", "STATE", "LAST FINISHED", "OUTPUT"], &rows)?;
    for h in &running {
        outln!("run in progress: pid {} ({})", h.pid, h.command)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_dag(p: PipelineArgs, dot: bool) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, None)?;
    if dot {
        outln!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];",
            resolved.pipeline.name.replace('"', "\\\"")
        )?;
        for &i in &resolved.order {
            let s = &resolved.stages[i];
            outln!("  \"{}\" [label=\"{}\\n({})\"];", s.name, s.name, s.kind)?;
        }
        for &i in &resolved.order {
            let s = &resolved.stages[i];
            for (input, &pi) in &s.inputs {
                outln!(
                    "  \"{}\" -> \"{}\" [label=\"{}\"];",
                    resolved.stages[pi].name,
                    s.name,
                    input
                )?;
            }
        }
        outln!("}}")?;
    } else if p.json {
        let stages: Vec<_> = resolved
            .order
            .iter()
            .map(|&i| {
                let s = &resolved.stages[i];
                let inputs: BTreeMap<&String, &str> = s
                    .inputs
                    .iter()
                    .map(|(n, &pi)| (n, resolved.stages[pi].name.as_str()))
                    .collect();
                json!({"stage": s.name, "kind": s.kind, "inputs": inputs, "line": s.line})
            })
            .collect();
        print_json(&json!({ "pipeline": resolved.pipeline.name, "stages": stages }))?;
    } else {
        let rows: Vec<Vec<String>> = resolved
            .order
            .iter()
            .map(|&i| {
                let s = &resolved.stages[i];
                let inputs: Vec<String> = s
                    .inputs
                    .iter()
                    .map(|(n, &pi)| format!("{n} <- {}", resolved.stages[pi].name))
                    .collect();
                vec![
                    s.name.clone(),
                    s.kind.clone(),
                    if inputs.is_empty() {
                        "-".into()
                    } else {
                        inputs.join(", ")
                    },
                ]
            })
            .collect();
        table(&["STAGE", "KIND", "INPUTS"], &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What to do about a damaged result, said wherever one is met.
const DAMAGED_HINT: &str = "run `rise store verify` to list what is damaged, then `rise store \
reindex` to drop damaged results from the index (`rise run` recomputes them)";

/// Every indexed result, read once: the readable ones, and those whose manifest is missing,
/// fails its hash or does not parse. One damaged result affects only the commands that need
/// it, never `show` or `lineage` of the others.
struct Results {
    /// Readable results by id.
    ok: BTreeMap<ResultId, ResultManifest>,
    /// Damaged results and what is wrong with each.
    damaged: BTreeMap<ResultId, String>,
    /// The index (current: it rolls forward every committed marker first).
    index: IndexSnapshot,
}

impl Results {
    fn read(store: &Store) -> Result<Results> {
        let index = store.current_index()?;
        let mut ok = BTreeMap::new();
        let mut damaged = BTreeMap::new();
        for id in &index.results {
            match store.read_result(id) {
                Ok(m) => {
                    ok.insert(*id, m);
                }
                Err(e) if e.is_corruption() => {
                    damaged.insert(*id, e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Results { ok, damaged, index })
    }

    /// Result `id`, or an error saying it is damaged and what to do.
    fn get(&self, id: &ResultId, what: &str) -> Result<(ResultId, ResultManifest)> {
        if let Some(m) = self.ok.get(id) {
            return Ok((*id, m.clone()));
        }
        match self.damaged.get(id) {
            Some(problem) => {
                bail!("{what} is result {id}, which is damaged ({problem}); {DAMAGED_HINT}")
            }
            None => bail!("{what}: result {id} is not in the store"),
        }
    }

    /// `artifact`'s current producer: `Ok(None)` when none is indexed (imported or pinned),
    /// `Err(id, problem)` when it is damaged.
    fn producer(
        &self,
        artifact: &ArtifactId,
    ) -> std::result::Result<Option<(ResultId, &ResultManifest)>, (ResultId, &str)> {
        let Some(id) = self.index.producers.get(artifact) else {
            return Ok(None);
        };
        match (self.ok.get(id), self.damaged.get(id)) {
            (Some(m), _) => Ok(Some((*id, m))),
            (None, Some(problem)) => Err((*id, problem.as_str())),
            (None, None) => Ok(None),
        }
    }

    /// `; N damaged results could not be read (...)`, or nothing.
    fn damaged_note(&self) -> String {
        if self.damaged.is_empty() {
            return String::new();
        }
        let ids: Vec<String> = self.damaged.keys().map(|id| id.short(12)).collect();
        format!(
            "; {} damaged result(s) could not be read ({}): {DAMAGED_HINT}",
            ids.len(),
            ids.join(", ")
        )
    }
}

/// Find a result by id, artifact id, hex prefix, or stage name.
fn find_result(
    results: &Results,
    what: &str,
    pipeline: Option<&str>,
) -> Result<(ResultId, ResultManifest)> {
    let is_hex = what.len() >= 6 && what.chars().all(|c| c.is_ascii_hexdigit());
    if is_hex {
        let lower = what.to_ascii_lowercase();
        let ids: Vec<&ResultId> = results
            .index
            .results
            .iter()
            .filter(|id| id.to_hex().starts_with(&lower))
            .collect();
        match ids.as_slice() {
            [] => {}
            [id] => return results.get(id, &format!("`{what}`")),
            many => bail!(
                "`{what}` is ambiguous: it prefixes {} result ids",
                many.len()
            ),
        }
        // An artifact id: its current producer.
        let artifacts: Vec<(&ArtifactId, &ResultId)> = results
            .index
            .producers
            .iter()
            .filter(|(a, _)| a.to_hex().starts_with(&lower))
            .collect();
        match artifacts.as_slice() {
            [] => {}
            [(a, id)] => return results.get(id, &format!("the producer of artifact {a}")),
            many => bail!(
                "`{what}` is ambiguous: it prefixes {} artifacts",
                many.len()
            ),
        }
    }
    // A stage name: its latest result in the index.
    let latest: Vec<(&(String, String), &ResultId)> = results
        .index
        .latest
        .iter()
        .filter(|((p, st), _)| st == what && pipeline.is_none_or(|want| p == want))
        .collect();
    match latest.as_slice() {
        [((p, st), id)] => results.get(
            id,
            &format!("the latest result of stage {st} (pipeline {p})"),
        ),
        [] => bail!(
            "no result matches `{what}` (give a result id, an artifact id, a hex prefix of 6+ \
             digits, or a stage name that has run){}",
            results.damaged_note()
        ),
        many => bail!(
            "stage `{what}` exists in several pipelines ({}); pick one with --pipeline NAME",
            many.iter()
                .map(|((p, _), _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn cmd_export(what: &str, to: &Path, pipeline: Option<&str>, global: &Global) -> Result<ExitCode> {
    let store = open_store(global)?;
    let results = Results::read(&store)?;
    let (id, m) = find_result(&results, what, pipeline)?;
    let tree = store.read_tree(&m.output)?;
    let has = |name: &str| tree.entries.iter().any(|e| e.path == name);
    let missing: Vec<&str> = ["config.json", "model.safetensors", "tokenizer.json"]
        .into_iter()
        .filter(|f| !has(f))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} ({} stage `{}`, result {id}) is not a model: its output lacks {}",
            what,
            m.kind,
            m.stage,
            missing.join(", ")
        );
    }
    if to.exists() {
        let non_empty = std::fs::read_dir(to)
            .with_context(|| format!("cannot read {}", to.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "{} exists and is not empty; choose a new directory",
                to.display()
            );
        }
    }
    // Copy into a sibling temp directory, then rename: an interrupted export leaves no
    // half-written model under the requested name.
    let parent = std::path::absolute(to)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".rise-export-")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                parent.display()
            )
        })?;
    for entry in tree
        .entries
        .iter()
        .filter(|e| HF_MODEL_FILES.contains(&e.path.as_str()))
    {
        let dest = staging.path().join(&entry.path);
        let mut reader = store.open_blob(&entry.blob)?;
        let mut file = std::fs::File::create(&dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        std::io::copy(&mut reader, &mut file)
            .with_context(|| format!("copying {} (blob {})", entry.path, entry.blob))?;
        file.sync_all()?;
    }
    if to.exists() {
        std::fs::remove_dir(to)
            .with_context(|| format!("cannot replace empty {}", to.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, to)
        .with_context(|| format!("cannot move the export into {}", to.display()))?;
    outln!(
        "exported {} ({}, result {}) to {}",
        m.stage,
        m.kind,
        &id.to_hex()[..12],
        to.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_show(
    what: &str,
    pipeline: Option<&str>,
    json_out: bool,
    global: &Global,
) -> Result<ExitCode> {
    let store = open_store(global)?;
    let results = Results::read(&store)?;
    let (id, m) = find_result(&results, what, pipeline)?;
    let tree = store.read_tree(&m.output)?;
    let path = std::path::absolute(store.artifact_path(&m.output)?)?;
    if json_out {
        print_json(&json!({
            "result": id, "manifest": m, "output_path": path,
            "files": tree.entries.iter().map(|e| json!({"path": e.path, "blob": e.blob, "size": e.size})).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("result   {id}")?;
    outln!(
        "stage    {} (pipeline {}, kind {} v{})",
        m.stage,
        m.pipeline,
        m.kind,
        m.kind_version
    )?;
    outln!("key      {}", m.key)?;
    outln!(
        "run      {} on {} ({}), {} .. {}",
        m.run_id,
        m.host,
        m.device,
        m.started_at,
        m.finished_at
    )?;
    outln!("params")?;
    for (k, v) in plan::flatten(&m.params) {
        outln!("  {k} = {v}")?;
    }
    outln!("inputs")?;
    for (name, a) in &m.inputs {
        let producer = match results.producer(a) {
            Ok(Some((_, pm))) => format!("from {}", pm.stage),
            Ok(None) => "(no producer: imported or pinned)".to_string(),
            Err((pid, _)) => format!("(its producer, result {}, is damaged)", pid.short(12)),
        };
        outln!("  {name} = {a} {producer}")?;
    }
    if m.inputs.is_empty() {
        outln!("  (none)")?;
    }
    outln!("output   {}", m.output)?;
    for e in &tree.entries {
        outln!("  {:<40} {:>10}  {}", e.path, e.size, e.blob.short(16))?;
    }
    outln!("metrics")?;
    for (k, v) in plan::flatten(&m.metrics) {
        outln!("  {k} = {v}")?;
    }
    outln!("path     {}", path.display())?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_lineage(
    what: &str,
    pipeline: Option<&str>,
    json_out: bool,
    global: &Global,
) -> Result<ExitCode> {
    let store = open_store(global)?;
    let results = Results::read(&store)?;
    let (id, m) = find_result(&results, what, pipeline)?;
    let pins: BTreeMap<ArtifactId, String> =
        store.pins()?.into_iter().map(|(n, a)| (a, n)).collect();
    /// The walk's state: what has been printed, so shared ancestors are listed once.
    struct Lineage<'a> {
        results: &'a Results,
        pins: BTreeMap<ArtifactId, String>,
        seen: BTreeSet<ResultId>,
        lines: Vec<String>,
        nodes: Vec<serde_json::Value>,
    }
    impl Lineage<'_> {
        fn walk(
            &mut self,
            id: ResultId,
            m: &ResultManifest,
            depth: usize,
            via: &str,
        ) -> Result<()> {
            let indent = "  ".repeat(depth);
            let repeat = !self.seen.insert(id);
            self.lines.push(format!(
                "{indent}{via}{} [{}] result {} output {}{}",
                m.stage,
                m.kind,
                id.short(12),
                m.output.short(12),
                if repeat { " (see above)" } else { "" }
            ));
            self.nodes.push(json!({"depth": depth, "via": via.trim_end_matches(": "), "stage": m.stage, "kind": m.kind, "result": id, "output": m.output}));
            if repeat {
                return Ok(());
            }
            for (name, a) in &m.inputs {
                match self.results.producer(a) {
                    Ok(Some((pid, pm))) => self.walk(pid, pm, depth + 1, &format!("{name}: "))?,
                    // A damaged producer hides only its own branch of the lineage.
                    Err((pid, problem)) => {
                        self.lines.push(format!(
                            "{indent}  {name}: artifact {} (its producing result {} is damaged: {problem}; {DAMAGED_HINT})",
                            a.short(12),
                            pid.short(12)
                        ));
                        self.nodes.push(json!({"depth": depth + 1, "via": name, "artifact": a, "damaged_result": pid, "problem": problem}));
                    }
                    Ok(None) => {
                        let root = self
                            .pins
                            .get(a)
                            .map_or("no producing result".to_string(), |p| {
                                format!("pinned as {p}")
                            });
                        self.lines.push(format!(
                            "{}  {name}: artifact {} ({root})",
                            indent,
                            a.short(12)
                        ));
                        self.nodes.push(
                            json!({"depth": depth + 1, "via": name, "artifact": a, "root": root}),
                        );
                    }
                }
            }
            Ok(())
        }
    }
    let mut lineage = Lineage {
        results: &results,
        pins,
        seen: BTreeSet::new(),
        lines: Vec::new(),
        nodes: Vec::new(),
    };
    lineage.walk(id, &m, 0, "")?;
    let Lineage { lines, nodes, .. } = lineage;
    if json_out {
        print_json(&json!({ "result": id, "lineage": nodes }))?;
    } else {
        for l in lines {
            outln!("{l}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_audit(args: AuditArgs, global: &Global) -> Result<ExitCode> {
    // Validate the pipeline first: a bad file must not touch the store.
    let registry = registry();
    let resolved = match &args.pipeline {
        Some(p) => Some(load(p, &registry, Some(&global.store))?),
        None => None,
    };
    let lock = match &args.lock {
        Some(path) => Some(LockFile::read(path)?),
        None => None,
    };
    let store = open_store(global)?;
    let mut ok = true;
    let mut report = serde_json::Map::new();
    if !args.no_verify {
        let v = store.verify()?;
        ok &= v.is_clean();
        if !args.json {
            outln!(
                "blobs: {} checked ({} bytes), {} results, {} artifacts: {}",
                v.blobs_checked,
                v.bytes_checked,
                v.results_checked,
                v.artifacts_checked,
                if v.is_clean() {
                    "intact".to_string()
                } else {
                    "PROBLEMS (details: rise store verify)".to_string()
                }
            )?;
            for b in &v.bad_blobs {
                outln!("  bad blob: {}", serde_json::to_string(b)?)?;
            }
            for r in &v.bad_results {
                outln!("  bad result: {}", serde_json::to_string(r)?)?;
            }
        }
        report.insert("verify".into(), serde_json::to_value(&v)?);
    }
    // Lineage closure.
    let results = Results::read(&store)?;
    // Damaged results count as producers of what the index says they made: they are reported
    // as damaged, not as holes in everyone else's lineage.
    let produced: BTreeSet<ArtifactId> = results.index.producers.keys().copied().collect();
    let pinned: BTreeSet<ArtifactId> = store.pins()?.into_iter().map(|(_, a)| a).collect();
    let mut orphans = Vec::new();
    for (id, m) in &results.ok {
        for (name, a) in &m.inputs {
            if !produced.contains(a) && !pinned.contains(a) {
                orphans.push(json!({"result": id, "stage": m.stage, "input": name, "artifact": a}));
            }
        }
    }
    ok &= orphans.is_empty();
    if !args.json {
        outln!(
            "lineage: {} results, {}",
            results.ok.len(),
            if orphans.is_empty() {
                "closed (every input has a producer or a pin)".to_string()
            } else {
                format!("{} inputs without producer or pin", orphans.len())
            }
        )?;
        for o in &orphans {
            outln!(
                "  {} input {} = {} has no producer",
                o["stage"],
                o["input"],
                o["artifact"]
            )?;
        }
    }
    if !results.damaged.is_empty() {
        ok = false;
        if !args.json {
            outln!(
                "damaged results: {} could not be read; {DAMAGED_HINT}",
                results.damaged.len()
            )?;
            for (id, problem) in &results.damaged {
                outln!("  {id}: {problem}")?;
            }
        }
    }
    report.insert("lineage_orphans".into(), json!(orphans));
    report.insert(
        "damaged_results".into(),
        json!(results
            .damaged
            .iter()
            .map(|(id, problem)| json!({"result": id, "problem": problem}))
            .collect::<Vec<_>>()),
    );
    if let Some(lock) = lock {
        let mut diffs = Vec::new();
        for (stage, entry) in &lock.stage {
            let now = match store.lookup(&entry.key) {
                Err(e) if e.is_corruption() => {
                    diffs.push(json!({"stage": stage, "problem": format!("its result is damaged ({e}); {DAMAGED_HINT}")}));
                    continue;
                }
                other => other?,
            };
            match now {
                None => diffs.push(json!({"stage": stage, "problem": "no result for this key in the store"})),
                Some((_, m)) if m.output != entry.output => diffs.push(json!({"stage": stage, "problem": "different output", "lock": entry.output, "store": m.output})),
                Some(_) => {}
            }
        }
        ok &= diffs.is_empty();
        if !args.json {
            outln!(
                "lock {}: {} stages, {}",
                lock.pipeline.name,
                lock.stage.len(),
                if diffs.is_empty() {
                    "all match".to_string()
                } else {
                    format!("{} differ", diffs.len())
                }
            )?;
            for d in &diffs {
                outln!(
                    "  {}: {}",
                    d["stage"].as_str().unwrap_or("?"),
                    d["problem"].as_str().unwrap_or("?")
                )?;
            }
        }
        report.insert("lock_differences".into(), json!(diffs));
    }
    if let (Some(stage), Some(resolved)) = (&args.rerun, &resolved) {
        let outcome = rerun(&store, &registry, resolved, stage)?;
        ok &= outcome["reproducible"].as_bool().unwrap_or(false);
        if !args.json {
            if outcome["reproducible"].as_bool().unwrap_or(false) {
                outln!(
                    "rerun {stage}: reproducible (output {})",
                    outcome["output"].as_str().unwrap_or("?")
                )?;
            } else {
                outln!("rerun {stage}: NOT reproducible")?;
                if let Some(files) = outcome["differing_files"].as_array() {
                    for f in files {
                        outln!("  {}", f.as_str().unwrap_or("?"))?;
                    }
                }
                if let Some(e) = outcome["error"].as_str() {
                    outln!("  {e}")?;
                }
            }
        }
        report.insert("rerun".into(), outcome);
    }
    if args.json {
        report.insert("ok".into(), json!(ok));
        print_json(&serde_json::Value::Object(report))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Re-execute `stage_name` in a temporary store holding only its inputs; compare outputs.
fn rerun(
    store: &Store,
    registry: &Registry,
    resolved: &Resolved,
    stage_name: &str,
) -> Result<serde_json::Value> {
    let i = resolved.find(stage_name).map_err(|e| anyhow!(e))?;
    let cache = Cache::load(store)?;
    let entries = plan::plan(resolved, &cache)?;
    let entry = entries
        .iter()
        .find(|e| e.stage == stage_name)
        .context("stage missing from plan")?;
    let PlanStatus::Cached {
        output: original, ..
    } = entry.status
    else {
        bail!("stage {stage_name} has no current result to compare with: run the pipeline first");
    };
    let stage = &resolved.stages[i];
    // A store inside this process's staging area: removed when `store` is dropped, or at the
    // next open if this process dies.
    let scratch = Store::open(store.staging_dir("audit")?.join("store"))?;
    let mut inputs = BTreeMap::new();
    for (name, &pi) in &stage.inputs {
        let producer = entries
            .iter()
            .find(|e| e.stage == resolved.stages[pi].name)
            .context("input missing from plan")?;
        let PlanStatus::Cached { output, .. } = producer.status else {
            bail!("input {name} has no result")
        };
        let dir = store.artifact_path(&output)?;
        let copied = scratch.put_tree(&dir)?;
        if copied != output {
            bail!("copying input {name} into the temporary store changed its id ({output} -> {copied})");
        }
        inputs.insert(name.clone(), output);
    }
    let opts = RunOptions {
        worker: super::worker::path().map_err(|e| format!("{e:#}")),
        display: DisplayMode::Plain,
        ..RunOptions::default()
    };
    let state = exec::run_single(resolved, registry, &scratch, &opts, i, inputs)?;
    match state {
        StageState::Executed { output, .. }
        | StageState::Reused { output, .. }
        | StageState::Cached { output, .. } => {
            if output == original {
                return Ok(json!({"stage": stage_name, "reproducible": true, "output": output}));
            }
            let a = store.read_tree(&original)?;
            let b = scratch.read_tree(&output)?;
            let mut files = Vec::new();
            let paths: BTreeSet<&str> = a
                .entries
                .iter()
                .chain(&b.entries)
                .map(|e| e.path.as_str())
                .collect();
            for p in paths {
                match (a.get(p), b.get(p)) {
                    (Some(x), Some(y)) if x.blob != y.blob => {
                        files.push(format!("{p}: {} -> {}", x.blob.short(12), y.blob.short(12)))
                    }
                    (Some(_), None) => files.push(format!("{p}: missing in the re-run")),
                    (None, Some(_)) => files.push(format!("{p}: only in the re-run")),
                    _ => {}
                }
            }
            Ok(
                json!({"stage": stage_name, "reproducible": false, "output": original, "rerun_output": output, "differing_files": files}),
            )
        }
        StageState::Failed { error, log } => Ok(
            json!({"stage": stage_name, "reproducible": false, "error": format!("the re-run failed: {error} (log {})", log.display())}),
        ),
        other => Ok(
            json!({"stage": stage_name, "reproducible": false, "error": format!("the re-run did not finish: {other:?}")}),
        ),
    }
}

fn cmd_lock(p: PipelineArgs, output: Option<PathBuf>, global: &Global) -> Result<ExitCode> {
    let registry = registry();
    let resolved = load(&p.pipeline, &registry, Some(&global.store))?;
    let store = open_store(global)?;
    let cache = Cache::load(&store)?;
    let entries = plan::plan(&resolved, &cache)?;
    let mut stages = BTreeMap::new();
    let mut missing = Vec::new();
    for e in &entries {
        match (&e.status, e.key) {
            (PlanStatus::Cached { output, .. }, Some(key)) => {
                stages.insert(
                    e.stage.clone(),
                    LockEntry {
                        key,
                        output: *output,
                    },
                );
            }
            _ => missing.push(e.stage.as_str()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "cannot lock {}: these stages have no current result: {} (run `rise run {}` first)",
            resolved.pipeline.name,
            missing.join(", "),
            p.pipeline.display()
        );
    }
    let lock = LockFile {
        pipeline: LockHeader {
            name: resolved.pipeline.name.clone(),
            key_scheme: KEY_SCHEME_VERSION,
        },
        stage: stages,
    };
    if p.json {
        print_json(&serde_json::to_value(&lock)?)?;
    }
    let text = lock.to_toml();
    match output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None if !p.json => super::out(format_args!("{text}"))?,
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}
