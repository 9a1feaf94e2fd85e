//! `rise doctor` on a real store: it names the store's filesystem as statfs and /proc/mounts
//! see it, says whether flock holds across hosts there, and where the index lives. (The rules
//! for network filesystems are unit-tested in rise-store's `fsinfo` and in `cli::doctor` on a
//! fake /proc/mounts; this checks the wiring.)
mod support;

use std::path::Path;

use rise_store::{FsInfo, Store};

fn doctor(store: &Path, index_dir: Option<&Path>, json: bool) -> String {
    let mut cmd = support::rise_at(store);
    cmd.arg("doctor");
    if json {
        cmd.arg("--json");
    }
    if let Some(dir) = index_dir {
        cmd.env("RISE_INDEX_DIR", dir);
    }
    // The exit status says whether the torch worker is usable, which is not under test here.
    let out = cmd.output().expect("run rise doctor");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn doctor_names_the_store_filesystem_and_the_index_location() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = Store::open(&root).unwrap();
    let fs = FsInfo::probe(&root).unwrap();

    let report: serde_json::Value = serde_json::from_str(&doctor(&root, None, true)).unwrap();
    let got = &report["store_fs"];
    assert_eq!(got["filesystem"]["type"], fs.fstype.as_str(), "{got:#}");
    assert_eq!(got["filesystem"]["shared"], fs.shared, "{got:#}");
    let expected_flock = if fs.shared { None } else { Some("one-host") };
    if let Some(status) = expected_flock {
        assert_eq!(got["filesystem"]["flock"], status, "{got:#}");
    }
    assert_eq!(
        got["index"]["path"],
        store.index_location().path.to_str().unwrap(),
        "{got:#}"
    );
    assert!(got["note"].is_null(), "{got:#}");

    let idx = tmp.path().join("idx");
    let report: serde_json::Value = serde_json::from_str(&doctor(&root, Some(&idx), true)).unwrap();
    let index = &report["store_fs"]["index"];
    assert_eq!(index["placement"], "configured", "{index:#}");
    assert!(
        index["path"]
            .as_str()
            .unwrap()
            .starts_with(idx.to_str().unwrap()),
        "{index:#}"
    );

    let table = doctor(&root, None, false);
    assert!(
        table.contains(&format!("store fs         {} (", fs.fstype)),
        "{table}"
    );
    assert!(table.contains("\nflock            "), "{table}");
    assert!(table.contains("\nindex            "), "{table}");

    // A store that does not exist yet is not created by doctor.
    let missing = tmp.path().join("not-yet");
    let table = doctor(&missing, None, false);
    assert!(table.contains("the store does not exist yet"), "{table}");
    assert!(!missing.exists());
}
