//! `rise-store`: a content-addressed artifact store with a rebuildable index.
//!
//! It knows nothing of pipelines or RISE: it stores blobs, trees of blobs (artifacts), result
//! manifests filed under opaque stage keys, and run records.
//!
//! # Layout
//! ```text
//! STORE                 format marker ("rise-store 1")
//! objects/ab/cdef…      immutable blobs, named by the blake3 of their bytes
//! results/<result id>   one empty marker per committed result: the commit record
//! index/                sled: key -> result, artifact -> producer, (pipeline, stage) -> latest
//! index.lock            serialises every use of the index
//!                       (both outside the store when it is on a network filesystem or
//!                       `RISE_INDEX_DIR` is set: see [`IndexLocation`])
//! pins/<name>           an artifact id kept alive by gc
//! runs/<run id>.json    run records
//! checkouts/<id>/       sealed, read-only materialised artifacts (cache; see below)
//! checkouts/<id>.seal   the stat of each file and directory of checkout <id> when sealed
//! scratch/<key>/        a stage's resumable in-progress state
//! logs/                 per-run and per-stage logs
//! locks/keys/<key>.lock per-stage-key locks; locks/runs/ records who holds run.lock
//! run.lock              shared by runs, exclusive for gc
//! tmp/                  per-process staging areas, cleaned when their process is gone
//! cache/                disposable caches of the engine (file-content hashes); never read
//!                       as store data, safe to delete
//! ```
//!
//! # Invariants
//! 1. **A blob's bytes hash to its name.** Blobs are written to a private temp file, fsynced,
//!    made read-only and renamed into place; they are never modified. Every read re-hashes (streaming) and
//!    a mismatch is an error naming the blob, so damaged bytes are never returned as valid data.
//! 2. **Trees and results are canonical.** A tree manifest lists `(path, blob, size, executable)`
//!    sorted by path in one fixed JSON encoding (see [`Tree`]); a result manifest is JSON with keys
//!    sorted at every depth. Ids are therefore independent of creation order and mtimes.
//! 3. **Paths are safe.** Tree paths are relative, `/`-separated, with no `.`/`..`/empty
//!    components; links out of a stored directory are rejected. Materialising a tree cannot write
//!    outside its destination.
//! 4. **Commit order.** Output blobs, then the tree manifest, then the result manifest blob, then
//!    the `results/<id>` marker (the commit point). A crash at any point leaves either no result
//!    or a complete one; never a half-visible one. The index is not written by a commit: the next
//!    index transaction (or [`Store::sync_index`]) rolls new markers into it.
//! 5. **The index is only an index.** It is a deterministic function of the committed markers
//!    (among several results for one key or stage, the greatest `(finished_at, result id)` wins), so
//!    [`Store::reindex`] rebuilds it exactly, and each index transaction first rolls forward
//!    markers it has not seen. sled is opened only for one short transaction at a time, under
//!    `index.lock`, so several processes take turns.
//! 6. **Locks are kernel locks** (`flock`): they vanish with their process. Lock files record the
//!    holder's pid and command so waiters can say who they wait for.
//! 7. **Temp files of dead writers are removed** at the next [`Store::open`]: each process stages
//!    in `tmp/<name>/`, guarded by a lock on `tmp/<name>.lock` that dies with it.
//! 8. **gc never runs during a run** (it needs `run.lock` exclusively) and keeps everything
//!    reachable from the latest result of each (pipeline, stage) and from pins.
//! 9. **Checkouts are sealed and checked before use.** A checkout's directories are 0555 and
//!    its files 0444 (0555 if executable), so only root can change it; and
//!    [`Store::artifact_path`] compares it with its seal record (size, mtime, ctime, device,
//!    inode and mode of every file and directory) before handing it over, re-hashing only what
//!    changed. A damaged checkout is discarded and rebuilt from the blobs, so a stage never
//!    reads an input that differs from the artifact id it records. `verify` re-hashes every
//!    checkout regardless of seals and names each damaged one and the results that use it.
//!    A process handed a checkout ([`Store::hand_over_checkout`]) is checked afterwards
//!    against the directory and seal it was given ([`Store::handed_checkout_damage`]): a
//!    checkout that another process sharing it damaged, and that was discarded or rebuilt
//!    meanwhile, counts as changed for every process that held it.

mod artifact;
mod blob;
mod checkout;
mod error;
mod fsinfo;
mod id;
mod index;
mod lock;
mod maint;
mod result;
mod runs;
mod store;
mod tree;

pub use blob::BlobReader;
pub use checkout::HandedCheckout;
pub use error::{Result, StoreError};
pub use fsinfo::{mount_of, statfs_magic, FlockCoherence, FsInfo, MountEntry};
pub use id::{ArtifactId, BlobId, ResultId, StageKey};
pub use index::{IndexLocation, IndexPlacement, IndexSnapshot, INDEX_DIR_VAR};
pub use lock::{hostname, KeyLock, LockHolder, RunLock};
pub use maint::{
    BadBlob, BadCheckout, BadMarker, BadResult, BlobProblem, GcReport, IndexProblem, ReindexReport,
    VerifyReport,
};
pub use result::{write_canonical_json, ResultManifest, RESULT_FORMAT};
pub use runs::RunPruneReport;
pub use store::Store;
pub use tree::{validate_path, Tree, TreeEntry, TREE_FORMAT};
