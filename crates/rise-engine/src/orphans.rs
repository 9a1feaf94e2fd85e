//! Stage processes that outlive a killed engine.
//!
//! A stage child runs in its own process group and dies with the engine (`PR_SET_PDEATHSIG`),
//! and on Ctrl-C, SIGTERM or SIGHUP the engine kills every group it started. SIGKILL of the engine
//! is different: the kernel's death signal reaches only the direct child, so a grandchild (a
//! background job of a shell stage, a data-loader process) keeps running, still writing into the
//! key's scratch directory. If the next run executed the key then, two writers would share the
//! scratch and the result would interleave their output.
//!
//! So every child-process stage carries a token in its environment ([`STAGE_TOKEN_VAR`],
//! inherited by all its descendants, whatever process group or session they move to), and the
//! engine records the token in `locks/stages/<key>.json` for as long as the stage runs. Before a
//! key executes, under the key's lock, a record left behind by a dead engine means orphans may
//! live: every process whose environment holds that token is killed and waited for, and only
//! then does the stage start, resuming from a scratch that no one else writes.
//!
//! Why this rather than holding the key lock in the child: an inherited lock would keep the key
//! locked while orphans live, but the next run would then wait on them for as long as they run
//! (forever, for a stuck one), and any process that closes its inherited descriptors (daemons
//! do) would silently drop the protection.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use rise_store::{StageKey, Store};
use serde::{Deserialize, Serialize};

/// Claims made by this process, numbering their tokens.
static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// The environment variable that marks every process of a running stage.
pub const STAGE_TOKEN_VAR: &str = "RISE_STAGE_TOKEN";

/// How long to wait for killed orphans to disappear before giving up on the stage.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the engine records while a stage's processes run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    token: String,
    run_id: String,
    stage: String,
    engine_pid: u32,
    /// The host the stage ran on. Absent in records of older versions (all single-host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

/// Orphans of an earlier run that were killed before this stage started.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    /// The run whose engine died while the stage ran.
    pub run_id: String,
    /// How many of its processes were still alive and were killed.
    pub killed: usize,
}

/// The record of a running stage's processes; removed when dropped (the stage's processes are
/// gone by then: the engine kills the group when the leader exits). A killed engine drops
/// nothing, which is the point.
pub struct StageProcesses {
    path: PathBuf,
    token: String,
    /// The kernel's last allocated pid when the record was made (before the stage's child was
    /// spawned), and when: every process of the stage has a pid allocated after it.
    spawned_after: Option<i32>,
    claimed_at: Instant,
}

impl StageProcesses {
    /// Under `key`'s lock: kill whatever an earlier, dead run of `key` left running, then record
    /// this run's token. Returns the record and, if there were any, the orphans killed.
    pub fn claim(
        store: &Store,
        key: &StageKey,
        run_id: &str,
        stage: &str,
    ) -> io::Result<(StageProcesses, Option<Reaped>)> {
        let path = record_path(store, key);
        let reaped = reap(&path)?;
        let record = Record {
            // The counter keeps tokens apart when one process runs the same key twice within
            // a run id's millisecond (tests run pipelines in parallel threads): a shared token
            // would let one stage's `finish` kill the other's processes.
            token: format!(
                "{run_id}/{key}/{}",
                CLAIMS.fetch_add(1, AtomicOrdering::Relaxed)
            ),
            run_id: run_id.to_string(),
            stage: stage.to_string(),
            engine_pid: std::process::id(),
            host: Some(rise_store::hostname().to_string()),
        };
        write_atomic(&path, &serde_json::to_vec(&record)?)?;
        Ok((
            StageProcesses {
                path,
                token: record.token,
                spawned_after: last_pid(),
                claimed_at: Instant::now(),
            },
            reaped,
        ))
    }

    /// After the stage's child exited (its process group is killed then): kill any descendant
    /// that left the group (`setsid`, a daemon), so that nothing writes into the stage's output
    /// or scratch while the engine hashes them. Returns how many were killed.
    ///
    /// Only processes whose pid was allocated while the stage ran can be its descendants, so
    /// only their environments are read: reading every process's environment cost ~30 ms per
    /// stage on a busy machine, more than the rest of the engine's work for a stage. Pids are
    /// allocated in increasing order and wrap at `pid_max`; a stage that ran long enough for
    /// the counter to come round again (`PID_WINDOW_TRUSTED_FOR`) gets a full scan.
    pub fn finish(self) -> io::Result<usize> {
        let window = match (self.spawned_after, last_pid()) {
            (Some(from), Some(to)) if self.claimed_at.elapsed() < PID_WINDOW_TRUSTED_FOR => {
                Some(PidWindow { from, to })
            }
            _ => None,
        };
        kill_holders(&self.token, window, REAP_TIMEOUT)
    }

    /// The value of [`STAGE_TOKEN_VAR`] for this stage's child.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for StageProcesses {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `locks/stages/<key>.json`: outside the stage's own directories, beside the key's lock.
fn record_path(store: &Store, key: &StageKey) -> PathBuf {
    store
        .root()
        .join("locks")
        .join("stages")
        .join(format!("{key}.json"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    // A process kill keeps the page cache, and a machine crash leaves no orphans: no fsync.
    std::fs::rename(&tmp, path)
}

/// If `path` holds a record, kill every process carrying its token, wait until none is left,
/// and remove the record.
fn reap(path: &Path) -> io::Result<Option<Reaped>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // An unreadable record (torn by a crash of its writer's machine) names no token to look
    // for; its stage's processes died with that machine.
    let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
        std::fs::remove_file(path)?;
        return Ok(None);
    };
    // Written on another host (a store shared between hosts, #15): this host's /proc cannot
    // see that host's processes, so finding none here proves nothing. Refuse rather than let
    // two writers share the scratch directory.
    if let Some(host) = record
        .host
        .as_deref()
        .filter(|h| *h != rise_store::hostname())
    {
        return Err(io::Error::other(format!(
            "stage {} of run {} was running on host {host} when its engine died, and processes \
             it left there may still write into its scratch directory; run it again from {host} \
             (which stops them), or remove {} once nothing of that run runs there",
            record.stage,
            record.run_id,
            path.display()
        )));
    }
    let killed = kill_token_holders(&record.token, REAP_TIMEOUT)?;
    std::fs::remove_file(path)?;
    Ok(Some(Reaped {
        run_id: record.run_id,
        killed,
    }))
}

/// How long after a stage started its pid window is trusted: allocating `pid_max` (at most
/// 2^22) pids takes minutes even at the fastest fork rates.
const PID_WINDOW_TRUSTED_FOR: Duration = Duration::from_secs(30);

/// Pids allocated after `from`, up to and including `to`, across a wrap of the counter.
#[derive(Debug, Clone, Copy)]
struct PidWindow {
    from: i32,
    to: i32,
}

impl PidWindow {
    fn contains(self, pid: i32) -> bool {
        if self.from <= self.to {
            pid > self.from && pid <= self.to
        } else {
            pid > self.from || pid <= self.to
        }
    }
}

/// The pid the kernel allocated last in this pid namespace (`None` where the file is absent).
fn last_pid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// SIGKILL every process whose environment holds `token`, until none is left; the number of
/// distinct processes killed.
pub fn kill_token_holders(token: &str, timeout: Duration) -> io::Result<usize> {
    kill_holders(token, None, timeout)
}

/// [`kill_token_holders`] among the pids of `window` (all pids when `None`).
fn kill_holders(token: &str, window: Option<PidWindow>, timeout: Duration) -> io::Result<usize> {
    let needle = format!("{STAGE_TOKEN_VAR}={token}");
    let start = Instant::now();
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let holders = processes_with_env(needle.as_bytes(), window);
        if holders.is_empty() {
            return Ok(killed.len());
        }
        if start.elapsed() > timeout {
            return Err(io::Error::other(format!(
                "processes {holders:?} of an earlier run of this stage survive SIGKILL after {}s",
                timeout.as_secs()
            )));
        }
        for pid in holders {
            // SAFETY: kill(2) touches no memory. A pid that exited meanwhile gets ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids (not this process) whose environment contains the entry `needle` exactly. Processes
/// that exited (zombies have an empty environment) or cannot be read are skipped.
fn processes_with_env(needle: &[u8], window: Option<PidWindow>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || window.is_some_and(|w| !w.contains(pid)) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|var| var == needle) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn token_holders_are_killed_wherever_they_moved() {
        let token = format!("test-{}-{:?}", std::process::id(), Instant::now());
        // A shell whose background child starts its own session: outside any process group
        // the engine knows, still marked by the token.
        let mut child = Command::new("bash")
            .arg("-c")
            .arg("setsid sleep 300 & sleep 300")
            .env(STAGE_TOKEN_VAR, &token)
            .spawn()
            .unwrap();
        let needle = format!("{STAGE_TOKEN_VAR}={token}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_with_env(needle.as_bytes(), None).len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(processes_with_env(needle.as_bytes(), None).len(), 3);
        assert_eq!(kill_token_holders(&token, REAP_TIMEOUT).unwrap(), 3);
        let _ = child.wait();
        assert!(processes_with_env(needle.as_bytes(), None).is_empty());
        // Nothing left: nothing killed.
        assert_eq!(kill_token_holders(&token, REAP_TIMEOUT).unwrap(), 0);
    }

    #[test]
    fn pid_windows_cover_a_wrap_of_the_counter() {
        let plain = PidWindow { from: 100, to: 200 };
        assert!(!plain.contains(100) && plain.contains(101) && plain.contains(200));
        assert!(!plain.contains(201) && !plain.contains(5));
        let wrapped = PidWindow {
            from: 4_000_000,
            to: 50,
        };
        assert!(wrapped.contains(4_000_001) && wrapped.contains(2) && wrapped.contains(50));
        assert!(!wrapped.contains(51) && !wrapped.contains(4_000_000));
    }

    #[test]
    fn finish_kills_descendants_that_left_the_group_within_the_pid_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let key = StageKey(*blake3::hash(b"finish").as_bytes());
        let (processes, _) = StageProcesses::claim(&store, &key, "run", "a").unwrap();
        let needle = format!("{STAGE_TOKEN_VAR}={}", processes.token());
        let mut child = Command::new("bash")
            .arg("-c")
            .arg("setsid sleep 300 & wait")
            .env(STAGE_TOKEN_VAR, processes.token())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_with_env(needle.as_bytes(), None).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(processes_with_env(needle.as_bytes(), None).len(), 2);
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        // The shell is gone; its setsid'd child is not, until `finish` finds it by pid window.
        assert_eq!(processes.finish().unwrap(), 1);
        assert!(processes_with_env(needle.as_bytes(), None).is_empty());
    }

    #[test]
    fn a_record_from_another_host_is_not_reaped_by_looking_at_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let key = StageKey(*blake3::hash(b"remote").as_bytes());
        let path = record_path(&store, &key);
        let record = Record {
            token: "run0/k".into(),
            run_id: "run0".into(),
            stage: "train".into(),
            engine_pid: 1,
            host: Some("node-elsewhere".into()),
        };
        write_atomic(&path, &serde_json::to_vec(&record).unwrap()).unwrap();
        let err = StageProcesses::claim(&store, &key, "run1", "train")
            .err()
            .expect("a record of another host must not be reaped here");
        assert!(err.to_string().contains("on host node-elsewhere"), "{err}");
        assert!(path.exists(), "the record is kept for that host");
        // Records of older versions (no host) are reaped here, as before.
        let old = r#"{"token":"run0/k","run_id":"run0","stage":"train","engine_pid":1}"#;
        write_atomic(&path, old.as_bytes()).unwrap();
        let (_processes, reaped) = StageProcesses::claim(&store, &key, "run1", "train").unwrap();
        assert_eq!(reaped.unwrap().run_id, "run0");
    }

    #[test]
    fn a_record_is_reaped_once_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let key = StageKey(*blake3::hash(b"k").as_bytes());
        let (first, reaped) = StageProcesses::claim(&store, &key, "run1", "a").unwrap();
        assert_eq!(reaped, None);
        assert!(first.token().starts_with("run1/"));
        // A dead engine drops nothing: the next claim finds the record (no process is left).
        std::mem::forget(first);
        let (second, reaped) = StageProcesses::claim(&store, &key, "run2", "a").unwrap();
        assert_eq!(
            reaped,
            Some(Reaped {
                run_id: "run1".into(),
                killed: 0
            })
        );
        let path = record_path(&store, &key);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }
}
