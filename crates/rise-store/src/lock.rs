//! Kernel file locks (`flock`): they vanish when the holding process dies, so a crash never
//! leaves the store locked. Each exclusive lock file records its holder (pid, command, purpose)
//! so that whoever waits can be told who is in the way.
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
    /// The holder's process id.
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
            pid: std::process::id(),
            command,
            what: what.to_string(),
            since_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// True if a process with this pid exists on this machine (Linux `/proc`; elsewhere
    /// always true, which only makes messages more cautious).
    pub fn is_alive(&self) -> bool {
        if Path::new("/proc/self").exists() {
            Path::new(&format!("/proc/{}", self.pid)).exists()
        } else {
            true
        }
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (`{}`)", self.pid, self.command)?;
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

/// The holders recorded under `locks/runs/` whose process is still alive.
pub(crate) fn run_holders(dir: &Path) -> Vec<LockHolder> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<LockHolder> = rd
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<LockHolder>(t.trim()).ok())
        .filter(|h| h.is_alive())
        .collect();
    out.sort_by_key(|h| h.pid);
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
