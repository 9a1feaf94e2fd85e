//! The `Store` handle: layout, staging areas, run records, pins, scratch and locks.
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, StoreError};
use crate::fsinfo::FsInfo;
use crate::id::{ArtifactId, StageKey};
use crate::index::{local_index_base, IndexLocation, INDEX_DIR_VAR};
use crate::lock::{self, KeyLock, LockHolder, Mode, RunLock};

const FORMAT_MARKER: &str = "rise-store 1\n";

/// A handle on a store directory. Cheap to share between threads (`&Store` is enough for every
/// operation); several processes may open the same store at once.
#[derive(Debug)]
pub struct Store {
    pub(crate) root: PathBuf,
    session: Mutex<Option<Arc<Session>>>,
    counter: AtomicU64,
    /// Damaged committed results already warned about by this handle (warn once, not per
    /// index transaction).
    pub(crate) warned: Mutex<std::collections::BTreeSet<crate::id::ResultId>>,
    /// Results committed by this handle since its last index transaction.
    pub(crate) unindexed_commits: std::sync::atomic::AtomicBool,
    /// Where the index lives (decided at open: see [`IndexLocation`]).
    pub(crate) index: IndexLocation,
    /// The store's filesystem, if it could be probed.
    pub(crate) fs: Option<FsInfo>,
}

/// This process's staging directory `tmp/<name>/`, alive while `tmp/<name>.lock` is locked.
#[derive(Debug)]
struct Session {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = remove_dir_all_force(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{:08x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Store {
    /// `root/cache`, the directory for disposable caches, if `root` is an initialised store of
    /// this format (without opening it: callers use it before validating their input).
    pub fn cache_dir(root: &Path) -> Option<PathBuf> {
        let marker = fs::read_to_string(root.join("STORE")).ok()?;
        (marker == FORMAT_MARKER).then(|| root.join("cache"))
    }

    /// Opens the store at `root`, creating its layout if needed, and removes temp files left by
    /// writers that are no longer running.
    ///
    /// Refuses a non-empty directory that is not a store, so a mistyped `--store` never litters
    /// (or, later, garbage-collects) an unrelated directory.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let marker = root.join("STORE");
        match fs::read_to_string(&marker) {
            Ok(text) if text == FORMAT_MARKER => {}
            Ok(text) => {
                return Err(StoreError::Io {
                    op: "open store",
                    path: marker,
                    source: std::io::Error::other(format!(
                        "unsupported store format {:?} (this rise understands {:?})",
                        text.trim(),
                        FORMAT_MARKER.trim()
                    )),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => init_layout(&root)?,
            Err(e) => return Err(StoreError::io("read", &marker)(e)),
        }
        // A probe that fails (no statfs, a path that cannot be canonicalised) keeps the index
        // in the store, as before the index could move.
        let fs = FsInfo::probe(&root).ok();
        let canonical = fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
        let index = IndexLocation::resolve(
            &canonical,
            std::env::var_os(INDEX_DIR_VAR).as_deref(),
            fs.as_ref(),
            &local_index_base(),
        );
        let store = Store {
            root,
            session: Mutex::new(None),
            counter: AtomicU64::new(0),
            warned: Mutex::new(Default::default()),
            unindexed_commits: Default::default(),
            index,
            fs,
        };
        store.clean_stale_tmp()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The filesystem the store lives on (type, mount, options), as probed when it was
    /// opened; `None` where `statfs` failed.
    pub fn filesystem(&self) -> Option<&FsInfo> {
        self.fs.as_ref()
    }

    /// `logs/`: where the engine writes per-run and per-stage logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub(crate) fn object_path(&self, id: &crate::id::BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub(crate) fn results_dir(&self) -> PathBuf {
        self.root.join("results")
    }

    pub(crate) fn checkout_path(&self, id: &ArtifactId) -> PathBuf {
        self.root.join("checkouts").join(id.to_hex())
    }

    fn session(&self) -> Result<Arc<Session>> {
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let tmp = self.root.join("tmp");
        let name = format!("w{}", unique_suffix());
        let lock_path = tmp.join(format!("{name}.lock"));
        // The lock file exists (and is locked) before the directory, so a directory without its
        // lock file can only be left over from a dead process.
        let file =
            lock::acquire(&lock_path, Mode::Exclusive, false, &mut |_| {})?.ok_or_else(|| {
                StoreError::io("lock", &lock_path)(std::io::Error::other(
                    "freshly named staging lock is already held",
                ))
            })?;
        lock::write_holder(&file, &lock_path, &LockHolder::me("staging"))?;
        let dir = tmp.join(&name);
        fs::create_dir(&dir).map_err(StoreError::io("create staging directory", &dir))?;
        let s = Arc::new(Session {
            dir,
            lock_path,
            _lock: file,
        });
        *guard = Some(s.clone());
        Ok(s)
    }

    /// A fresh path inside this process's staging directory (nothing is created).
    pub(crate) fn tmp_path(&self, hint: &str) -> Result<PathBuf> {
        let s = self.session()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Ok(s.dir.join(format!("{n}.{hint}")))
    }

    /// A fresh, empty directory inside this process's staging area (`tmp/<session>/`), for
    /// work that is hashed into the store later (the engine's stage output directories). It is
    /// removed with the staging area when this `Store` is dropped, or at the next
    /// [`Store::open`] after this process died.
    pub fn staging_dir(&self, hint: &str) -> Result<PathBuf> {
        let dir = self.tmp_path(hint)?;
        fs::create_dir(&dir).map_err(StoreError::io("create staging directory", &dir))?;
        Ok(dir)
    }

    /// Removes staging directories whose owner is gone (its lock is free or its lock file is
    /// missing). Safe against concurrent openers: a live owner always holds its lock.
    fn clean_stale_tmp(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        let rd = fs::read_dir(&tmp).map_err(StoreError::io("list", &tmp))?;
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in &names {
            let path = tmp.join(name);
            if let Some(stem) = name.strip_suffix(".lock") {
                if let Some(file) = lock::acquire(&path, Mode::Exclusive, false, &mut |_| {})? {
                    let dir = tmp.join(stem);
                    if dir.exists() {
                        tracing::info!("removing stale staging directory {}", dir.display());
                        remove_dir_all_force(&dir)?;
                    }
                    let _ = fs::remove_file(&path);
                    drop(file);
                }
            } else if !tmp.join(format!("{name}.lock")).exists() {
                tracing::info!("removing stale staging entry {}", path.display());
                if path.is_dir() {
                    remove_dir_all_force(&path)?;
                } else {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// Writes `bytes` to `dest` atomically (staged, fsynced, renamed, directory fsynced).
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path("atomic")?;
        let mut f = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(StoreError::io("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, dest).map_err(StoreError::io("rename into place", dest))?;
        sync_parent(dest)
    }

    /// [`Store::write_atomic`] without the fsyncs, for records a crash may lose or tear without
    /// harm because they are checked and derived again when missing or unreadable (checkout
    /// seals: a seal also names the boot it was written in, and is distrusted after a reboot).
    /// A stage commit writes one; its two fsyncs cost more than the rest of the commit.
    pub(crate) fn write_atomic_unsynced(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path("atomic")?;
        fs::write(&tmp, bytes).map_err(StoreError::io("write", &tmp))?;
        fs::rename(&tmp, dest).map_err(StoreError::io("rename into place", dest))
    }

    // ---- run records -------------------------------------------------------------------

    /// Stores (or replaces) the record of run `run_id` as `runs/<run_id>.json`, atomically.
    ///
    /// Run records live in plain files, not in the index, so deleting or rebuilding the index
    /// never loses them.
    pub fn record_run(&self, run_id: &str, record: &serde_json::Value) -> Result<()> {
        validate_name("run id", run_id)?;
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Json {
            op: "encode",
            what: format!("run record {run_id}"),
            source,
        })?;
        bytes.push(b'\n');
        self.write_atomic(
            &self.root.join("runs").join(format!("{run_id}.json")),
            &bytes,
        )
    }

    /// The record of run `run_id`, if one was stored.
    pub fn run_record(&self, run_id: &str) -> Result<Option<serde_json::Value>> {
        validate_name("run id", run_id)?;
        let path = self.root.join("runs").join(format!("{run_id}.json"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Json {
                op: "decode",
                what: format!("run record {}", path.display()),
                source,
            })
    }

    /// The ids of all stored run records, sorted.
    pub fn run_ids(&self) -> Result<Vec<String>> {
        let dir = self.root.join("runs");
        let rd = fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    // ---- pins --------------------------------------------------------------------------

    /// Pins `artifact` under `name`: gc keeps it (and its producer) until unpinned. The artifact's
    /// tree must be in the store. Re-pinning a name replaces it.
    pub fn pin(&self, name: &str, artifact: &ArtifactId) -> Result<()> {
        validate_name("pin name", name)?;
        self.read_tree(artifact)?;
        self.write_atomic(
            &self.root.join("pins").join(name),
            format!("{artifact}\n").as_bytes(),
        )
    }

    /// Removes pin `name`; an error if there is no such pin.
    pub fn unpin(&self, name: &str) -> Result<()> {
        validate_name("pin name", name)?;
        let path = self.root.join("pins").join(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_parent(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NoSuchPin { name: name.into() })
            }
            Err(e) => Err(StoreError::io("remove", &path)(e)),
        }
    }

    /// All pins, sorted by name.
    pub fn pins(&self) -> Result<Vec<(String, ArtifactId)>> {
        let dir = self.root.join("pins");
        let rd = fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let path = e.path();
            let text = fs::read_to_string(&path).map_err(StoreError::io("read pin", &path))?;
            let id = text
                .trim()
                .parse()
                .map_err(|err: StoreError| StoreError::Io {
                    op: "read pin",
                    path: path.clone(),
                    source: std::io::Error::other(err.to_string()),
                })?;
            out.push((name, id));
        }
        out.sort();
        Ok(out)
    }

    // ---- scratch -----------------------------------------------------------------------

    /// `scratch/<key>/`, created if missing: a stage's resumable in-progress state. It survives
    /// crashes; the engine removes it after the stage's result commits.
    pub fn scratch_dir(&self, key: &StageKey) -> Result<PathBuf> {
        let dir = self.root.join("scratch").join(key.to_hex());
        fs::create_dir_all(&dir).map_err(StoreError::io("create scratch directory", &dir))?;
        Ok(dir)
    }

    /// Removes `scratch/<key>/` if present.
    pub fn remove_scratch(&self, key: &StageKey) -> Result<()> {
        let dir = self.root.join("scratch").join(key.to_hex());
        match fs::symlink_metadata(&dir) {
            Ok(_) => remove_dir_all_force(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("stat", &dir)(e)),
        }
    }

    // ---- locks -------------------------------------------------------------------------

    pub(crate) fn key_lock_path(&self, key: &StageKey) -> PathBuf {
        self.root
            .join("locks")
            .join("keys")
            .join(format!("{key}.lock"))
    }

    /// Takes the exclusive lock on `key`, blocking until it is free. While waiting it logs
    /// (`tracing::info`) who holds it. `what` is recorded for others to see.
    pub fn lock_key(&self, key: &StageKey, what: &str) -> Result<KeyLock> {
        self.lock_key_with(key, what, &mut |holder| match holder {
            Some(h) => tracing::info!("waiting for stage key {} held by {h}", key.short(12)),
            None => tracing::info!("waiting for stage key {} (holder unknown)", key.short(12)),
        })
    }

    /// Like [`Store::lock_key`], but calls `on_wait` (once, before blocking) with the holder as
    /// recorded in the lock file, so a caller can tell its user who is in the way.
    pub fn lock_key_with(
        &self,
        key: &StageKey,
        what: &str,
        on_wait: &mut dyn FnMut(Option<&LockHolder>),
    ) -> Result<KeyLock> {
        let path = self.key_lock_path(key);
        let file = lock::acquire(&path, Mode::Exclusive, true, on_wait)?.ok_or_else(|| {
            StoreError::io("lock", &path)(std::io::Error::other("blocking lock returned nothing"))
        })?;
        KeyLock::new(*key, path, file, what)
    }

    /// Takes the lock on `key` if it is free; `None` if another process (or handle) holds it.
    pub fn try_lock_key(&self, key: &StageKey, what: &str) -> Result<Option<KeyLock>> {
        let path = self.key_lock_path(key);
        match lock::acquire(&path, Mode::Exclusive, false, &mut |_| {})? {
            Some(file) => KeyLock::new(*key, path, file, what).map(Some),
            None => Ok(None),
        }
    }

    /// The holder recorded in `key`'s lock file, if the key is currently locked.
    pub fn key_lock_holder(&self, key: &StageKey) -> Result<Option<LockHolder>> {
        let path = self.key_lock_path(key);
        match lock::acquire(&path, Mode::Exclusive, false, &mut |_| {})? {
            Some(_free) => Ok(None),
            None => {
                let f = File::open(&path).map_err(StoreError::io("open lock file", &path))?;
                Ok(lock::read_holder(&f))
            }
        }
    }

    /// Takes the run lock shared, blocking while gc runs. Every `rise run` holds it for its whole
    /// duration; gc takes it exclusively.
    pub fn run_lock_shared(&self) -> Result<RunLock> {
        let path = self.root.join("run.lock");
        let file = lock::acquire(&path, Mode::Shared, true, &mut |_| {
            tracing::info!("waiting for garbage collection to finish before running");
        })?
        .ok_or_else(|| {
            StoreError::io("lock", &path)(std::io::Error::other("blocking lock returned nothing"))
        })?;
        let holder_path = self
            .root
            .join("locks")
            .join("runs")
            .join(format!("{}.json", unique_suffix()));
        let text = serde_json::to_string(&LockHolder::me("run")).unwrap_or_default();
        fs::write(&holder_path, text).map_err(StoreError::io("write", &holder_path))?;
        Ok(RunLock::new(file, Some(holder_path), false))
    }

    /// Takes the run lock exclusively without waiting; a [`StoreError::Busy`] naming the running
    /// processes if any run holds it.
    pub fn run_lock_exclusive(&self, what: &str) -> Result<RunLock> {
        let path = self.root.join("run.lock");
        match lock::acquire(&path, Mode::Exclusive, false, &mut |_| {})? {
            Some(file) => {
                // Every holder record left behind belongs to a dead process now.
                let dir = self.root.join("locks").join("runs");
                if let Ok(rd) = fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        let _ = fs::remove_file(e.path());
                    }
                }
                Ok(RunLock::new(file, None, true))
            }
            None => Err(StoreError::Busy {
                what: what.to_string(),
                holders: lock::run_holders(&self.root.join("locks").join("runs")),
            }),
        }
    }

    /// Processes that currently hold the run lock (as recorded by them).
    pub fn running(&self) -> Vec<LockHolder> {
        lock::run_holders(&self.root.join("locks").join("runs"))
    }
}

/// Top-level names a store may contain; a directory holding only these (and no `STORE`) is a
/// store whose initialisation was interrupted or is under way in another process.
const LAYOUT: [&str; 13] = [
    "objects",
    "results",
    "pins",
    "runs",
    "checkouts",
    "scratch",
    "logs",
    "tmp",
    "locks",
    "index",
    "index.lock",
    "run.lock",
    "cache",
];

fn init_layout(root: &Path) -> Result<()> {
    if let Ok(rd) = fs::read_dir(root) {
        let foreign = rd.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.gitkeep`: the repository's default `store/` is committed empty but for it.
            // `STORE` itself: another process finished initialising since we looked.
            !LAYOUT.contains(&name.as_str())
                && name != "STORE"
                && !name.starts_with("STORE.")
                && name != ".gitkeep"
        });
        if foreign {
            return Err(StoreError::Io {
                op: "open store",
                path: root.to_path_buf(),
                source: std::io::Error::other(
                    "directory is not empty and is not a rise store (no STORE file); \
                     pass an empty or new directory to --store",
                ),
            });
        }
    }
    let mkdir = |p: PathBuf| fs::create_dir_all(&p).map_err(StoreError::io("create directory", &p));
    for sub in [
        "results",
        "pins",
        "runs",
        "checkouts",
        "scratch",
        "logs",
        "tmp",
        "locks/keys",
        "locks/runs",
    ] {
        mkdir(root.join(sub))?;
    }
    // All 256 fan-out directories up front: a blob's rename then never has to create (and
    // fsync) a parent directory.
    for i in 0..=255u8 {
        mkdir(root.join("objects").join(format!("{i:02x}")))?;
    }
    sync_dir(&root.join("objects"))?;
    let marker = root.join("STORE");
    let tmp = root.join(format!("STORE.{}", unique_suffix()));
    fs::write(&tmp, FORMAT_MARKER).map_err(StoreError::io("write", &tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("sync", &tmp))?;
    // Two processes may initialise at once; both write the same marker, so either rename wins.
    fs::rename(&tmp, &marker).map_err(StoreError::io("rename into place", &marker))?;
    sync_dir(root)
}

/// Pin names and run ids become file names: keep them to a portable, unambiguous alphabet.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("starts with `.`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@'))
    {
        return bad("only ASCII letters, digits and `-_.+@` are allowed");
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("sync directory", dir))
}

pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) => sync_dir(p),
        None => Ok(()),
    }
}

/// `remove_dir_all` that also copes with read-only directories (a stage may leave some in
/// its scratch directory), for users who are not root.
pub(crate) fn remove_dir_all_force(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(path);
            fs::remove_dir_all(path).map_err(StoreError::io("remove", path))
        }
        Err(e) => Err(StoreError::io("remove", path)(e)),
    }
}

/// Makes `path` and every directory below it writable (0755), so that it can be removed.
pub(crate) fn make_writable(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
            if let Ok(rd) = fs::read_dir(path) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repositorys_empty_store_directory_opens_but_foreign_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("store");
        fs::create_dir(&kept).unwrap();
        fs::write(kept.join(".gitkeep"), "").unwrap();
        Store::open(&kept).unwrap();
        let foreign = tmp.path().join("other");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let Err(err) = Store::open(&foreign) else {
            panic!("a foreign directory must be refused");
        };
        assert!(err.to_string().contains("not a rise store"), "{err}");
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".x", "a/b", "a b", "../x", "ü"] {
            assert!(validate_name("pin name", bad).is_err(), "{bad:?}");
        }
        for good in ["best", "run-2025-01-01T00.00.00", "a_b+c@d"] {
            validate_name("pin name", good).unwrap();
        }
    }

    #[test]
    fn open_refuses_foreign_directories_and_cleans_dead_staging() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("thesis.tex"), "x").unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a rise store"), "{err}");

        let root = dir.path().join("s");
        // An interrupted initialisation (layout but no STORE marker) is completed, not refused.
        fs::create_dir_all(root.join("objects/00")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        let store = Store::open(&root).unwrap();
        assert!(root.join("STORE").is_file());
        // A staging dir with no lock file, and one whose lock is free: both from dead writers.
        fs::create_dir_all(root.join("tmp/wdead/sub")).unwrap();
        fs::write(root.join("tmp/wdead/sub/x"), "x").unwrap();
        fs::create_dir_all(root.join("tmp/wgone")).unwrap();
        fs::write(root.join("tmp/wgone.lock"), "").unwrap();
        let live = store.tmp_path("x").unwrap();
        fs::write(&live, "mine").unwrap();
        let _other = Store::open(&root).unwrap();
        assert!(!root.join("tmp/wdead").exists());
        assert!(!root.join("tmp/wgone").exists() && !root.join("tmp/wgone.lock").exists());
        assert!(live.exists(), "a live writer's staging file was removed");
        drop(store);
        assert!(
            !live.exists(),
            "staging is removed when the store handle drops"
        );
    }

    #[test]
    fn run_records_and_pins_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let rec = serde_json::json!({"stages": 3});
        store.record_run("r1", &rec).unwrap();
        assert_eq!(store.run_record("r1").unwrap(), Some(rec));
        assert_eq!(store.run_record("r2").unwrap(), None);
        assert!(store
            .record_run("../evil", &serde_json::Value::Null)
            .is_err());
        let tree_dir = dir.path().join("in");
        fs::create_dir(&tree_dir).unwrap();
        let a = store.put_tree(&tree_dir).unwrap();
        store.pin("keep", &a).unwrap();
        assert_eq!(store.pins().unwrap(), vec![("keep".to_string(), a)]);
        store.unpin("keep").unwrap();
        assert!(matches!(
            store.unpin("keep"),
            Err(StoreError::NoSuchPin { .. })
        ));
    }
}
