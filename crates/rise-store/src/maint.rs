//! Maintenance: `verify` (re-hash everything, name what is damaged and who depends on it),
//! `reindex` and `gc`.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

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
    /// Intact, but a tree records a different size for it.
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

/// A checkout under `checkouts/` that no longer matches its artifact.
#[derive(Clone, Debug, Serialize)]
pub struct BadCheckout {
    /// The checkout directory.
    pub path: PathBuf,
    /// What differs.
    pub problems: Vec<String>,
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
    /// Checkouts that differ from their artifact (removed by `remove_checkout` or `gc`).
    pub bad_checkouts: Vec<BadCheckout>,
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
            && self.stray_files.is_empty()
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
                            Some(Ok(size)) if *size != e.size => flag(
                                e.blob,
                                BlobProblem::WrongSize,
                                format!(
                                    "{size} bytes, but tree entry {:?} of artifact {a} records {}",
                                    e.path, e.size
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

        // Checkouts.
        let checkouts = self.root.join("checkouts");
        let mut dirs: Vec<_> = fs::read_dir(&checkouts)
            .map_err(StoreError::io("list", &checkouts))?
            .flatten()
            .map(|e| e.path())
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
                report.bad_checkouts.push(BadCheckout {
                    path: dir,
                    problems,
                });
            }
        }
        Ok(report)
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

        let checkouts = self.root.join("checkouts");
        let doomed_checkouts: Vec<PathBuf> = fs::read_dir(&checkouts)
            .map_err(StoreError::io("list", &checkouts))?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<ArtifactId>().ok())
                    .is_none_or(|a| !keep_artifacts.contains(&a))
            })
            .map(|e| e.path())
            .collect();
        report.removed_checkouts = doomed_checkouts.len();

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
