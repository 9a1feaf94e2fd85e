//! Pruning old run records and logs (`rise gc --runs-older-than`).
//!
//! Every `rise run` leaves `runs/<id>.json`, `logs/<id>.log` and `logs/<id>/<stage>.log`. They
//! are history, not artifacts: no result depends on them, so gc's reachability never collects
//! them, and a store that runs often grows by them forever. Pruning them by age is the user's
//! call.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::store::{remove_dir_all_force, Store};

/// What [`Store::prune_runs`] removed (or would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunPruneReport {
    /// True if nothing was deleted (only reported).
    pub dry_run: bool,
    /// The age limit, in seconds.
    pub older_than_seconds: u64,
    /// Runs whose record and logs were deleted (or would be), oldest first.
    pub removed_runs: Vec<String>,
    /// Bytes of the files deleted (or that would be).
    pub removed_bytes: u64,
    /// Runs kept (younger than the limit).
    pub kept_runs: usize,
}

/// The files of one run and the newest modification time among them.
#[derive(Default)]
struct RunFiles {
    paths: Vec<PathBuf>,
    newest: Option<SystemTime>,
    bytes: u64,
}

impl RunFiles {
    fn add(&mut self, path: PathBuf) -> Result<()> {
        let meta = fs::symlink_metadata(&path).map_err(StoreError::io("stat", &path))?;
        let (modified, bytes) = if meta.is_dir() {
            dir_newest_and_size(&path)?
        } else {
            (meta.modified().ok(), meta.len())
        };
        self.newest = self.newest.max(modified);
        self.bytes += bytes;
        self.paths.push(path);
        Ok(())
    }
}

/// The newest modification time and the total size of the files below `dir`.
fn dir_newest_and_size(dir: &Path) -> Result<(Option<SystemTime>, u64)> {
    let mut newest = fs::symlink_metadata(dir)
        .ok()
        .and_then(|m| m.modified().ok());
    let mut bytes = 0;
    for e in fs::read_dir(dir)
        .map_err(StoreError::io("list", dir))?
        .flatten()
    {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(StoreError::io("stat", &path))?;
        let (modified, size) = if meta.is_dir() {
            dir_newest_and_size(&path)?
        } else {
            (meta.modified().ok(), meta.len())
        };
        newest = newest.max(modified);
        bytes += size;
    }
    Ok((newest, bytes))
}

impl Store {
    /// Deletes the record and logs of every run whose files were last modified more than
    /// `older_than` ago (all of them when it is zero). Holds the run lock exclusively, so no run
    /// in progress is touched: like gc, it refuses to run while a `rise run` holds the store.
    pub fn prune_runs(&self, older_than: Duration, dry_run: bool) -> Result<RunPruneReport> {
        let _exclusive = self.run_lock_exclusive("pruning run records refused")?;
        let mut runs: BTreeMap<String, RunFiles> = BTreeMap::new();
        let runs_dir = self.root().join("runs");
        for e in fs::read_dir(&runs_dir)
            .map_err(StoreError::io("list", &runs_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                runs.entry(id.to_string()).or_default().add(e.path())?;
            }
        }
        let logs_dir = self.logs_dir();
        if logs_dir.is_dir() {
            for e in fs::read_dir(&logs_dir)
                .map_err(StoreError::io("list", &logs_dir))?
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = match name.strip_suffix(".log") {
                    Some(id) => id.to_string(),
                    None if e.path().is_dir() => name,
                    None => continue,
                };
                runs.entry(id).or_default().add(e.path())?;
            }
        }
        let now = SystemTime::now();
        let mut report = RunPruneReport {
            dry_run,
            older_than_seconds: older_than.as_secs(),
            ..RunPruneReport::default()
        };
        for (id, files) in runs {
            let age = files
                .newest
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or(Duration::ZERO);
            if age < older_than {
                report.kept_runs += 1;
                continue;
            }
            if !dry_run {
                for path in &files.paths {
                    if path.is_dir() {
                        remove_dir_all_force(path)?;
                    } else {
                        fs::remove_file(path).map_err(StoreError::io("remove", path))?;
                    }
                }
            }
            report.removed_bytes += files.bytes;
            report.removed_runs.push(id);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_age(path: &Path, age: Duration) {
        let when = SystemTime::now() - age;
        let f = fs::File::options().read(true).open(path).unwrap();
        f.set_modified(when).unwrap();
    }

    #[test]
    fn old_runs_go_with_their_logs_and_young_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let day = Duration::from_secs(86_400);
        for (id, age) in [("old", 40 * day), ("young", day)] {
            store
                .record_run(id, &serde_json::json!({"run_id": id}))
                .unwrap();
            set_age(&store.root().join("runs").join(format!("{id}.json")), age);
            let log = store.logs_dir().join(format!("{id}.log"));
            fs::create_dir_all(store.logs_dir().join(id)).unwrap();
            fs::write(&log, "run log").unwrap();
            set_age(&log, age);
            let stage_log = store.logs_dir().join(id).join("a.log");
            fs::write(&stage_log, "stage log").unwrap();
            set_age(&stage_log, age);
            set_age(&store.logs_dir().join(id), age);
        }
        // A run killed before writing its record: only logs, judged by them.
        let orphan_log = store.logs_dir().join("killed.log");
        fs::write(&orphan_log, "x").unwrap();
        set_age(&orphan_log, 50 * day);

        let dry = store.prune_runs(30 * day, true).unwrap();
        assert_eq!(dry.removed_runs, ["killed", "old"]);
        assert_eq!(dry.kept_runs, 1);
        assert_eq!(
            dry.removed_bytes,
            7 + 9
                + 1
                + fs::metadata(store.root().join("runs/old.json"))
                    .unwrap()
                    .len()
        );
        assert!(
            store.logs_dir().join("old.log").exists(),
            "a dry run deletes nothing"
        );

        let done = store.prune_runs(30 * day, false).unwrap();
        assert_eq!(done.removed_runs, ["killed", "old"]);
        assert_eq!(store.run_ids().unwrap(), ["young"]);
        assert!(!store.logs_dir().join("old").exists());
        assert!(!store.logs_dir().join("old.log").exists());
        assert!(!orphan_log.exists());
        assert!(store.logs_dir().join("young").join("a.log").exists());
        // The limit is inclusive of everything at zero.
        assert_eq!(
            store
                .prune_runs(Duration::ZERO, false)
                .unwrap()
                .removed_runs,
            ["young"]
        );
    }
}
