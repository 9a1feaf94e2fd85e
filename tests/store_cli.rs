//! `rise store verify|reindex|pin|unpin|pins` and `rise gc`, driving the real binary on temp
//! stores populated through the rise-store library.
mod support;

use std::os::unix::fs::PermissionsExt;

use rise_store::{ArtifactId, ResultId, ResultManifest, StageKey, Store};
use support::{run_at as rise, stderr, stdout};

struct Fixture {
    tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    model: ArtifactId,
    r_train: ResultId,
    r_old: ResultId,
}

fn manifest(key: u8, stage: &str, output: ArtifactId, finished: &str) -> ResultManifest {
    ResultManifest {
        key: StageKey([key; 32]),
        pipeline: "demo".into(),
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
        finished_at: finished.into(),
        run_id: "r".into(),
    }
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = Store::open(&root).unwrap();
    let put = |name: &str, file: &str, bytes: &[u8]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), bytes).unwrap();
        store.put_tree(&dir).unwrap()
    };
    let model = put("model", "weights.bin", &[3u8; 10_000]);
    let old = put("old", "weights.bin", &[4u8; 10_000]);
    let r_old = store
        .commit_result(&manifest(1, "iter1/train", old, "2025-01-01T00:00:01Z"))
        .unwrap();
    let r_train = store
        .commit_result(&manifest(2, "iter1/train", model, "2025-01-01T00:00:02Z"))
        .unwrap();
    Fixture {
        tmp,
        root,
        model,
        r_train,
        r_old,
    }
}

#[test]
fn verify_a_clean_store() {
    let f = fixture();
    let out = rise(&f.root, &["store", "verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("store is intact"), "{}", stdout(&out));
    let out = rise(&f.root, &["store", "verify", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results_checked"], 2);
    assert_eq!(v["bad_blobs"].as_array().unwrap().len(), 0);
}

#[test]
fn verify_names_a_bad_blob_and_everything_that_uses_it() {
    let f = fixture();
    let store = Store::open(&f.root).unwrap();
    let blob = store.read_tree(&f.model).unwrap().entries[0].blob;
    let path = store.blob_path(&blob);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[17] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let out = rise(&f.root, &["store", "verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("CORRUPT blob {blob}")), "{text}");
    assert!(
        text.contains(&format!("in artifact  {}", f.model)),
        "{text}"
    );
    assert!(
        text.contains(&format!("used by      {} (demo / iter1/train)", f.r_train)),
        "{text}"
    );
    assert!(
        !text.contains(&f.r_old.to_string()),
        "an unaffected result was blamed: {text}"
    );

    let out = rise(&f.root, &["store", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bad_blobs"][0]["id"], blob.to_string());
    assert_eq!(v["bad_blobs"][0]["problem"], "corrupt");
    assert_eq!(v["bad_blobs"][0]["results"][0], f.r_train.to_string());
}

#[test]
fn reindex_restores_a_deleted_index() {
    let f = fixture();
    let before = Store::open(&f.root).unwrap().current_index().unwrap();
    std::fs::remove_dir_all(f.root.join("index")).unwrap();
    let out = rise(&f.root, &["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("INDEX missing"), "{}", stdout(&out));

    let out = rise(&f.root, &["store", "reindex"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("reindexed 2 results"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("previous index: missing"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        Store::open(&f.root)
            .unwrap()
            .index_snapshot()
            .unwrap()
            .unwrap(),
        before
    );
    assert!(rise(&f.root, &["store", "verify"]).status.success());

    let out = rise(&f.root, &["store", "reindex", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["previous"], "identical");
}

#[test]
fn gc_dry_run_then_gc() {
    let f = fixture();
    let out = rise(&f.root, &["gc", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("would delete result {}", f.r_old)),
        "{}",
        stdout(&out)
    );
    assert!(f.root.join("results").join(f.r_old.to_string()).exists());

    let out = rise(&f.root, &["gc", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed_results"][0], f.r_old.to_string());
    assert!(v["removed_blobs"].as_u64().unwrap() >= 3);
    let store = Store::open(&f.root).unwrap();
    assert!(!store.has_blob(&f.r_old));
    store.verify_artifact(&f.model).unwrap();
    assert!(rise(&f.root, &["store", "verify"]).status.success());
}

#[test]
fn gc_refuses_during_a_run_and_names_the_runner() {
    let f = fixture();
    let store = Store::open(&f.root).unwrap();
    let _run = store.run_lock_shared().unwrap();
    let out = rise(&f.root, &["gc"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("in use by") && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn pins_keep_artifacts_through_gc() {
    let f = fixture();
    let store = Store::open(&f.root).unwrap();
    let old = store.read_result(&f.r_old).unwrap().output;
    let out = rise(&f.root, &["store", "pin", "baseline", &old.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = rise(&f.root, &["store", "pins", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["baseline"], old.to_string());
    assert!(rise(&f.root, &["gc"]).status.success());
    store.verify_artifact(&old).unwrap();
    assert!(
        store.producer(&old).unwrap().is_some(),
        "the pinned artifact's producer is kept"
    );

    assert!(rise(&f.root, &["store", "unpin", "baseline"])
        .status
        .success());
    assert!(rise(&f.root, &["gc"]).status.success());
    assert!(!store.has_blob(&old));

    let out = rise(&f.root, &["store", "unpin", "baseline"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no pin named \"baseline\""),
        "{}",
        stderr(&out)
    );
    let out = rise(&f.root, &["store", "pin", "x", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a malformed id");
    assert!(
        stderr(&out).contains("64 hexadecimal digits"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn maintenance_never_creates_a_store_and_honours_rise_store() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = rise(&missing, &["store", "verify"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no rise store at"),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists());

    let f = fixture();
    let out = support::rise()
        .args(["store", "verify"])
        .env("RISE_STORE", &f.root)
        .current_dir(f.tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn help_explains_exit_status_and_roots() {
    let out = support::run(&["store", "verify", "--help"]);
    assert!(stdout(&out).contains("Exit status"), "{}", stdout(&out));
    let out = support::run(&["gc", "--help"]);
    assert!(
        stdout(&out).contains("Roots are the latest result"),
        "{}",
        stdout(&out)
    );
}
