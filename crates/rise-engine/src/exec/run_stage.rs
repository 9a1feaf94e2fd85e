//! Executing one stage whose key missed the cache: lock the key, re-check the live index,
//! prepare the stage's directories, log and context, dispatch to [`run_shell`], [`run_worker`]
//! or [`run_in_process`], and hand a successful exit to [`super::commit::commit_stage`].
//!
//! Nothing here knows about the scheduler: [`execute`] takes one stage, its key and its input
//! artifacts, and returns its state with the result committed ([`run_single`] uses it
//! directly).
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rise_store::{ArtifactId, HandedCheckout, StageKey, Store};
use serde_json::{Map, Value};

use super::commit::{commit_stage, Outcome};
use super::{
    hostname, new_run_id, now_rfc3339, stage_log_path, store_err, threads_per_stage, RunError,
    RunOptions, StageEnv, StageState,
};
use crate::child::{run_marked_child, LineSink, StageLog};
use crate::orphans::{StageProcesses, STAGE_TOKEN_VAR};
use crate::plan::{stage_key, Cache, CacheCheck};
use crate::progress::Display;
use crate::protocol::{Event, StageSpec};
use crate::registry::Registry;
use crate::resolve::{Resolved, ResolvedStage};
use crate::shell::shell_command;
use crate::stage::{Execution, Progress, Stage, StageContext, StageError};

/// Execute one stage of `resolved` with the given input artifacts, ignoring any cached result
/// of its key in `store` (used by `rise audit --rerun` on a scratch store seeded with the
/// inputs). The result is committed to `store`.
pub fn run_single(
    resolved: &Resolved,
    registry: &Registry,
    store: &Store,
    opts: &RunOptions,
    stage: usize,
    inputs: BTreeMap<String, ArtifactId>,
) -> Result<StageState, RunError> {
    single(resolved, registry, store, opts, (stage, inputs), true)
}

/// [`run_single`] without taking the key's lock, because the process that asked for this
/// execution holds it for the whole time: a Slurm driver holds each key's lock while the key's
/// job runs (so two drivers on one store submit a key once), and the job, `rise exec-stage`,
/// must not wait for that lock (it would wait for its own driver forever). Only for a job
/// spec that says its driver holds the lock.
pub fn run_single_under_driver_lock(
    resolved: &Resolved,
    registry: &Registry,
    store: &Store,
    opts: &RunOptions,
    stage: usize,
    inputs: BTreeMap<String, ArtifactId>,
) -> Result<StageState, RunError> {
    single(resolved, registry, store, opts, (stage, inputs), false)
}

fn single(
    resolved: &Resolved,
    registry: &Registry,
    store: &Store,
    opts: &RunOptions,
    (stage, inputs): (usize, BTreeMap<String, ArtifactId>),
    take_key_lock: bool,
) -> Result<StageState, RunError> {
    let run_id = new_run_id();
    let cache = Cache::load(store)?;
    let width = resolved.stages[stage].name.len();
    let display = Arc::new(Display::new(opts.display, None, width));
    let env = StageEnv {
        resolved,
        registry,
        store,
        cache: &cache,
        display,
        opts,
        run_id: &run_id,
        threads: threads_per_stage(opts, 1),
        host: hostname(),
        take_key_lock,
    };
    let key = stage_key(&resolved.stages[stage], &inputs);
    let state = execute(&env, stage, key, inputs, None);
    store.sync_index_if_committed()?;
    Ok(state)
}

/// Execute stage `i` under `key` (on the caller's thread) and commit its result. A failure is
/// [`StageState::Failed`], a cancellation [`StageState::NotRun`] (scratch kept).
pub(crate) fn execute(
    env: &StageEnv<'_>,
    i: usize,
    key: StageKey,
    inputs: BTreeMap<String, ArtifactId>,
    gpu: Option<&str>,
) -> StageState {
    let stage = &env.resolved.stages[i];
    let log_path = stage_log_path(env.store, env.run_id, &stage.name);
    let span =
        tracing::info_span!("stage", name = %stage.name, kind = %stage.kind, key = %key.short(12));
    let _enter = span.enter();
    match execute_inner(env, stage, key, inputs, &log_path, gpu) {
        Ok(state) => state,
        Err(err) => {
            let cancelled = err.is_cancelled();
            let error = if cancelled {
                "cancelled".to_string()
            } else {
                err.to_string()
            };
            tracing::debug!("stage {} failed: {error}", stage.name);
            if cancelled {
                env.display.finished(
                    &stage.name,
                    "stopped",
                    "cancelled; scratch kept, nothing committed",
                );
                StageState::NotRun
            } else {
                env.display.finished(
                    &stage.name,
                    "FAILED",
                    &format!("{error} (log: {})", log_path.display()),
                );
                StageState::Failed {
                    error,
                    log: log_path.to_path_buf(),
                }
            }
        }
    }
}

fn execute_inner(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    key: StageKey,
    inputs: BTreeMap<String, ArtifactId>,
    log_path: &Path,
    gpu: Option<&str>,
) -> Result<StageState, StageError> {
    let t_phase = Instant::now();
    let phase = |what: &str| {
        tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: {what}");
    };
    let pipeline = &env.resolved.pipeline.name;
    let what = format!("rise run {pipeline}: stage {}", stage.name);
    let _lock = if env.take_key_lock {
        Some(lock_key(env, &stage.name, &key, &what).map_err(store_err)?)
    } else {
        None
    };
    phase("key locked");
    // Another run may have committed this key while we waited for its lock.
    if let CacheCheck::Hit { result, manifest } = env.cache.check_live(&key).map_err(store_err)? {
        env.display.finished(
            &stage.name,
            "reused",
            &format!("{} (executed by another run)", manifest.output.short(12)),
        );
        return Ok(StageState::Reused {
            result,
            output: manifest.output,
        });
    }
    phase("live lookup done");
    if env.opts.cancel.load(Ordering::SeqCst) {
        return Err(StageError::cancelled());
    }
    let kind = env
        .registry
        .get(&stage.kind)
        .ok_or_else(|| StageError::msg(format!("kind `{}` is not registered", stage.kind)))?;
    let (spec, handed) = prepare_spec(env, stage, &key, &inputs)?;
    phase("dirs and inputs ready");
    let log = open_stage_log(env, stage, &key, log_path)?;
    let metrics: Arc<Mutex<Map<String, Value>>> = Arc::new(Mutex::new(Map::new()));
    let progress = stage_progress(env, stage, &log, &metrics);
    let ctx = StageContext::from_spec(spec, progress, env.opts.cancel.clone());
    phase("log and context ready");
    env.display.started(&stage.name, &stage.kind);
    let started_at = now_rfc3339();
    let t0 = Instant::now();
    match stage.execution {
        Execution::Shell => run_shell(env, &ctx, &key, &log)?,
        Execution::Worker { .. } => run_worker(env, &ctx, &key, &log, gpu)?,
        Execution::InProcess => run_in_process(kind, &ctx)?,
    }
    phase("command finished");
    ctx.check_cancelled()?;
    let outcome = Outcome {
        key,
        inputs,
        handed,
        ctx: &ctx,
        metrics: &metrics,
        started_at,
    };
    let (result, output) = commit_stage(env, stage, outcome, &phase)?;
    let seconds = t0.elapsed().as_secs_f64();
    log.line(&format!(
        "# committed result {result}, output {output}, {seconds:.3}s"
    ));
    env.display.finished(
        &stage.name,
        "done",
        &format!("{} {:.2}s", output.short(12), seconds),
    );
    Ok(StageState::Executed {
        result,
        output,
        seconds,
    })
}

/// Takes `key`'s lock, showing who holds it while waiting.
pub(crate) fn lock_key(
    env: &StageEnv<'_>,
    stage: &str,
    key: &StageKey,
    what: &str,
) -> Result<rise_store::KeyLock, rise_store::StoreError> {
    env.store.lock_key_with(key, what, &mut |holder| {
        let who = holder.map_or("holder unknown".to_string(), |h| {
            format!("pid {} ({}): {}", h.pid, h.what, h.command)
        });
        env.display.waiting(stage, &who);
    })
}

/// The stage's spec: fresh scratch and output directories and its inputs' sealed checkouts,
/// all as absolute paths (stages may change directory, and a relative `--store` would break
/// them); and the checkouts as handed over, to check after the stage exits.
fn prepare_spec(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    key: &StageKey,
    inputs: &BTreeMap<String, ArtifactId>,
) -> Result<(StageSpec, Vec<(String, HandedCheckout)>), StageError> {
    let scratch = std::path::absolute(env.store.scratch_dir(key).map_err(store_err)?)?;
    let out_dir = std::path::absolute(env.store.staging_dir("out").map_err(store_err)?)?;
    let mut input_dirs = BTreeMap::new();
    let mut handed = Vec::with_capacity(inputs.len());
    for (name, id) in inputs {
        // A sealed checkout, checked against its seal (and rebuilt from the blobs if damaged).
        let (dir, checkout) = env
            .store
            .hand_over_checkout(id)
            .map_err(|e| StageError::msg(format!("input {name}: {e}")))?;
        input_dirs.insert(name.clone(), std::path::absolute(dir)?);
        handed.push((name.clone(), checkout));
    }
    let spec = StageSpec {
        pipeline: env.resolved.pipeline.name.clone(),
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        kind_version: stage.kind_version,
        params: stage.params.clone(),
        inputs: input_dirs,
        out_dir,
        scratch_dir: scratch,
        seed: stage.seed,
        device: env.opts.device.clone(),
        threads: env.threads,
    };
    Ok((spec, handed))
}

/// The stage's log file, `logs/<run>/<stage>.log`, opened with its header line.
fn open_stage_log(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    key: &StageKey,
    log_path: &Path,
) -> Result<StageLog, StageError> {
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let log_file = File::create(log_path)
        .map_err(|e| StageError::msg(format!("cannot create log {}: {e}", log_path.display())))?;
    let log = StageLog::new(log_file);
    log.line(&format!(
        "# rise stage {} (kind {} v{}), key {key}, run {}",
        stage.name, stage.kind, stage.kind_version, env.run_id
    ));
    Ok(log)
}

/// Where the stage's events go: metrics into `metrics` (for its result), log lines into its
/// log, the rest to the display.
fn stage_progress(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    log: &StageLog,
    metrics: &Arc<Mutex<Map<String, Value>>>,
) -> Progress {
    let metrics = metrics.clone();
    let log = log.clone();
    let display = env.display.clone();
    let name = stage.name.clone();
    Progress::new(move |event| match event {
        Event::Metric { name, value } => {
            if let Ok(mut m) = metrics.lock() {
                m.insert(name, value);
            }
        }
        Event::Log { msg } => log.line(&msg),
        other => display.event(&name, &other),
    })
}

/// A child's stdout and stderr lines (other than events) go to the stage log.
fn log_sink(log: &StageLog) -> LineSink {
    let log = log.clone();
    Arc::new(move |line: &[u8]| log.bytes(line))
}

/// Child processes carry marks that outlive this engine (a token, their pipes, the stage's
/// directories `dirs`): see `orphans`. Claiming them kills what a killed earlier run of this
/// key left running.
fn claim_processes(
    env: &StageEnv<'_>,
    key: &StageKey,
    stage: &str,
    dirs: &[&Path],
    log: &StageLog,
) -> Result<StageProcesses, StageError> {
    let (processes, reaped) = StageProcesses::claim(env.store, key, env.run_id, stage, dirs)
        .map_err(|e| StageError::with_source("cannot clear processes left by an earlier run", e))?;
    if let Some(reaped) = reaped {
        let note = format!(
            "run {} was killed while running this stage; killed {} of its processes still \
             running, so its scratch has one writer again",
            reaped.run_id, reaped.killed
        );
        log.line(&format!("# {note}"));
        env.display.line(&format!("{stage}: {note}"));
    }
    Ok(processes)
}

/// After a child stage: kill what escaped its process group, noting it in the stage log.
fn finish_processes(processes: StageProcesses, log: &StageLog) {
    match processes.finish() {
        Ok(0) => {}
        Ok(n) => log.line(&format!(
            "# killed {n} processes of this stage still running after it exited"
        )),
        Err(e) => log.line(&format!("# {e}")),
    }
}

/// The `shell` kind: `bash -c CMD` in the pipeline file's directory.
pub(crate) fn run_shell(
    env: &StageEnv<'_>,
    ctx: &StageContext,
    key: &StageKey,
    log: &StageLog,
) -> Result<(), StageError> {
    let sink = log_sink(log);
    let dirs = [ctx.scratch_dir.as_path(), ctx.out_dir.as_path()];
    let mut processes = claim_processes(env, key, &ctx.stage, &dirs, log)?;
    let mut cmd = shell_command(ctx)?;
    cmd.env(STAGE_TOKEN_VAR, processes.token());
    // Commands run where the pipeline file is, so relative script paths in `cmd` mean the same
    // thing whatever directory `rise run` was started from.
    cmd.current_dir(std::path::absolute(env.resolved.pipeline.dir())?);
    let exit = run_marked_child(cmd, &sink, &ctx.progress, &env.opts.cancel, &mut |pipes| {
        processes.mark_pipes(pipes)
    });
    finish_processes(processes, log);
    let exit = exit?;
    if !exit.success() {
        return Err(StageError::msg(exit.failure("command")));
    }
    Ok(())
}

/// A worker kind: `rise-worker stage SPEC`, the spec written to a staging directory.
pub(crate) fn run_worker(
    env: &StageEnv<'_>,
    ctx: &StageContext,
    key: &StageKey,
    log: &StageLog,
    gpu: Option<&str>,
) -> Result<(), StageError> {
    let sink = log_sink(log);
    let worker = env
        .opts
        .worker
        .as_ref()
        .map_err(|why| StageError::msg(why.clone()))?;
    let spec_dir = env.store.staging_dir("spec").map_err(store_err)?;
    let spec_path = spec_dir.join("spec.json");
    ctx.spec
        .write(&spec_path)
        .map_err(|e| StageError::msg(e.to_string()))?;
    let dirs = [
        ctx.scratch_dir.as_path(),
        ctx.out_dir.as_path(),
        spec_dir.as_path(),
    ];
    let mut processes = claim_processes(env, key, &ctx.stage, &dirs, log)?;
    let mut cmd = Command::new(worker);
    cmd.arg("stage")
        .arg(&spec_path)
        .env(STAGE_TOKEN_VAR, processes.token());
    if let Some(gpu) = gpu {
        // `--gpus`: this stage's one card; `cuda` (or `cuda:0`) in the stage is that card.
        cmd.env("CUDA_VISIBLE_DEVICES", gpu);
        log.line(&format!("# CUDA_VISIBLE_DEVICES={gpu}"));
    }
    let exit = run_marked_child(cmd, &sink, &ctx.progress, &env.opts.cancel, &mut |pipes| {
        processes.mark_pipes(pipes)
    });
    finish_processes(processes, log);
    let exit = exit?;
    let _ = std::fs::remove_dir_all(&spec_dir);
    if !exit.success() {
        return Err(StageError::msg(
            exit.failure(&format!("{} stage", worker.display())),
        ));
    }
    Ok(())
}

/// An in-process kind: its `run` on this thread, a panic turned into the stage's failure.
pub(crate) fn run_in_process(kind: &dyn Stage, ctx: &StageContext) -> Result<(), StageError> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kind.run(ctx)));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(StageError::msg(format!("stage panicked: {msg}")))
        }
    }
}
