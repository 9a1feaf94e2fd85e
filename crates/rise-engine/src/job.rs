//! One stage as a batch job (#15): the spec a driver writes for `rise exec-stage SPEC`, and the
//! `done` record the job leaves for the driver.
//!
//! The job runs on a compute node that shares the store's filesystem. It re-resolves the
//! pipeline from the same file, checks that the stage's key is the one the driver computed (so
//! a pipeline edited between submission and execution runs nothing under a stale key), then
//! executes and commits the stage exactly as a local run does: the child protocol, blobs, tree,
//! result manifest, `results/<id>` marker. Outputs are hashed where they were written.
//!
//! The `done` record is written last, atomically (temporary name in the same directory,
//! fsync, rename), so a driver that sees it sees all of it. A driver on another host may not
//! see a new name at once (NFS caches directory attributes): [`read_done`] reads the exact
//! path and retries briefly.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rise_store::{ArtifactId, ResultId, StageKey};
use serde::{Deserialize, Serialize};

/// The version of [`JobSpec`] and [`DoneRecord`]; a job refuses a spec of another version.
pub const JOB_FORMAT: u32 = 1;

/// What `rise exec-stage` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// [`JOB_FORMAT`].
    pub format: u32,
    /// The pipeline file (absolute: the job may start in another directory).
    pub pipeline: PathBuf,
    /// The stage's name in it.
    pub stage: String,
    /// The key the driver computed; the job refuses to run under any other.
    pub key: StageKey,
    /// Input name -> artifact, as the driver resolved them.
    pub inputs: BTreeMap<String, ArtifactId>,
    /// Device for the stage (`cpu`, `cuda`, `cuda:N`): not part of the key.
    pub device: String,
    /// Threads for the stage; `None`: the node's cores.
    pub threads: Option<usize>,
    /// Where the job writes its [`DoneRecord`].
    pub done: PathBuf,
    /// Whether the driver holds the key's lock while the job runs (the Slurm executor does, so
    /// that two drivers on one store submit a key once): the job then runs the stage without
    /// taking the lock, which it would otherwise wait for until its own driver gives up.
    /// Absent (a spec written by hand): the job takes the lock as a local run does.
    #[serde(default)]
    pub driver_holds_lock: bool,
}

/// How a job ended, as far as the stage is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// The stage's result is committed (by this job, or found committed under its key).
    Committed,
    /// The stage failed; nothing was committed, the scratch directory is kept.
    Failed,
    /// Stopped by a signal (`scancel`, preemption); nothing was committed, scratch kept.
    Cancelled,
}

/// What a job leaves for its driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneRecord {
    /// [`JOB_FORMAT`].
    pub format: u32,
    /// The key the job ran.
    pub key: StageKey,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The committed result, when `outcome` is `committed`.
    pub result: Option<ResultId>,
    /// Its output artifact.
    pub output: Option<ArtifactId>,
    /// Why it failed.
    pub error: Option<String>,
    /// The stage's log file.
    pub log: Option<PathBuf>,
    /// The host the stage ran on.
    pub host: String,
}

/// Errors reading or writing job files.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Cannot read or write the file.
    #[error("{path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a job file of this format.
    #[error("{path}: not a rise job file of format {JOB_FORMAT}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JobError + 'a {
    move |source| JobError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, JobError> {
    let format = |message: String| JobError::Format {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format(e.to_string()))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == u64::from(JOB_FORMAT) => {}
        other => return Err(format(format!("its format is {other:?}"))),
    }
    serde_json::from_value(value).map_err(|e| format(e.to_string()))
}

/// Writes `value` as JSON to `path` atomically: a temporary file in the same directory,
/// fsynced, renamed over `path` (rename within one directory is atomic on every filesystem
/// the store supports), then the directory fsynced.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), JobError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| JobError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

/// Reads a job spec.
pub fn read_spec(path: &Path) -> Result<JobSpec, JobError> {
    let bytes = std::fs::read(path).map_err(io("read job spec", path))?;
    parse(path, &bytes)
}

/// Reads the done record at exactly `path`, retrying for up to `patience` while it does not
/// exist: on NFS a file another host has just renamed into place can be invisible here for as
/// long as the directory's attributes are cached (`acdirmax`, 60 s at most by default; an open
/// by exact name revalidates sooner). `Ok(None)`: still absent after `patience`.
pub fn read_done(path: &Path, patience: Duration) -> Result<Option<DoneRecord>, JobError> {
    let start = Instant::now();
    loop {
        match std::fs::read(path) {
            Ok(bytes) => return parse(path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if start.elapsed() >= patience {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(100).min(patience));
            }
            Err(e) => return Err(io("read done record", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> JobSpec {
        JobSpec {
            format: JOB_FORMAT,
            pipeline: dir.join("p.toml"),
            stage: "iter1/train".into(),
            key: StageKey([7; 32]),
            inputs: [("data".to_string(), rise_store::BlobId([1; 32]))].into(),
            device: "cuda".into(),
            threads: Some(4),
            done: dir.join("done.json"),
            driver_holds_lock: true,
        }
    }

    #[test]
    fn specs_and_done_records_round_trip_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        let s = spec(dir.path());
        write_atomic(&path, &s).unwrap();
        assert_eq!(read_spec(&path).unwrap(), s);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");

        let mut v = serde_json::to_value(&s).unwrap();
        v["format"] = 2.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = read_spec(&path).unwrap_err().to_string();
        assert!(err.contains("format is Some(2)"), "{err}");
        v["format"] = 1.into();
        v["extra"] = true.into();
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(read_spec(&path).is_err(), "unknown fields are refused");
    }

    #[test]
    fn a_done_record_is_read_by_exact_path_with_a_short_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("done.json");
        assert_eq!(read_done(&path, Duration::ZERO).unwrap(), None);
        let record = DoneRecord {
            format: JOB_FORMAT,
            key: StageKey([7; 32]),
            outcome: JobOutcome::Failed,
            result: None,
            output: None,
            error: Some("exit status 3".into()),
            log: Some(dir.path().join("x.log")),
            host: "n1".into(),
        };
        // Written while the reader already waits: the retry finds it.
        let writer = {
            let (path, record) = (path.clone(), record.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                write_atomic(&path, &record).unwrap();
            })
        };
        let got = read_done(&path, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(got, Some(record));
    }
}
