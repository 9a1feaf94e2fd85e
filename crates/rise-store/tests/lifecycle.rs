//! Commit, lookup, latest, producer, pins and gc on a real store.
mod common;

use common::{artifact, manifest};
use rise_store::{StageKey, Store, StoreError};

#[test]
fn commit_then_lookup_latest_and_producer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let out1 = artifact(
        &store,
        tmp.path(),
        "a",
        &[("model/w.bin", b"weights-1"), ("metrics.json", b"{}")],
    );
    let out2 = artifact(&store, tmp.path(), "b", &[("model/w.bin", b"weights-2")]);

    assert!(store.lookup(&StageKey([1; 32])).unwrap().is_none());
    let m1 = manifest(1, "p", "train", out1, "2025-01-01T00:00:01Z");
    let r1 = store.commit_result(&m1).unwrap();
    assert_eq!(
        store.commit_result(&m1).unwrap(),
        r1,
        "committing twice is idempotent"
    );
    let mut m2 = manifest(2, "p", "train", out2, "2025-01-01T00:00:02Z");
    m2.inputs.insert("data".into(), out1);
    let r2 = store.commit_result(&m2).unwrap();

    assert_eq!(
        store.lookup(&StageKey([1; 32])).unwrap(),
        Some((r1, m1.clone()))
    );
    assert_eq!(store.latest("p", "train").unwrap().unwrap().0, r2);
    assert_eq!(store.producer(&out1).unwrap().unwrap().0, r1);
    assert_eq!(store.producer(&out2).unwrap().unwrap().0, r2);
    assert!(store.latest("p", "eval").unwrap().is_none());
    let all: Vec<_> = store
        .results()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(all, vec![r1, r2]);

    // An older result committed later does not displace the newer one.
    let m0 = manifest(1, "p", "train", out1, "2024-12-31T00:00:00Z");
    let r0 = store.commit_result(&m0).unwrap();
    assert_eq!(store.lookup(&StageKey([1; 32])).unwrap().unwrap().0, r1);
    assert_eq!(store.latest("p", "train").unwrap().unwrap().0, r2);
    assert_eq!(store.results().unwrap().first().unwrap().0, r0);

    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.results_checked, 3);

    let many = store
        .lookup_many(&[StageKey([2; 32]), StageKey([9; 32]), StageKey([1; 32])])
        .unwrap();
    let ids: Vec<_> = many.iter().map(|r| r.as_ref().map(|(id, _)| *id)).collect();
    assert_eq!(ids, vec![Some(r2), None, Some(r1)]);
    let index = store.current_index().unwrap();
    assert_eq!(index.results.len(), 3);
    assert_eq!(
        index.latest.get(&("p".to_string(), "train".to_string())),
        Some(&r2)
    );
    assert_eq!(index, store.index_snapshot().unwrap().unwrap());
}

#[test]
fn artifact_complete_checks_presence_and_size_only() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let a = artifact(
        &store,
        tmp.path(),
        "a",
        &[("x", b"0123456789"), ("y", b"abc")],
    );
    store.artifact_complete(&a).unwrap();
    let tree = store.read_tree(&a).unwrap();
    let x = tree.get("x").unwrap().blob;
    common::damage(&store.blob_path(&x), |b| b[0] ^= 1);
    store.artifact_complete(&a).unwrap(); // same size: only a re-hash notices
    assert!(store.verify_artifact(&a).is_err());
    common::damage(&store.blob_path(&x), |b| b.truncate(3));
    let err = store.artifact_complete(&a).unwrap_err().to_string();
    assert!(
        err.contains(&x.to_string()) && err.contains("\"x\""),
        "{err}"
    );
    std::fs::remove_file(store.blob_path(&tree.get("y").unwrap().blob)).unwrap();
    std::fs::remove_file(store.blob_path(&x)).unwrap();
    assert!(matches!(
        store.artifact_complete(&a),
        Err(StoreError::MissingBlob { .. })
    ));
}

#[test]
fn commit_refuses_incomplete_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let out = artifact(&store, tmp.path(), "a", &[("x", b"xx")]);
    let blob = store.read_tree(&out).unwrap().entries[0].blob;
    std::fs::remove_file(store.blob_path(&blob)).unwrap();
    let err = store
        .commit_result(&manifest(1, "p", "s", out, "t"))
        .unwrap_err();
    assert!(matches!(err, StoreError::IncompleteOutput { .. }), "{err}");
    assert!(err.to_string().contains(&blob.to_string()), "{err}");
    assert!(store.lookup(&StageKey([1; 32])).unwrap().is_none());
    let never_stored = rise_store::BlobId::of(b"never stored");
    let err = store
        .commit_result(&manifest(2, "p", "s", never_stored, "t"))
        .unwrap_err();
    assert!(err.to_string().contains(&never_stored.to_string()), "{err}");
}

#[test]
fn gc_keeps_roots_lineage_and_pins_and_deletes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let data_old = artifact(&store, tmp.path(), "d0", &[("rows", b"old rows")]);
    let data_new = artifact(&store, tmp.path(), "d1", &[("rows", b"new rows")]);
    let model = artifact(
        &store,
        tmp.path(),
        "m",
        &[("w", b"model trained on old rows")],
    );
    let stale = artifact(&store, tmp.path(), "s", &[("w", b"superseded model")]);
    let pinned = artifact(&store, tmp.path(), "pin", &[("w", b"pinned by hand")]);
    let orphan = store.put_bytes(b"an orphan blob").unwrap();

    let r_data_old = store
        .commit_result(&manifest(1, "p", "data", data_old, "2025-01-01T00:00:01Z"))
        .unwrap();
    let r_data_new = store
        .commit_result(&manifest(2, "p", "data", data_new, "2025-01-01T00:00:02Z"))
        .unwrap();
    let r_stale = store
        .commit_result(&manifest(3, "p", "train", stale, "2025-01-01T00:00:03Z"))
        .unwrap();
    let mut mm = manifest(4, "p", "train", model, "2025-01-01T00:00:04Z");
    mm.inputs.insert("data".into(), data_old);
    let r_model = store.commit_result(&mm).unwrap();
    store.pin("best", &pinned).unwrap();
    let co_stale = store.artifact_path(&stale).unwrap();
    let co_model = store.artifact_path(&model).unwrap();
    let scratch_done = store.scratch_dir(&StageKey([4; 32])).unwrap();
    let scratch_resumable = store.scratch_dir(&StageKey([9; 32])).unwrap();

    let dry = store.gc(true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        dry.removed_results,
        vec![r_stale].into_iter().collect::<Vec<_>>()
    );
    assert!(store.has_blob(&orphan), "dry run deletes nothing");

    let report = store.gc(false).unwrap();
    assert_eq!(report.roots.len(), 2);
    assert!(report.roots.contains(&r_data_new) && report.roots.contains(&r_model));
    assert_eq!(report.removed_results, vec![r_stale]);
    assert_eq!(report.removed_scratch, vec![StageKey([4; 32])]);
    assert_eq!(report.kept_scratch, vec![StageKey([9; 32])]);
    assert_eq!(
        report.removed_lock_files, 2,
        "the idle lock files of both scratch keys"
    );
    assert!(report.removed_blobs >= 3, "{report:#?}"); // orphan, stale tree, stale content, stale manifest
    assert!(!store.has_blob(&orphan) && !store.has_blob(&stale) && !store.has_blob(&r_stale));
    for a in [data_old, data_new, model, pinned] {
        store.verify_artifact(&a).unwrap();
    }
    // The old data result survives: it produced the input of a root (lineage).
    assert_eq!(store.producer(&data_old).unwrap().unwrap().0, r_data_old);
    assert_eq!(store.lookup(&StageKey([3; 32])).unwrap(), None);
    assert!(!co_stale.exists() && co_model.exists());
    assert!(!scratch_done.exists() && scratch_resumable.exists());
    let v = store.verify().unwrap();
    assert!(v.is_clean(), "{v:#?}");

    // Unpinned, the pinned artifact goes at the next gc.
    store.unpin("best").unwrap();
    store.gc(false).unwrap();
    assert!(!store.has_blob(&pinned));
}

#[test]
fn gc_refuses_to_run_during_a_run_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let run = store.run_lock_shared().unwrap();
    let err = store.gc(false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Busy { .. }), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    drop(run);
    store.gc(false).unwrap();
}

#[test]
fn key_locks_exclude_and_scratch_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let key = StageKey([5; 32]);
    let held = store.lock_key(&key, "iter1/train").unwrap();
    assert!(store.try_lock_key(&key, "other").unwrap().is_none());
    let holder = store.key_lock_holder(&key).unwrap().unwrap();
    assert_eq!(holder.pid, std::process::id());
    assert_eq!(holder.what, "iter1/train");
    drop(held);
    assert!(store.key_lock_holder(&key).unwrap().is_none());
    assert!(store.try_lock_key(&key, "other").unwrap().is_some());

    let dir = store.scratch_dir(&key).unwrap();
    std::fs::write(dir.join("ckpt"), b"step 10").unwrap();
    assert_eq!(
        store.scratch_dir(&key).unwrap(),
        dir,
        "scratch survives and is found again"
    );
    assert!(dir.join("ckpt").exists());
    store.remove_scratch(&key).unwrap();
    assert!(!dir.exists());
    store.remove_scratch(&key).unwrap();
    assert!(store.logs_dir().is_dir());
}

#[test]
fn many_opens_of_one_new_store_at_once_all_succeed() {
    for round in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        Store::open(&root).map(|_| ())
                    })
                })
                .collect();
            for h in handles {
                if let Err(e) = h.join().unwrap() {
                    panic!("round {round}: a concurrent first open failed: {e}");
                }
            }
        });
        assert!(Store::open(&root).unwrap().verify().unwrap().is_clean());
    }
}
