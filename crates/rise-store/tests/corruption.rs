//! Corruption: a flipped byte, a truncated blob, a missing blob, a deleted or damaged index.
//! Each is reported by verify (naming the blob and its dependants), never returned as valid
//! data, and reindex restores the index exactly.
mod common;

use std::fs;
use std::io::Read;

use common::{artifact, damage, manifest};
use rise_store::{ArtifactId, BlobId, BlobProblem, ResultId, StageKey, Store};

struct Fixture {
    _tmp: tempfile::TempDir,
    store: Store,
    data: ArtifactId,
    model: ArtifactId,
    r_data: ResultId,
    r_model: ResultId,
    /// The blob of `model/weights.bin`, shared with nothing else.
    weights: BlobId,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let data = artifact(
        &store,
        tmp.path(),
        "d",
        &[("rows.jsonl", b"{\"q\":1}\n{\"q\":2}\n")],
    );
    let model = artifact(
        &store,
        tmp.path(),
        "m",
        &[
            ("model/weights.bin", &[7u8; 4096][..]),
            ("model/config.json", b"{\"layers\":2}"),
        ],
    );
    let r_data = store
        .commit_result(&manifest(1, "p", "data", data, "2025-01-01T00:00:01Z"))
        .unwrap();
    let mut mm = manifest(2, "p", "train", model, "2025-01-01T00:00:02Z");
    mm.inputs.insert("data".into(), data);
    let r_model = store.commit_result(&mm).unwrap();
    let weights = store
        .read_tree(&model)
        .unwrap()
        .get("model/weights.bin")
        .unwrap()
        .blob;
    Fixture {
        _tmp: tmp,
        store,
        data,
        model,
        r_data,
        r_model,
        weights,
    }
}

/// The damaged blob is reported once, with the model artifact and the train result as
/// dependants (not the data result), and none of the read paths hands out its bytes.
fn assert_reported_and_refused(f: &Fixture, expected: BlobProblem) {
    let report = f.store.verify().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.bad_blobs.len(), 1, "{report:#?}");
    let bad = &report.bad_blobs[0];
    assert_eq!((bad.id, bad.problem), (f.weights, expected), "{report:#?}");
    assert_eq!(bad.artifacts, vec![f.model]);
    assert_eq!(bad.results, vec![f.r_model]);
    assert!(
        report.index_problems.is_empty() && report.bad_results.is_empty(),
        "{report:#?}"
    );

    let err = f.store.read_blob(&f.weights).unwrap_err();
    assert!(
        err.is_corruption() && err.to_string().contains(&f.weights.to_string()),
        "{err}"
    );
    if let Ok(mut r) = f.store.open_blob(&f.weights) {
        let mut sink = Vec::new();
        assert!(
            r.read_to_end(&mut sink).is_err(),
            "streaming read accepted damaged bytes"
        );
    }
    assert!(!f.store.has_valid_blob(&f.weights).unwrap());
    let err = f.store.verify_artifact(&f.model).unwrap_err();
    assert!(
        err.to_string().contains(&f.weights.to_string()) && err.to_string().contains("weights.bin"),
        "{err}"
    );
    let out = f._tmp.path().join("out");
    assert!(f
        .store
        .materialize(&f.model, &out)
        .unwrap_err()
        .is_corruption());
    assert!(!out.exists(), "a failed materialize left files behind");
    assert!(f.store.artifact_path(&f.model).unwrap_err().is_corruption());
    // Unaffected data stays usable.
    f.store.verify_artifact(&f.data).unwrap();
    f.store.artifact_path(&f.data).unwrap();
}

fn assert_reindex_restores(f: &Fixture) {
    let before = f.store.current_index().unwrap();
    fs::remove_dir_all(f.store.root().join("index")).unwrap();
    let report = f.store.reindex().unwrap();
    assert_eq!(report.previous, "missing");
    assert_eq!(f.store.index_snapshot().unwrap().unwrap(), before);
}

#[test]
fn flipped_byte() {
    let f = fixture();
    damage(&f.store.blob_path(&f.weights), |b| b[1000] ^= 0x20);
    assert_reported_and_refused(&f, BlobProblem::Corrupt);
    assert_reindex_restores(&f);
}

#[test]
fn truncated_blob() {
    let f = fixture();
    damage(&f.store.blob_path(&f.weights), |b| b.truncate(100));
    assert_reported_and_refused(&f, BlobProblem::Corrupt);
    assert_reindex_restores(&f);
}

#[test]
fn missing_blob() {
    let f = fixture();
    fs::remove_file(f.store.blob_path(&f.weights)).unwrap();
    assert_reported_and_refused(&f, BlobProblem::Missing);
    assert_reindex_restores(&f);
}

#[test]
fn deleted_index_directory() {
    let f = fixture();
    let before = f.store.current_index().unwrap();
    assert_eq!(before.results.len(), 2);
    fs::remove_dir_all(f.store.root().join("index")).unwrap();
    let report = f.store.verify().unwrap();
    assert_eq!(report.index_problems.len(), 1, "{report:#?}");
    assert_eq!(report.index_problems[0].kind, "missing");
    assert!(report.bad_blobs.is_empty());
    let r = f.store.reindex().unwrap();
    assert_eq!(
        (r.results, r.keys, r.stages, r.previous),
        (2, 2, 2, "missing")
    );
    assert_eq!(f.store.index_snapshot().unwrap().unwrap(), before);
    assert!(f.store.verify().unwrap().is_clean());
}

#[test]
fn a_deleted_index_heals_at_the_next_lookup() {
    let f = fixture();
    let before = f.store.current_index().unwrap();
    fs::remove_dir_all(f.store.root().join("index")).unwrap();
    assert_eq!(
        f.store.lookup(&StageKey([2; 32])).unwrap().unwrap().0,
        f.r_model
    );
    assert_eq!(f.store.index_snapshot().unwrap().unwrap(), before);
}

#[test]
fn garbage_index_is_moved_aside_and_rebuilt() {
    let f = fixture();
    let before = f.store.current_index().unwrap();
    let index = f.store.root().join("index");
    for e in fs::read_dir(&index).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            fs::write(&p, vec![0xffu8; 4096]).unwrap();
        }
    }
    assert!(
        !f.store.verify().unwrap().is_clean(),
        "a damaged index must be reported"
    );
    assert_eq!(f.store.latest("p", "data").unwrap().unwrap().0, f.r_data);
    assert_eq!(f.store.index_snapshot().unwrap().unwrap(), before);
}

#[test]
fn damaged_result_manifest_is_reported_and_skipped() {
    let f = fixture();
    damage(&f.store.blob_path(&f.r_data), |b| b[10] ^= 1);
    let report = f.store.verify().unwrap();
    assert_eq!(report.bad_results.len(), 1);
    assert_eq!(report.bad_results[0].id, f.r_data);
    assert!(
        report
            .bad_blobs
            .iter()
            .any(|b| b.id == f.r_data && b.results == vec![f.r_data]),
        "{report:#?}"
    );
    let err = f.store.lookup(&StageKey([1; 32])).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let r = f.store.reindex().unwrap();
    assert_eq!(r.results, 1);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].id, f.r_data);
    assert!(
        f.store.lookup(&StageKey([1; 32])).unwrap().is_none(),
        "a damaged result is a miss after reindex"
    );
}

#[test]
fn tampered_checkout_is_reported() {
    let f = fixture();
    let co = f.store.artifact_path(&f.data).unwrap();
    let file = co.join("rows.jsonl");
    damage(&file, |b| b.push(b'!'));
    let report = f.store.verify().unwrap();
    assert_eq!(report.bad_checkouts.len(), 1, "{report:#?}");
    assert!(report.bad_checkouts[0].problems[0].contains("rows.jsonl"));
    f.store.remove_checkout(&f.data).unwrap();
    f.store.artifact_path(&f.data).unwrap();
    assert!(f.store.verify().unwrap().is_clean());
}
