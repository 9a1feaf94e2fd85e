//! The Slurm executor (#15): each stage whose key misses the cache becomes one `sbatch` job
//! running `rise exec-stage SPEC` on a compute node that shares the store's filesystem.
//!
//! The driver (this process) holds each key's lock from before submission until the job has
//! ended, so two drivers on one store submit a key once; the job spec says so, and the job runs
//! the stage without taking the lock itself (it would otherwise wait for its own driver). The
//! driver polls all its jobs with one `squeue` call per round; a job that has left the queue is
//! asked about with `sacct` only where accounting exists. The job's outcome is its `done`
//! record, read by exact path with a short retry (NFS); a job that ended without one failed
//! with its Slurm state (FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, ...), reported
//! with the job id and its log. Scratch directories are kept on failure, so a re-run resumes.
//! On cancellation every job this run submitted is `scancel`led.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rise_store::{ArtifactId, KeyLock, StageKey};

use super::run_stage::lock_key;
use super::{stage_log_path, Executor, StageEnv, StageState};
use crate::job::{self, DoneRecord, JobOutcome, JobSpec, JOB_FORMAT};
use crate::pipeline::{ShardRole, StageDef};
use crate::plan::CacheCheck;
use crate::resolve::{Resolved, ResolvedStage};

/// How the Slurm executor submits and polls.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The `rise` binary the jobs run (`rise exec-stage`): it must be reachable at this path on
    /// the compute nodes (a shared filesystem).
    pub rise: PathBuf,
    /// Resources of every job (`[pipeline.resources]`).
    pub defaults: SbatchArgs,
    /// Resources per stage name (`[stage.X.resources]`), over the defaults.
    pub stages: BTreeMap<String, SbatchArgs>,
    /// Time between two `squeue` rounds.
    pub poll_interval: Duration,
    /// How long a finished job's `done` record may stay invisible (NFS attribute caching).
    pub done_patience: Duration,
}

impl SlurmOptions {
    /// Jobs running `rise`, with no resources beyond Slurm's defaults.
    pub fn new(rise: PathBuf) -> Self {
        SlurmOptions {
            rise,
            defaults: SbatchArgs::default(),
            stages: BTreeMap::new(),
            poll_interval: Duration::from_millis(500),
            done_patience: Duration::from_secs(10),
        }
    }

    /// The resources of stage `def`'s job: its own table over the pipeline-wide one, except
    /// that the merge step of a sharded stage asks for no GPU. It inherits the stage's table
    /// (shards keep the stage's origin), but it only concatenates files: a GPU would sit idle,
    /// and on a busy cluster the merge would queue for one behind every GPU job.
    pub fn job_resources(&self, def: &StageDef) -> SbatchArgs {
        let args = match self.stages.get(&def.name) {
            Some(own) => self.defaults.overlaid(own),
            None => self.defaults.clone(),
        };
        match def.shard {
            ShardRole::Merge { .. } => args.without_gpus(),
            _ => args,
        }
    }
}

/// A job's resources, as `sbatch` options. Not part of any key: where and with what a stage
/// runs does not change what it computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SbatchArgs {
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem` (`16G`, ...).
    pub mem: Option<String>,
    /// `--time` (`1:00:00`, ...).
    pub time: Option<String>,
    /// `--gpus` (`1`, `a100:2`, ...).
    pub gpus: Option<String>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Further `sbatch` arguments, passed as they are, after the others.
    pub extra: Vec<String>,
}

impl SbatchArgs {
    /// A `resources` table: `cpus` (an integer), `mem`, `time`, `gpus` (strings; `gpus` also an
    /// integer), `partition`, `account` (strings), `extra` (an array of strings).
    pub fn from_toml(value: &toml::Value, field: &str) -> Result<SbatchArgs, String> {
        let table = value
            .as_table()
            .ok_or_else(|| format!("{field}: expected a table, got {value}"))?;
        let mut out = SbatchArgs::default();
        for (k, v) in table {
            let bad = |what: &str| format!("{field}.{k}: expected {what}, got {v}");
            let string = || {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("a string"))
            };
            match k.as_str() {
                "cpus" => {
                    let n = v
                        .as_integer()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad("an integer >= 1"))?;
                    out.cpus = Some(u32::try_from(n).map_err(|_| bad("a smaller integer"))?);
                }
                "mem" => out.mem = Some(string()?),
                "time" => out.time = Some(string()?),
                "gpus" => {
                    out.gpus = Some(match v {
                        toml::Value::Integer(n) if *n >= 0 => n.to_string(),
                        toml::Value::String(s) => s.clone(),
                        _ => return Err(bad("an integer or a string")),
                    })
                }
                "partition" => out.partition = Some(string()?),
                "account" => out.account = Some(string()?),
                "extra" => {
                    let items = v.as_array().ok_or_else(|| bad("an array of strings"))?;
                    out.extra = items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad("an array of strings"))?;
                }
                _ => {
                    return Err(format!(
                        "{field}.{k}: unknown field; resources has cpus, mem, time, gpus, \
                         partition, account, extra"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// `self` with every field `over` sets taken from `over` (its `extra` appended).
    pub fn overlaid(&self, over: &SbatchArgs) -> SbatchArgs {
        SbatchArgs {
            cpus: over.cpus.or(self.cpus),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            gpus: over.gpus.clone().or_else(|| self.gpus.clone()),
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            extra: self.extra.iter().chain(&over.extra).cloned().collect(),
        }
    }

    /// `self` asking for no GPU: `gpus` unset, and every `extra` argument that asks for GPUs
    /// (`--gpus*`, `-G`, the `gpu` items of `--gres`) or sizes something per GPU
    /// (`--cpus-per-gpu`, `--mem-per-gpu`: sbatch refuses them without a GPU) dropped, with
    /// its value when that is the next argument.
    pub fn without_gpus(&self) -> SbatchArgs {
        let mut extra = Vec::with_capacity(self.extra.len());
        let mut args = self.extra.iter().peekable();
        while let Some(arg) = args.next() {
            let (flag, attached) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_string())),
                // `-G2`: the short form with its value attached.
                None if arg.starts_with("-G") && arg.len() > 2 => {
                    ("-G", Some(arg[2..].to_string()))
                }
                None => (arg.as_str(), None),
            };
            let per_gpu = matches!(flag, "-G" | "--cpus-per-gpu" | "--mem-per-gpu")
                || flag.starts_with("--gpus");
            if !per_gpu && flag != "--gres" {
                extra.push(arg.clone());
                continue;
            }
            let value = match attached {
                Some(v) => v,
                None => args
                    .next_if(|next| !next.starts_with('-'))
                    .cloned()
                    .unwrap_or_default(),
            };
            if flag == "--gres" {
                // `--gres=gpu:1,tmpfs:10G` keeps `--gres=tmpfs:10G`.
                let kept: Vec<&str> = value
                    .split(',')
                    .filter(|g| !g.is_empty() && *g != "gpu" && !g.starts_with("gpu:"))
                    .collect();
                if !kept.is_empty() {
                    extra.push(format!("--gres={}", kept.join(",")));
                }
            }
        }
        SbatchArgs {
            gpus: None,
            extra,
            ..self.clone()
        }
    }

    /// The `sbatch` command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.cpus {
            out.push(format!("--cpus-per-task={c}"));
        }
        let named = [
            ("--mem", &self.mem),
            ("--time", &self.time),
            ("--gpus", &self.gpus),
            ("--partition", &self.partition),
            ("--account", &self.account),
        ];
        for (flag, value) in named {
            if let Some(v) = value {
                out.push(format!("{flag}={v}"));
            }
        }
        out.extend(self.extra.iter().cloned());
        out
    }
}

/// How a pipeline file asks to be executed: `[pipeline] executor`, `[pipeline.resources]` and
/// each stage's `resources` table (an iteration template's applies to each of its instances, a
/// sharded stage's to each shard and the merge). Read from the file the pipeline was parsed
/// from; none of it is part of any key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineExecution {
    /// `[pipeline] executor` (`local` or `slurm`), if set.
    pub executor: Option<String>,
    /// `[pipeline.resources]`.
    pub defaults: SbatchArgs,
    /// Stage name -> its own `resources`.
    pub stages: BTreeMap<String, SbatchArgs>,
}

/// [`PipelineExecution`] of `resolved`'s file; an error names the offending field.
pub fn pipeline_execution(resolved: &Resolved) -> Result<PipelineExecution, String> {
    let text = resolved.pipeline.source().text();
    let doc: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let file = resolved.pipeline.path.display();
    let pipeline = doc.get("pipeline").and_then(|p| p.as_table());
    let executor = match pipeline.and_then(|p| p.get("executor")) {
        None => None,
        Some(toml::Value::String(s)) if s == "local" || s == "slurm" => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "{file}: pipeline.executor: expected \"local\" or \"slurm\", got {other}"
            ))
        }
    };
    let defaults = match pipeline.and_then(|p| p.get("resources")) {
        None => SbatchArgs::default(),
        Some(v) => {
            SbatchArgs::from_toml(v, "pipeline.resources").map_err(|e| format!("{file}: {e}"))?
        }
    };
    let mut stages = BTreeMap::new();
    for stage in &resolved.stages {
        let mut table = Some(&doc);
        let mut value = None;
        for part in stage.origin.split('.').chain(["resources"]) {
            value = table.and_then(|t| t.get(part));
            table = value.and_then(|v| v.as_table());
        }
        if let Some(v) = value {
            let field = format!("{}.resources", stage.origin);
            let own = SbatchArgs::from_toml(v, &field).map_err(|e| format!("{file}: {e}"))?;
            stages.insert(stage.name.clone(), own);
        }
    }
    Ok(PipelineExecution {
        executor,
        defaults,
        stages,
    })
}

/// Slurm job states after which a job will not run again by itself.
const TERMINAL: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "CANCELLED",
    "BOOT_FAIL",
    "DEADLINE",
];

/// Why a pending job will never start, for the reasons (`squeue`'s `%r`) that say its request
/// exceeds what the cluster's configuration allows (not what is busy now): no node or
/// partition can ever give it what it asks for, so waiting would be forever. `None` for every
/// other reason, including those that may clear by themselves: `Resources` and `Priority`
/// (busy), `ReqNodeNotAvail` (nodes down, drained or reserved: they may come back), holds,
/// group limits of an account (`AssocGrp*`, `QOSGrp*`: other jobs' usage).
fn never_starts(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "PartitionConfig" => {
            "the partition cannot give it what it asks for (more CPUs, memory or GPUs than \
             any of its nodes has)"
        }
        "PartitionNodeLimit" => "it asks for more nodes than its partition allows",
        "PartitionTimeLimit" => "its time limit is over its partition's",
        "BadConstraints" => "no node satisfies its constraints",
        "InvalidAccount" => "its account is not valid",
        "InvalidQOS" => "its QOS is not valid",
        "DependencyNeverSatisfied" => "its dependency can never be satisfied",
        r if (r.starts_with("QOSMax") || r.starts_with("AssocMax")) && r.contains("PerJob") => {
            "it asks for more than one job may have under its QOS or association"
        }
        r if r.starts_with("QOSMin") => "it asks for less than its QOS requires",
        _ => return None,
    })
}

/// Pending reasons worth telling the user about, since they may last indefinitely but can
/// clear (the job keeps waiting).
fn may_wait_long(reason: &str) -> bool {
    [
        "ReqNodeNotAvail",
        "Nodes_required",
        "JobHeld",
        "launch failed requeued held",
    ]
    .iter()
    .any(|r| reason.starts_with(r))
}

/// One submitted job.
struct Job {
    stage: usize,
    id: String,
    done: PathBuf,
    slurm_log: PathBuf,
    submitted: Instant,
    /// Its `sbatch` resources as passed, for messages.
    resources: Vec<String>,
    /// Set when `squeue` gave a reason it can never start for ([`never_starts`]): the reason
    /// and what it means. The job is then cancelled and, once gone, fails its stage.
    never_starts: Option<(String, &'static str)>,
    /// The last waiting reason reported ([`may_wait_long`]), so each is told once.
    reported_reason: Option<String>,
    /// Held until the job has ended (see the module doc).
    _lock: KeyLock,
}

pub(crate) struct Slurm<'a, 'e> {
    env: &'a StageEnv<'e>,
    opts: &'a SlurmOptions,
    jobs: Vec<Job>,
    /// States known without polling (a failed submission, a key another run committed).
    settled: Vec<(usize, StageState)>,
    cancelled: bool,
    /// Whether `sacct` can answer (accounting configured); asked once, when first needed.
    accounting: Option<bool>,
    /// The last `squeue` failure reported, so a flapping controller is not reported per round.
    squeue_error: Option<String>,
}

impl<'a, 'e> Slurm<'a, 'e> {
    pub(crate) fn new(env: &'a StageEnv<'e>, opts: &'a SlurmOptions) -> Self {
        Slurm {
            env,
            opts,
            jobs: Vec::new(),
            settled: Vec::new(),
            cancelled: false,
            accounting: None,
            squeue_error: None,
        }
    }

    /// Lock the key, re-check it, write the job's spec and script, `sbatch` it.
    fn try_submit(
        &mut self,
        i: usize,
        key: StageKey,
        inputs: BTreeMap<String, ArtifactId>,
    ) -> Result<(), StageState> {
        let env = self.env;
        let stage = &env.resolved.stages[i];
        let job_log = stage_log_path(env.store, env.run_id, &stage.name);
        let fail = |error: String| {
            env.display.finished(&stage.name, "FAILED", &error);
            // No job ran, so nothing else writes the stage's log: the reported path holds
            // at least the reason.
            if let Some(dir) = job_log.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&job_log, format!("# not submitted: {error}\n"));
            StageState::Failed {
                error,
                log: job_log.clone(),
            }
        };
        let what = format!(
            "rise run {} --executor slurm: stage {}",
            env.resolved.pipeline.name, stage.name
        );
        let lock = lock_key(env, &stage.name, &key, &what).map_err(|e| fail(e.to_string()))?;
        // Another run may have committed this key while we waited for its lock.
        match env.cache.check_live(&key) {
            Ok(CacheCheck::Hit { result, manifest }) => {
                env.display.finished(
                    &stage.name,
                    "reused",
                    &format!("{} (executed by another run)", manifest.output.short(12)),
                );
                return Err(StageState::Reused {
                    result,
                    output: manifest.output,
                });
            }
            Ok(_) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let files = JobFiles::new(&job_log);
        let spec = JobSpec {
            format: JOB_FORMAT,
            pipeline: absolute(&env.resolved.pipeline.path),
            stage: stage.name.clone(),
            key,
            inputs,
            device: env.opts.device.clone(),
            // A node's cores are the job's business (`cpus`): only an explicit --threads.
            threads: env.opts.threads,
            done: files.done.clone(),
            driver_holds_lock: true,
        };
        let resources = match env.resolved.pipeline.stage(&stage.name) {
            Some(def) => self.opts.job_resources(def).args(),
            None => return Err(fail(format!("the pipeline has no stage {}", stage.name))),
        };
        let id = files
            .write(&spec, &self.opts.rise, &absolute(env.store.root()))
            .and_then(|()| self.sbatch(&stage.name, &files, &resources))
            .map_err(|e| fail(format!("cannot submit a Slurm job: {e}")))?;
        // `rise status` shows the job of a running stage from its key's lock.
        if let Err(e) = lock.set_what(&format!("{what}: slurm job {id}")) {
            env.display.to_log(&format!("{}: {e}", stage.name));
        }
        env.display.started(&stage.name, &stage.kind);
        env.display.to_log(&format!(
            "{}: slurm job {id} (log {})",
            stage.name,
            files.slurm_log.display()
        ));
        self.jobs.push(Job {
            stage: i,
            id,
            done: files.done,
            slurm_log: files.slurm_log,
            submitted: Instant::now(),
            resources,
            never_starts: None,
            reported_reason: None,
            _lock: lock,
        });
        Ok(())
    }

    /// `sbatch --parsable ... SCRIPT`: the job id.
    fn sbatch(
        &self,
        stage: &str,
        files: &JobFiles,
        resources: &[String],
    ) -> Result<String, String> {
        let dir = absolute(&self.env.resolved.pipeline.dir());
        let out = Command::new("sbatch")
            .arg("--parsable")
            .arg(format!("--job-name=rise:{stage}"))
            .arg(format!("--output={}", files.slurm_log.display()))
            .arg(format!("--chdir={}", dir.display()))
            .args(resources)
            .arg(&files.script)
            .output()
            .map_err(|e| format!("sbatch: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sbatch {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        // `--parsable` prints `ID` or `ID;CLUSTER`.
        let id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: {:?}", stdout.trim()));
        }
        Ok(id)
    }

    /// One `squeue` call for all jobs: id -> (state, reason), for the jobs still known to the
    /// controller. `None`: squeue failed (reported once; the next round asks again).
    fn squeue(&mut self) -> Option<HashMap<String, (String, String)>> {
        let ids: Vec<&str> = self.jobs.iter().map(|j| j.id.as_str()).collect();
        let out = Command::new("squeue")
            .args(["--noheader", "--states=all", "--format=%i %T %r", "--jobs"])
            .arg(ids.join(","))
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.report_squeue(format!("cannot run squeue: {e}"));
                return None;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            // Every job asked about has been purged from the controller's memory.
            if stderr.contains("Invalid job id") {
                return Some(HashMap::new());
            }
            self.report_squeue(format!("squeue {}: {}", out.status, stderr.trim()));
            return None;
        }
        self.squeue_error = None;
        let states = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                // The reason may hold spaces (`ReqNodeNotAvail, UnavailableNodes:n1`).
                let mut fields = l.trim().splitn(3, ' ');
                let (id, state) = (fields.next()?, fields.next()?);
                let reason = fields.next().unwrap_or("").trim();
                Some((id.to_string(), (state.to_string(), reason.to_string())))
            })
            .collect();
        Some(states)
    }

    fn report_squeue(&mut self, error: String) {
        if self.squeue_error.as_ref() != Some(&error) {
            self.env.display.line(&format!("{error} (asking again)"));
            self.squeue_error = Some(error);
        }
    }

    /// The final state of a job no longer in `squeue`, from `sacct` where accounting exists.
    fn sacct(&mut self, id: &str) -> Option<String> {
        if self.accounting.is_none() {
            self.accounting = Some(accounting_enabled());
        }
        if self.accounting != Some(true) {
            return None;
        }
        let out = Command::new("sacct")
            .args([
                "--noheader",
                "--allocations",
                "--parsable2",
                "--format=State",
                "--jobs",
            ])
            .arg(id)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `CANCELLED by 0` -> `CANCELLED`.
        let state = text.lines().next()?.split_whitespace().next()?.to_string();
        Some(state)
    }

    /// The state of a job that has ended (`state`: Slurm's, if known).
    fn finish(&self, job: &Job, state: Option<&str>) -> StageState {
        let env = self.env;
        let stage = &env.resolved.stages[job.stage];
        let slurm_state = state.unwrap_or("ended (state unknown: not in squeue, no accounting)");
        // A job that completed wrote its record before exiting: wait for it as long as NFS may
        // hide it. Otherwise the record exists only if the stage itself failed or was stopped.
        let patience = if matches!(state, None | Some("COMPLETED")) {
            self.opts.done_patience
        } else {
            Duration::from_secs(1).min(self.opts.done_patience)
        };
        let done = job::read_done(&job.done, patience);
        if let Some((reason, meaning)) = &job.never_starts {
            // Cancelled by us; unless it started after all and committed, it never ran.
            if !matches!(
                &done,
                Ok(Some(DoneRecord {
                    outcome: JobOutcome::Committed,
                    ..
                }))
            ) {
                return self.failed(
                    stage,
                    format!(
                        "slurm job {} can never start: pending with reason {reason} ({meaning}); \
                         it asked for {}; cancelled, nothing committed (slurm log: {})",
                        job.id,
                        describe_resources(&job.resources),
                        job.slurm_log.display()
                    ),
                    job.slurm_log.clone(),
                );
            }
        }
        let where_ = format!("slurm job {} {slurm_state}", job.id);
        match done {
            Ok(Some(DoneRecord {
                outcome: JobOutcome::Committed,
                result: Some(result),
                output: Some(output),
                ..
            })) => {
                let seconds = job.submitted.elapsed().as_secs_f64();
                env.display.finished(
                    &stage.name,
                    "done",
                    &format!("{} {seconds:.2}s (slurm job {})", output.short(12), job.id),
                );
                StageState::Executed {
                    result,
                    output,
                    seconds,
                }
            }
            Ok(Some(DoneRecord {
                outcome: JobOutcome::Failed,
                error,
                log,
                ..
            })) => self.failed(
                stage,
                format!(
                    "{where_}: {} (stage log: {}; slurm log: {})",
                    error.as_deref().unwrap_or("failed"),
                    log.as_deref().unwrap_or(&job.slurm_log).display(),
                    job.slurm_log.display()
                ),
                log.unwrap_or_else(|| job.slurm_log.clone()),
            ),
            Ok(record) if self.cancelled => {
                let _ = record;
                env.display.finished(
                    &stage.name,
                    "stopped",
                    &format!(
                        "slurm job {} cancelled; scratch kept, nothing committed",
                        job.id
                    ),
                );
                StageState::NotRun
            }
            Ok(Some(_)) => self.failed(
                stage,
                format!(
                    "{where_}: the stage was stopped by a signal, nothing committed (slurm \
                     log: {})",
                    job.slurm_log.display()
                ),
                job.slurm_log.clone(),
            ),
            Ok(None) => self.failed(
                stage,
                format!(
                    "{where_} without a done record at {}: nothing committed (slurm log: {})",
                    job.done.display(),
                    job.slurm_log.display()
                ),
                job.slurm_log.clone(),
            ),
            Err(e) => self.failed(
                stage,
                format!("{where_}: {e} (slurm log: {})", job.slurm_log.display()),
                job.slurm_log.clone(),
            ),
        }
    }

    /// Cancels every pending job `squeue` says can never start ([`never_starts`]; it then
    /// fails its stage when it has left the queue), and tells once of each reason that may
    /// keep a job waiting long ([`may_wait_long`]).
    fn check_pending(&mut self, states: &HashMap<String, (String, String)>) {
        let env = self.env;
        let mut cancel = Vec::new();
        for job in &mut self.jobs {
            let Some((state, reason)) = states.get(&job.id) else {
                continue;
            };
            if state != "PENDING" || job.never_starts.is_some() {
                continue;
            }
            let stage = &env.resolved.stages[job.stage].name;
            if let Some(meaning) = never_starts(reason) {
                env.display.line(&format!(
                    "{stage}: slurm job {} can never start ({reason}: {meaning}); cancelling it",
                    job.id
                ));
                // The job never ran, so Slurm wrote no log: the reported path holds the
                // reason. `create_new`: should it start after all, its own output wins.
                let note = format!(
                    "# rise: slurm job {} cancelled before it started: pending with reason \
                     {reason} ({meaning}); it asked for {}\n",
                    job.id,
                    describe_resources(&job.resources)
                );
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&job.slurm_log)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
                job.never_starts = Some((reason.clone(), meaning));
                cancel.push(job.id.clone());
            } else if may_wait_long(reason) && job.reported_reason.as_ref() != Some(reason) {
                env.display.line(&format!(
                    "{stage}: slurm job {} is pending: {reason} (waiting; Ctrl-C cancels)",
                    job.id
                ));
                job.reported_reason = Some(reason.clone());
            }
        }
        if !cancel.is_empty() {
            // Its key stays locked until the job has left the queue (the next rounds).
            self.scancel(&cancel);
        }
    }

    fn scancel(&self, ids: &[String]) {
        match Command::new("scancel").args(ids).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => self.env.display.line(&format!(
                "scancel {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => self.env.display.line(&format!("cannot run scancel: {e}")),
        }
    }

    fn failed(&self, stage: &ResolvedStage, error: String, log: PathBuf) -> StageState {
        self.env.display.finished(&stage.name, "FAILED", &error);
        StageState::Failed { error, log }
    }
}

impl Executor for Slurm<'_, '_> {
    fn submit(&mut self, stage: usize, key: StageKey, inputs: BTreeMap<String, ArtifactId>) {
        if let Err(state) = self.try_submit(stage, key, inputs) {
            self.settled.push((stage, state));
        }
    }

    fn poll(&mut self) -> Vec<(usize, StageState)> {
        loop {
            if !self.settled.is_empty() || self.jobs.is_empty() {
                return std::mem::take(&mut self.settled);
            }
            if !self.cancelled && self.env.opts.cancel.load(Ordering::SeqCst) {
                return Vec::new();
            }
            if let Some(states) = self.squeue() {
                self.check_pending(&states);
                let mut ended = Vec::new();
                let mut k = 0;
                while k < self.jobs.len() {
                    let state = states.get(&self.jobs[k].id).map(|(s, _)| s.clone());
                    let over = state.as_deref().is_none_or(|s| TERMINAL.contains(&s));
                    if over {
                        ended.push((self.jobs.swap_remove(k), state));
                    } else {
                        k += 1;
                    }
                }
                for (job, state) in ended {
                    let state = match state {
                        Some(s) => Some(s),
                        None => self.sacct(&job.id),
                    };
                    let outcome = self.finish(&job, state.as_deref());
                    self.settled.push((job.stage, outcome));
                    // `job` (and its key's lock) is dropped here, after the outcome is known.
                }
                if !self.settled.is_empty() {
                    continue;
                }
            }
            std::thread::sleep(self.opts.poll_interval);
        }
    }

    fn cancel(&mut self) {
        self.cancelled = true;
        if self.jobs.is_empty() {
            return;
        }
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        self.env
            .display
            .line(&format!("cancelling slurm jobs {}", ids.join(" ")));
        self.scancel(&ids);
    }

    fn one_gpu_stage_at_a_time(&self) -> bool {
        false
    }
}

/// A job's files, beside its stage's log in `logs/<run>/`: the spec, the batch script, Slurm's
/// log of the job and the `done` record.
struct JobFiles {
    spec: PathBuf,
    script: PathBuf,
    slurm_log: PathBuf,
    done: PathBuf,
}

impl JobFiles {
    fn new(stage_log: &Path) -> Self {
        let with = |ext: &str| absolute(&stage_log.with_extension(ext));
        JobFiles {
            spec: with("job.json"),
            script: with("sbatch"),
            slurm_log: with("slurm.log"),
            done: with("done.json"),
        }
    }

    fn write(&self, spec: &JobSpec, rise: &Path, store: &Path) -> Result<(), String> {
        if let Some(dir) = self.spec.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        job::write_atomic(&self.spec, spec).map_err(|e| e.to_string())?;
        let script = format!(
            "#!/bin/sh\n# rise stage {} (key {})\nexec {} --store {} exec-stage {}\n",
            spec.stage,
            spec.key,
            sh_quote(&absolute(rise)),
            sh_quote(store),
            sh_quote(&self.spec)
        );
        std::fs::write(&self.script, script).map_err(|e| format!("{}: {e}", self.script.display()))
    }
}

/// A job's `sbatch` resources for a message: the arguments, or Slurm's defaults.
fn describe_resources(args: &[String]) -> String {
    if args.is_empty() {
        "Slurm's default resources".to_string()
    } else {
        args.join(" ")
    }
}

/// `path` in single quotes for `sh`.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether the cluster keeps accounting (`sacct` answers only then).
fn accounting_enabled() -> bool {
    let Ok(out) = Command::new("scontrol").args(["show", "config"]).output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let mut kv = l.splitn(2, '=');
        let (k, v) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        k == "AccountingStorageType" && !v.is_empty() && v != "accounting_storage/none"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_resources_override_the_defaults_and_extra_args_accumulate() {
        let defaults = SbatchArgs {
            cpus: Some(2),
            mem: Some("4G".into()),
            partition: Some("cpu".into()),
            extra: vec!["--qos=normal".into()],
            ..SbatchArgs::default()
        };
        let stage = SbatchArgs {
            gpus: Some("1".into()),
            partition: Some("gpu".into()),
            extra: vec!["--constraint=a100".into()],
            ..SbatchArgs::default()
        };
        assert_eq!(
            defaults.overlaid(&stage).args(),
            [
                "--cpus-per-task=2",
                "--mem=4G",
                "--gpus=1",
                "--partition=gpu",
                "--qos=normal",
                "--constraint=a100"
            ]
        );
    }

    #[test]
    fn the_merge_of_a_sharded_stage_asks_for_no_gpu() {
        let p = crate::pipeline::Pipeline::parse(
            Path::new("p.toml"),
            "[pipeline]\nname = \"s\"\n[stage.b]\nkind = \"k\"\nshards = 2\n".to_string(),
        )
        .unwrap();
        // What `pipeline_execution` gives every stage of `[stage.b.resources]`: shards and merge
        // share the stage's origin.
        let own = SbatchArgs {
            gpus: Some("1".into()),
            mem: Some("64G".into()),
            extra: vec!["--gres=gpu:a100:1,tmpfs:10G".into(), "--requeue".into()],
            ..SbatchArgs::default()
        };
        let mut opts = SlurmOptions::new(PathBuf::from("rise"));
        opts.defaults.gpus = Some("2".into());
        for name in ["b/shard-1-of-2", "b/shard-2-of-2", "b"] {
            opts.stages.insert(name.to_string(), own.clone());
        }
        let shard = opts.job_resources(p.stage("b/shard-1-of-2").unwrap());
        assert_eq!(
            shard.args(),
            [
                "--mem=64G",
                "--gpus=1",
                "--gres=gpu:a100:1,tmpfs:10G",
                "--requeue"
            ]
        );
        // The merge keeps everything else: memory, the non-GPU generic resource, requeueing.
        let merge = opts.job_resources(p.stage("b").unwrap());
        assert_eq!(merge.args(), ["--mem=64G", "--gres=tmpfs:10G", "--requeue"]);
    }

    #[test]
    fn without_gpus_drops_every_way_of_asking_for_one() {
        let args = SbatchArgs {
            gpus: Some("a100:2".into()),
            extra: [
                "--gpus-per-node=2",
                "-G",
                "3",
                "-G4",
                "--gres",
                "gpu:1",
                "--gres",
                "nic:1",
                "--mem-per-gpu=8G",
                "--cpus-per-gpu",
                "4",
                "--qos=long",
                "--exclusive",
            ]
            .map(String::from)
            .to_vec(),
            ..SbatchArgs::default()
        };
        assert_eq!(
            args.without_gpus().args(),
            ["--gres=nic:1", "--qos=long", "--exclusive"]
        );
    }

    #[test]
    fn paths_are_quoted_for_the_batch_script() {
        assert_eq!(sh_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
