//! Property tests: random trees round-trip; ids ignore creation order and mtimes; different
//! trees never share an id.
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use rise_store::Store;

/// A random tree: relative path -> (content, executable). Paths are drawn from a small alphabet
/// of components so that nesting and shared directories are common.
fn tree_strategy() -> impl Strategy<Value = BTreeMap<String, (Vec<u8>, bool)>> {
    let component = prop_oneof![
        Just("a"),
        Just("b"),
        Just("data"),
        Just("x.bin"),
        Just("é"),
        Just("..a")
    ];
    let path = prop::collection::vec(component, 1..4).prop_map(|c| c.join("/"));
    let content = prop::collection::vec(any::<u8>(), 0..2048);
    prop::collection::btree_map(path, (content, any::<bool>()), 0..8).prop_map(|mut m| {
        // A path cannot be both a file and a directory: drop files that are prefixes of others.
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in &keys {
            if keys.iter().any(|o| o.starts_with(&format!("{k}/"))) {
                m.remove(k);
            }
        }
        m
    })
}

fn write(dir: &Path, tree: &BTreeMap<String, (Vec<u8>, bool)>, order: &[usize], mtime_offset: u64) {
    fs::create_dir_all(dir).unwrap();
    let entries: Vec<_> = tree.iter().collect();
    for &i in order {
        let (p, (bytes, exec)) = entries[i];
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let t = SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_000_000 + mtime_offset * 1000 + i as u64);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

fn read_back(dir: &Path) -> BTreeMap<String, (Vec<u8>, bool)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, bool)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                let exec = fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0;
                out.insert(rel, (fs::read(&p).unwrap(), exec));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn put_get_round_trip(tree in tree_strategy()) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let src = tmp.path().join("src");
        let order: Vec<usize> = (0..tree.len()).collect();
        write(&src, &tree, &order, 0);
        let id = store.put_tree(&src).unwrap();
        store.verify_artifact(&id).unwrap();
        let out = tmp.path().join("out");
        store.materialize(&id, &out).unwrap();
        prop_assert_eq!(read_back(&out), tree.clone());
        let checkout = store.artifact_path(&id).unwrap();
        prop_assert_eq!(read_back(&checkout), tree.clone());
        for (path, (bytes, _)) in &tree {
            let entry = store.read_tree(&id).unwrap().get(path).unwrap().clone();
            prop_assert_eq!(&store.read_blob(&entry.blob).unwrap(), bytes);
        }
    }

    #[test]
    fn id_ignores_creation_order_and_mtimes(tree in tree_strategy(), seed in any::<u64>()) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let forward: Vec<usize> = (0..tree.len()).collect();
        let mut shuffled = forward.clone();
        // Fisher-Yates with a seeded LCG: a different creation order per case.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        write(&tmp.path().join("one"), &tree, &forward, 0);
        write(&tmp.path().join("two"), &tree, &shuffled, 7);
        let a = store.put_tree(&tmp.path().join("one")).unwrap();
        let b = store.put_tree(&tmp.path().join("two")).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn different_trees_have_different_ids(a in tree_strategy(), b in tree_strategy()) {
        prop_assume!(a != b);
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        write(&tmp.path().join("a"), &a, &(0..a.len()).collect::<Vec<_>>(), 0);
        write(&tmp.path().join("b"), &b, &(0..b.len()).collect::<Vec<_>>(), 0);
        prop_assert_ne!(store.put_tree(&tmp.path().join("a")).unwrap(), store.put_tree(&tmp.path().join("b")).unwrap());
    }

    #[test]
    fn one_flipped_bit_changes_the_id(tree in tree_strategy(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        prop_assume!(tree.values().any(|(c, _)| !c.is_empty()));
        let nonempty: Vec<&String> = tree.iter().filter(|(_, (c, _))| !c.is_empty()).map(|(k, _)| k).collect();
        let victim = nonempty[pick.index(nonempty.len())].clone();
        let mut changed = tree.clone();
        let content = &mut changed.get_mut(&victim).unwrap().0;
        let at = pick.index(content.len());
        content[at] ^= 1 << bit;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        write(&tmp.path().join("a"), &tree, &(0..tree.len()).collect::<Vec<_>>(), 0);
        write(&tmp.path().join("b"), &changed, &(0..changed.len()).collect::<Vec<_>>(), 0);
        prop_assert_ne!(store.put_tree(&tmp.path().join("a")).unwrap(), store.put_tree(&tmp.path().join("b")).unwrap());
    }
}

#[test]
fn the_executable_bit_is_part_of_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let mut t = BTreeMap::new();
    t.insert("run".to_string(), (b"#!/bin/sh".to_vec(), false));
    write(&tmp.path().join("a"), &t, &[0], 0);
    t.insert("run".to_string(), (b"#!/bin/sh".to_vec(), true));
    write(&tmp.path().join("b"), &t, &[0], 0);
    assert_ne!(
        store.put_tree(&tmp.path().join("a")).unwrap(),
        store.put_tree(&tmp.path().join("b")).unwrap()
    );
}
