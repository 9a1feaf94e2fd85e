//! Scheduling a run: which stage is looked up, skipped, taken from a twin or handed to the
//! [`Executor`], and when.
//!
//! The scheduler walks the stages in topological order until nothing more can start, then
//! waits for one running stage to report back, and repeats. A stage starts when its inputs
//! have outputs, its key has no valid result, fewer than `jobs` stages run, and (for a GPU
//! stage) no other GPU stage runs. A failed or skipped input skips the stage; independent
//! branches keep going. Once `cancel` is set nothing new starts.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rise_store::{ArtifactId, StageKey, Store};
use serde_json::json;

use super::commit::adopt;
use super::slurm::Slurm;
use super::{
    hostname, new_run_id, now_rfc3339, threads_per_stage, Executor, ExecutorKind, Local, RunError,
    RunOptions, RunSummary, StageEnv, StageReport, StageState, ENGINE_VERSION,
};
use crate::plan::{stage_key, Cache, CacheCheck};
use crate::progress::Display;
use crate::registry::Registry;
use crate::resolve::{Resolved, ResolvedStage};

/// Run `resolved` on `store`. Stage failures are reported in the summary, not as `Err`.
pub fn run(
    resolved: &Resolved,
    registry: &Registry,
    store: &Store,
    opts: &RunOptions,
) -> Result<RunSummary, RunError> {
    let run_id = new_run_id();
    let _run_lock = store.run_lock_shared()?;
    let (log, log_path) = create_run_log(store, &run_id)?;
    let width = resolved
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(8);
    let display = Arc::new(Display::new(opts.display, Some(log), width));
    display.to_log(&format!(
        "run {run_id}: pipeline {} ({}), jobs {}, device {}",
        resolved.pipeline.name,
        resolved.pipeline.path.display(),
        opts.jobs,
        opts.device
    ));
    let started_at = now_rfc3339();
    let cache = Cache::load(store)?;
    let selected = select(resolved, &opts.targets)?;
    let env = StageEnv {
        resolved,
        registry,
        store,
        cache: &cache,
        display: display.clone(),
        opts,
        run_id: &run_id,
        threads: threads_per_stage(opts, opts.jobs.max(1)),
        host: hostname(),
        take_key_lock: true,
    };
    let mut scheduler = Scheduler::new(&env, selected, opts.jobs.max(1));
    match &opts.executor {
        ExecutorKind::Local => std::thread::scope(|scope| {
            let mut local = Local::new(scope, &env);
            scheduler.run(&env, &mut local)
        })?,
        ExecutorKind::Slurm(slurm) => {
            let mut slurm = Slurm::new(&env, slurm);
            scheduler.run(&env, &mut slurm)?
        }
    }
    // Commits only write their markers; index them once for the whole run so that the next
    // reader does not pay for it.
    store.sync_index_if_committed()?;

    let summary = RunSummary {
        run_id: run_id.clone(),
        pipeline: resolved.pipeline.name.clone(),
        stages: scheduler.reports(),
        cancelled: opts.cancel.load(Ordering::SeqCst),
        log: log_path,
    };
    let record = json!({
        "run_id": run_id,
        "pipeline": resolved.pipeline.name,
        "file": resolved.pipeline.path.display().to_string(),
        "started_at": started_at,
        "finished_at": now_rfc3339(),
        "host": env.host,
        "engine_version": ENGINE_VERSION,
        "cancelled": summary.cancelled,
        "success": summary.success(),
        "stages": summary.stages,
    });
    display.to_log(&format!("run {run_id} finished: {:?}", summary.counts()));
    display.flush();
    store.record_run(&run_id, &record)?;
    Ok(summary)
}

/// The run's log file, `logs/<run>.log`.
fn create_run_log(store: &Store, run_id: &str) -> Result<(File, PathBuf), RunError> {
    let logs = store.logs_dir();
    std::fs::create_dir_all(&logs).map_err(|source| RunError::Io {
        op: "create",
        path: logs.clone(),
        source,
    })?;
    let log_path = logs.join(format!("{run_id}.log"));
    let log = File::create(&log_path).map_err(|source| RunError::Io {
        op: "create",
        path: log_path.clone(),
        source,
    })?;
    Ok((log, log_path))
}

/// Which stages the run covers: all of them, or the targets and everything they need.
fn select(resolved: &Resolved, targets: &[String]) -> Result<Vec<bool>, RunError> {
    let mut selected = vec![targets.is_empty(); resolved.stages.len()];
    for t in targets {
        let i = resolved.find(t).map_err(RunError::UnknownStage)?;
        for a in resolved.ancestors(i) {
            selected[a] = true;
        }
    }
    Ok(selected)
}

/// What the scheduler does with a stage it looks at.
enum Step {
    /// Nothing yet (not selected, finished, inputs pending, no free slot, cancelled).
    Wait,
    /// Its state was settled without executing it (skipped, cached, taken from a twin).
    Settled,
    /// Hand it to the executor with these input artifacts.
    Launch(StageKey, BTreeMap<String, ArtifactId>),
}

/// The scheduler's state over one run, by stage index.
struct Scheduler<'e> {
    resolved: &'e Resolved,
    selected: Vec<bool>,
    jobs: usize,
    /// `None`: not settled yet. A running stage is `Some(NotRun)` until its thread reports
    /// back, so it is neither rescheduled nor treated as finished.
    states: Vec<Option<StageState>>,
    keys: Vec<Option<StageKey>>,
    /// Whether the per-run cache was asked about the stage's key (once per stage).
    checked: Vec<bool>,
    running: usize,
    /// GPU stages running.
    gpu_running: usize,
    /// How many GPU stages the executor runs at once (`None`: any number).
    gpu_limit: Option<usize>,
    /// Twin keys (stages whose kind, params and inputs are identical) execute once per run: a
    /// twin waits while its key runs, then takes the result.
    executing: HashMap<StageKey, usize>,
    finished_keys: HashMap<StageKey, usize>,
}

impl<'e> Scheduler<'e> {
    fn new(env: &StageEnv<'e>, selected: Vec<bool>, jobs: usize) -> Self {
        let n = env.resolved.stages.len();
        Scheduler {
            resolved: env.resolved,
            selected,
            jobs,
            states: vec![None; n],
            keys: vec![None; n],
            checked: vec![false; n],
            running: 0,
            gpu_running: 0,
            gpu_limit: Some(1),
            executing: HashMap::new(),
            finished_keys: HashMap::new(),
        }
    }

    /// Start what can start, wait for running stages, repeat until nothing runs.
    fn run(&mut self, env: &StageEnv<'_>, executor: &mut dyn Executor) -> Result<(), RunError> {
        self.gpu_limit = executor.gpu_stages_at_once();
        let mut cancel_sent = false;
        loop {
            let cancelled = env.opts.cancel.load(Ordering::SeqCst);
            if cancelled && !cancel_sent {
                executor.cancel();
                cancel_sent = true;
            }
            let mut progressed = true;
            while progressed {
                progressed = false;
                for idx in 0..self.resolved.order.len() {
                    let i = self.resolved.order[idx];
                    match self.step(env, i, cancelled)? {
                        Step::Wait => {}
                        Step::Settled => progressed = true,
                        Step::Launch(key, inputs) => {
                            executor.submit(i, key, inputs);
                            progressed = true;
                        }
                    }
                }
            }
            if self.running == 0 {
                break;
            }
            for (i, state) in executor.poll() {
                self.finished(env, i, state)?;
            }
        }
        Ok(())
    }

    /// Look at stage `i`: settle it, launch it, or leave it for later.
    fn step(&mut self, env: &StageEnv<'_>, i: usize, cancelled: bool) -> Result<Step, RunError> {
        // Finished, running or not needed.
        if self.states[i].is_some() || !self.selected[i] {
            return Ok(Step::Wait);
        }
        let resolved = self.resolved;
        let stage = &resolved.stages[i];
        if let Some(because) = self.failed_input(stage) {
            env.display.finished(
                &stage.name,
                "skipped",
                &format!("input from {because} is missing"),
            );
            self.states[i] = Some(StageState::Skipped { because });
            return Ok(Step::Settled);
        }
        let Some(inputs) = self.ready_inputs(stage) else {
            return Ok(Step::Wait);
        };
        if cancelled {
            return Ok(Step::Wait);
        }
        let key = *self.keys[i].get_or_insert_with(|| stage_key(stage, &inputs));
        if let Some(&twin) = self.finished_keys.get(&key) {
            let twin_state = self.states[twin].as_ref();
            self.states[i] = Some(take_twin(env, stage, &resolved.stages[twin], twin_state)?);
            return Ok(Step::Settled);
        }
        if self.executing.contains_key(&key) {
            return Ok(Step::Wait);
        }
        if !self.checked[i] {
            self.checked[i] = true;
            if let Some(state) = check_cache(env, stage, &key)? {
                self.states[i] = Some(state);
                return Ok(Step::Settled);
            }
        }
        let gpu = stage.execution.uses_gpu();
        let gpus_full = self.gpu_limit.is_some_and(|n| self.gpu_running >= n);
        if self.running >= self.jobs || (gpu && gpus_full) {
            return Ok(Step::Wait);
        }
        self.running += 1;
        self.gpu_running += usize::from(gpu);
        self.executing.insert(key, i);
        self.states[i] = Some(StageState::NotRun);
        Ok(Step::Launch(key, inputs))
    }

    /// The name of an input's producer that failed or was skipped, if any.
    fn failed_input(&self, stage: &ResolvedStage) -> Option<String> {
        let bad = stage.inputs.values().find(|&&p| {
            matches!(
                self.states[p],
                Some(StageState::Failed { .. }) | Some(StageState::Skipped { .. })
            )
        })?;
        Some(self.resolved.stages[*bad].name.clone())
    }

    /// The stage's input artifacts, once every producer has an output.
    fn ready_inputs(&self, stage: &ResolvedStage) -> Option<BTreeMap<String, ArtifactId>> {
        let mut inputs = BTreeMap::new();
        let mut ready = true;
        for (name, &p) in &stage.inputs {
            match self.states[p].as_ref().and_then(StageState::output) {
                Some(id) => {
                    inputs.insert(name.clone(), id);
                }
                None => ready = false,
            }
        }
        ready.then_some(inputs)
    }

    /// Stage `i`'s executor reported `state`.
    fn finished(
        &mut self,
        env: &StageEnv<'_>,
        i: usize,
        state: StageState,
    ) -> Result<(), RunError> {
        let state = match state {
            // Another run executed the key while this one waited for its lock: the result is
            // still this pipeline stage's latest, which `rise show`, `rise status` and gc's
            // roots go by (without it, gc deleted the result of a finished pipeline).
            StageState::Reused { result, output } => {
                let manifest = env.store.read_result(&result)?;
                let result = adopt(env, &self.resolved.stages[i], result, manifest)?;
                StageState::Reused { result, output }
            }
            other => other,
        };
        self.running -= 1;
        if self.resolved.stages[i].execution.uses_gpu() {
            self.gpu_running -= 1;
        }
        if let Some(key) = self.keys[i] {
            self.executing.remove(&key);
            if !matches!(state, StageState::NotRun) {
                self.finished_keys.insert(key, i);
            }
        }
        self.states[i] = Some(state);
        Ok(())
    }

    /// The selected stages' reports, in topological order.
    fn reports(&mut self) -> Vec<StageReport> {
        let resolved = self.resolved;
        resolved
            .order
            .iter()
            .filter(|&&i| self.selected[i])
            .map(|&i| StageReport {
                stage: resolved.stages[i].name.clone(),
                kind: resolved.stages[i].kind.clone(),
                key: self.keys[i],
                state: match self.states[i].take() {
                    Some(StageState::NotRun) | None => StageState::NotRun,
                    Some(s) => s,
                },
            })
            .collect()
    }
}

/// The per-run cache's answer for `key`: `Some(Cached)` on a valid result (made this pipeline
/// stage's latest), `None` when the stage must execute.
fn check_cache(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    key: &StageKey,
) -> Result<Option<StageState>, RunError> {
    match env.cache.check(key)? {
        CacheCheck::Hit { result, manifest } => {
            env.display.finished(
                &stage.name,
                "cached",
                &manifest.output.short(12).to_string(),
            );
            let result = adopt(env, stage, result, (*manifest).clone())?;
            Ok(Some(StageState::Cached {
                result,
                output: manifest.output,
            }))
        }
        CacheCheck::Invalid { problem } => {
            env.display.line(&format!(
                "cached result of {} is unusable, re-running: {problem}",
                stage.name
            ));
            Ok(None)
        }
        CacheCheck::Miss => Ok(None),
    }
}

/// The state of stage `stage` whose twin `twin` (same key) finished in this run: its result,
/// adopted under this stage's name, or its failure.
fn take_twin(
    env: &StageEnv<'_>,
    stage: &ResolvedStage,
    twin: &ResolvedStage,
    twin_state: Option<&StageState>,
) -> Result<StageState, RunError> {
    let same = format!("same key as {}", twin.name);
    let result = match twin_state {
        Some(
            StageState::Executed { result, .. }
            | StageState::Cached { result, .. }
            | StageState::Reused { result, .. },
        ) => *result,
        Some(StageState::Failed { error, log }) => {
            env.display
                .finished(&stage.name, "FAILED", &format!("{same}, which failed"));
            return Ok(StageState::Failed {
                error: format!("{same}, which failed: {error}"),
                log: log.clone(),
            });
        }
        Some(StageState::Skipped { because }) => {
            return Ok(StageState::Skipped {
                because: because.clone(),
            })
        }
        Some(StageState::NotRun) | None => return Ok(StageState::NotRun),
    };
    let manifest = env.store.read_result(&result)?;
    let output = manifest.output;
    env.display.finished(
        &stage.name,
        "cached",
        &format!("{} ({same})", output.short(12)),
    );
    let result = adopt(env, stage, result, manifest)?;
    Ok(StageState::Cached { result, output })
}
