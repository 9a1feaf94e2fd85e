//! The [`Stage`] trait every stage kind implements, and the context a stage runs in.
//!
//! A stage kind is a small, stateless description: which inputs it takes, how its params are
//! validated and defaulted, where it runs ([`Execution`]), and how it runs ([`Stage::run`]).
//! The engine owns everything else: cache keys, scheduling, output hashing and commits.
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::protocol::{Event, StageSpec};

/// Where a stage kind's [`Stage::run`] executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// On a thread of the engine process (pure-Rust, cheap to start: dataset, grade, report).
    InProcess,
    /// In a `rise-worker stage SPEC` child process (torch stages). `gpu: true` stages are run
    /// one at a time, because two of them on one device would fight over its memory.
    Worker {
        /// The stage runs on a GPU: the executor limits how many such stages run at once
        /// (`Executor::gpu_stages_at_once`: one per GPU locally).
        gpu: bool,
    },
    /// `bash -c CMD` (the built-in `shell` kind).
    Shell,
}

impl Execution {
    /// Whether the engine must keep this stage off the GPU while another GPU stage runs.
    pub fn uses_gpu(self) -> bool {
        matches!(self, Execution::Worker { gpu: true })
    }
}

/// The input names a stage kind accepts (`inputs = { NAME = "stage" }` in a pipeline).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputSpec {
    /// Inputs that must be wired.
    pub required: Vec<&'static str>,
    /// Inputs that may be wired.
    pub optional: Vec<&'static str>,
    /// Accept any input names (shell, report): `required` is still enforced.
    pub any: bool,
}

impl InputSpec {
    /// No inputs at all (a source stage).
    pub fn none() -> Self {
        Self::default()
    }

    /// Any input names, none required.
    pub fn any() -> Self {
        InputSpec {
            any: true,
            ..Self::default()
        }
    }

    /// Exactly these required and optional names.
    pub fn named(required: &[&'static str], optional: &[&'static str]) -> Self {
        InputSpec {
            required: required.to_vec(),
            optional: optional.to_vec(),
            any: false,
        }
    }

    /// Whether `name` may be wired.
    pub fn accepts(&self, name: &str) -> bool {
        self.any || self.required.contains(&name) || self.optional.contains(&name)
    }
}

/// A stage kind. Implementations must be deterministic given (params, inputs, seed) for the
/// cache to be sound: anything else that changes outputs must bump [`Stage::version`].
pub trait Stage: Send + Sync {
    /// The name used as `kind = "..."` in pipeline files.
    fn kind(&self) -> &'static str;
    /// Bump when outputs would change for the same params and inputs: it enters every cache key.
    fn version(&self) -> u32;
    /// Where [`Stage::run`] executes.
    fn execution(&self) -> Execution;
    /// Accepted input names.
    fn inputs(&self) -> InputSpec;
    /// Validate params (TOML converted to JSON: the stage's `params` table, with any extra fields
    /// of the `[stage.NAME]` table merged in at the top level) and return them resolved, defaults
    /// filled in. Errors name the field path, e.g. `ParamError::new("params.lr", "expected a float")`.
    fn resolve_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError>;
    /// Fields besides `kind`, `inputs` and `params` that this kind accepts in its
    /// `[stage.NAME]` table (the shell kind's `cmd` and `outputs`). They are merged into the value
    /// given to [`Stage::resolve_params`]; any other field is rejected as a typo.
    fn fields(&self) -> &'static [&'static str] {
        &[]
    }
    /// Relative paths that must exist in the output directory after a successful run.
    fn declared_outputs(&self, _resolved: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }
    /// Dotted paths of resolved params that name files: their content, not their path, enters
    /// the key. The engine checks they exist before anything runs and passes them to the stage
    /// as absolute paths.
    fn file_params(&self, _resolved: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }
    /// Dotted paths of resolved params that name directories (a Hugging Face checkpoint): the
    /// content of every file under them, not the path, enters the key, so replacing a
    /// checkpoint in place re-runs what was built from it. Entries whose name starts with `.`
    /// are left out (`.git`, `.cache`: tool metadata that changes without the content).
    fn dir_params(&self, _resolved: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }
    /// Top-level params that choose how the stage runs, not what it computes (a training
    /// stage's number of data-parallel processes): the stage receives them and results record
    /// them, but they stay out of the cache key, as the thread count and the device do. Only
    /// for params whose every value gives the same output up to what those already allow
    /// (fp32 summation order).
    fn unkeyed_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// Run the stage. Write outputs into `ctx.out_dir` only; keep resumable state in
    /// `ctx.scratch_dir`; poll `ctx.cancel` at convenient points.
    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;
}

/// A param failed validation. `field` is a dotted path such as `params.lr`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    /// Dotted path of the offending field, e.g. `params.sampling.top_p`.
    pub field: String,
    /// What is wrong, e.g. `expected a float in (0, 1], got 1.5`.
    pub message: String,
}

impl ParamError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A stage failed while running.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    message: String,
    cancelled: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StageError {
    /// An error with a message (use `format!` for context: file, line, field).
    pub fn msg(message: impl Display) -> Self {
        StageError {
            message: message.to_string(),
            cancelled: false,
            source: None,
        }
    }

    /// An error with a message and the underlying cause.
    pub fn with_source(
        message: impl Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StageError {
            message: message.to_string(),
            cancelled: false,
            source: Some(Box::new(source)),
        }
    }

    /// The stage stopped because `ctx.cancel` was set (Ctrl-C).
    pub fn cancelled() -> Self {
        StageError {
            message: "cancelled".into(),
            cancelled: true,
            source: None,
        }
    }

    /// Whether this is [`StageError::cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
}

impl From<std::io::Error> for StageError {
    fn from(err: std::io::Error) -> Self {
        StageError {
            message: err.to_string(),
            cancelled: false,
            source: Some(Box::new(err)),
        }
    }
}

impl From<serde_json::Error> for StageError {
    fn from(err: serde_json::Error) -> Self {
        StageError {
            message: err.to_string(),
            cancelled: false,
            source: Some(Box::new(err)),
        }
    }
}

impl From<ParamError> for StageError {
    fn from(err: ParamError) -> Self {
        StageError {
            message: err.to_string(),
            cancelled: false,
            source: None,
        }
    }
}

type Sink = dyn Fn(Event) + Send + Sync;

/// Where a stage's progress, metrics and log lines go. Cheap to clone.
///
/// In the engine process it feeds the progress display and the result's metrics; in a child
/// process ([`Progress::stdout_events`]) it writes [`Event`] JSON lines on stdout, which the
/// engine reads back.
#[derive(Clone)]
pub struct Progress {
    sink: Arc<Sink>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Progress {
    /// Deliver every event to `sink`.
    pub fn new(sink: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Progress {
            sink: Arc::new(sink),
        }
    }

    /// Drop every event (tests, tools).
    pub fn discard() -> Self {
        Progress::new(|_| {})
    }

    /// For child processes: each event becomes one JSON line on stdout, flushed at once so the
    /// engine sees progress live. Whole lines are written under the stdout lock, so events from
    /// several threads never interleave.
    pub fn stdout_events() -> Self {
        Progress::new(|event| {
            use std::io::Write;
            if let Ok(line) = serde_json::to_string(&event) {
                let stdout = std::io::stdout();
                let mut lock = stdout.lock();
                // A closed stdout means the engine went away; the stage notices via cancel/exit.
                let _ = writeln!(lock, "{line}");
                let _ = lock.flush();
            }
        })
    }

    /// Send a raw event.
    pub fn emit(&self, event: Event) {
        (self.sink)(event)
    }

    /// Begin (or restart) a progress bar: `total` units of `unit` (e.g. "steps"), if known.
    pub fn start(&self, total: Option<u64>, unit: &str) {
        self.emit(Event::Start {
            total,
            unit: unit.to_string(),
        })
    }

    /// `n` more units done.
    pub fn advance(&self, n: u64) {
        self.emit(Event::Advance { n })
    }

    /// A short status message shown beside the bar (e.g. "loss 1.93").
    pub fn set_message(&self, msg: &str) {
        self.emit(Event::Message {
            msg: msg.to_string(),
        })
    }
}

/// Everything a running stage may use: its [`StageSpec`] (the same struct `rise-worker stage
/// SPEC` reads, so a stage sees the same fields in the engine process and in a worker), and
/// where its progress goes. Dereferences to the spec: `ctx.params`, `ctx.out_dir`, ...
#[derive(Debug, Clone)]
pub struct StageContext {
    /// Pipeline, stage, kind, params, input and output directories, seed, device, threads.
    pub spec: StageSpec,
    /// Progress and metrics reporting.
    pub progress: Progress,
    /// Set when the run is being cancelled (Ctrl-C).
    pub cancel: Arc<AtomicBool>,
}

impl std::ops::Deref for StageContext {
    type Target = StageSpec;

    fn deref(&self) -> &StageSpec {
        &self.spec
    }
}

impl std::ops::DerefMut for StageContext {
    fn deref_mut(&mut self) -> &mut StageSpec {
        &mut self.spec
    }
}

impl StageContext {
    /// A context around `spec` (what the engine and `rise-worker stage SPEC` do).
    pub fn from_spec(spec: StageSpec, progress: Progress, cancel: Arc<AtomicBool>) -> Self {
        StageContext {
            spec,
            progress,
            cancel,
        }
    }

    /// Record a metric in the result manifest (a later value for the same name replaces it).
    pub fn metric(&self, name: &str, value: serde_json::Value) {
        self.progress.emit(Event::Metric {
            name: name.to_string(),
            value,
        })
    }

    /// A line for the stage's log file.
    pub fn log(&self, msg: impl Display) {
        self.progress.emit(Event::Log {
            msg: msg.to_string(),
        })
    }

    /// Whether the run is being cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(StageError::cancelled())` once the run is being cancelled, for use with `?`.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.is_cancelled() {
            Err(StageError::cancelled())
        } else {
            Ok(())
        }
    }

    /// The directory of input `name`, or an error naming the missing input.
    pub fn input(&self, name: &str) -> Result<&PathBuf, StageError> {
        self.inputs.get(name).ok_or_else(|| {
            StageError::msg(format!("stage {}: input `{name}` is not wired", self.stage))
        })
    }
}
