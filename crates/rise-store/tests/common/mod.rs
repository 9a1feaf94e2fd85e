//! Shared helpers for rise-store's integration tests (included with `mod common;`).
#![allow(dead_code)]
use std::fs;
use std::path::Path;

use rise_store::{ArtifactId, ResultManifest, StageKey, Store};

/// Writes `files` (path, bytes) under `dir`, creating parents.
pub fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (p, bytes) in files {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
}

/// Stores a small tree with the given files and returns its id.
pub fn artifact(store: &Store, scratch: &Path, name: &str, files: &[(&str, &[u8])]) -> ArtifactId {
    let dir = scratch.join(name);
    write_tree(&dir, files);
    store.put_tree(&dir).unwrap()
}

/// A manifest with the given identity fields and plausible values elsewhere.
pub fn manifest(
    key: u8,
    pipeline: &str,
    stage: &str,
    output: ArtifactId,
    finished: &str,
) -> ResultManifest {
    ResultManifest {
        key: StageKey([key; 32]),
        pipeline: pipeline.into(),
        stage: stage.into(),
        kind: "test".into(),
        kind_version: 1,
        params: serde_json::json!({"key": key}),
        inputs: Default::default(),
        output,
        metrics: serde_json::json!({"score": 0.5}),
        engine_version: "test".into(),
        host: "host".into(),
        device: "cpu".into(),
        started_at: "2025-01-01T00:00:00Z".into(),
        finished_at: finished.into(),
        run_id: "run-1".into(),
    }
}

/// Makes a blob writable and rewrites it through `f`.
pub fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(path, bytes).unwrap();
}
