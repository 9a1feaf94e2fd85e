//! The index outside the store (`RISE_INDEX_DIR`, or local disk for a store on a network
//! filesystem): one per host, disposable, and always in step with the committed markers.
//!
//! Two `Store` handles with different index directories stand for two hosts sharing the store.
//! The variable is read at `Store::open`, and it is process-wide: this file holds one test.
mod common;

use common::{artifact, manifest};
use rise_store::{IndexPlacement, StageKey, Store, INDEX_DIR_VAR};

fn open_as_host(root: &std::path::Path, index_base: &std::path::Path) -> Store {
    std::env::set_var(INDEX_DIR_VAR, index_base);
    let store = Store::open(root).unwrap();
    std::env::remove_var(INDEX_DIR_VAR);
    store
}

#[test]
fn each_host_keeps_its_own_disposable_index_in_step_with_the_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (base_a, base_b) = (tmp.path().join("host-a"), tmp.path().join("host-b"));
    let a = open_as_host(&root, &base_a);
    let b = open_as_host(&root, &base_b);
    let loc = a.index_location().clone();
    assert_eq!(loc.reason, IndexPlacement::Configured);
    assert!(loc.path.starts_with(&base_a), "{loc:?}");

    // A commit (what a compute node does) builds no index anywhere.
    let old = artifact(&a, tmp.path(), "old", &[("f", b"old")]);
    let new = artifact(&a, tmp.path(), "new", &[("f", b"new")]);
    let r_old = a
        .commit_result(&manifest(1, "p", "s", old, "2025-01-01T00:00:01Z"))
        .unwrap();
    assert!(!loc.path.exists() && !root.join("index").exists());
    // A host that has not used the store yet has no index, which is not a problem.
    let v = b.verify().unwrap();
    assert!(v.is_clean(), "{v:#?}");
    assert_eq!(v.results_not_yet_indexed, 1);

    // Both hosts find the result, each through its own index.
    assert_eq!(a.lookup(&StageKey([1; 32])).unwrap().unwrap().0, r_old);
    assert_eq!(b.lookup(&StageKey([1; 32])).unwrap().unwrap().0, r_old);
    assert!(loc.path.is_dir() && b.index_location().path.is_dir());
    assert!(
        !root.join("index").exists(),
        "nothing indexes inside the store"
    );

    // A newer result of the same stage; gc on host A removes the old one. Host B's index
    // still lists it: its next lookup must notice the missing marker and rebuild.
    let r_new = a
        .commit_result(&manifest(2, "p", "s", new, "2025-01-01T00:00:02Z"))
        .unwrap();
    let report = a.gc(false).unwrap();
    assert_eq!(report.removed_results, vec![r_old]);
    assert_eq!(b.lookup(&StageKey([1; 32])).unwrap(), None);
    assert_eq!(b.lookup(&StageKey([2; 32])).unwrap().unwrap().0, r_new);

    // The index is disposable: deleted, it is rebuilt from the markers on the next use.
    std::fs::remove_dir_all(&loc.path).unwrap();
    assert_eq!(a.latest("p", "s").unwrap().unwrap().0, r_new);
    let v = a.verify().unwrap();
    assert!(v.is_clean(), "{v:#?}");
    assert_eq!(v.results_not_yet_indexed, 0);

    // A second store under the same RISE_INDEX_DIR gets an index of its own.
    let other = open_as_host(&tmp.path().join("other"), &base_a);
    assert_ne!(other.index_location().path, loc.path);
    assert_eq!(other.lookup(&StageKey([2; 32])).unwrap(), None);

    // Without the variable, on this (local) filesystem, the index is in the store again.
    let plain = Store::open(&root).unwrap();
    if !plain.filesystem().is_some_and(|fs| fs.shared) {
        assert!(plain.index_location().is_in_store());
        assert_eq!(plain.lookup(&StageKey([2; 32])).unwrap().unwrap().0, r_new);
        assert!(root.join("index").is_dir());
    }
}
