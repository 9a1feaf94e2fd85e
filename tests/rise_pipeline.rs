//! RISE end to end on `pipelines/rise-ci.toml` (a micro model, a few dozen problems): the whole
//! pipeline, the report, incremental re-runs, kill-and-resume, and a reproducibility audit.
mod rise_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rise_common::{ci_env, ci_text, describe, env_with, stage_logs, states};
use serde_json::Value;

const ALL_STAGES: [&str; 17] = [
    "train_set",
    "test_set",
    "tokenizer",
    "init",
    "base",
    "eval_base",
    "iter1/sample",
    "iter1/grade",
    "iter1/relabel",
    "iter1/train",
    "iter1/evaluate",
    "iter2/sample",
    "iter2/grade",
    "iter2/relabel",
    "iter2/train",
    "iter2/evaluate",
    "report",
];

#[test]
fn the_whole_pipeline_reports_every_metric_for_every_model() {
    let env = ci_env();
    let summary = env.run_ok(&[]);
    let st = states(&summary);
    for stage in ALL_STAGES {
        assert_eq!(
            st.get(stage).map(String::as_str),
            Some("executed"),
            "{stage}: {st:?}"
        );
    }

    let dir = env.output_dir("report");
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report.json")).expect("report.json"),
    )
    .unwrap();
    let png = std::fs::read(dir.join("accuracy.png")).expect("accuracy.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let models = json["models"].as_array().expect("models");
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "iter1", "iter2"]);
    for m in models {
        let metrics = &m["metrics"];
        let keys: Vec<&str> = metrics["headline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["m1@t1", "m5@t1", "m1@t5", "p1@t5"], "{}", m["name"]);
        for h in metrics["headline"].as_array().unwrap() {
            let v = &h["value"];
            let (lo, val, hi) = (
                v["lo"].as_f64().unwrap(),
                v["value"].as_f64().unwrap(),
                v["hi"].as_f64().unwrap(),
            );
            assert!(lo <= val && val <= hi, "{h}");
            assert_eq!(v["n"], 12, "every test problem is evaluated: {h}");
        }
        assert_eq!(metrics["per_turn"].as_array().unwrap().len(), 5);
        assert_eq!(metrics["flips"].as_array().unwrap().len(), 4);
        // After the feedback vs between parallel samples: 12 problems, 4 consecutive pairs
        // each, split between "after right" and "after wrong".
        let t = &metrics["transitions"];
        for kind in ["sequential", "parallel"] {
            let pairs = t[format!("{kind}_after_right")]["n"].as_u64().unwrap()
                + t[format!("{kind}_after_wrong")]["n"].as_u64().unwrap();
            assert_eq!(pairs, 12 * 4, "{kind}: {t}");
        }
        // Every model has a row with every headline metric in the markdown table.
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", m["name"].as_str().unwrap())))
            .expect("table row");
        assert_eq!(row.matches('[').count(), 4, "{row}");
    }
    for key in [
        "m1@t1",
        "m5@t1",
        "m1@t5",
        "p1@t5",
        "Accuracy at each turn",
        "Flips between consecutive turns",
        "After the feedback",
        "qualitative effects",
    ] {
        assert!(md.contains(key), "report.md lacks {key}:\n{md}");
    }

    // A no-op re-run executes nothing.
    let again = env.run_ok(&[]);
    assert!(states(&again).values().all(|s| s == "cached"), "{again}");

    // Grading is pure and deterministic: re-executing it reproduces its output.
    let out = env.rise(&["audit", "--rerun", "iter1/grade", "--pipeline", "PIPELINE"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.contains("reproducible") && !text.contains("not reproducible"),
        "{}",
        describe(&out)
    );
}

#[test]
fn editing_the_train_lr_reruns_only_train_stages_and_their_dependents() {
    let env = ci_env();
    env.run_ok(&[]);
    let edited = ci_text().replace(
        "params = { lr = 1e-3, epochs = 4.0",
        "params = { lr = 2e-3, epochs = 4.0",
    );
    assert_ne!(edited, ci_text(), "the train lr edit did not apply");
    std::fs::write(&env.pipeline, edited).unwrap();
    let summary = env.run_ok(&[]);
    let executed: BTreeSet<String> = states(&summary)
        .into_iter()
        .filter(|(_, s)| s == "executed")
        .map(|(k, _)| k)
        .collect();
    // iter2 samples from iter1's model, so all of iter2 depends on iter1/train.
    let expected: BTreeSet<String> = [
        "iter1/train",
        "iter1/evaluate",
        "iter2/sample",
        "iter2/grade",
        "iter2/relabel",
        "iter2/train",
        "iter2/evaluate",
        "report",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(executed, expected, "{summary}");
}

#[test]
fn kill_during_iter1_train_then_rerun_resumes_and_matches_an_uninterrupted_run() {
    // The reference: one uninterrupted run.
    let reference = ci_env();
    reference.run_ok(&[]);
    let lock_ref = reference.rise(&["lock", "PIPELINE"]);
    assert!(lock_ref.status.success(), "{}", describe(&lock_ref));

    // Same pipeline and settings, killed (SIGKILL) while iter1/train is mid-way.
    let env = env_with(&ci_text());
    env.run_ok(&["--stage", "iter1/relabel"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rise"))
        .arg("--store")
        .arg(&env.store)
        .args([
            "run",
            env.pipeline.to_str().unwrap(),
            "-q",
            "--threads",
            "1",
        ])
        .spawn()
        .expect("spawn rise run");
    // Only iter1/train checkpoints now (everything before it is cached): wait for its first one.
    let deadline = Instant::now() + Duration::from_secs(300);
    let scratch = env.store.join("scratch");
    let found = loop {
        let hit = std::fs::read_dir(&scratch)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|e| e.path().join("checkpoints/latest").is_file());
        if hit {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().expect("try_wait").is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        found,
        "iter1/train never wrote a checkpoint before the run ended"
    );
    child.kill().expect("kill -9 rise"); // SIGKILL; the worker dies with it (parent-death signal)
    child.wait().unwrap();

    let summary = env.run_ok(&[]);
    assert_eq!(states(&summary)["iter1/train"], "executed");
    let log = stage_logs(&env.store, "iter1/train");
    assert!(
        log.contains("resumed from the checkpoint at step"),
        "the re-run did not resume:\n{log}"
    );

    let lock = env.rise(&["lock", "PIPELINE"]);
    assert!(lock.status.success(), "{}", describe(&lock));
    assert_eq!(
        String::from_utf8_lossy(&lock.stdout),
        String::from_utf8_lossy(&lock_ref.stdout),
        "the resumed run's lock differs from the uninterrupted run's"
    );
}
