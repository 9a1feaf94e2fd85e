//! RISE end to end on `pipelines/rise-ci.toml` (a micro model, a few dozen problems, both arms:
//! self-distillation over two iterations and distillation from a tiny teacher): the whole
//! pipeline, the report with every figure for every model, the teacher relabel, incremental
//! re-runs, kill-and-resume, and a reproducibility audit.
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::describe;
use support::pipeline::{ci_env, ci_text, env_with, stage_logs, states};

const ALL_STAGES: [&str; 26] = [
    "train_set",
    "test_set",
    "tokenizer",
    "init",
    "base",
    "eval_base",
    "teacher_set",
    "teacher_init",
    "teacher",
    "eval_teacher",
    "self.iter1.sample",
    "self.iter1.grade",
    "self.iter1.relabel",
    "self.iter1.train",
    "self.iter1.evaluate",
    "self.iter2.sample",
    "self.iter2.grade",
    "self.iter2.relabel",
    "self.iter2.train",
    "self.iter2.evaluate",
    "distill.iter1.sample",
    "distill.iter1.grade",
    "distill.iter1.relabel",
    "distill.iter1.train",
    "distill.iter1.evaluate",
    "report",
];

/// Stages with the same key (kind, params, inputs): one of each pair executes, the other takes
/// its result ("cached") in the same run.
const TWINS: [(&str, &str); 3] = [
    ("init", "teacher_init"),
    ("self.iter1.sample", "distill.iter1.sample"),
    ("self.iter1.grade", "distill.iter1.grade"),
];

const MODELS: [&str; 5] = [
    "base",
    "teacher",
    "self_iter1",
    "self_iter2",
    "distill_iter1",
];

/// Every trajectory of a rollouts artifact.
fn trajectories(dir: &std::path::Path) -> Vec<Value> {
    let mut shards: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    shards.sort();
    shards
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_whole_pipeline_reports_every_metric_for_every_model() {
    let env = ci_env();
    let summary = env.run_ok(&[]);
    let st = states(&summary);
    assert_eq!(st.len(), ALL_STAGES.len(), "{st:?}");
    for stage in ALL_STAGES {
        let twin = TWINS
            .iter()
            .find(|(a, b)| *a == stage || *b == stage)
            .map(|(a, b)| if *a == stage { *b } else { *a });
        match twin {
            None => assert_eq!(
                st.get(stage).map(String::as_str),
                Some("executed"),
                "{stage}: {st:?}"
            ),
            Some(twin) => {
                let mut pair = [st[stage].as_str(), st[twin].as_str()];
                pair.sort();
                assert_eq!(pair, ["cached", "executed"], "{stage} / {twin}: {st:?}");
                assert_eq!(
                    env.output_dir(stage),
                    env.output_dir(twin),
                    "twins share one output"
                );
            }
        }
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
    assert_eq!(names, MODELS);
    for m in models {
        let name = m["name"].as_str().unwrap();
        let metrics = &m["metrics"];
        let keys = |list: &str| -> Vec<String> {
            metrics[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["key"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            keys("headline"),
            ["m1@t1", "m5@t1", "m1@t5", "p1@t5"],
            "{name}"
        );
        assert_eq!(
            keys("supplementary"),
            ["m1@t5 tie rate", "m1@t5 earliest-wins", "pass@5 parallel"],
            "{name}"
        );
        for h in metrics["headline"]
            .as_array()
            .unwrap()
            .iter()
            .chain(metrics["supplementary"].as_array().unwrap())
        {
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
        // each, split between "after right" and "after wrong", for the right-next rates and
        // the change rates alike.
        for table in ["transitions", "changes"] {
            let t = &metrics[table];
            for kind in ["sequential", "parallel"] {
                let pairs = t[format!("{kind}_after_right")]["n"].as_u64().unwrap()
                    + t[format!("{kind}_after_wrong")]["n"].as_u64().unwrap();
                assert_eq!(pairs, 12 * 4, "{name} {table} {kind}: {t}");
            }
        }
        // Per-problem outcomes for the paired tests: 12 problems, one bit each.
        let o = &metrics["outcomes"];
        assert_eq!(o["prompt_ids"].as_array().unwrap().len(), 12, "{name}");
        for bits in [
            "m1_t1",
            "mk_t1",
            "m1_tn",
            "m1_tn_earliest",
            "p1_tn",
            "pass_k",
            "tie",
        ] {
            let b = o[bits].as_str().unwrap();
            assert!(
                b.len() == 12 && b.chars().all(|c| c == '0' || c == '1'),
                "{name} {bits}: {b}"
            );
        }
        // Every model has a row in each per-model table: headline, ties and oracles, turns,
        // flips, after the feedback.
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with(&format!("| {name} |")))
            .collect();
        assert_eq!(rows.len(), 5, "{name}: {rows:?}");
        assert_eq!(rows[0].matches('[').count(), 4, "{}", rows[0]);
        assert_eq!(rows[1].matches('[').count(), 5, "{}", rows[1]);
        // ... and its McNemar tests: m1@t5 against m1@t1 and against m5@t1.
        for other in ["m1@t1", "m5@t1"] {
            assert!(
                md.contains(&format!("| {name} m1@t5 "))
                    && md.contains(&format!("| {name} {other} ")),
                "no paired test of {name} m1@t5 against {other}:\n{md}"
            );
        }
    }
    // The paired tests: 2 within each model, 4 against the base on m1@t1, self iter2 against
    // iter1 on m1@t5.
    let tests = json["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2 * 5 + 4 + 1, "{tests:?}");
    for t in tests {
        assert_eq!(t["pairs"], 12, "{t}");
        assert!(
            t["method"] == "exact_binomial" || t["method"] == "chi_square_corrected",
            "{t}"
        );
        let p = t["p"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{t}");
    }
    for name in &MODELS[1..] {
        assert!(
            tests
                .iter()
                .any(|t| t["first"] == format!("{name} m1@t1") && t["second"] == "base m1@t1"),
            "{name} is not tested against the base on m1@t1"
        );
    }
    // Claims, arm by arm, each with its test; the teacher rule.
    let effects = json["effects"].as_array().unwrap();
    for arm in ["self", "distill"] {
        let of_arm: Vec<&Value> = effects.iter().filter(|e| e["arm"] == arm).collect();
        assert!(!of_arm.is_empty(), "no claims for arm {arm}");
        for e in of_arm {
            assert!(e["detail"].as_str().unwrap().contains("McNemar"), "{e}");
        }
    }
    assert_eq!(json["teacher_rule"]["teacher"], "teacher");
    assert_eq!(json["teacher_rule"]["required_points"], 10.0);
    for key in [
        "m1@t1",
        "m5@t1",
        "m1@t5",
        "p1@t5",
        "m1@t5 tie rate",
        "m1@t5 earliest-wins",
        "pass@5 parallel",
        "Accuracy at each turn",
        "Flips between consecutive turns",
        "After the feedback",
        "changed after right (seq / par)",
        "changed after wrong (seq / par)",
        "## Paired tests",
        "## The teacher",
        "### Arm `self`",
        "### Arm `distill`",
        "qualitative claims",
    ] {
        assert!(md.contains(key), "report.md lacks {key}:\n{md}");
    }

    // The distillation relabel: exactly one teacher response at each wrong state, its reward
    // recorded; training weighs it by exp(r / tau).
    let relabelled = trajectories(&env.output_dir("distill.iter1.relabel"));
    assert_eq!(relabelled.len(), 32);
    let mut teacher_weights = Vec::new();
    for t in &relabelled {
        let attempts = t["attempts"].as_array().unwrap();
        assert_eq!(attempts[0]["source"], "policy", "{t}");
        let wrong_first = attempts[0]["verdict"] != "correct";
        // turns = 2 (the default): a wrong turn 1 gets exactly one teacher turn.
        assert_eq!(attempts.len(), if wrong_first { 2 } else { 1 }, "{t}");
        for a in &attempts[1..] {
            assert_eq!(a["source"], "teacher", "{a}");
            assert_eq!(a["candidates"], 1, "one teacher sample per state: {a}");
            let r = a["reward"]
                .as_f64()
                .expect("the teacher's reward is recorded");
            assert!(a["verdict"].is_string(), "{a}");
            teacher_weights.push((r / 0.4).exp());
        }
    }
    assert!(!teacher_weights.is_empty(), "no wrong state was relabelled");
    let examples: Value = serde_json::from_str(
        &std::fs::read_to_string(env.output_dir("distill.iter1.train").join("examples.json"))
            .unwrap(),
    )
    .unwrap();
    let teacher = examples["per_source"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "teacher")
        .expect("teacher examples");
    assert_eq!(teacher["examples"], teacher_weights.len(), "{examples}");
    let mean = teacher_weights.iter().sum::<f64>() / teacher_weights.len() as f64;
    let got = teacher["mean_weight"].as_f64().unwrap();
    assert!(
        (got - mean).abs() < 1e-9,
        "mean teacher weight {got}, expected {mean}"
    );
    let log = stage_logs(&env.store, "distill.iter1.relabel");
    assert!(
        log.contains("one teacher sample per wrong state, kept whatever its reward"),
        "{log}"
    );

    // A no-op re-run executes nothing.
    let again = env.run_ok(&[]);
    assert!(states(&again).values().all(|s| s == "cached"), "{again}");

    // Grading is pure and deterministic: re-executing it reproduces its output.
    let out = env.rise(&[
        "audit",
        "--rerun",
        "self.iter1.grade",
        "--pipeline",
        "PIPELINE",
    ]);
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
    // Only self.iter1.train's lr: the other train stages have the same params line.
    let text = ci_text();
    let at = text
        .find("[stage.\"self.iter1.train\"]")
        .expect("self.iter1.train");
    let (head, tail) = text.split_at(at);
    let from = "params = { lr = 1e-3, epochs = 4.0";
    assert!(
        tail.contains(from),
        "self.iter1.train's params changed shape"
    );
    let edited = format!(
        "{head}{}",
        tail.replacen(from, "params = { lr = 2e-3, epochs = 4.0", 1)
    );
    std::fs::write(&env.pipeline, edited).unwrap();
    let summary = env.run_ok(&[]);
    let executed: BTreeSet<String> = states(&summary)
        .into_iter()
        .filter(|(_, s)| s == "executed")
        .map(|(k, _)| k)
        .collect();
    // self.iter2 samples from self.iter1's model, so all of it depends on self.iter1.train;
    // the teacher and the distill arm do not.
    let expected: BTreeSet<String> = [
        "self.iter1.train",
        "self.iter1.evaluate",
        "self.iter2.sample",
        "self.iter2.grade",
        "self.iter2.relabel",
        "self.iter2.train",
        "self.iter2.evaluate",
        "report",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(executed, expected, "{summary}");
}

#[test]
fn kill_during_iter1_train_then_rerun_resumes_and_matches_an_uninterrupted_run() {
    // What the kill can affect: self.iter1.train and what depends on it. The teacher and the
    // distill arm never run here (that keeps this test's time down; the first test covers them).
    let target = ["--stage", "self.iter1.evaluate"];
    let compared = ["self.iter1.train", "self.iter1.evaluate"];
    // The reference: one uninterrupted run.
    let reference = ci_env();
    reference.run_ok(&target);

    // Same pipeline and settings, killed (SIGKILL) while self.iter1.train is mid-way.
    let env = env_with(&ci_text());
    env.run_ok(&["--stage", "self.iter1.relabel"]);
    let mut child = support::rise_at(&env.store)
        .args([
            "run",
            env.pipeline.to_str().unwrap(),
            "-q",
            "--threads",
            "1",
        ])
        .args(target)
        .spawn()
        .expect("spawn rise run");
    // Only self.iter1.train checkpoints now (everything before it is cached): wait for its
    // first checkpoint.
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
        "self.iter1.train never wrote a checkpoint before the run ended"
    );
    child.kill().expect("kill -9 rise"); // SIGKILL; the worker dies with it (parent-death signal)
    child.wait().unwrap();

    let summary = env.run_ok(&target);
    assert_eq!(states(&summary)["self.iter1.train"], "executed");
    let log = stage_logs(&env.store, "self.iter1.train");
    assert!(
        log.contains("resumed from the checkpoint at step"),
        "the re-run did not resume:\n{log}"
    );

    // Same keys, same output artifacts as the uninterrupted run.
    let committed = |e: &support::pipeline::Env, stage: &str| {
        let out = e.rise(&["show", stage, "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["manifest"]["key"].as_str().unwrap().to_string(),
            v["manifest"]["output"].as_str().unwrap().to_string(),
        )
    };
    for stage in compared {
        assert_eq!(
            committed(&env, stage),
            committed(&reference, stage),
            "{stage}: the resumed run differs from the uninterrupted run"
        );
    }
}
