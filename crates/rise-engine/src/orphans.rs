//! Stage processes that outlive their stage, or a killed engine.
//!
//! A stage child runs in its own process group and dies with the engine (`PR_SET_PDEATHSIG`),
//! and on Ctrl-C, SIGTERM or SIGHUP the engine kills every group it started. That leaves
//! descendants that moved to another group or session (`setsid`, a daemon), while the engine
//! lives and, worse, after a SIGKILL of the engine, which no handler sees: the kernel's death
//! signal reaches only the direct child, so a grandchild keeps running, still writing into the
//! key's scratch directory. If the next run executed the key then, two writers would share the
//! scratch and the result would interleave their output.
//!
//! While the engine lives, the process tree holds them: the engine and every stage's root
//! process are child subreapers (`PR_SET_CHILD_SUBREAPER`, set by `child`), so a descendant
//! orphaned by `setsid`, a double fork or `env -i` is reparented to its stage's root while that
//! lives and to the engine when the root exits, never to init. After reaping a root, the engine
//! kills and reaps its own children that it did not start ([`kill_escaped_children`]).
//!
//! A dead engine holds nothing, so every process of a stage also carries marks that the next
//! run can find in `/proc`. The engine records them in `locks/stages/<key>.json` for as long
//! as the stage runs:
//! - a token in its environment ([`STAGE_TOKEN_VAR`], inherited by every descendant whatever
//!   group or session it moves to, but not by one started with `env -i`);
//! - the stage's stdout and stderr pipes (a process that keeps them open holds them, whatever
//!   its environment and session);
//! - the stage's scratch and output directories: a process whose working directory, or one of
//!   whose open files, lies inside them.
//!
//! Before a key executes, under the key's lock, a record left behind by a dead engine means
//! orphans may live: every process with one of its marks that started after the stage did is
//! killed and waited for, and only then does the stage start, resuming from a scratch that no
//! one else writes. A process that clears its environment, starts a new session, closes its
//! descriptors and works outside the store escapes all of them; only a cgroup (a Slurm job's)
//! contains that.
//!
//! Why this rather than holding the key lock in the child: an inherited lock would keep the key
//! locked while orphans live, but the next run would then wait on them for as long as they run
//! (forever, for a stuck one), and any process that closes its inherited descriptors (daemons
//! do) would silently drop the protection.
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rise_store::{StageKey, Store};
use serde::{Deserialize, Serialize};

/// Claims made by this process, numbering their tokens.
static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// The environment variable that marks every process of a running stage.
pub const STAGE_TOKEN_VAR: &str = "RISE_STAGE_TOKEN";

/// How long to wait for killed orphans to disappear before giving up on the stage.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`kill_escaped_children`] keeps killing and reaping before leaving the rest to the
/// next stage's sweep (a process stuck in the kernel, on a dead NFS server, dies late).
const ESCAPED_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The stage's own directories (scratch, output), resolved: a process working or holding
    /// a file inside them is the stage's. Absent in older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dirs: Vec<PathBuf>,
    /// Inode numbers of the stage's stdout and stderr pipes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pipes: Vec<u64>,
    /// The kernel's boot id: after a reboot none of the stage's processes can be alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    /// Clock ticks since boot when the stage was claimed (as `/proc/PID/stat` counts process
    /// start times): every process of the stage started no earlier, so an older process that
    /// merely sits in its scratch directory is never taken for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ticks: Option<u64>,
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
    record: Record,
    /// The kernel's last allocated pid when the record was made (before the stage's child was
    /// spawned), and when: every process of the stage has a pid allocated after it.
    spawned_after: Option<i32>,
    claimed_at: Instant,
}

impl StageProcesses {
    /// Under `key`'s lock: kill whatever an earlier, dead run of `key` left running, then record
    /// this run's token and the stage's own directories `dirs` (its scratch and output). Returns
    /// the record and, if there were any, the orphans killed.
    pub fn claim(
        store: &Store,
        key: &StageKey,
        run_id: &str,
        stage: &str,
        dirs: &[&Path],
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
            // `/proc` shows resolved paths; a store reached through a symlink must match them.
            dirs: dirs
                .iter()
                .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()))
                .collect(),
            pipes: Vec::new(),
            boot_id: boot_id(),
            since_ticks: boot_ticks_now(),
        };
        write_atomic(&path, &serde_json::to_vec(&record)?)?;
        lock_claimed().insert(record.token.clone());
        Ok((
            StageProcesses {
                path,
                record,
                spawned_after: last_pid(),
                claimed_at: Instant::now(),
            },
            reaped,
        ))
    }

    /// Records the inode numbers of the stage's stdout and stderr pipes, before its child is
    /// spawned: a process that keeps either open is the stage's, whatever its environment.
    pub fn mark_pipes(&mut self, pipes: &[u64]) -> io::Result<()> {
        self.record.pipes = pipes.to_vec();
        write_atomic(&self.path, &serde_json::to_vec(&self.record)?)
    }

    /// After the stage's child exited (its process group is killed and what left the group is
    /// swept by `child` then): kill any process that still has one of the stage's marks, such
    /// as one started outside the engine's process tree on the stage's behalf, so that nothing
    /// writes into the stage's output or scratch while the engine hashes them. Returns how many
    /// were killed.
    ///
    /// Only processes whose pid was allocated while the stage ran can be its descendants, so
    /// only they are read: reading every process's environment cost ~30 ms per stage on a busy
    /// machine, more than the rest of the engine's work for a stage. Pids are allocated in
    /// increasing order and wrap at `pid_max`; a stage that ran long enough for the counter to
    /// come round again (`PID_WINDOW_TRUSTED_FOR`) gets a full scan.
    pub fn finish(self) -> io::Result<usize> {
        let window = match (self.spawned_after, last_pid()) {
            (Some(from), Some(to)) if self.claimed_at.elapsed() < PID_WINDOW_TRUSTED_FOR => {
                Some(PidWindow { from, to })
            }
            _ => None,
        };
        kill_marked(&Marks::of(&self.record), window, REAP_TIMEOUT)
    }

    /// The value of [`STAGE_TOKEN_VAR`] for this stage's child.
    pub fn token(&self) -> &str {
        &self.record.token
    }
}

impl Drop for StageProcesses {
    fn drop(&mut self) {
        lock_claimed().remove(&self.record.token);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tokens of stages claimed by this process and not finished: a child of the engine carrying
/// one belongs to a stage that is still running, which kills its own processes when it ends.
fn lock_claimed() -> std::sync::MutexGuard<'static, HashSet<String>> {
    static CLAIMED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let claimed = CLAIMED.get_or_init(|| Mutex::new(HashSet::new()));
    match claimed.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
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

/// If `path` holds a record, kill every process carrying one of its marks, wait until none is
/// left, and remove the record.
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
    // Written before this boot: its processes died with the machine, and its start time means
    // nothing now (a process in its scratch directory today is someone else's).
    let rebooted = record.boot_id.is_some() && record.boot_id != boot_id();
    let killed = if rebooted {
        0
    } else {
        kill_marked(&Marks::of(&record), None, REAP_TIMEOUT)?
    };
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

/// This boot's id (`None` where the file is absent).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

/// Now, in clock ticks since boot: the unit and clock of a process's start time in
/// `/proc/PID/stat` (rounded down as the kernel rounds it, so a process started after this
/// call never shows an earlier time).
fn boot_ticks_now() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    // SAFETY: sysconf only reads a system constant.
    let hz = u128::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let ns = u128::try_from(now.tv_sec).ok()? * 1_000_000_000 + u128::try_from(now.tv_nsec).ok()?;
    u64::try_from(ns * hz / 1_000_000_000).ok()
}

/// What `/proc/PID/stat` says about a process, as far as telling processes apart needs.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    /// Exited, not yet reaped by its parent.
    zombie: bool,
    ppid: i32,
    pgrp: i32,
    /// Clock ticks since boot when it was forked.
    start: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may itself hold spaces and `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22; `fields` starts at field 3.
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every pid in `/proc`.
fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// This process's ancestors: never a stage's (a stage cannot start the shell that started
/// `rise`), whatever directory they sit in.
fn ancestors() -> HashSet<i32> {
    let mut out = HashSet::new();
    // SAFETY: getppid cannot fail.
    let mut pid = unsafe { libc::getppid() };
    while pid > 1 && out.insert(pid) {
        pid = proc_stat(pid).map_or(0, |s| s.ppid);
    }
    out
}

/// What identifies one stage's processes (see the module doc).
struct Marks<'a> {
    /// `RISE_STAGE_TOKEN=<token>`, as one entry of an environment.
    token: Vec<u8>,
    pipes: &'a [u64],
    dirs: &'a [PathBuf],
    /// Processes that started before this (clock ticks since boot) are not the stage's.
    since: Option<u64>,
}

impl<'a> Marks<'a> {
    fn of(record: &'a Record) -> Self {
        Marks {
            token: format!("{STAGE_TOKEN_VAR}={}", record.token).into_bytes(),
            pipes: &record.pipes,
            dirs: &record.dirs,
            since: record.since_ticks,
        }
    }

    /// Whether `pid` carries the token, works inside one of the directories, or holds one of
    /// the pipes or a file inside the directories. Unreadable parts count as unmarked.
    fn held_by(&self, pid: i32) -> bool {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        if std::fs::read(proc.join("environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == self.token))
        {
            return true;
        }
        if self.dirs.is_empty() && self.pipes.is_empty() {
            return false;
        }
        if std::fs::read_link(proc.join("cwd")).is_ok_and(|cwd| self.inside(&cwd)) {
            return true;
        }
        let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| self.pipe(&target) || self.inside(&target))
        })
    }

    /// `pipe:[INODE]`, as `/proc/PID/fd/N` names a pipe, for one of the stage's pipes.
    fn pipe(&self, target: &Path) -> bool {
        let text = target.as_os_str().as_bytes();
        text.strip_prefix(b"pipe:[")
            .and_then(|rest| rest.strip_suffix(b"]"))
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
            .is_some_and(|inode| self.pipes.contains(&inode))
    }

    fn inside(&self, path: &Path) -> bool {
        // A removed file or directory (a stale output directory the store cleaned up) reads
        // as `PATH (deleted)`.
        let bytes = path.as_os_str().as_bytes();
        let path = Path::new(OsStr::from_bytes(
            bytes.strip_suffix(b" (deleted)").unwrap_or(bytes),
        ));
        path.is_absolute() && self.dirs.iter().any(|dir| path.starts_with(dir))
    }
}

/// SIGKILL every process whose environment holds `token`, until none is left; the number of
/// distinct processes killed.
pub fn kill_token_holders(token: &str, timeout: Duration) -> io::Result<usize> {
    let marks = Marks {
        token: format!("{STAGE_TOKEN_VAR}={token}").into_bytes(),
        pipes: &[],
        dirs: &[],
        since: None,
    };
    kill_marked(&marks, None, timeout)
}

/// SIGKILL every process with one of `marks` among the pids of `window` (all pids when
/// `None`), until none is left, reaping those that are this process's children; the number of
/// distinct processes killed.
fn kill_marked(
    marks: &Marks<'_>,
    window: Option<PidWindow>,
    timeout: Duration,
) -> io::Result<usize> {
    let spare = ancestors();
    let me = std::process::id() as i32;
    let start = Instant::now();
    let mut killed = BTreeSet::new();
    let mut children = BTreeSet::new();
    loop {
        let marked = marked_processes(marks, window, &spare);
        reap_exited(&mut children);
        if marked.is_empty() {
            // A killed child that had not quite died when it was last seen.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !children.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                reap_exited(&mut children);
            }
            return Ok(killed.len());
        }
        if start.elapsed() > timeout {
            let pids: Vec<i32> = marked.iter().map(|(pid, _)| *pid).collect();
            return Err(io::Error::other(format!(
                "processes {pids:?} of an earlier run of this stage survive SIGKILL after {}s",
                timeout.as_secs()
            )));
        }
        for (pid, stat) in marked {
            kill_if_same(pid, stat.start);
            killed.insert(pid);
            if stat.ppid == me {
                children.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps those of `pids` (this process's children: no one else can) that have exited, and
/// forgets those that are not its children any more.
fn reap_exited(pids: &mut BTreeSet<i32>) {
    // SAFETY: waitpid with WNOHANG on one pid; a null status pointer is allowed.
    pids.retain(|&pid| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
}

/// Live processes (not this one, not its ancestors) with one of `marks`, started no earlier
/// than the marks' stage, among the pids of `window`.
fn marked_processes(
    marks: &Marks<'_>,
    window: Option<PidWindow>,
    spare: &HashSet<i32>,
) -> Vec<(i32, ProcStat)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in all_pids() {
        if pid == me || spare.contains(&pid) || window.is_some_and(|w| !w.contains(pid)) {
            continue;
        }
        let Some(stat) = proc_stat(pid) else { continue };
        if stat.zombie || marks.since.is_some_and(|since| stat.start < since) {
            continue;
        }
        if marks.held_by(pid) {
            out.push((pid, stat));
        }
    }
    out
}

/// SIGKILL `pid` if it is still the process that was forked at `start`, not a later one that
/// reused its pid after it exited. Through a pidfd (Linux 5.3+) the check and the signal name
/// one process; without, the check comes just before the signal (a reuse in between needs the
/// pid counter to wrap in that instant).
fn kill_if_same(pid: i32, start: u64) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if let Ok(fd) = i32::try_from(fd) {
        if fd >= 0 {
            // SAFETY: `fd` was just returned by pidfd_open and is owned by no one else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if proc_stat(pid).is_some_and(|s| s.start == start) {
                use std::os::fd::AsRawFd;
                // SAFETY: signals the process `fd` refers to; a null siginfo is allowed.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
            }
            return;
        }
    }
    if proc_stat(pid).is_some_and(|s| s.start == start) {
        // SAFETY: kill(2) touches no memory. A pid that exited meanwhile gets ESRCH.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// This process's children, zombies included.
fn own_children() -> Vec<i32> {
    let mut out = Vec::new();
    let mut readable = false;
    // A reparented process becomes the child of some thread of this process: read them all.
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                readable = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !readable {
        // A kernel without CONFIG_PROC_CHILDREN: every process's parent.
        let me = std::process::id() as i32;
        out = all_pids()
            .into_iter()
            .filter(|&pid| proc_stat(pid).is_some_and(|s| s.ppid == me))
            .collect();
    }
    out
}

/// After the engine reaped a stage's root process (and killed its group): kill and reap every
/// child of this process that a stage left behind, the stage's processes that moved to
/// another group or session (`setsid`, `env -i`, daemons) and that the engine, a child
/// subreaper, inherited when the root exited. Returns how many were killed.
///
/// Only children this process did not start itself are touched. `live_roots` are the stage
/// roots still running (the caller holds the lock under which roots are spawned, so none is
/// half-started). Every other child the engine or its host program starts (`sbatch`,
/// `squeue`, a test's helper) stays in this process's group: a child in another group that is
/// not a live root is a stage's leftover, unless it carries the token of a stage still
/// claimed (other than `ended_token`, the stage just ended), whose own end handles it.
/// Zombies among them (leftovers that exited on their own) are reaped too.
pub(crate) fn kill_escaped_children(live_roots: &HashSet<i32>, ended_token: Option<&str>) -> usize {
    let me = std::process::id() as i32;
    // SAFETY: getpgrp cannot fail.
    let my_group = unsafe { libc::getpgrp() };
    let deadline = Instant::now() + ESCAPED_TIMEOUT;
    let mut killed = 0;
    let mut dying: BTreeSet<i32> = BTreeSet::new();
    loop {
        let spared: Vec<Vec<u8>> = lock_claimed()
            .iter()
            .filter(|t| Some(t.as_str()) != ended_token)
            .map(|t| format!("{STAGE_TOKEN_VAR}={t}").into_bytes())
            .collect();
        let mut found = false;
        for pid in own_children() {
            if live_roots.contains(&pid) || dying.contains(&pid) {
                continue;
            }
            // A child stays this process's child until this process reaps it, so its pid
            // cannot be reused between this read and the kill.
            let Some(stat) = proc_stat(pid) else { continue };
            if stat.ppid != me || stat.pgrp == my_group {
                continue;
            }
            if !stat.zombie {
                if carries_any(pid, &spared) {
                    continue;
                }
                // SAFETY: kill(2) touches no memory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                killed += 1;
            }
            dying.insert(pid);
            found = true;
        }
        reap_exited(&mut dying);
        // Killing a leftover hands its own children to this process: go round until a pass
        // finds no one.
        if (!found && dying.is_empty()) || Instant::now() > deadline {
            return killed;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid`'s environment holds one of the entries `vars`.
fn carries_any(pid: i32, vars: &[Vec<u8>]) -> bool {
    if vars.is_empty() {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|&b| b == 0)
            .any(|var| vars.iter().any(|v| v == var))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    /// Live processes whose environment holds `needle`.
    fn processes_with_env(needle: &[u8], window: Option<PidWindow>) -> Vec<i32> {
        let marks = Marks {
            token: needle.to_vec(),
            pipes: &[],
            dirs: &[],
            since: None,
        };
        marked_processes(&marks, window, &HashSet::new())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    fn alive(child: &mut std::process::Child) -> bool {
        matches!(child.try_wait(), Ok(None))
    }

    /// A record as an engine killed while running a stage leaves it.
    fn dead_engines_record(dirs: Vec<PathBuf>, pipes: Vec<u64>, since: Option<u64>) -> Record {
        Record {
            token: "dead-run/k/0".into(),
            run_id: "dead-run".into(),
            stage: "bg".into(),
            engine_pid: 1,
            host: Some(rise_store::hostname().to_string()),
            dirs,
            pipes,
            boot_id: boot_id(),
            since_ticks: since,
        }
    }

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
        let (processes, _) = StageProcesses::claim(&store, &key, "run", "a", &[]).unwrap();
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
            host: Some("node-elsewhere".into()),
            ..dead_engines_record(Vec::new(), Vec::new(), None)
        };
        write_atomic(&path, &serde_json::to_vec(&record).unwrap()).unwrap();
        let err = StageProcesses::claim(&store, &key, "run1", "train", &[])
            .err()
            .expect("a record of another host must not be reaped here");
        assert!(err.to_string().contains("on host node-elsewhere"), "{err}");
        assert!(path.exists(), "the record is kept for that host");
        // Records of older versions (no host) are reaped here, as before.
        let old = r#"{"token":"run0/k","run_id":"run0","stage":"train","engine_pid":1}"#;
        write_atomic(&path, old.as_bytes()).unwrap();
        let (_processes, reaped) =
            StageProcesses::claim(&store, &key, "run1", "train", &[]).unwrap();
        assert_eq!(reaped.unwrap().run_id, "run0");
    }

    #[test]
    fn a_record_is_reaped_once_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let key = StageKey(*blake3::hash(b"k").as_bytes());
        let (first, reaped) = StageProcesses::claim(&store, &key, "run1", "a", &[]).unwrap();
        assert_eq!(reaped, None);
        assert!(first.token().starts_with("run1/"));
        // A dead engine drops nothing: the next claim finds the record (no process is left).
        std::mem::forget(first);
        let (second, reaped) = StageProcesses::claim(&store, &key, "run2", "a", &[]).unwrap();
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

    #[test]
    fn a_dead_runs_processes_are_found_by_directory_and_pipe_without_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let key = StageKey(*blake3::hash(b"marks").as_bytes());
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let sleep = |cwd: &Path| {
            let mut cmd = Command::new("sleep");
            // `env -i`: no token. (No new session here: a child of this test process in its
            // own group would be fair game for another test's sweep of escaped children.)
            cmd.arg("300").env_clear().current_dir(cwd);
            cmd
        };
        // Older than the stage: sits in its scratch but is not its process.
        let mut older = sleep(&scratch).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let since = boot_ticks_now();
        std::thread::sleep(Duration::from_millis(30));
        let mut in_scratch = sleep(&scratch).spawn().unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let reader = std::fs::File::from(OwnedFd::from(reader));
        let pipe = reader.metadata().unwrap().ino();
        let mut holds_pipe = sleep(dir.path()).stdout(writer).spawn().unwrap();
        let mut writes_file = Command::new("bash")
            .arg("-c")
            .arg(r#"exec 3>>"$1/state"; exec sleep 300"#)
            .arg("bash")
            .arg(&scratch)
            .env_clear()
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let mut unrelated = sleep(dir.path()).spawn().unwrap();
        // The file descriptor exists once bash has run its `exec 3>>`.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !scratch.join("state").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let record = dead_engines_record(
            vec![std::fs::canonicalize(&scratch).unwrap()],
            vec![pipe],
            since,
        );
        write_atomic(
            &record_path(&store, &key),
            &serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let (_processes, reaped) = StageProcesses::claim(&store, &key, "run2", "bg", &[]).unwrap();
        assert_eq!(reaped.unwrap().killed, 3);
        for (name, child) in [
            ("cwd", &mut in_scratch),
            ("pipe", &mut holds_pipe),
            ("file", &mut writes_file),
        ] {
            assert!(
                !alive(child),
                "the process holding the {name} mark survived"
            );
        }
        assert!(
            alive(&mut older),
            "a process older than the stage was killed"
        );
        assert!(alive(&mut unrelated), "an unmarked process was killed");
        for child in [&mut older, &mut unrelated] {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(reader);
    }

    #[test]
    fn a_record_from_before_a_reboot_kills_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let key = StageKey(*blake3::hash(b"reboot").as_bytes());
        let record = Record {
            boot_id: Some("another-boot".into()),
            ..dead_engines_record(
                vec![std::fs::canonicalize(dir.path()).unwrap()],
                vec![],
                None,
            )
        };
        let mut child = Command::new("sleep")
            .arg("300")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        write_atomic(
            &record_path(&store, &key),
            &serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let (_processes, reaped) = StageProcesses::claim(&store, &key, "run2", "bg", &[]).unwrap();
        assert_eq!(reaped.unwrap().killed, 0);
        assert!(alive(&mut child));
        let _ = child.kill();
        let _ = child.wait();
    }
}
