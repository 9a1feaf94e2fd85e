//! Data-parallel `sft`/`train` through the real binaries (issue #16): `devices = 2` runs two
//! ranks (Gloo over 127.0.0.1) under one `rise-worker` launcher. `devices` stays out of the
//! cache key; a rank killed mid-run fails the stage naming it, nothing is committed, and the
//! re-run resumes from the last checkpoint to the same bytes as an uninterrupted 2-rank run.
//! The weight-level equivalence with one process (and its fp32 tolerance) is tested in
//! `crates/rise-model/tests/data_parallel.rs`.
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::pipeline::{ci_text, env_with, stage_logs, states, Env};
use support::{describe, root};

/// A dataset, a tokenizer, a micro model and an `sft` stage `base` with `sft_extra` params.
fn pipeline(epochs: f64, sft_extra: &str) -> String {
    let config = root().join("configs/micro.toml");
    format!(
        r#"[pipeline]
name = "dp"
seed = 1

[stage.train_set]
kind = "dataset"
params = {{ source = "synthetic", split = "train", synthetic = {{ n_train = 96, n_test = 12, min_steps = 1, max_steps = 2, max_operand = 9, max_factor = 3, max_value = 99 }} }}

[stage.tokenizer]
kind = "tokenizer"
inputs = {{ data = "train_set" }}
params = {{ vocab_size = 256 }}

[stage.init]
kind = "model"
inputs = {{ tokenizer = "tokenizer" }}
params = {{ config = {config:?}, system = "" }}

[stage.base]
kind = "sft"
inputs = {{ model = "init", data = "train_set" }}
params = {{ lr = 3e-3, epochs = {epochs:?}, batch_size = 16, max_len = 192, checkpoint_every = 2{sft_extra} }}
"#,
        config = config.display().to_string(),
    )
}

fn model_bytes(env: &Env, stage: &str) -> Vec<u8> {
    std::fs::read(env.output_dir(stage).join("model.safetensors")).unwrap()
}

fn final_loss(env: &Env) -> f64 {
    let text = std::fs::read_to_string(env.output_dir("base").join("training.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["training"]["final_loss"].as_f64().unwrap()
}

#[test]
fn devices_stay_out_of_the_key_and_two_ranks_train_like_one() {
    let one = env_with(&pipeline(2.0, ""));
    one.run_ok(&[]);
    let loss_one = final_loss(&one);
    // The same store, devices = 2: the same key, so the one-process result is reused.
    std::fs::write(&one.pipeline, pipeline(2.0, ", devices = 2")).unwrap();
    let again = one.run_ok(&[]);
    assert_eq!(states(&again)["base"], "cached", "{again}");

    // A fresh store: two ranks train it.
    let two = env_with(&pipeline(2.0, ", devices = 2"));
    let summary = two.run_ok(&[]);
    assert_eq!(states(&summary)["base"], "executed");
    let log = stage_logs(&two.store, "base");
    assert!(log.contains("data parallel: rank 0 of 2 (Gloo"), "{log}");
    // Only rank 0 reports: one log line per trained run, not two.
    assert_eq!(log.matches("trained 12 steps").count(), 1, "{log}");
    // The same global batches, summed in another fp32 order (each rank a batch of 8, one
    // process one of 16): the same loss up to rounding.
    let loss_two = final_loss(&two);
    assert!(
        (loss_one - loss_two).abs() <= 1e-4 * loss_one.abs(),
        "final loss {loss_one} (1 process) vs {loss_two} (2 ranks)"
    );
    assert_eq!(
        model_bytes(&one, "base").len(),
        model_bytes(&two, "base").len()
    );
}

/// The pids of `rise-worker` processes of this store whose environment names rank `rank`.
fn rank_pids(store: &Path, rank: usize) -> Vec<i32> {
    let want = format!("RISE_RANK={rank}");
    let store = store.display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("rise-worker") || !cmdline.contains(&store) {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The `latest` checkpoint file of the store's (only) training scratch directory.
fn latest_checkpoint(store: &Path) -> Option<PathBuf> {
    std::fs::read_dir(store.join("scratch"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("checkpoints/latest"))
        .find(|p| p.is_file())
}

#[test]
fn a_killed_rank_fails_the_stage_and_the_rerun_resumes_to_the_same_bytes() {
    let text = pipeline(30.0, ", devices = 2");
    let straight = env_with(&text);
    straight.run_ok(&[]);
    let want = model_bytes(&straight, "base");

    let env = env_with(&text);
    let mut run = support::rise_at(&env.store)
        .args(["run"])
        .arg(&env.pipeline)
        .args(["--json", "-q", "--threads", "1"])
        .env("RISE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a checkpoint past the first, then kill rank 1 alone.
    let deadline = Instant::now() + Duration::from_secs(300);
    let killed = loop {
        assert!(Instant::now() < deadline, "no checkpoint within 300 s");
        if let Some(latest) = latest_checkpoint(&env.store) {
            let step = std::fs::read_to_string(&latest).unwrap_or_default();
            if step.trim() >= "step-00000004" {
                let pids = rank_pids(&env.store, 1);
                assert_eq!(pids.len(), 1, "rank 1's process");
                // SAFETY: a pid of this test's own descendant.
                assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
                break step.trim().to_string();
            }
        }
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = run.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let log = stage_logs(&env.store, "base");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("{log}\n{stderr}");
    assert!(
        said.contains("rank 1 of 2 died (killed by signal 9)"),
        "the failing rank is named:\n{said}"
    );
    // Nothing committed for base, and no rank outlived the stage.
    let show = env.rise(&["show", "base", "--json"]);
    assert!(
        !show.status.success(),
        "base has a result:\n{}",
        describe(&show)
    );
    assert!(rank_pids(&env.store, 0).is_empty() && rank_pids(&env.store, 1).is_empty());

    let summary = env.run_ok(&[]);
    assert_eq!(states(&summary)["base"], "executed");
    let log = stage_logs(&env.store, "base");
    let resumed_at: usize = killed.trim_start_matches("step-").parse().unwrap();
    assert!(
        log.contains("resumed from the checkpoint at step"),
        "no resume (killed after {killed}):\n{log}"
    );
    assert!(resumed_at >= 4);
    assert!(
        model_bytes(&env, "base") == want,
        "resumed 2-rank run differs from the uninterrupted one"
    );
}

#[test]
fn a_two_rank_train_stage_in_the_ci_pipeline_feeds_the_next_iteration() {
    // pipelines/rise-ci.toml with `devices = 2` on self.iter1.train, in a copy: set in the
    // shipped file it would change that stage's bytes (each rank runs a batch of 4 where one
    // process runs 8: another fp32 summation order), hence every figure downstream that the
    // CI pipeline's own tests check, and double its processes on CI's 2 cores.
    let text = ci_text();
    let marker =
        "params = { lr = 1e-3, epochs = 4.0, batch_size = 8, max_len = 384, checkpoint_every = 2 }";
    let stage = "[stage.\"self.iter1.train\"]\nkind = \"train\"\ninputs = { data = \"self.iter1.relabel\", model = \"base\" }\n";
    let at = text.find(stage).expect("rise-ci.toml's self.iter1.train") + stage.len();
    assert!(
        text[at..].starts_with(marker),
        "self.iter1.train's params changed"
    );
    let text = format!(
        "{}{}, devices = 2 }}{}",
        &text[..at],
        &marker[..marker.len() - 2],
        &text[at + marker.len()..]
    );
    let env = env_with(&text);
    let summary = env.run_ok(&[]);
    let st = states(&summary);
    for s in [
        "self.iter1.train",
        "self.iter1.evaluate",
        "self.iter2.sample",
        "self.iter2.train",
        "report",
    ] {
        assert_eq!(st[s], "executed", "{s}: {summary}");
    }
    let log = stage_logs(&env.store, "self.iter1.train");
    assert!(log.contains("data parallel: rank 0 of 2"), "{log}");
    // Its output is an ordinary model directory that the next iteration trains from.
    let out = env.output_dir("self.iter1.train");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "rise.json",
        "examples.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
}
