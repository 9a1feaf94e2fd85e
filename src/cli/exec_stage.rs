//! `rise exec-stage SPEC`: execute and commit one stage from a job spec, as a batch job on a
//! compute node does (#15). This is the `rise` binary (no libtorch): torch stages still run in
//! `rise-worker` under the child protocol.
//!
//! The pipeline is re-resolved from its file and the stage's key recomputed; a key other than
//! the spec's (the pipeline or a file it names changed since submission) runs nothing. The
//! stage then runs as in a local run: under its key's lock (a key already committed meanwhile
//! is reused, not re-run), outputs hashed into the store where they were written, committed in
//! the usual order. Last, the `done` record is written atomically for the driver.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rise_engine::exec::{self, RunOptions, StageState};
use rise_engine::hash_cache::HashCache;
use rise_engine::job::{self, DoneRecord, JobOutcome, JOB_FORMAT};
use rise_engine::pipeline::Pipeline;
use rise_engine::plan::{stage_key, Cache, CacheCheck};
use rise_engine::progress::DisplayMode;
use rise_engine::resolve::resolve_with_cache;
use rise_engine::Registry;
use rise_store::Store;

use super::Global;

#[derive(clap::Args)]
pub struct Args {
    /// The job spec (JSON: pipeline file, stage, key, inputs, device, threads, where to write
    /// the done record), written by the driver that submitted the job.
    spec: PathBuf,
}

pub fn run(args: Args, global: &Global) -> Result<ExitCode> {
    let spec = job::read_spec(&args.spec)?;
    let root = std::path::absolute(&global.store).unwrap_or_else(|_| global.store.clone());
    if Store::cache_dir(&root).is_none() {
        // A job never creates a store: a wrong --store on a compute node is an error.
        bail!("no rise store at {}", root.display());
    }
    let store =
        Store::open(&root).with_context(|| format!("cannot open store {}", root.display()))?;
    let mut registry = Registry::new();
    rise_stages::register_all(&mut registry);
    let pipeline = Pipeline::load(&spec.pipeline).map_err(|e| anyhow!("{e}"))?;
    let cache = Store::cache_dir(&root).map(|dir| HashCache::open(&dir));
    let resolved =
        resolve_with_cache(pipeline, &registry, cache.as_ref()).map_err(|e| anyhow!("{e}"))?;
    if let Some(cache) = &cache {
        cache.save();
    }
    let i = resolved
        .stages
        .iter()
        .position(|s| s.name == spec.stage)
        .ok_or_else(|| {
            anyhow!(
                "{}: no stage {:?} (job spec {})",
                spec.pipeline.display(),
                spec.stage,
                args.spec.display()
            )
        })?;
    let key = stage_key(&resolved.stages[i], &spec.inputs);
    if key != spec.key {
        bail!(
            "stage {} of {} now has key {}, not the submitted {}: the pipeline or a file it \
             names changed since the job was submitted; nothing was run",
            spec.stage,
            spec.pipeline.display(),
            key.short(12),
            spec.key.short(12)
        );
    }
    let cancel = Arc::new(AtomicBool::new(false));
    exec::install_ctrlc(cancel.clone()).context("cannot install the signal handler")?;
    let opts = RunOptions {
        jobs: 1,
        device: spec.device.clone(),
        threads: spec.threads,
        worker: super::worker::path().map_err(|e| format!("{e:#}")),
        targets: Vec::new(),
        // A batch job's output is a file: log lines, never progress bars.
        display: DisplayMode::Plain,
        cancel,
        executor: exec::ExecutorKind::Local,
        gpus: Vec::new(),
    };
    // A key committed before the job started (a re-submitted job, a requeue after the commit)
    // is not run again: run_single re-checks only for results committed while it waits for
    // the key's lock.
    let cached = match Cache::load(&store)?.check(&key)? {
        CacheCheck::Hit { result, manifest } => Some(StageState::Cached {
            result,
            output: manifest.output,
        }),
        _ => None,
    };
    let state = match cached {
        Some(state) => state,
        // The driver holds the key's lock for this job (see JobSpec::driver_holds_lock).
        None if spec.driver_holds_lock => exec::run_single_under_driver_lock(
            &resolved,
            &registry,
            &store,
            &opts,
            i,
            spec.inputs.clone(),
        )?,
        None => exec::run_single(&resolved, &registry, &store, &opts, i, spec.inputs.clone())?,
    };
    let (outcome, code) = match &state {
        StageState::Executed { .. } | StageState::Cached { .. } | StageState::Reused { .. } => {
            (JobOutcome::Committed, ExitCode::SUCCESS)
        }
        StageState::Failed { .. } => (JobOutcome::Failed, ExitCode::from(1)),
        StageState::NotRun | StageState::Skipped { .. } => {
            (JobOutcome::Cancelled, ExitCode::from(130))
        }
    };
    let result = match &state {
        StageState::Executed { result, .. }
        | StageState::Cached { result, .. }
        | StageState::Reused { result, .. } => Some(*result),
        _ => None,
    };
    let (error, log) = match &state {
        StageState::Failed { error, log } => (Some(error.clone()), Some(log.clone())),
        _ => (None, None),
    };
    let record = DoneRecord {
        format: JOB_FORMAT,
        key,
        outcome,
        result,
        output: state.output(),
        error,
        log,
        host: rise_store::hostname().to_string(),
    };
    job::write_atomic(&spec.done, &record)?;
    Ok(code)
}
