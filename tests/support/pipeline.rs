//! The RISE end-to-end tests: a copy of `pipelines/rise-ci.toml` in a temp directory, a temp
//! store, and the real `rise` binary (which spawns the real `rise-worker`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use super::{describe, root};

pub struct Env {
    /// Holds the pipeline copy, the store and any fixtures.
    pub dir: tempfile::TempDir,
    pub pipeline: PathBuf,
    pub store: PathBuf,
}

/// The pipeline text of `pipelines/rise-ci.toml` with the model config made absolute (the copy
/// lives in a temp directory).
pub fn ci_text() -> String {
    let text = std::fs::read_to_string(root().join("pipelines/rise-ci.toml"))
        .expect("pipelines/rise-ci.toml");
    let config = root().join("configs/micro.toml");
    assert!(
        text.contains("\"../configs/micro.toml\""),
        "rise-ci.toml no longer names ../configs/micro.toml"
    );
    text.replace(
        "\"../configs/micro.toml\"",
        &format!("{:?}", config.display().to_string()),
    )
}

/// A temp directory with `pipeline.toml` = `text` and an empty store location.
pub fn env_with(text: &str) -> Env {
    check_worker();
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, text).expect("write pipeline");
    let store = dir.path().join("store");
    Env {
        dir,
        pipeline,
        store,
    }
}

/// The CI pipeline, unchanged.
pub fn ci_env() -> Env {
    env_with(&ci_text())
}

/// The torch stages need `rise-worker` next to `rise` ([`super::worker`] says how to build it).
pub fn check_worker() {
    super::worker();
}

impl Env {
    /// `rise --store STORE ARGS...`, with `PIPELINE` standing for the pipeline path.
    pub fn rise(&self, args: &[&str]) -> Output {
        let pipeline = self.pipeline.display().to_string();
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "PIPELINE" {
                    pipeline.as_str()
                } else {
                    a
                }
            })
            .collect();
        // Warnings only: stderr assertions and failure messages stay readable.
        super::output(
            super::rise_at(&self.store)
                .args(&args)
                .env("RISE_LOG", "warn"),
        )
    }

    /// `rise run PIPELINE --json -q ARGS`: the parsed summary and the raw output.
    pub fn run(&self, extra: &[&str]) -> (Value, Output) {
        let mut args = vec!["run", "PIPELINE", "--json", "-q", "--threads", "1"];
        args.extend_from_slice(extra);
        let out = self.rise(&args);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (json, out)
    }

    /// Runs and insists on success.
    pub fn run_ok(&self, extra: &[&str]) -> Value {
        let (json, out) = self.run(extra);
        assert!(out.status.success(), "rise run failed:\n{}", describe(&out));
        json
    }

    /// The checkout directory of a stage's latest result.
    pub fn output_dir(&self, stage: &str) -> PathBuf {
        let out = self.rise(&["show", stage, "--json"]);
        assert!(
            out.status.success(),
            "rise show {stage}:\n{}",
            describe(&out)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("show --json");
        PathBuf::from(v["output_path"].as_str().expect("output_path"))
    }

    /// When a stage's result was computed: (started_at, finished_at), RFC 3339 UTC with fixed
    /// digits, so they compare as strings.
    pub fn ran(&self, stage: &str) -> (String, String) {
        let out = self.rise(&["show", stage, "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let at = |k: &str| v["manifest"][k].as_str().expect(k).to_string();
        (at("started_at"), at("finished_at"))
    }

    /// Committed results in the store (one manifest per result).
    pub fn result_count(&self) -> usize {
        fn walk(p: &Path) -> usize {
            std::fs::read_dir(p).map_or(0, |rd| {
                rd.filter_map(Result::ok)
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        walk(&self.store.join("results"))
    }
}

/// A micro model (untrained: its answers are all wrong, so relabel has work at every state),
/// and sample / relabel / evaluate with units that do not divide evenly into 3 shards:
/// 20 prompts in files of 4 (5 files), 10 test problems in batches of 3 (4 batches).
pub fn micro_text() -> String {
    let config = root().join("configs/micro.toml");
    let synthetic = "synthetic = { n_train = 40, n_test = 10, min_steps = 1, max_steps = 2, \
                     max_operand = 9, max_factor = 3, max_value = 99 }";
    format!(
        r#"[pipeline]
name = "sharded"
seed = 1

[stage.train_set]
kind = "dataset"
params = {{ source = "synthetic", split = "train", {synthetic} }}

[stage.test_set]
kind = "dataset"
params = {{ source = "synthetic", split = "test", {synthetic} }}

[stage.tokenizer]
kind = "tokenizer"
inputs = {{ data = "train_set" }}
params = {{ vocab_size = 256 }}

[stage.init]
kind = "model"
inputs = {{ tokenizer = "tokenizer" }}
params = {{ config = {config:?}, system = "" }}

[stage.sample]
kind = "sample"
inputs = {{ policy = "init", prompts = "train_set" }}
params = {{ limit = 20, max_new_tokens = 12, shard_size = 4, batch_size = 3 }}

[stage.grade]
kind = "grade"
inputs = {{ rollouts = "sample" }}

[stage.relabel]
kind = "relabel"
inputs = {{ graded = "grade", policy = "init" }}
params = {{ n = 2, turns = 2, max_new_tokens = 12, shard_size = 4 }}

[stage.evaluate]
kind = "evaluate"
inputs = {{ model = "init", data = "test_set" }}
params = {{ max_new_tokens = 12, batch_size = 3, turns = 2, parallel = 2 }}
"#,
        config = config.display().to_string()
    )
}

/// The pipeline with `shards = N` on each named stage.
pub fn sharded(text: &str, stages: &[(&str, u32)]) -> String {
    let mut text = text.to_string();
    for (stage, n) in stages {
        let table = format!("[stage.{stage}]\n");
        assert!(text.contains(&table), "{stage}");
        text = text.replace(&table, &format!("{table}shards = {n}\n"));
    }
    text
}

/// stage -> output artifact id, from a run summary.
pub fn outputs(summary: &Value) -> BTreeMap<String, String> {
    summary["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["output"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// stage -> state ("executed", "cached", "failed", "skipped", ...) from a run summary.
pub fn states(summary: &Value) -> BTreeMap<String, String> {
    summary["stages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["stage"].as_str().unwrap_or("").to_string(),
                        s["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every stage log of the store's runs, concatenated (to find what a stage said).
pub fn stage_logs(store: &Path, stage: &str) -> String {
    let mut text = String::new();
    let logs = store.join("logs");
    if let Ok(rd) = std::fs::read_dir(&logs) {
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let f = d.join(format!("{stage}.log"));
            if let Ok(t) = std::fs::read_to_string(&f) {
                text.push_str(&t);
            }
        }
    }
    text
}
