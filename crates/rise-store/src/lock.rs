//! Kernel file locks (`flock`): they vanish when the holding process dies, so a crash never
//! leaves the store locked. Each exclusive lock file records its holder (host, pid, command,
//! purpose) so that whoever waits can be told who is in the way.
//!
//! A store on a shared filesystem is opened from several hosts. The lock itself is then only as
//! good as the filesystem's `flock` (see [`crate::FsInfo::flock`]); the holder records carry the
//! host, because a pid means nothing on another machine: a record written on another host is
//! never judged dead by looking at this host's `/proc`.
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::id::StageKey;

/// Who holds a lock, as recorded in its lock file by the holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The host the holder runs on (`gethostname(2)`). Absent in records written before rise
    /// recorded it; those are treated as written on this host, as they were judged before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The holder's process id (on `host`).
    pub pid: u32,
    /// The holder's command line (truncated to a few hundred characters).
    pub command: String,
    /// What the holder said it is doing, e.g. "iter1/train".
    pub what: String,
    /// When the lock was taken, in seconds since the Unix epoch.
    pub since_unix: u64,
}

impl LockHolder {
    pub(crate) fn me(what: &str) -> LockHolder {
        let mut command = std::env::args().collect::<Vec<_>>().join(" ");
        if command.len() > 300 {
            let mut cut = 300;
            while !command.is_char_boundary(cut) {
                cut -= 1;
            }
            command.truncate(cut);
            command.push('…');
        }
        LockHolder {
            host: Some(hostname().to_string()),
            pid: std::process::id(),
            command,
            what: what.to_string(),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// True if the holder ran on this host (or did not record its host).
    pub fn is_local(&self) -> bool {
        self.host.as_deref().is_none_or(|h| h == hostname())
    }

    /// False only when the holder is known to be gone: it ran on this host and no process with
    /// its pid exists (Linux `/proc`). A holder on another host may be alive whatever this
    /// host's `/proc` says; without `/proc` every holder may be alive, which only makes
    /// messages more cautious.
    pub fn may_be_alive(&self) -> bool {
        if !self.is_local() || !Path::new("/proc/self").exists() {
            return true;
        }
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// This host's name (`gethostname(2)`), read once; `"localhost"` if the call fails.
pub fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        match std::str::from_utf8(&buf[..end]) {
            Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
            _ => "localhost".to_string(),
        }
    })
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(host) = self.host.as_deref().filter(|_| !self.is_local()) {
            write!(f, " on host {host}")?;
        }
        write!(f, " (`{}`)", self.command)?;
        if !self.what.is_empty() {
            write!(f, " for {}", self.what)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

fn same_file(file: &File, path: &Path) -> Result<bool> {
    let a = file
        .metadata()
        .map_err(StoreError::io("stat lock file", path))?;
    match fs::metadata(path) {
        Ok(b) => Ok(a.dev() == b.dev() && a.ino() == b.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("stat lock file", path)(e)),
    }
}

/// Reads the holder record from a lock file. The holder writes it right after locking, so a
/// waiter may briefly see an empty file: retry a few times before giving up.
pub(crate) fn read_holder(file: &File) -> Option<LockHolder> {
    for attempt in 0..5 {
        let mut text = String::new();
        let mut f = file;
        if f.seek(SeekFrom::Start(0)).is_ok() && f.read_to_string(&mut text).is_ok() {
            if let Ok(h) = serde_json::from_str::<LockHolder>(text.trim()) {
                return Some(h);
            }
        }
        if attempt < 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    None
}

/// Opens (creating if needed) and locks `path`. Returns `None` when `blocking` is false and
/// someone else holds it. Calls `on_wait` (with the holder, if recorded) before blocking.
///
/// Lock files may be deleted by `gc` while nobody holds them; after locking we check that the
/// path still names the file we locked, and retry if not, so two processes can never both
/// believe they hold the same lock through different inodes.
pub(crate) fn acquire(
    path: &Path,
    mode: Mode,
    blocking: bool,
    on_wait: &mut dyn FnMut(Option<&LockHolder>),
) -> Result<Option<File>> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(StoreError::io("open lock file", path))?;
        let attempt = match mode {
            Mode::Shared => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                if !blocking {
                    return Ok(None);
                }
                let holder = read_holder(&file);
                on_wait(holder.as_ref());
                let locked = match mode {
                    Mode::Shared => file.lock_shared(),
                    Mode::Exclusive => file.lock(),
                };
                locked.map_err(StoreError::io("lock", path))?;
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", path)(e)),
        }
        if same_file(&file, path)? {
            return Ok(Some(file));
        }
    }
}

/// Records `holder` in a lock file we hold exclusively.
pub(crate) fn write_holder(file: &File, path: &Path, holder: &LockHolder) -> Result<()> {
    let text = serde_json::to_string(holder).map_err(|source| StoreError::Json {
        op: "encode",
        what: format!("lock holder for {}", path.display()),
        source,
    })?;
    let mut f = file;
    f.set_len(0)
        .and_then(|_| f.seek(SeekFrom::Start(0)))
        .and_then(|_| f.write_all(text.as_bytes()))
        .map_err(StoreError::io("write lock holder", path))
}

/// An exclusive lock on one stage key, held until dropped (or the process dies).
///
/// The engine takes it before executing a stage so that two runs needing the same key execute
/// it once: the second waits, then finds the committed result.
#[derive(Debug)]
pub struct KeyLock {
    key: StageKey,
    path: PathBuf,
    file: File,
}

impl KeyLock {
    pub(crate) fn new(key: StageKey, path: PathBuf, file: File, what: &str) -> Result<KeyLock> {
        write_holder(&file, &path, &LockHolder::me(what))?;
        Ok(KeyLock { key, path, file })
    }

    /// The locked key.
    pub fn key(&self) -> &StageKey {
        &self.key
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites what the holder says it is doing, the lock held throughout (a Slurm driver adds
    /// its job's id once `sbatch` has answered, for `rise status`).
    pub fn set_what(&self, what: &str) -> Result<()> {
        write_holder(&self.file, &self.path, &LockHolder::me(what))
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // Clear the record first so a late reader never blames a process that has let go.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The store-wide run lock. Every `rise run` holds it shared for its whole duration; `gc` takes
/// it exclusively, so garbage collection never runs while a run may be writing blobs that no
/// result references yet.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    holder_path: Option<PathBuf>,
    exclusive: bool,
}

impl RunLock {
    pub(crate) fn new(file: File, holder_path: Option<PathBuf>, exclusive: bool) -> RunLock {
        RunLock {
            file,
            holder_path,
            exclusive,
        }
    }

    /// True for the exclusive (gc) form.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some(p) = &self.holder_path {
            let _ = fs::remove_file(p);
        }
        let _ = self.file.unlock();
    }
}

/// The holders recorded under `locks/runs/` whose process may still be alive (every holder on
/// another host: see [`LockHolder::may_be_alive`]).
pub(crate) fn run_holders(dir: &Path) -> Vec<LockHolder> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<LockHolder> = rd
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<LockHolder>(t.trim()).ok())
        .filter(|h| h.may_be_alive())
        .collect();
    out.sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_excludes_and_names_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let a = acquire(&path, Mode::Exclusive, false, &mut |_| {})
            .unwrap()
            .unwrap();
        write_holder(&a, &path, &LockHolder::me("stage a")).unwrap();
        // flock conflicts between two open file descriptions, even in one process.
        assert!(acquire(&path, Mode::Exclusive, false, &mut |_| {})
            .unwrap()
            .is_none());
        let probe = File::open(&path).unwrap();
        let holder = read_holder(&probe).unwrap();
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.what, "stage a");
        drop(a);
        assert!(acquire(&path, Mode::Exclusive, false, &mut |_| {})
            .unwrap()
            .is_some());
    }

    /// A pid above Linux's maximum (2^22): no process has it, here or anywhere.
    const NO_SUCH_PID: u32 = 0x7FFF_FFF0;

    fn holder(host: Option<&str>, pid: u32) -> LockHolder {
        LockHolder {
            host: host.map(str::to_string),
            pid,
            command: "rise run p.toml".into(),
            what: "run".into(),
            since_unix: 0,
        }
    }

    #[test]
    fn a_holder_on_another_host_is_never_judged_dead_here() {
        let me = LockHolder::me("x");
        assert_eq!(me.host.as_deref(), Some(hostname()));
        assert!(me.is_local() && me.may_be_alive());
        // Here, a pid that does not exist is a dead holder, with or without a recorded host
        // (records of older versions have none).
        assert!(!holder(Some(hostname()), NO_SUCH_PID).may_be_alive());
        assert!(!holder(None, NO_SUCH_PID).may_be_alive());
        // On another host, this host's /proc says nothing.
        let remote = holder(Some("node-elsewhere"), NO_SUCH_PID);
        assert!(!remote.is_local());
        assert!(remote.may_be_alive());
        assert_eq!(
            remote.to_string(),
            "pid 2147483632 on host node-elsewhere (`rise run p.toml`) for run"
        );
        assert!(!me.to_string().contains(" on host "), "{me}");

        // Run holders as `rise status` and gc list them.
        let dir = tempfile::tempdir().unwrap();
        for (name, h) in [
            ("local-dead", holder(Some(hostname()), NO_SUCH_PID)),
            ("remote", remote.clone()),
            ("me", me.clone()),
        ] {
            fs::write(dir.path().join(name), serde_json::to_string(&h).unwrap()).unwrap();
        }
        let mut listed = run_holders(dir.path());
        listed.sort_by_key(|h| h.pid);
        assert_eq!(listed, vec![me, remote]);
    }

    #[test]
    fn holder_records_without_a_host_still_parse() {
        let old = r#"{"pid":7,"command":"rise run","what":"run","since_unix":1}"#;
        let h: LockHolder = serde_json::from_str(old).unwrap();
        assert_eq!(h.host, None);
        assert!(h.is_local());
    }

    #[test]
    fn shared_locks_coexist_but_exclude_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        let a = acquire(&path, Mode::Shared, false, &mut |_| {}).unwrap();
        let b = acquire(&path, Mode::Shared, false, &mut |_| {}).unwrap();
        assert!(a.is_some() && b.is_some());
        assert!(acquire(&path, Mode::Exclusive, false, &mut |_| {})
            .unwrap()
            .is_none());
        drop((a, b));
        assert!(acquire(&path, Mode::Exclusive, false, &mut |_| {})
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_deleted_lock_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let stale = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        fs::remove_file(&path).unwrap();
        // Someone locking the unlinked inode must not block a fresh lock of the path.
        stale.lock().unwrap();
        let fresh = acquire(&path, Mode::Exclusive, false, &mut |_| {}).unwrap();
        assert!(fresh.is_some());
        assert!(!same_file(&stale, &path).unwrap());
    }
}
