//! The sled index: a cache of the committed result markers, rebuilt from them at will.
//!
//! sled 0.34 admits one process at a time and can be damaged by abrupt stops, so it is opened
//! for one short transaction under `index.lock` and closed again, and everything in it can be
//! recomputed from `results/` and the result manifests.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::id::{ArtifactId, BlobId, ResultId, StageKey};
use crate::lock::{self, LockHolder, Mode};
use crate::result::ResultManifest;
use crate::store::{remove_dir_all_force, sync_dir, Store};

const T_RESULTS: &str = "results";
const T_BY_KEY: &str = "by_key";
const T_PRODUCERS: &str = "producers";
const T_LATEST: &str = "latest";

/// The environment variable that puts the index (of every store this process opens) under a
/// chosen directory, e.g. a node-local disk: `$RISE_INDEX_DIR/<store>/index`.
pub const INDEX_DIR_VAR: &str = "RISE_INDEX_DIR";

/// Where a store's sled index lives, decided when the store is opened.
///
/// The index is disposable (a function of the committed markers), so it need not live in the
/// store. On a filesystem shared between hosts it should not: sled's files see many small
/// random writes and fsyncs (slow over NFS), and every host rolls forward the same markers
/// anyway. So a store on a network filesystem keeps its index on local disk, one per host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLocation {
    /// The sled directory.
    pub path: PathBuf,
    /// The lock file that serialises every use of it.
    pub lock: PathBuf,
    /// Why it is there.
    pub reason: IndexPlacement,
}

/// Why the index is where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexPlacement {
    /// `<store>/index`: the store is on a local filesystem (or its type could not be read).
    InStore,
    /// Under the directory named by [`INDEX_DIR_VAR`].
    Configured,
    /// Under the local default directory, because the store is on this (shared) filesystem.
    LocalBecauseShared(String),
}

impl IndexLocation {
    /// `<root>/index`, as every store had before the index could move.
    pub(crate) fn in_store(root: &Path) -> IndexLocation {
        IndexLocation {
            path: root.join("index"),
            lock: root.join("index.lock"),
            reason: IndexPlacement::InStore,
        }
    }

    /// The index location for the store at `root`, given the value of [`INDEX_DIR_VAR`], the
    /// store's filesystem and the local default directory (pure, for tests).
    ///
    /// Outside the store, each store gets its own subdirectory, named by its canonical path
    /// (readable last component plus a hash), so one `RISE_INDEX_DIR` serves every store.
    pub(crate) fn resolve(
        root: &Path,
        configured: Option<&std::ffi::OsStr>,
        fs: Option<&crate::fsinfo::FsInfo>,
        local_default: &Path,
    ) -> IndexLocation {
        let (base, reason) = match (configured.filter(|v| !v.is_empty()), fs) {
            (Some(dir), _) => (PathBuf::from(dir), IndexPlacement::Configured),
            (None, Some(fs)) if fs.shared => (
                local_default.to_path_buf(),
                IndexPlacement::LocalBecauseShared(fs.fstype.clone()),
            ),
            _ => return IndexLocation::in_store(root),
        };
        let name: String = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let hash = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
        let dir = base.join(format!("{name}-{}", &hash[..16]));
        IndexLocation {
            path: dir.join("index"),
            lock: dir.join("index.lock"),
            reason,
        }
    }

    /// True when the index is `<store>/index`.
    pub fn is_in_store(&self) -> bool {
        self.reason == IndexPlacement::InStore
    }
}

/// The local default directory for indexes of stores on shared filesystems:
/// `$TMPDIR/rise-index-<uid>` (clusters point `TMPDIR` at node-local disk; a lost index is
/// rebuilt from the markers).
pub(crate) fn local_index_base() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("rise-index-{uid}"))
}

/// Everything the index holds, in plain maps: used to compare the index with what the markers
/// imply (`verify`) and to check that `reindex` restores it exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexSnapshot {
    /// Every indexed result.
    pub results: BTreeSet<ResultId>,
    /// Stage key -> current result.
    pub by_key: BTreeMap<StageKey, ResultId>,
    /// Artifact -> current producing result.
    pub producers: BTreeMap<ArtifactId, ResultId>,
    /// (pipeline, stage) -> latest result.
    pub latest: BTreeMap<(String, String), ResultId>,
}

impl IndexSnapshot {
    /// The index that a set of committed results implies. Among several results for one key,
    /// artifact or (pipeline, stage), the greatest `(finished_at, result id)` wins, so the
    /// outcome does not depend on commit order.
    pub fn from_results<'a>(
        results: impl IntoIterator<Item = (&'a ResultId, &'a ResultManifest)>,
    ) -> IndexSnapshot {
        fn put<K: Ord>(
            map: &mut BTreeMap<K, (String, ResultId)>,
            k: K,
            finished: &str,
            id: &ResultId,
        ) {
            let newer = match map.get(&k) {
                None => true,
                Some((f, cur)) => (f.as_str(), cur) < (finished, id),
            };
            if newer {
                map.insert(k, (finished.to_string(), *id));
            }
        }
        let (mut by_key, mut producers, mut latest) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        let mut ids = BTreeSet::new();
        for (id, m) in results {
            ids.insert(*id);
            put(&mut by_key, m.key, &m.finished_at, id);
            put(&mut producers, m.output, &m.finished_at, id);
            put(
                &mut latest,
                (m.pipeline.clone(), m.stage.clone()),
                &m.finished_at,
                id,
            );
        }
        fn strip<K: Ord>(m: BTreeMap<K, (String, ResultId)>) -> BTreeMap<K, ResultId> {
            m.into_iter().map(|(k, (_, v))| (k, v)).collect()
        }
        IndexSnapshot {
            results: ids,
            by_key: strip(by_key),
            producers: strip(producers),
            latest: strip(latest),
        }
    }
}

fn latest_key(pipeline: &str, stage: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pipeline.len() + stage.len() + 1);
    k.extend_from_slice(pipeline.as_bytes());
    k.push(0);
    k.extend_from_slice(stage.as_bytes());
    k
}

/// Index values are the result id followed by its `finished_at`, so deciding which of two
/// results is current needs no blob read.
fn encode_value(id: &ResultId, finished_at: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + finished_at.len());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(finished_at.as_bytes());
    v
}

fn decode_value(path: &Path, v: &[u8]) -> Result<(ResultId, String)> {
    if v.len() < 32 {
        return Err(corrupt_index(path, "value shorter than a result id"));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&v[..32]);
    let finished = String::from_utf8(v[32..].to_vec())
        .map_err(|_| corrupt_index(path, "timestamp is not UTF-8"))?;
    Ok((BlobId(id), finished))
}

fn corrupt_index(path: &Path, what: &str) -> StoreError {
    StoreError::Index {
        path: path.to_path_buf(),
        source: sled::Error::Unsupported(format!("corrupt entry: {what}")),
    }
}

fn id32(path: &Path, k: &[u8]) -> Result<[u8; 32]> {
    k.try_into()
        .map_err(|_| corrupt_index(path, "key is not 32 bytes"))
}

/// One open index (inside `Store::with_index`).
pub(crate) struct Index {
    path: PathBuf,
    results: sled::Tree,
    by_key: sled::Tree,
    producers: sled::Tree,
    latest: sled::Tree,
    db: sled::Db,
    dirty: std::cell::Cell<bool>,
}

impl Index {
    fn open(path: &Path) -> Result<Index> {
        let err = |source| StoreError::Index {
            path: path.to_path_buf(),
            source,
        };
        // No background flusher: each transaction flushes once at its end, and the flusher
        // thread's shutdown would otherwise triple the cost of every short open/close.
        // We hold `index.lock`, so sled's own lock on `index/db` can only be held by a `Db` of
        // this process that is still shutting down its background threads after the previous
        // transaction dropped it: wait for it briefly.
        let mut waited = std::time::Duration::ZERO;
        let db = loop {
            match sled::Config::new().path(path).flush_every_ms(None).open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && waited < std::time::Duration::from_secs(5) =>
                {
                    let step = std::time::Duration::from_millis(2);
                    std::thread::sleep(step);
                    waited += step;
                }
                other => break other.map_err(err)?,
            }
        };
        Ok(Index {
            results: db.open_tree(T_RESULTS).map_err(err)?,
            by_key: db.open_tree(T_BY_KEY).map_err(err)?,
            producers: db.open_tree(T_PRODUCERS).map_err(err)?,
            latest: db.open_tree(T_LATEST).map_err(err)?,
            path: path.to_path_buf(),
            db,
            dirty: std::cell::Cell::new(false),
        })
    }

    fn err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Index {
            path: self.path.clone(),
            source,
        }
    }

    fn put_if_newer(
        &self,
        tree: &sled::Tree,
        k: &[u8],
        id: &ResultId,
        finished: &str,
    ) -> Result<()> {
        let newer = match tree.get(k).map_err(self.err())? {
            None => true,
            Some(v) => {
                let (cur, f) = decode_value(&self.path, &v)?;
                (f.as_str(), &cur) < (finished, id)
            }
        };
        if newer {
            self.dirty.set(true);
            tree.insert(k, encode_value(id, finished))
                .map_err(self.err())?;
        }
        Ok(())
    }

    pub(crate) fn apply(&self, id: &ResultId, m: &ResultManifest) -> Result<()> {
        self.put_if_newer(&self.by_key, m.key.as_bytes(), id, &m.finished_at)?;
        self.put_if_newer(&self.producers, m.output.as_bytes(), id, &m.finished_at)?;
        self.put_if_newer(
            &self.latest,
            &latest_key(&m.pipeline, &m.stage),
            id,
            &m.finished_at,
        )?;
        // Last: a result is "indexed" only once all its entries are in.
        self.dirty.set(true);
        self.results
            .insert(id.as_bytes(), &[][..])
            .map_err(self.err())?;
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        self.dirty.set(true);
        for t in [&self.results, &self.by_key, &self.producers, &self.latest] {
            t.clear().map_err(self.err())?;
        }
        Ok(())
    }

    fn get(&self, tree: &sled::Tree, k: &[u8]) -> Result<Option<ResultId>> {
        match tree.get(k).map_err(self.err())? {
            None => Ok(None),
            Some(v) => decode_value(&self.path, &v).map(|(id, _)| Some(id)),
        }
    }

    pub(crate) fn by_key(&self, key: &StageKey) -> Result<Option<ResultId>> {
        self.get(&self.by_key, key.as_bytes())
    }

    pub(crate) fn producer(&self, a: &ArtifactId) -> Result<Option<ResultId>> {
        self.get(&self.producers, a.as_bytes())
    }

    pub(crate) fn latest(&self, pipeline: &str, stage: &str) -> Result<Option<ResultId>> {
        self.get(&self.latest, &latest_key(pipeline, stage))
    }

    pub(crate) fn result_ids(&self) -> Result<BTreeSet<ResultId>> {
        self.results
            .iter()
            .keys()
            .map(|k| Ok(BlobId(id32(&self.path, &k.map_err(self.err())?)?)))
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Result<IndexSnapshot> {
        let mut s = IndexSnapshot {
            results: self.result_ids()?,
            ..Default::default()
        };
        for kv in self.by_key.iter() {
            let (k, v) = kv.map_err(self.err())?;
            s.by_key.insert(
                StageKey(id32(&self.path, &k)?),
                decode_value(&self.path, &v)?.0,
            );
        }
        for kv in self.producers.iter() {
            let (k, v) = kv.map_err(self.err())?;
            s.producers.insert(
                BlobId(id32(&self.path, &k)?),
                decode_value(&self.path, &v)?.0,
            );
        }
        for kv in self.latest.iter() {
            let (k, v) = kv.map_err(self.err())?;
            let text = String::from_utf8(k.to_vec())
                .map_err(|_| corrupt_index(&self.path, "stage name is not UTF-8"))?;
            let (p, st) = text
                .split_once('\0')
                .ok_or_else(|| corrupt_index(&self.path, "latest key has no separator"))?;
            s.latest.insert(
                (p.to_string(), st.to_string()),
                decode_value(&self.path, &v)?.0,
            );
        }
        Ok(s)
    }

    /// Makes this transaction's writes durable; free when it only read.
    fn flush(&self) -> Result<()> {
        if self.dirty.get() {
            self.db.flush().map_err(self.err())?;
        }
        Ok(())
    }
}

impl Store {
    pub(crate) fn index_path(&self) -> PathBuf {
        self.index.path.clone()
    }

    /// Where this store's index lives (and why), as decided when it was opened.
    pub fn index_location(&self) -> &IndexLocation {
        &self.index
    }

    fn lock_index(&self) -> Result<std::fs::File> {
        let path = &self.index.lock;
        if !self.index.is_in_store() {
            if let Some(dir) = path.parent() {
                // Private: another user's process must not open (or replace) our index.
                use std::os::unix::fs::DirBuilderExt;
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(StoreError::io("create index directory", dir))?;
            }
        }
        let path = path.as_path();
        let file = lock::acquire(path, Mode::Exclusive, true, &mut |h| {
            tracing::debug!(
                "waiting for the index, held by {}",
                h.map_or_else(|| "?".into(), |h| h.to_string())
            );
        })?
        .ok_or_else(|| {
            StoreError::io("lock", &path)(std::io::Error::other("blocking lock returned nothing"))
        })?;
        lock::write_holder(&file, path, &LockHolder::me("index"))?;
        Ok(file)
    }

    /// Opens the index, moving a damaged one aside (it is only a cache of the markers).
    fn open_index_or_recover(&self) -> Result<(Index, bool)> {
        let path = self.index_path();
        match Index::open(&path) {
            Ok(ix) => Ok((ix, false)),
            Err(err) => {
                let aside = path.with_file_name(format!("index.damaged-{}", std::process::id()));
                tracing::warn!(
                    "{err}; moving it to {} and rebuilding from the result manifests",
                    aside.display()
                );
                let _ = remove_dir_all_force(&aside);
                fs::rename(&path, &aside)
                    .map_err(StoreError::io("move damaged index to", &aside))?;
                Ok((Index::open(&path)?, true))
            }
        }
    }

    /// Runs `f` on the index inside one short transaction: lock, open, roll forward committed
    /// markers the index has not seen (or rebuild if it holds results whose markers are gone),
    /// `f`, flush, close.
    pub(crate) fn with_index<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        let _guard = self.lock_index()?;
        let (ix, recovered) = self.open_index_or_recover()?;
        let markers = self.markers()?;
        let indexed = if recovered {
            BTreeSet::new()
        } else {
            ix.result_ids()?
        };
        if !indexed.is_subset(&markers) {
            tracing::warn!("index lists results that are no longer committed; rebuilding it");
            ix.clear()?;
            self.roll_forward(&ix, markers.iter())?;
        } else if indexed.len() != markers.len() {
            self.roll_forward(&ix, markers.difference(&indexed))?;
        }
        self.unindexed_commits.store(false, Ordering::SeqCst);
        let out = f(&ix)?;
        ix.flush()?;
        Ok(out)
    }

    fn roll_forward<'a>(&self, ix: &Index, ids: impl Iterator<Item = &'a ResultId>) -> Result<()> {
        for id in ids {
            match self.read_result(id) {
                Ok(m) => ix.apply(id, &m)?,
                // Left out of the index; `verify` reports it, and it is retried every time.
                Err(e) if e.is_corruption() => {
                    let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
                    if warned.insert(*id) {
                        tracing::warn!("not indexing committed result {id}: {e}");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The committed result markers (`results/<id>`, regular files).
    pub(crate) fn markers(&self) -> Result<BTreeSet<ResultId>> {
        let dir = self.results_dir();
        let rd = fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
        let mut out = BTreeSet::new();
        for e in rd {
            let e = e.map_err(StoreError::io("list", &dir))?;
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ResultId>().ok())
            else {
                continue;
            };
            // A marker is a file that a commit created; a directory or link under a result's
            // name was put there by something else and commits nothing (`verify` reports it).
            let is_file = match e.file_type() {
                Ok(ft) => ft.is_file(),
                Err(err) => return Err(StoreError::io("stat", e.path())(err)),
            };
            if is_file {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Reads (verified) and parses result manifest `id`.
    pub fn read_result(&self, id: &ResultId) -> Result<ResultManifest> {
        let bytes = self.read_blob(id)?;
        ResultManifest::from_bytes(id, &bytes)
    }

    /// Commits a stage's result. The output artifact's tree and blobs must already be in the
    /// store (checked by presence and size, not re-hashed). Then the result manifest blob is
    /// written, then the `results/<id>` marker: the commit point, after which every lookup sees
    /// the result. Committing the same manifest twice is harmless and returns the same id.
    ///
    /// The index is not touched (unless it does not exist yet): every index transaction first
    /// rolls forward the markers it has not seen, so indexing here would only add a database
    /// open and flush to every commit. Call [`Store::sync_index`] after a batch of commits.
    pub fn commit_result(&self, manifest: &ResultManifest) -> Result<ResultId> {
        let incomplete = |reason: String| StoreError::IncompleteOutput {
            key: manifest.key.to_hex(),
            artifact: manifest.output,
            reason,
        };
        self.artifact_complete(&manifest.output)
            .map_err(|e| incomplete(e.to_string()))?;
        for (name, input) in &manifest.inputs {
            if !self.has_blob(input) {
                return Err(incomplete(format!(
                    "input {name:?} names artifact {input}, which is not in the store"
                )));
            }
        }
        let bytes = manifest.to_canonical_bytes()?;
        let id = self.put_bytes(&bytes)?;
        let marker = self.results_dir().join(id.to_hex());
        fs::File::create(&marker).map_err(StoreError::io("create result marker", &marker))?;
        sync_dir(&self.results_dir())?;
        self.unindexed_commits.store(true, Ordering::SeqCst);
        if self.index.is_in_store() && !self.index_path().exists() {
            // So that a missing index in the store always means a deleted one (which `verify`
            // reports). An index outside the store is missing on every host that has not used
            // the store yet: a compute node that only commits does not build one.
            self.sync_index()?;
        }
        Ok(id)
    }

    /// Brings the index up to date with every committed result (one transaction). Lookups do
    /// this by themselves; call it after a batch of commits so that the next reader does not
    /// pay for the whole batch.
    pub fn sync_index(&self) -> Result<()> {
        self.with_index(|_| Ok(()))
    }

    /// [`Store::sync_index`] if this handle committed anything since its last index
    /// transaction; free otherwise.
    pub fn sync_index_if_committed(&self) -> Result<()> {
        if self.unindexed_commits.load(Ordering::SeqCst) {
            self.sync_index()?;
        }
        Ok(())
    }

    fn load(&self, id: Option<ResultId>) -> Result<Option<(ResultId, ResultManifest)>> {
        match id {
            None => Ok(None),
            Some(id) => Ok(Some((id, self.read_result(&id)?))),
        }
    }

    /// The current result for stage key `key`, if any. A damaged manifest is an error for which
    /// [`StoreError::is_corruption`] is true (treat as a miss and recompute).
    pub fn lookup(&self, key: &StageKey) -> Result<Option<(ResultId, ResultManifest)>> {
        let id = self.with_index(|ix| ix.by_key(key))?;
        self.load(id)
    }

    /// [`Store::lookup`] for many keys in one index transaction (the index is opened once, so
    /// this is much cheaper than one `lookup` per key when planning a large pipeline).
    pub fn lookup_many(
        &self,
        keys: &[StageKey],
    ) -> Result<Vec<Option<(ResultId, ResultManifest)>>> {
        let ids = self.with_index(|ix| {
            keys.iter()
                .map(|k| ix.by_key(k))
                .collect::<Result<Vec<_>>>()
        })?;
        ids.into_iter().map(|id| self.load(id)).collect()
    }

    /// The (current) result that produced `artifact`, if any.
    pub fn producer(&self, artifact: &ArtifactId) -> Result<Option<(ResultId, ResultManifest)>> {
        let id = self.with_index(|ix| ix.producer(artifact))?;
        self.load(id)
    }

    /// The latest result of stage `stage` in pipeline `pipeline`, if any.
    pub fn latest(
        &self,
        pipeline: &str,
        stage: &str,
    ) -> Result<Option<(ResultId, ResultManifest)>> {
        let id = self.with_index(|ix| ix.latest(pipeline, stage))?;
        self.load(id)
    }

    /// Every indexed result, oldest first (by `finished_at`, then id).
    pub fn results(&self) -> Result<Vec<(ResultId, ResultManifest)>> {
        let ids = self.with_index(|ix| ix.result_ids())?;
        let mut out = ids
            .into_iter()
            .map(|id| Ok((id, self.read_result(&id)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|(a, ma), (b, mb)| ma.recency(a).cmp(&mb.recency(b)));
        Ok(out)
    }

    /// The whole index, brought up to date with every committed result first, read in one
    /// transaction. Planning a large pipeline from this costs one index open instead of one per
    /// stage.
    pub fn current_index(&self) -> Result<IndexSnapshot> {
        self.with_index(|ix| ix.snapshot())
    }

    /// The index exactly as stored, without repairing anything; `None` if there is no index
    /// directory. For diagnostics and tests.
    pub fn index_snapshot(&self) -> Result<Option<IndexSnapshot>> {
        let _guard = self.lock_index()?;
        if !self.index_path().exists() {
            return Ok(None);
        }
        let ix = Index::open(&self.index_path())?;
        ix.snapshot().map(Some)
    }

    /// Rebuilds the index from scratch out of the result markers and manifests; returns the
    /// index before (if readable) and after, and the results that could not be indexed.
    /// The index before is `Err("missing")` or `Err("unreadable")` when there was none to read.
    #[allow(clippy::type_complexity)]
    pub(crate) fn rebuild_index(
        &self,
    ) -> Result<(
        std::result::Result<IndexSnapshot, &'static str>,
        IndexSnapshot,
        Vec<(ResultId, StoreError)>,
    )> {
        let _guard = self.lock_index()?;
        let path = self.index_path();
        let before = if path.exists() {
            Index::open(&path)
                .and_then(|ix| ix.snapshot())
                .map_err(|_| "unreadable")
        } else {
            Err("missing")
        };
        remove_dir_all_force(&path)?;
        let ix = Index::open(&path)?;
        let mut bad = Vec::new();
        for id in self.markers()? {
            match self.read_result(&id) {
                Ok(m) => ix.apply(&id, &m)?,
                Err(e) if e.is_corruption() => bad.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        let after = ix.snapshot()?;
        ix.flush()?;
        Ok((before, after, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsinfo::FsInfo;
    use std::ffi::OsStr;

    const MOUNTS: &str = "overlay / overlay rw 0 0\nfs:/e /nfs nfs4 rw,vers=4.2 0 0\n";

    fn fs_of(magic: u64, path: &str) -> FsInfo {
        FsInfo::from_parts(Some(magic), MOUNTS, Path::new(path))
    }

    #[test]
    fn the_index_leaves_a_store_on_a_shared_filesystem() {
        let local = Path::new("/var/tmp/rise-index-0");
        // Local filesystem: in the store, as always.
        let root = Path::new("/home/me/store");
        let here =
            IndexLocation::resolve(root, None, Some(&fs_of(0xEF53, "/home/me/store")), local);
        assert_eq!(here, IndexLocation::in_store(root));
        assert_eq!(here.path, root.join("index"));
        assert_eq!(here.lock, root.join("index.lock"));
        // Unknown filesystem (statfs failed): in the store too.
        assert!(IndexLocation::resolve(root, None, None, local).is_in_store());

        // NFS: under the local default, in a directory of its own.
        let shared = Path::new("/nfs/proj/store");
        let nfs = fs_of(0x6969, "/nfs/proj/store");
        let a = IndexLocation::resolve(shared, None, Some(&nfs), local);
        assert_eq!(a.reason, IndexPlacement::LocalBecauseShared("nfs4".into()));
        assert!(a.path.starts_with(local), "{a:?}");
        assert_eq!(a.path.file_name().unwrap(), "index");
        assert_eq!(a.lock, a.path.with_file_name("index.lock"));
        let dir = a
            .path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            dir.starts_with("store-") && dir.len() == "store-".len() + 16,
            "{dir}"
        );
        // Deterministic per store, different between stores.
        assert_eq!(IndexLocation::resolve(shared, None, Some(&nfs), local), a);
        let other = IndexLocation::resolve(Path::new("/nfs/other/store"), None, Some(&nfs), local);
        assert_ne!(other.path, a.path);

        // RISE_INDEX_DIR wins on any filesystem; empty means unset.
        let chosen = OsStr::new("/scratch/idx");
        for fs in [&nfs, &fs_of(0xEF53, "/home/me/store")] {
            let c = IndexLocation::resolve(root, Some(chosen), Some(fs), local);
            assert_eq!(c.reason, IndexPlacement::Configured);
            assert!(c.path.starts_with("/scratch/idx"), "{c:?}");
        }
        assert!(IndexLocation::resolve(root, Some(OsStr::new("")), None, local).is_in_store());
    }
}
