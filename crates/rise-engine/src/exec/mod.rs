//! Running a pipeline: topological, parallel (`jobs`), at most one GPU stage at a time, keeping
//! going on independent branches after a failure, stopping cleanly on Ctrl-C.
//!
//! For each stage whose inputs are ready the engine computes its key and checks the per-run
//! [`Cache`]; on a miss it takes the key's lock (so two runs on one store execute a stage once),
//! re-checks the live index, runs the stage into a fresh staging directory, verifies declared
//! outputs, hashes them into the store, commits the result and removes the stage's scratch.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use rise_store::{ArtifactId, ResultId, ResultManifest, StageKey, Store, StoreError};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::child::{run_child, LineSink};
use crate::orphans::{StageProcesses, STAGE_TOKEN_VAR};
use crate::plan::{stage_key, Cache, CacheCheck};
use crate::progress::{Display, DisplayMode};
use crate::protocol::{Event, StageSpec};
use crate::registry::Registry;
use crate::resolve::{Resolved, ResolvedStage};
use crate::shell::shell_command;
use crate::stage::{Execution, Progress, StageContext, StageError};

/// The engine's version, recorded in every result.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages executing at once (>= 1).
    pub jobs: usize,
    /// Device for stages: `cpu`, `cuda`, `cuda:N` (not part of keys).
    pub device: String,
    /// Threads per stage; `None`: the machine's cores divided by `jobs`.
    pub threads: Option<usize>,
    /// The `rise-worker` binary, or why it is unavailable (reported only if a worker stage runs).
    pub worker: Result<PathBuf, String>,
    /// Run only these stages and what they need (empty: all).
    pub targets: Vec<String>,
    /// Progress display.
    pub display: DisplayMode,
    /// Set to stop (Ctrl-C): running children are killed, nothing of them is committed.
    pub cancel: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            device: "cpu".into(),
            threads: None,
            worker: Err("no rise-worker configured".into()),
            targets: Vec::new(),
            display: DisplayMode::Auto,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Errors that stop a run as a whole (a failing stage does not: see [`RunSummary`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the run (log) could not be written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A target stage does not exist.
    #[error("{0}")]
    UnknownStage(String),
}

/// What happened to one stage in a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StageState {
    /// Executed and committed by this run.
    Executed {
        /// The new result.
        result: ResultId,
        /// Its output.
        output: ArtifactId,
        /// Wall time, seconds.
        seconds: f64,
    },
    /// A valid result already existed.
    Cached {
        /// The result.
        result: ResultId,
        /// Its output.
        output: ArtifactId,
    },
    /// Another run executed it while this one waited for the key's lock.
    Reused {
        /// The result.
        result: ResultId,
        /// Its output.
        output: ArtifactId,
    },
    /// Failed; nothing was committed.
    Failed {
        /// Why.
        error: String,
        /// The stage's log file.
        log: PathBuf,
    },
    /// Not run because an input failed or was skipped.
    Skipped {
        /// The failed or skipped producer.
        because: String,
    },
    /// Not run: cancelled, or not needed for the requested targets.
    NotRun,
}

impl StageState {
    /// The output artifact, when the stage has one.
    pub fn output(&self) -> Option<ArtifactId> {
        match self {
            StageState::Executed { output, .. }
            | StageState::Cached { output, .. }
            | StageState::Reused { output, .. } => Some(*output),
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            StageState::Executed { .. } => "executed",
            StageState::Cached { .. } => "cached",
            StageState::Reused { .. } => "reused",
            StageState::Failed { .. } => "failed",
            StageState::Skipped { .. } => "skipped",
            StageState::NotRun => "not run",
        }
    }
}

/// One stage's line in a run summary.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Kind.
    pub kind: String,
    /// Key, when it was computed.
    pub key: Option<StageKey>,
    /// Outcome.
    #[serde(flatten)]
    pub state: StageState,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id (also the name of its record and log in the store).
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Stages in topological order.
    pub stages: Vec<StageReport>,
    /// Whether the run was cancelled.
    pub cancelled: bool,
    /// The run's log file.
    pub log: PathBuf,
}

impl RunSummary {
    /// Stages that failed.
    pub fn failed(&self) -> impl Iterator<Item = &StageReport> {
        self.stages
            .iter()
            .filter(|s| matches!(s.state, StageState::Failed { .. }))
    }

    /// Whether every selected stage has a result.
    pub fn success(&self) -> bool {
        !self.cancelled
            && self.failed().next().is_none()
            && !self
                .stages
                .iter()
                .any(|s| matches!(s.state, StageState::Skipped { .. }))
    }

    /// `executed N, cached N, ...` counts.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for s in &self.stages {
            *out.entry(s.state.label()).or_insert(0) += 1;
        }
        out
    }
}

/// A new run id: UTC time to the millisecond plus the pid, sortable and unique per host.
pub fn new_run_id() -> String {
    let t = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let compact: String = t
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    format!("{}-{}", compact.replace('.', ""), std::process::id())
}

/// Install the handler for Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal, a batch
/// system's stop): the first signal sets `cancel` and kills every running stage's process group
/// (the run then stops cleanly, committing nothing for them, keeping their scratch and writing
/// the cancelled run record); a second one exits at once (still safe: commits are crash-safe,
/// and processes that outlive the engine are killed before their key runs again, see
/// [`crate::orphans`]).
pub fn install_ctrlc(cancel: Arc<AtomicBool>) -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            crate::child::kill_all_children();
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping running stages (interrupt again to exit at once)");
        crate::child::kill_all_children();
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `iter1/train` -> `logs/<run>/iter1/train.log`.
pub fn stage_log_path(store: &Store, run_id: &str, stage: &str) -> PathBuf {
    store.logs_dir().join(run_id).join(format!("{stage}.log"))
}

struct Shared<'a> {
    resolved: &'a Resolved,
    registry: &'a Registry,
    store: &'a Store,
    cache: &'a Cache<'a>,
    display: Arc<Display>,
    opts: &'a RunOptions,
    run_id: &'a str,
    threads: usize,
    host: String,
}

/// Run `resolved` on `store`. Stage failures are reported in the summary, not as `Err`.
pub fn run(
    resolved: &Resolved,
    registry: &Registry,
    store: &Store,
    opts: &RunOptions,
) -> Result<RunSummary, RunError> {
    let run_id = new_run_id();
    let _run_lock = store.run_lock_shared()?;
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

    let n = resolved.stages.len();
    let mut selected = vec![opts.targets.is_empty(); n];
    for t in &opts.targets {
        let i = resolved.find(t).map_err(RunError::UnknownStage)?;
        for a in resolved.ancestors(i) {
            selected[a] = true;
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let jobs = opts.jobs.max(1);
    let shared = Shared {
        resolved,
        registry,
        store,
        cache: &cache,
        display: display.clone(),
        opts,
        run_id: &run_id,
        threads: opts.threads.unwrap_or((cores / jobs).max(1)),
        host: hostname(),
    };

    let mut states: Vec<Option<StageState>> = vec![None; n];
    let mut keys: Vec<Option<StageKey>> = vec![None; n];
    let mut checked = vec![false; n];
    let mut running = 0usize;
    let mut gpu_busy = false;
    // Twin keys (stages whose kind, params and inputs are identical) execute once per run: a
    // twin waits while its key runs, then takes the result.
    let mut executing: HashMap<StageKey, usize> = HashMap::new();
    let mut finished_keys: HashMap<StageKey, usize> = HashMap::new();
    let (tx, rx) = mpsc::channel::<(usize, StageState)>();
    std::thread::scope(|scope| -> Result<(), RunError> {
        loop {
            let cancelled = opts.cancel.load(Ordering::SeqCst);
            let mut progressed = true;
            while progressed {
                progressed = false;
                for &i in &resolved.order {
                    // Finished, running (see mark_running) or not needed.
                    if states[i].is_some() || !selected[i] {
                        continue;
                    }
                    let stage = &resolved.stages[i];
                    if let Some(bad) = stage.inputs.values().find(|&&p| {
                        matches!(
                            states[p],
                            Some(StageState::Failed { .. }) | Some(StageState::Skipped { .. })
                        )
                    }) {
                        let because = resolved.stages[*bad].name.clone();
                        display.finished(
                            &stage.name,
                            "skipped",
                            &format!("input from {because} is missing"),
                        );
                        states[i] = Some(StageState::Skipped { because });
                        progressed = true;
                        continue;
                    }
                    let mut inputs = BTreeMap::new();
                    let mut ready = true;
                    for (name, &p) in &stage.inputs {
                        match states[p].as_ref().and_then(StageState::output) {
                            Some(id) => {
                                inputs.insert(name.clone(), id);
                            }
                            None => ready = false,
                        }
                    }
                    if !ready || cancelled {
                        continue;
                    }
                    let key = *keys[i].get_or_insert_with(|| stage_key(stage, &inputs));
                    if let Some(&twin) = finished_keys.get(&key) {
                        states[i] = Some(take_twin(
                            &shared,
                            stage,
                            &resolved.stages[twin],
                            states[twin].as_ref(),
                        )?);
                        progressed = true;
                        continue;
                    }
                    if executing.contains_key(&key) {
                        continue;
                    }
                    if !checked[i] {
                        checked[i] = true;
                        match cache.check(&key)? {
                            CacheCheck::Hit { result, manifest } => {
                                display.finished(
                                    &stage.name,
                                    "cached",
                                    &manifest.output.short(12).to_string(),
                                );
                                let result = adopt(&shared, stage, result, (*manifest).clone())?;
                                states[i] = Some(StageState::Cached {
                                    result,
                                    output: manifest.output,
                                });
                                progressed = true;
                                continue;
                            }
                            CacheCheck::Invalid { problem } => {
                                display.line(&format!(
                                    "cached result of {} is unusable, re-running: {problem}",
                                    stage.name
                                ));
                            }
                            CacheCheck::Miss => {}
                        }
                    }
                    let gpu = stage.execution.uses_gpu();
                    if running >= jobs || (gpu && gpu_busy) {
                        continue;
                    }
                    running += 1;
                    gpu_busy |= gpu;
                    executing.insert(key, i);
                    let tx = tx.clone();
                    let shared = &shared;
                    scope.spawn(move || {
                        let state = execute(shared, i, key, inputs);
                        let _ = tx.send((i, state));
                    });
                    mark_running(&mut states, i);
                    progressed = true;
                }
            }
            if running == 0 {
                break;
            }
            let Ok((i, state)) = rx.recv() else { break };
            running -= 1;
            if resolved.stages[i].execution.uses_gpu() {
                gpu_busy = false;
            }
            if let Some(key) = keys[i] {
                executing.remove(&key);
                if !matches!(state, StageState::NotRun) {
                    finished_keys.insert(key, i);
                }
            }
            states[i] = Some(state);
        }
        Ok(())
    })?;
    // Commits only write their markers; index them once for the whole run so that the next
    // reader does not pay for it.
    store.sync_index_if_committed()?;

    let cancelled = opts.cancel.load(Ordering::SeqCst);
    let stages: Vec<StageReport> = resolved
        .order
        .iter()
        .filter(|&&i| selected[i])
        .map(|&i| StageReport {
            stage: resolved.stages[i].name.clone(),
            kind: resolved.stages[i].kind.clone(),
            key: keys[i],
            state: match states[i].take() {
                Some(StageState::NotRun) | None => StageState::NotRun,
                Some(s) => s,
            },
        })
        .collect();
    let summary = RunSummary {
        run_id: run_id.clone(),
        pipeline: resolved.pipeline.name.clone(),
        stages,
        cancelled,
        log: log_path,
    };
    let record = json!({
        "run_id": run_id,
        "pipeline": resolved.pipeline.name,
        "file": resolved.pipeline.path.display().to_string(),
        "started_at": started_at,
        "finished_at": now_rfc3339(),
        "host": shared.host,
        "engine_version": ENGINE_VERSION,
        "cancelled": cancelled,
        "success": summary.success(),
        "stages": summary.stages,
    });
    display.to_log(&format!("run {run_id} finished: {:?}", summary.counts()));
    display.flush();
    store.record_run(&run_id, &record)?;
    Ok(summary)
}

/// The state of stage `stage` whose twin `twin` (same key) finished in this run: its result,
/// adopted under this stage's name, or its failure.
fn take_twin(
    sh: &Shared<'_>,
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
            sh.display
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
    let manifest = sh.store.read_result(&result)?;
    let output = manifest.output;
    sh.display.finished(
        &stage.name,
        "cached",
        &format!("{} ({same})", output.short(12)),
    );
    let result = adopt(sh, stage, result, manifest)?;
    Ok(StageState::Cached { result, output })
}

/// Make a cached result this pipeline stage's latest. The index's "latest result of (pipeline,
/// stage)" drives `rise show STAGE`, `rise status` and gc's roots, so after reverting an edit (or
/// reusing another pipeline's result) it must point at the result this run used, not at the
/// newer one that no longer matches. The store has no "repoint latest" operation, so the
/// manifest is re-committed under this pipeline and stage with a fresh `finished_at`: the same
/// key and output, attributed to this run. Nothing is written when latest already matches
/// (the no-op re-run case), nor when latest is another result of the same key and output (a
/// twin stage's: both twins keep their own, and a no-op re-run writes nothing).
fn adopt(
    sh: &Shared<'_>,
    stage: &ResolvedStage,
    result: ResultId,
    manifest: ResultManifest,
) -> Result<ResultId, RunError> {
    let pipeline = &sh.resolved.pipeline.name;
    if let Some(latest) = sh.cache.latest_id(pipeline, &stage.name) {
        if latest == result {
            return Ok(result);
        }
        if let Ok(current) = sh.store.read_result(&latest) {
            if current.key == manifest.key && current.output == manifest.output {
                return Ok(latest);
            }
        }
    }
    let now = now_rfc3339();
    let adopted = ResultManifest {
        pipeline: pipeline.clone(),
        stage: stage.name.clone(),
        started_at: now.clone(),
        finished_at: now,
        run_id: sh.run_id.to_string(),
        ..manifest
    };
    Ok(sh.store.commit_result(&adopted)?)
}

// A running stage is represented by `Some(NotRun)` until its thread reports back, so the
// scheduler neither reschedules it nor treats it as finished.
fn mark_running(states: &mut [Option<StageState>], i: usize) {
    states[i] = Some(StageState::NotRun);
}

/// Execute one stage (on its own thread).
fn execute(
    sh: &Shared<'_>,
    i: usize,
    key: StageKey,
    inputs: BTreeMap<String, ArtifactId>,
) -> StageState {
    let stage = &sh.resolved.stages[i];
    let log_path = stage_log_path(sh.store, sh.run_id, &stage.name);
    let span =
        tracing::info_span!("stage", name = %stage.name, kind = %stage.kind, key = %key.short(12));
    let _enter = span.enter();
    match execute_inner(sh, stage, key, inputs, &log_path) {
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
                sh.display.finished(
                    &stage.name,
                    "stopped",
                    "cancelled; scratch kept, nothing committed",
                );
                StageState::NotRun
            } else {
                sh.display.finished(
                    &stage.name,
                    "FAILED",
                    &format!("{error} (log: {})", log_path.display()),
                );
                StageState::Failed {
                    error,
                    log: log_path,
                }
            }
        }
    }
}

/// After a child stage: kill what escaped its process group, noting it in the stage log.
fn finish_processes(processes: StageProcesses, log: &crate::child::StageLog) {
    match processes.finish() {
        Ok(0) => {}
        Ok(n) => log.line(&format!(
            "# killed {n} processes of this stage still running after it exited"
        )),
        Err(e) => log.line(&format!("# {e}")),
    }
}

/// A stage must not change its inputs: even root, whom the read-only modes do not stop, is
/// caught here by the checkouts' seals before anything is committed, and the damaged checkout is
/// discarded so that the next consumer gets the artifact's true files.
fn check_inputs_unchanged(
    store: &Store,
    inputs: &BTreeMap<String, ArtifactId>,
) -> Result<(), StageError> {
    for (name, id) in inputs {
        let damage = store.checkout_damage(id).map_err(store_err)?;
        if damage.is_empty() {
            continue;
        }
        let repair = match store.remove_checkout(id) {
            Ok(()) => "the checkout was discarded and is rebuilt from the store on next use".into(),
            Err(e) => format!("discarding the checkout failed ({e}): run `rise store verify --repair`"),
        };
        return Err(StageError::msg(format!(
            "the stage changed its input `{name}` ({}); nothing committed; {repair}",
            damage.join("; ")
        )));
    }
    Ok(())
}

fn store_err(e: StoreError) -> StageError {
    StageError::with_source(e.to_string(), e)
}

fn execute_inner(
    sh: &Shared<'_>,
    stage: &ResolvedStage,
    key: StageKey,
    inputs: BTreeMap<String, ArtifactId>,
    log_path: &Path,
) -> Result<StageState, StageError> {
    let t_phase = Instant::now();
    let pipeline = &sh.resolved.pipeline.name;
    let what = format!("rise run {pipeline}: stage {}", stage.name);
    let _lock = sh
        .store
        .lock_key_with(&key, &what, &mut |holder| {
            let who = holder.map_or("holder unknown".to_string(), |h| {
                format!("pid {} ({}): {}", h.pid, h.what, h.command)
            });
            sh.display.waiting(&stage.name, &who);
        })
        .map_err(store_err)?;
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: key locked");
    // Another run may have committed this key while we waited for its lock.
    if let CacheCheck::Hit { result, manifest } = sh.cache.check_live(&key).map_err(store_err)? {
        sh.display.finished(
            &stage.name,
            "reused",
            &format!("{} (executed by another run)", manifest.output.short(12)),
        );
        return Ok(StageState::Reused {
            result,
            output: manifest.output,
        });
    }
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: live lookup done");
    if sh.opts.cancel.load(Ordering::SeqCst) {
        return Err(StageError::cancelled());
    }
    let kind = sh
        .registry
        .get(&stage.kind)
        .ok_or_else(|| StageError::msg(format!("kind `{}` is not registered", stage.kind)))?;
    // Absolute paths: stages may change directory, and a relative --store would break them.
    let scratch = std::path::absolute(sh.store.scratch_dir(&key).map_err(store_err)?)?;
    let out_dir = std::path::absolute(sh.store.staging_dir("out").map_err(store_err)?)?;
    let mut input_dirs = BTreeMap::new();
    for (name, id) in &inputs {
        // A sealed checkout, checked against its seal (and rebuilt from the blobs if damaged).
        let dir = sh
            .store
            .artifact_path(id)
            .map_err(|e| StageError::msg(format!("input {name}: {e}")))?;
        input_dirs.insert(name.clone(), std::path::absolute(dir)?);
    }
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: dirs and inputs ready");
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let log_file = File::create(log_path)
        .map_err(|e| StageError::msg(format!("cannot create log {}: {e}", log_path.display())))?;
    let log = crate::child::StageLog::new(log_file);
    log.line(&format!(
        "# rise stage {} (kind {} v{}), key {key}, run {}",
        stage.name, stage.kind, stage.kind_version, sh.run_id
    ));

    let metrics: Arc<Mutex<Map<String, Value>>> = Arc::new(Mutex::new(Map::new()));
    let progress = {
        let metrics = metrics.clone();
        let log = log.clone();
        let display = sh.display.clone();
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
    };
    let ctx = StageContext {
        pipeline: pipeline.clone(),
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        params: stage.params.clone(),
        inputs: input_dirs,
        out_dir: out_dir.clone(),
        scratch_dir: scratch,
        seed: stage.seed,
        device: sh.opts.device.clone(),
        threads: sh.threads,
        progress: progress.clone(),
        cancel: sh.opts.cancel.clone(),
    };
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: log and context ready");
    sh.display.started(&stage.name, &stage.kind);
    let started_at = now_rfc3339();
    let t0 = Instant::now();
    let sink: LineSink = {
        let log = log.clone();
        Arc::new(move |line: &[u8]| log.bytes(line))
    };
    // Child processes carry a token that outlives this engine: see `orphans`.
    let claim_processes = || -> Result<StageProcesses, StageError> {
        let (processes, reaped) = StageProcesses::claim(sh.store, &key, sh.run_id, &stage.name)
            .map_err(|e| {
                StageError::with_source("cannot clear processes left by an earlier run", e)
            })?;
        if let Some(reaped) = reaped {
            let note = format!(
                "run {} was killed while running this stage; killed {} of its processes still \
                 running, so its scratch has one writer again",
                reaped.run_id, reaped.killed
            );
            log.line(&format!("# {note}"));
            sh.display.line(&format!("{}: {note}", stage.name));
        }
        Ok(processes)
    };
    match stage.execution {
        Execution::Shell => {
            let processes = claim_processes()?;
            let mut cmd = shell_command(&ctx)?;
            cmd.env(STAGE_TOKEN_VAR, processes.token());
            // Commands run where the pipeline file is, so relative script paths in `cmd` mean
            // the same thing whatever directory `rise run` was started from.
            cmd.current_dir(std::path::absolute(sh.resolved.pipeline.dir())?);
            let exit = run_child(cmd, &sink, &progress, &sh.opts.cancel);
            finish_processes(processes, &log);
            let exit = exit?;
            if !exit.success() {
                return Err(StageError::msg(exit.failure("command")));
            }
        }
        Execution::Worker { .. } => {
            let worker = sh
                .opts
                .worker
                .as_ref()
                .map_err(|why| StageError::msg(why.clone()))?;
            let spec_dir = sh.store.staging_dir("spec").map_err(store_err)?;
            let spec_path = spec_dir.join("spec.json");
            let spec = StageSpec {
                pipeline: ctx.pipeline.clone(),
                stage: ctx.stage.clone(),
                kind: ctx.kind.clone(),
                kind_version: stage.kind_version,
                params: ctx.params.clone(),
                inputs: ctx.inputs.clone(),
                out_dir: ctx.out_dir.clone(),
                scratch_dir: ctx.scratch_dir.clone(),
                seed: ctx.seed,
                device: ctx.device.clone(),
                threads: ctx.threads,
            };
            spec.write(&spec_path)
                .map_err(|e| StageError::msg(e.to_string()))?;
            let processes = claim_processes()?;
            let mut cmd = Command::new(worker);
            cmd.arg("stage")
                .arg(&spec_path)
                .env(STAGE_TOKEN_VAR, processes.token());
            let exit = run_child(cmd, &sink, &progress, &sh.opts.cancel);
            finish_processes(processes, &log);
            let exit = exit?;
            let _ = std::fs::remove_dir_all(&spec_dir);
            if !exit.success() {
                return Err(StageError::msg(
                    exit.failure(&format!("{} stage", worker.display())),
                ));
            }
        }
        Execution::InProcess => {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kind.run(&ctx)));
            match outcome {
                Ok(result) => result?,
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    return Err(StageError::msg(format!("stage panicked: {msg}")));
                }
            }
        }
    }
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: command finished");
    ctx.check_cancelled()?;
    check_inputs_unchanged(sh.store, &inputs)?;
    for declared in &stage.outputs {
        if !out_dir.join(declared).exists() {
            return Err(StageError::msg(format!(
                "declared output `{declared}` was not written to $RISE_OUT"
            )));
        }
    }
    let output = sh.store.put_tree(&out_dir).map_err(store_err)?;
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: outputs hashed");
    let metrics = metrics.lock().map(|m| m.clone()).unwrap_or_default();
    let manifest = ResultManifest {
        key,
        pipeline: pipeline.clone(),
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        kind_version: stage.kind_version,
        params: stage.recorded_params.clone(),
        inputs,
        output,
        metrics: Value::Object(metrics),
        engine_version: ENGINE_VERSION.to_string(),
        host: sh.host.clone(),
        device: sh.opts.device.clone(),
        started_at,
        finished_at: now_rfc3339(),
        run_id: sh.run_id.to_string(),
    };
    // Last chance to stop without a commit.
    ctx.check_cancelled()?;
    let result = sh.store.commit_result(&manifest).map_err(store_err)?;
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: committed");
    sh.cache.mark_valid(output);
    sh.cache.record_commit(key, result);
    // An untouched scratch directory is just an empty directory: rmdir it directly and leave
    // anything else to the store.
    if std::fs::remove_dir(&ctx.scratch_dir).is_ok() {
    } else if let Err(e) = sh.store.remove_scratch(&key) {
        tracing::warn!(
            "stage {}: committed, but removing its scratch failed: {e}",
            stage.name
        );
    }
    // The output directory becomes the artifact's sealed checkout (no copy): downstream
    // stages get it from `artifact_path`, checked like any checkout. A failure here costs only
    // a checkout made from the blobs on first use.
    if let Err(e) = sh.store.adopt_checkout(&output, &out_dir) {
        tracing::warn!("stage {}: committed; its output stays unsealed: {e}", stage.name);
    }
    tracing::debug!(stage = %stage.name, ms = t_phase.elapsed().as_secs_f64() * 1e3, "phase: scratch removed");
    let seconds = t0.elapsed().as_secs_f64();
    log.line(&format!(
        "# committed result {result}, output {output}, {seconds:.3}s"
    ));
    sh.display.finished(
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
    let run_id = new_run_id();
    let cache = Cache::load(store)?;
    let width = resolved.stages[stage].name.len();
    let display = Arc::new(Display::new(opts.display, None, width));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let shared = Shared {
        resolved,
        registry,
        store,
        cache: &cache,
        display,
        opts,
        run_id: &run_id,
        threads: opts.threads.unwrap_or(cores),
        host: hostname(),
    };
    let key = stage_key(&resolved.stages[stage], &inputs);
    let state = execute(&shared, stage, key, inputs);
    store.sync_index_if_committed()?;
    Ok(state)
}
