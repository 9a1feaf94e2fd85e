//! Maintenance: `verify` (re-hash everything, name what is damaged and who depends on it),
//! `reindex` and `gc`.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::checkout::SEAL_SUFFIX;
use crate::error::{Result, StoreError};
use crate::id::{ArtifactId, BlobId, ResultId, StageKey};
use crate::index::IndexSnapshot;
use crate::lock::{self, Mode};
use crate::result::ResultManifest;
use crate::store::{remove_dir_all_force, sync_dir, Store};

/// What is wrong with a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobProblem {
    /// Present, but its bytes do not hash to its name.
    Corrupt,
    /// Referenced, but not in the store.
    Missing,
    /// A tree manifest (which itself hashes correctly) records, for one of its entries, a size
    /// that the entry's intact blob does not have. The id is the tree's: the tree is wrong,
    /// the blob is innocent.
    WrongSize,
}

/// A damaged or missing blob and everything that depends on it.
#[derive(Clone, Debug, Serialize)]
pub struct BadBlob {
    /// The blob.
    pub id: BlobId,
    /// What is wrong.
    pub problem: BlobProblem,
    /// Details (what the bytes hash to, which tree entry, ...).
    pub detail: String,
    /// Artifacts whose tree is this blob or contains it.
    pub artifacts: Vec<ArtifactId>,
    /// Results whose manifest is this blob, or whose output or inputs contain it.
    pub results: Vec<ResultId>,
    /// Pins whose artifact contains it.
    pub pins: Vec<String>,
}

/// A committed result whose manifest cannot be used.
#[derive(Clone, Debug, Serialize)]
pub struct BadResult {
    /// The result.
    pub id: ResultId,
    /// Why.
    pub problem: String,
}

/// A disagreement between the index and the committed results.
#[derive(Clone, Debug, Serialize)]
pub struct IndexProblem {
    /// "missing" (no index directory), "unreadable", or "stale" (entries differ).
    pub kind: &'static str,
    /// Details.
    pub detail: String,
}

/// A checkout under `checkouts/` that no longer matches its artifact: a stage given it as an
/// input would read wrong data (until [`Store::artifact_path`] notices and rebuilds it).
#[derive(Clone, Debug, Serialize)]
pub struct BadCheckout {
    /// The checkout directory (or whatever is in `checkouts/` under that name).
    pub path: PathBuf,
    /// The artifact it is a checkout of; `None` if its name is not an artifact id.
    pub artifact: Option<ArtifactId>,
    /// What differs, each naming the file or directory (changed content, extra, missing or
    /// replaced entries, loosened modes).
    pub problems: Vec<String>,
    /// Committed results whose output or inputs are this artifact.
    pub results: Vec<ResultId>,
}

/// An entry of `results/` that is not a well-formed commit marker (an empty regular file named
/// by a result id). rise never writes one; something else did.
#[derive(Clone, Debug, Serialize)]
pub struct BadMarker {
    /// The entry.
    pub path: PathBuf,
    /// What is wrong, and whether it still counts as a committed result.
    pub problem: String,
}

/// The outcome of [`Store::verify`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Committed results examined.
    pub results_checked: usize,
    /// Distinct artifacts examined (outputs, inputs and pins).
    pub artifacts_checked: usize,
    /// Damaged or missing blobs, with their dependants.
    pub bad_blobs: Vec<BadBlob>,
    /// Results whose manifests are damaged or missing.
    pub bad_results: Vec<BadResult>,
    /// Index disagreements (fixed by `reindex`).
    pub index_problems: Vec<IndexProblem>,
    /// Committed results the index has not rolled forward yet (normal after commits; the next
    /// index transaction indexes them).
    pub results_not_yet_indexed: usize,
    /// Checkouts that differ from their artifact (rebuilt by [`Store::rebuild_checkout`], or
    /// by the next [`Store::artifact_path`] that notices).
    pub bad_checkouts: Vec<BadCheckout>,
    /// Entries of `results/` that are not empty regular files named by a result id.
    pub bad_markers: Vec<BadMarker>,
    /// Files under `objects/` that are not named like blobs.
    pub stray_files: Vec<PathBuf>,
}

impl VerifyReport {
    /// True if nothing at all is wrong.
    pub fn is_clean(&self) -> bool {
        self.bad_blobs.is_empty()
            && self.bad_results.is_empty()
            && self.index_problems.is_empty()
            && self.bad_checkouts.is_empty()
            && self.bad_markers.is_empty()
            && self.stray_files.is_empty()
    }

    /// How many problems the report lists (each bad blob, result, index problem, checkout,
    /// marker and stray file counts once).
    pub fn problem_count(&self) -> usize {
        self.bad_blobs.len()
            + self.bad_results.len()
            + self.index_problems.len()
            + self.bad_checkouts.len()
            + self.bad_markers.len()
            + self.stray_files.len()
    }
}

/// The outcome of [`Store::reindex`].
#[derive(Clone, Debug, Serialize)]
pub struct ReindexReport {
    /// Results indexed.
    pub results: usize,
    /// Stage keys indexed.
    pub keys: usize,
    /// Artifacts with a producer indexed.
    pub artifacts: usize,
    /// (pipeline, stage) pairs indexed.
    pub stages: usize,
    /// Committed results left out because their manifest is damaged.
    pub skipped: Vec<BadResult>,
    /// What the old index was: "missing", "unreadable", "identical" or "different".
    pub previous: &'static str,
}

/// The outcome of [`Store::gc`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// True if nothing was deleted (only reported).
    pub dry_run: bool,
    /// The latest result of each (pipeline, stage): the roots.
    pub roots: Vec<ResultId>,
    /// Pinned artifacts (also roots).
    pub pins: Vec<(String, ArtifactId)>,
    /// Results kept (roots and the producers of their inputs, transitively).
    pub kept_results: usize,
    /// Blobs kept.
    pub kept_blobs: usize,
    /// Results deleted (or that would be).
    pub removed_results: Vec<ResultId>,
    /// Blobs deleted (or that would be).
    pub removed_blobs: usize,
    /// Bytes of blobs deleted (or that would be).
    pub removed_bytes: u64,
    /// Checkouts deleted (or that would be).
    pub removed_checkouts: usize,
    /// Scratch directories of committed stages deleted (or that would be).
    pub removed_scratch: Vec<StageKey>,
    /// Scratch directories kept: resumable work of uncommitted stages, or locked.
    pub kept_scratch: Vec<StageKey>,
    /// Lock files of stage keys nobody holds, deleted (one accumulates per key ever locked).
    pub removed_lock_files: usize,
    /// Things that could not be read while marking (their blobs are kept).
    pub warnings: Vec<String>,
}

/// A blob file found under `objects/`: its id (from its name) and path.
type ObjectFile = (BlobId, PathBuf);

impl Store {
    /// Every blob present, as (id, path); names that are not blob ids are returned separately.
    fn list_objects(&self) -> Result<(Vec<ObjectFile>, Vec<PathBuf>)> {
        let objects = self.root.join("objects");
        let mut blobs = Vec::new();
        let mut stray = Vec::new();
        let fan = fs::read_dir(&objects).map_err(StoreError::io("list", &objects))?;
        for d in fan {
            let d = d.map_err(StoreError::io("list", &objects))?;
            let prefix = d.file_name().to_string_lossy().into_owned();
            let dir = d.path();
            if !dir.is_dir() {
                stray.push(dir);
                continue;
            }
            for f in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
                let f = f.map_err(StoreError::io("list", &dir))?;
                let name = f.file_name().to_string_lossy().into_owned();
                match format!("{prefix}{name}").parse::<BlobId>() {
                    Ok(id) => blobs.push((id, f.path())),
                    Err(_) => stray.push(f.path()),
                }
            }
        }
        blobs.sort();
        stray.sort();
        Ok((blobs, stray))
    }

    /// Re-hashes every blob and checks every committed result, every artifact they (and pins)
    /// reference, the index and the checkouts. Reports each bad blob with the artifacts, results
    /// and pins that reference it. Modifies nothing.
    pub fn verify(&self) -> Result<VerifyReport> {
        let (blobs, stray_files) = self.list_objects()?;
        let status: BTreeMap<BlobId, Result<u64, String>> = blobs
            .par_iter()
            .map(|(id, _)| {
                let r = match self.check_blob(id) {
                    Ok(size) => Ok(size),
                    Err(StoreError::CorruptBlob { detail, .. }) => Err(detail),
                    Err(StoreError::MissingBlob { .. }) => {
                        Err("vanished during verify".to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                (*id, r)
            })
            .collect();
        let mut report = VerifyReport {
            blobs_checked: status.len(),
            bytes_checked: status.values().filter_map(|r| r.as_ref().ok()).sum(),
            stray_files,
            ..Default::default()
        };

        #[derive(Default)]
        struct Refs {
            artifacts: BTreeSet<ArtifactId>,
            results: BTreeSet<ResultId>,
            pins: BTreeSet<String>,
        }
        let mut bad: BTreeMap<BlobId, (BlobProblem, String, Refs)> = BTreeMap::new();
        let mut flag = |id: BlobId, problem: BlobProblem, detail: String| {
            bad.entry(id)
                .or_insert_with(|| (problem, detail, Refs::default()));
        };
        for (id, r) in &status {
            if let Err(detail) = r {
                flag(*id, BlobProblem::Corrupt, detail.clone());
            }
        }

        // Results, and which artifacts each references.
        let markers = self.markers()?;
        report.results_checked = markers.len();
        let mut good_results: Vec<(ResultId, ResultManifest)> = Vec::new();
        let mut artifact_users: BTreeMap<ArtifactId, (BTreeSet<ResultId>, BTreeSet<String>)> =
            BTreeMap::new();
        for id in &markers {
            match self.read_result(id) {
                Ok(m) => {
                    for a in m.inputs.values().chain(std::iter::once(&m.output)) {
                        artifact_users.entry(*a).or_default().0.insert(*id);
                    }
                    good_results.push((*id, m));
                }
                Err(e) => {
                    if matches!(e, StoreError::MissingBlob { .. }) {
                        flag(
                            *id,
                            BlobProblem::Missing,
                            "result manifest is missing".into(),
                        );
                    }
                    report.bad_results.push(BadResult {
                        id: *id,
                        problem: e.to_string(),
                    });
                }
            }
        }
        let pins = self.pins()?;
        for (name, a) in &pins {
            artifact_users.entry(*a).or_default().1.insert(name.clone());
        }
        report.artifacts_checked = artifact_users.len();

        // Each artifact's tree and entries; record who references each bad blob.
        let mut contains: BTreeMap<BlobId, BTreeSet<ArtifactId>> = BTreeMap::new();
        for a in artifact_users.keys() {
            contains.entry(*a).or_default().insert(*a);
            match self.read_tree(a) {
                Ok(tree) => {
                    for e in &tree.entries {
                        contains.entry(e.blob).or_default().insert(*a);
                        match status.get(&e.blob) {
                            None => flag(
                                e.blob,
                                BlobProblem::Missing,
                                format!("tree entry {:?} of artifact {a}", e.path),
                            ),
                            // The blob hashes to its name, so it has the right bytes: the
                            // tree that records another size is what is wrong.
                            Some(Ok(size)) if *size != e.size => flag(
                                *a,
                                BlobProblem::WrongSize,
                                format!(
                                    "tree entry {:?} records {} bytes, but its blob {} (intact) has {size}",
                                    e.path, e.size, e.blob
                                ),
                            ),
                            _ => {}
                        }
                    }
                }
                Err(StoreError::MissingBlob { .. }) => flag(
                    *a,
                    BlobProblem::Missing,
                    "artifact tree manifest is missing".into(),
                ),
                Err(StoreError::BadTree { reason, .. }) => flag(
                    *a,
                    BlobProblem::Corrupt,
                    format!("hashes correctly but is not a valid tree manifest: {reason}"),
                ),
                Err(e) if e.is_corruption() => {} // already flagged from the re-hash
                Err(e) => return Err(e),
            }
        }
        for (id, (_, _, refs)) in bad.iter_mut() {
            if markers.contains(id) {
                refs.results.insert(*id);
            }
            for a in contains.get(id).into_iter().flatten() {
                refs.artifacts.insert(*a);
                if let Some((results, pins)) = artifact_users.get(a) {
                    refs.results.extend(results.iter().copied());
                    refs.pins.extend(pins.iter().cloned());
                }
            }
        }
        report.bad_blobs = bad
            .into_iter()
            .map(|(id, (problem, detail, refs))| BadBlob {
                id,
                problem,
                detail,
                artifacts: refs.artifacts.into_iter().collect(),
                results: refs.results.into_iter().collect(),
                pins: refs.pins.into_iter().collect(),
            })
            .collect();

        // The index against what the good results imply. Commits do not index (the next index
        // transaction rolls them forward), so committed results missing from the index are the
        // normal state, not a problem; the indexed ones must be committed and indexed right.
        let expected = IndexSnapshot::from_results(good_results.iter().map(|(i, m)| (i, m)));
        match self.index_snapshot() {
            // A store that never committed anything has no index yet.
            Ok(None) if expected.results.is_empty() => {}
            // An index outside the store is missing on each host until it first uses the
            // store: every committed result is simply not indexed yet.
            Ok(None) if !self.index.is_in_store() => {
                report.results_not_yet_indexed = expected.results.len();
            }
            Ok(None) => report.index_problems.push(IndexProblem {
                kind: "missing",
                detail: format!(
                    "no index directory; {} committed results are not indexed",
                    expected.results.len()
                ),
            }),
            Ok(Some(actual)) => {
                let indexed = IndexSnapshot::from_results(
                    good_results
                        .iter()
                        .filter(|(i, _)| actual.results.contains(i))
                        .map(|(i, m)| (i, m)),
                );
                report.results_not_yet_indexed =
                    expected.results.difference(&actual.results).count();
                if actual != indexed {
                    report.index_problems.push(IndexProblem {
                        kind: "stale",
                        detail: describe_diff(&actual, &indexed),
                    });
                }
            }
            Err(e) => report.index_problems.push(IndexProblem {
                kind: "unreadable",
                detail: e.to_string(),
            }),
        }

        // Checkouts: re-hashed in full (the seals are only for the fast check on use).
        let checkouts = self.root.join("checkouts");
        let mut dirs: Vec<_> = fs::read_dir(&checkouts)
            .map_err(StoreError::io("list", &checkouts))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| !is_seal_record(p))
            .collect();
        dirs.sort();
        for dir in dirs {
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<ArtifactId>().ok());
            let problems = match id {
                None => vec!["not named by an artifact id".to_string()],
                Some(id) => match self.read_tree(&id) {
                    Ok(tree) => self.check_checkout(&dir, &tree),
                    Err(e) => vec![format!("its artifact cannot be read: {e}")],
                },
            };
            if !problems.is_empty() {
                let results = id
                    .and_then(|a| artifact_users.get(&a))
                    .map(|(results, _)| results.iter().copied().collect())
                    .unwrap_or_default();
                report.bad_checkouts.push(BadCheckout {
                    path: dir,
                    artifact: id,
                    problems,
                    results,
                });
            }
        }
        report.bad_markers = self.check_markers()?;
        Ok(report)
    }

    /// Every entry of `results/` that is not an empty regular file named by a result id.
    fn check_markers(&self) -> Result<Vec<BadMarker>> {
        let dir = self.results_dir();
        let mut bad = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let e = e.map_err(StoreError::io("list", &dir))?;
            let path = e.path();
            let named_by_id = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<ResultId>().is_ok());
            let meta = fs::symlink_metadata(&path).map_err(StoreError::io("stat", &path))?;
            let ft = meta.file_type();
            let problem = if !named_by_id {
                Some(
                    "not named by a result id (64 lowercase hex digits); ignored, remove it"
                        .to_string(),
                )
            } else if !ft.is_file() {
                let what = if ft.is_symlink() {
                    "a symbolic link"
                } else if ft.is_dir() {
                    "a directory"
                } else {
                    "a special file"
                };
                Some(format!(
                    "is {what}, not an empty file; not counted as a committed result, remove it"
                ))
            } else if meta.len() > 0 {
                Some(format!(
                    "has {} bytes; markers are empty (the result still counts as committed: \
                     a marker's existence is the commit; empty it with `truncate -s 0`)",
                    meta.len()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                bad.push(BadMarker { path, problem });
            }
        }
        bad.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(bad)
    }

    /// Rebuilds the index from the committed result manifests. Run it after deleting or
    /// damaging the index; the result is exactly the index that uninterrupted commits produce.
    pub fn reindex(&self) -> Result<ReindexReport> {
        let (before, after, bad) = self.rebuild_index()?;
        let previous = match &before {
            Err(why) => why,
            Ok(b) if *b == after => "identical",
            Ok(_) => "different",
        };
        Ok(ReindexReport {
            results: after.results.len(),
            keys: after.by_key.len(),
            artifacts: after.producers.len(),
            stages: after.latest.len(),
            skipped: bad
                .into_iter()
                .map(|(id, e)| BadResult {
                    id,
                    problem: e.to_string(),
                })
                .collect(),
            previous,
        })
    }

    /// Deletes everything no root reaches. Roots: the latest result of each (pipeline, stage) and
    /// the pinned artifacts. A kept result keeps its manifest, its output and input artifacts,
    /// and (transitively) the results that produced its inputs, so lineage stays complete.
    /// Refuses to run while any process holds the run lock. With `dry_run`, only reports.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let _exclusive = self.run_lock_exclusive("garbage collection refused")?;
        let snapshot = self.with_index(|ix| ix.snapshot())?;
        let mut report = GcReport {
            dry_run,
            pins: self.pins()?,
            ..Default::default()
        };
        report.roots = snapshot
            .latest
            .values()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        let mut queue: VecDeque<ResultId> = report.roots.iter().copied().collect();
        let mut keep_artifacts: BTreeSet<ArtifactId> =
            report.pins.iter().map(|(_, a)| *a).collect();
        queue.extend(
            report
                .pins
                .iter()
                .filter_map(|(_, a)| snapshot.producers.get(a).copied()),
        );
        let mut keep_results: BTreeSet<ResultId> = BTreeSet::new();
        while let Some(r) = queue.pop_front() {
            if !keep_results.insert(r) {
                continue;
            }
            match self.read_result(&r) {
                Ok(m) => {
                    keep_artifacts.insert(m.output);
                    for a in m.inputs.values() {
                        keep_artifacts.insert(*a);
                        if let Some(p) = snapshot.producers.get(a) {
                            queue.push_back(*p);
                        }
                    }
                }
                Err(e) => report
                    .warnings
                    .push(format!("cannot read kept result {r}: {e}")),
            }
        }
        let mut keep_blobs: BTreeSet<BlobId> = keep_results.iter().copied().collect();
        for a in &keep_artifacts {
            keep_blobs.insert(*a);
            match self.read_tree(a) {
                Ok(tree) => keep_blobs.extend(tree.entries.iter().map(|e| e.blob)),
                Err(e) => report
                    .warnings
                    .push(format!("cannot read kept artifact {a}: {e}")),
            }
        }
        report.kept_results = keep_results.len();
        report.kept_blobs = keep_blobs.len();

        let markers = self.markers()?;
        report.removed_results = markers.difference(&keep_results).copied().collect();
        let (blobs, _) = self.list_objects()?;
        let doomed: Vec<(BlobId, PathBuf)> = blobs
            .into_iter()
            .filter(|(id, _)| !keep_blobs.contains(id))
            .collect();
        report.removed_blobs = doomed.len();
        report.removed_bytes = doomed
            .iter()
            .filter_map(|(_, p)| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();

        // Checkouts (directories) and their seal records (`<id>.seal` files) go together.
        let checkouts = self.root.join("checkouts");
        let doomed_checkouts: Vec<PathBuf> = fs::read_dir(&checkouts)
            .map_err(StoreError::io("list", &checkouts))?
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_str().unwrap_or_default();
                name.strip_suffix(SEAL_SUFFIX)
                    .unwrap_or(name)
                    .parse::<ArtifactId>()
                    .ok()
                    .is_none_or(|a| !keep_artifacts.contains(&a))
            })
            .map(|e| e.path())
            .collect();
        report.removed_checkouts = doomed_checkouts
            .iter()
            .filter(|p| !is_seal_record(p))
            .count();

        // Scratch of a committed stage is leftover; scratch of an uncommitted one is resumable
        // work, kept. A locked one is in use either way.
        let scratch = self.root.join("scratch");
        let mut doomed_scratch = Vec::new();
        for e in fs::read_dir(&scratch)
            .map_err(StoreError::io("list", &scratch))?
            .flatten()
        {
            let Some(key) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<StageKey>().ok())
            else {
                continue;
            };
            let lock = lock::acquire(
                &self.key_lock_path(&key),
                Mode::Exclusive,
                false,
                &mut |_| {},
            )?;
            if snapshot.by_key.contains_key(&key) && lock.is_some() {
                report.removed_scratch.push(key);
                doomed_scratch.push((e.path(), lock));
            } else {
                report.kept_scratch.push(key);
            }
        }
        report.removed_scratch.sort();
        report.kept_scratch.sort();
        if dry_run {
            return Ok(report);
        }

        // Order: markers first, then the index (so nothing indexed points at what goes next),
        // then blobs. A crash in between leaves unreferenced blobs, never dangling references;
        // the next index use notices the missing markers and rebuilds.
        let results_dir = self.results_dir();
        for r in &report.removed_results {
            let p = results_dir.join(r.to_hex());
            fs::remove_file(&p).map_err(StoreError::io("remove result marker", &p))?;
        }
        sync_dir(&results_dir)?;
        if !report.removed_results.is_empty() {
            let _rebuilt = self.rebuild_index()?;
        }
        for (_, p) in &doomed {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove blob", p)(e)),
            }
        }
        for p in &doomed_checkouts {
            self.discard_dir(p)?;
        }
        for (p, _lock) in &doomed_scratch {
            remove_dir_all_force(p)?;
        }
        drop(doomed_scratch);
        report.removed_lock_files = self.remove_idle_key_locks()?;
        Ok(report)
    }
}

impl Store {
    /// Deletes `locks/keys/*.lock` files that nobody holds. Safe against racing lockers: each
    /// is deleted while we hold it, and a locker that locked the old inode notices that the path
    /// no longer names it and locks afresh (see `lock::acquire`).
    fn remove_idle_key_locks(&self) -> Result<usize> {
        let dir = self.root.join("locks").join("keys");
        let mut removed = 0;
        for e in fs::read_dir(&dir)
            .map_err(StoreError::io("list", &dir))?
            .flatten()
        {
            let path = e.path();
            if let Some(held) = lock::acquire(&path, Mode::Exclusive, false, &mut |_| {})? {
                if fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
                drop(held);
            }
        }
        Ok(removed)
    }
}

/// `checkouts/<artifact id>.seal`, the seal record of a checkout (not a checkout itself).
fn is_seal_record(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(SEAL_SUFFIX))
        .is_some_and(|stem| stem.parse::<ArtifactId>().is_ok())
}

fn describe_diff(actual: &IndexSnapshot, expected: &IndexSnapshot) -> String {
    fn count<K: Ord, V: PartialEq>(
        a: &BTreeMap<K, V>,
        e: &BTreeMap<K, V>,
    ) -> (usize, usize, usize) {
        let missing = e.keys().filter(|k| !a.contains_key(k)).count();
        let extra = a.keys().filter(|k| !e.contains_key(k)).count();
        let wrong = e
            .iter()
            .filter(|(k, v)| a.get(k).is_some_and(|av| av != *v))
            .count();
        (missing, extra, wrong)
    }
    let mut parts = Vec::new();
    let missing = expected.results.difference(&actual.results).count();
    let extra = actual.results.difference(&expected.results).count();
    if missing + extra > 0 {
        parts.push(format!(
            "results: {missing} not indexed, {extra} indexed but not committed"
        ));
    }
    for (name, (m, x, w)) in [
        ("stage keys", count(&actual.by_key, &expected.by_key)),
        ("producers", count(&actual.producers, &expected.producers)),
        ("latest", count(&actual.latest, &expected.latest)),
    ] {
        if m + x + w > 0 {
            parts.push(format!(
                "{name}: {m} missing, {x} extra, {w} pointing at the wrong result"
            ));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("store")).unwrap();
        (dir, s)
    }

    fn tree_of(s: &Store, dir: &std::path::Path, files: &[(&str, &[u8])]) -> ArtifactId {
        for (p, bytes) in files {
            let path = dir.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
        s.put_tree(dir).unwrap()
    }

    fn manifest(key: u8, stage: &str, output: ArtifactId) -> ResultManifest {
        ResultManifest {
            key: StageKey([key; 32]),
            pipeline: "p".into(),
            stage: stage.into(),
            kind: "test".into(),
            kind_version: 1,
            params: serde_json::json!({}),
            inputs: Default::default(),
            output,
            metrics: serde_json::json!({}),
            engine_version: "test".into(),
            host: "h".into(),
            device: "cpu".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            finished_at: "2025-01-01T00:00:01Z".into(),
            run_id: "r".into(),
        }
    }

    #[test]
    fn markers_that_are_not_empty_files_named_by_a_result_id_are_reported() {
        let (dir, s) = setup();
        let a = tree_of(&s, &dir.path().join("a"), &[("x", b"x")]);
        let r = s.commit_result(&manifest(1, "a", a)).unwrap();
        assert!(s.verify().unwrap().is_clean());
        let results = s.root().join("results");
        fs::write(results.join(r.to_hex()), b"oops").unwrap();
        fs::write(results.join("notes.txt"), b"").unwrap();
        let as_dir = BlobId([0xd1; 32]);
        fs::create_dir(results.join(as_dir.to_hex())).unwrap();
        let as_link = BlobId([0x11; 32]);
        symlink(results.join(r.to_hex()), results.join(as_link.to_hex())).unwrap();

        assert_eq!(
            s.markers().unwrap().into_iter().collect::<Vec<_>>(),
            [r],
            "a directory or link is not a commit"
        );
        let report = s.verify().unwrap();
        assert_eq!(report.results_checked, 1);
        let found: Vec<(String, &str)> = report
            .bad_markers
            .iter()
            .map(|m| {
                (
                    m.path.file_name().unwrap().to_string_lossy().into_owned(),
                    m.problem.as_str(),
                )
            })
            .collect();
        assert_eq!(found.len(), 4, "{found:#?}");
        let problem = |name: &str| {
            found
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| panic!("{name} not reported: {found:#?}"), |(_, p)| *p)
        };
        assert!(problem(&r.to_hex()).starts_with("has 4 bytes; markers are empty"));
        assert!(problem("notes.txt").starts_with("not named by a result id"));
        assert!(problem(&as_dir.to_hex()).starts_with("is a directory"));
        assert!(problem(&as_link.to_hex()).starts_with("is a symbolic link"));
        assert!(!report.is_clean());
        assert_eq!(report.problem_count(), 4);
    }

    #[test]
    fn a_tree_recording_a_wrong_size_is_reported_under_the_trees_id() {
        let (_dir, s) = setup();
        let blob = s.put_bytes(b"payload").unwrap();
        let text = format!(
            r#"{{"format":"rise-tree/1","entries":[{{"path":"p","blob":"{blob}","size":99,"executable":false}}]}}"#
        );
        let tree = s.put_bytes(text.as_bytes()).unwrap();
        s.pin("keep", &tree).unwrap();
        let report = s.verify().unwrap();
        assert_eq!(report.bad_blobs.len(), 1, "{report:#?}");
        let bad = &report.bad_blobs[0];
        assert_eq!(
            (bad.id, bad.problem),
            (tree, BlobProblem::WrongSize),
            "the tree, not the innocent blob {blob}"
        );
        assert!(
            bad.detail.contains("\"p\" records 99 bytes")
                && bad.detail.contains(&blob.to_string())
                && bad.detail.contains("(intact) has 7"),
            "{}",
            bad.detail
        );
        assert_eq!(bad.artifacts, [tree]);
        assert_eq!(bad.pins, ["keep"]);
    }

    #[test]
    fn a_damaged_checkout_is_a_problem_naming_the_file_and_the_results_that_use_it() {
        let (dir, s) = setup();
        let a = tree_of(&s, &dir.path().join("a"), &[("data/rows.txt", b"1\n2\n")]);
        let r = s.commit_result(&manifest(1, "a", a)).unwrap();
        let mut consumer = manifest(2, "b", a);
        consumer.inputs.insert("x".into(), a);
        let r2 = s.commit_result(&consumer).unwrap();
        let co = s.artifact_path(&a).unwrap();
        let file = co.join("data/rows.txt");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&file, b"1\n3\n").unwrap();

        let report = s.verify().unwrap();
        assert_eq!(report.bad_checkouts.len(), 1, "{report:#?}");
        let bad = &report.bad_checkouts[0];
        assert_eq!((bad.path.clone(), bad.artifact), (co.clone(), Some(a)));
        let mut users = vec![r, r2];
        users.sort();
        assert_eq!(bad.results, users);
        assert!(
            bad.problems[0].starts_with("file \"data/rows.txt\" was modified")
                && bad.problems[1]
                    == "file \"data/rows.txt\" has mode 0644; checkout files are 0444",
            "{:?}",
            bad.problems
        );
        assert!(!report.is_clean() && report.problem_count() == 1);

        s.rebuild_checkout(&a).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"1\n2\n");
        let report = s.verify().unwrap();
        assert!(report.is_clean(), "{report:#?}");
    }

    #[test]
    fn gc_removes_seals_with_their_checkouts_and_verify_ignores_seals() {
        let (dir, s) = setup();
        let a = tree_of(&s, &dir.path().join("a"), &[("x", b"x")]);
        let old = tree_of(&s, &dir.path().join("old"), &[("y", b"y")]);
        let mut m_old = manifest(1, "a", old);
        m_old.finished_at = "2025-01-01T00:00:00Z".into();
        s.commit_result(&m_old).unwrap();
        s.commit_result(&manifest(2, "a", a)).unwrap();
        s.artifact_path(&a).unwrap();
        s.artifact_path(&old).unwrap();
        assert!(s.seal_path(&old).is_file());
        fs::write(s.root().join("checkouts/stray"), b"").unwrap();
        let report = s.verify().unwrap();
        assert_eq!(
            report.bad_checkouts.len(),
            1,
            "only the stray entry: {report:#?}"
        );
        assert_eq!(report.bad_checkouts[0].artifact, None);

        let gc = s.gc(false).unwrap();
        assert_eq!(
            gc.removed_checkouts, 2,
            "the old checkout and the stray file"
        );
        assert!(!s.checkout_path(&old).exists() && !s.seal_path(&old).exists());
        assert!(s.checkout_path(&a).is_dir() && s.seal_path(&a).is_file());
        assert!(s.verify().unwrap().is_clean());
    }
}
