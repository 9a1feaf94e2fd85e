//! Running a pipeline, in three parts:
//!
//! - `schedule`: which stage runs when: topological, parallel (`jobs`), at most one GPU stage
//!   at a time, keeping going on independent branches after a failure, stopping cleanly on
//!   Ctrl-C, executing twin keys once. It decides from cache lookups and hands every stage
//!   whose key missed to an `Executor`, the one seam between scheduling and execution.
//! - `run_stage`: executing one stage: take the key's lock (so two runs on one store execute
//!   a stage once), re-check the live index, prepare its directories and [`StageSpec`], and
//!   dispatch to `run_shell`, `run_worker` or `run_in_process`.
//! - `commit`: after the stage exits: check its inputs are unchanged and its declared outputs
//!   exist, hash the outputs into the store, commit the result and remove the scratch; also
//!   re-attributing a cached result to this run's pipeline stage.
//!
//! [`run`] ties them together for a whole pipeline; [`run_single`] executes and commits one
//! stage without the scheduler.
//!
//! [`StageSpec`]: crate::protocol::StageSpec
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use rise_store::{ArtifactId, ResultId, StageKey, Store, StoreError};
use serde::Serialize;

use crate::plan::Cache;
use crate::progress::{Display, DisplayMode};
use crate::registry::Registry;
use crate::resolve::Resolved;

mod commit;
mod run_stage;
mod schedule;
mod slurm;

pub use run_stage::{run_single, run_single_under_driver_lock};
pub use schedule::run;
pub use slurm::{pipeline_execution, PipelineExecution, SbatchArgs, SlurmOptions};

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
    /// Where stages whose keys miss the cache execute: here, or as Slurm jobs.
    pub executor: ExecutorKind,
    /// `--gpus`: this machine's GPUs (CUDA device ids) for the local executor. As many GPU
    /// stages run at once as there are ids, each with one of them as its only visible device
    /// (`CUDA_VISIBLE_DEVICES`). Empty: one GPU stage at a time, the environment untouched.
    /// Not part of keys.
    pub gpus: Vec<String>,
}

/// Where [`run`] executes stages (not part of keys: the same stage gives the same artifact
/// wherever it runs).
#[derive(Debug, Clone, Default)]
pub enum ExecutorKind {
    /// On this host, as child processes or threads of this process.
    #[default]
    Local,
    /// Each stage as one Slurm batch job running `rise exec-stage`.
    Slurm(Box<SlurmOptions>),
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
            executor: ExecutorKind::Local,
            gpus: Vec::new(),
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

/// What executing a stage needs besides the stage itself: the pipeline, the kinds, the store
/// and its per-run cache, where progress goes, and the run's identity. [`run`] builds one per
/// run, [`run_single`] one for a stage executed alone.
pub(crate) struct StageEnv<'a> {
    pub resolved: &'a Resolved,
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub cache: &'a Cache<'a>,
    pub display: Arc<Display>,
    pub opts: &'a RunOptions,
    pub run_id: &'a str,
    /// Threads each stage may use.
    pub threads: usize,
    pub host: String,
    /// Whether executing a stage takes its key's lock: always, except in a Slurm job whose
    /// driver holds the lock for it (see [`run_single_under_driver_lock`]).
    pub take_key_lock: bool,
}

/// How the scheduler gets stages executed once their keys missed the cache: everything the
/// scheduler knows of execution goes through these three calls, so an executor that runs
/// stages elsewhere (a batch system: [`slurm`]) replaces only this. [`Local`] runs each stage
/// on a thread of this process ([`run_stage::execute`]); failure and cancellation are states,
/// not errors.
pub(crate) trait Executor {
    /// Start executing stage `stage` (an index into [`Resolved::stages`]) under `key` on these
    /// input artifacts; its result is committed before its state comes back from [`poll`].
    /// Returns at once (a stage that cannot even start reports its failure through `poll`).
    ///
    /// [`poll`]: Executor::poll
    fn submit(&mut self, stage: usize, key: StageKey, inputs: BTreeMap<String, ArtifactId>);
    /// Wait until at least one submitted stage has finished and return the finished ones. May
    /// return nothing early when the run's cancel flag is set, so that the scheduler can
    /// [`cancel`](Executor::cancel).
    fn poll(&mut self) -> Vec<(usize, StageState)>;
    /// The run was cancelled: stop every submitted stage (each still reports through `poll`).
    fn cancel(&mut self);
    /// Whether at most one GPU stage may run at a time (one machine's GPU); a batch system
    /// gives each job its own.
    fn one_gpu_stage_at_a_time(&self) -> bool {
        true
    }
    /// How many GPU stages may run at once (`None`: no limit beyond `--jobs`).
    fn gpu_stages_at_once(&self) -> Option<usize> {
        self.one_gpu_stage_at_a_time().then_some(1)
    }
}

/// The local executor: each stage on a scoped thread of this process, reporting through a
/// channel. Cancellation needs nothing here: the signal handler kills the running children
/// and every stage checks the run's cancel flag.
pub(crate) struct Local<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    env: &'env StageEnv<'env>,
    tx: mpsc::Sender<(usize, StageState)>,
    rx: mpsc::Receiver<(usize, StageState)>,
    /// Which of `--gpus` a running stage holds.
    gpu_busy: Vec<bool>,
    /// Running stage -> the index in `--gpus` of the GPU it holds.
    held_gpus: BTreeMap<usize, usize>,
}

impl<'scope, 'env> Local<'scope, 'env> {
    pub(crate) fn new(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        env: &'env StageEnv<'env>,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        Local {
            scope,
            env,
            tx,
            rx,
            gpu_busy: vec![false; env.opts.gpus.len()],
            held_gpus: BTreeMap::new(),
        }
    }
}

impl Executor for Local<'_, '_> {
    fn submit(&mut self, stage: usize, key: StageKey, inputs: BTreeMap<String, ArtifactId>) {
        let (env, tx) = (self.env, self.tx.clone());
        // The first free one (the scheduler starts no more GPU stages than there are GPUs).
        let free = self.gpu_busy.iter().position(|busy| !busy);
        let gpu = match free {
            Some(g) if env.resolved.stages[stage].execution.uses_gpu() => {
                self.gpu_busy[g] = true;
                self.held_gpus.insert(stage, g);
                Some(env.opts.gpus[g].clone())
            }
            _ => None,
        };
        self.scope.spawn(move || {
            let state = run_stage::execute(env, stage, key, inputs, gpu.as_deref());
            let _ = tx.send((stage, state));
        });
    }

    fn poll(&mut self) -> Vec<(usize, StageState)> {
        let mut out = Vec::new();
        if let Ok(first) = self.rx.recv() {
            out.push(first);
            out.extend(self.rx.try_iter());
        }
        for (stage, _) in &out {
            if let Some(g) = self.held_gpus.remove(stage) {
                self.gpu_busy[g] = false;
            }
        }
        out
    }

    fn cancel(&mut self) {}

    fn gpu_stages_at_once(&self) -> Option<usize> {
        Some(self.env.opts.gpus.len().max(1))
    }
}

/// Threads per stage: `--threads`, else the machine's cores shared among `jobs` stages.
fn threads_per_stage(opts: &RunOptions, jobs: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    opts.threads.unwrap_or((cores / jobs).max(1))
}

fn store_err(e: StoreError) -> crate::stage::StageError {
    crate::stage::StageError::with_source(e.to_string(), e)
}

#[cfg(test)]
mod tests;
