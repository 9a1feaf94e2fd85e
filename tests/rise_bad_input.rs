//! Bad input to the RISE stages: each fails its stage with a message naming the stage and the
//! cause, earlier stages stay cached, and nothing is committed for the failed stage.
mod support;

use support::describe;
use support::pipeline::{ci_text, env_with, stage_logs, states};

/// The CI pipeline with its test set read from `path` as GSM8K-format JSONL.
fn with_test_set(path: &str) -> String {
    let text = ci_text();
    let start = text.find("[stage.test_set]").expect("test_set stage");
    let end = start + text[start..].find("\n\n").expect("end of test_set");
    format!(
        "{}[stage.test_set]\nkind = \"dataset\"\nparams = {{ source = \"gsm8k\", path = {path:?} }}{}",
        &text[..start],
        &text[end..]
    )
}

#[test]
fn a_missing_dataset_file_is_reported_before_anything_runs() {
    let env = env_with(&ci_text());
    env.run_ok(&["--stage", "base"]);
    let before = env.result_count();
    std::fs::write(&env.pipeline, with_test_set("no/such/test.jsonl")).unwrap();
    let (_, out) = env.run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("test_set") && err.contains("no/such/test.jsonl"),
        "{}",
        describe(&out)
    );
    assert_eq!(env.result_count(), before, "nothing may be committed");
    // The stages that ran before are still cached.
    std::fs::write(&env.pipeline, ci_text()).unwrap();
    let again = env.run_ok(&["--stage", "base"]);
    assert!(states(&again).values().all(|s| s == "cached"), "{again}");
}

#[test]
fn an_empty_dataset_fails_its_stage_and_other_branches_finish() {
    let env = env_with("");
    let empty = env.dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    std::fs::write(&env.pipeline, with_test_set(empty.to_str().unwrap())).unwrap();
    let (summary, out) = env.run(&[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let st = states(&summary);
    assert_eq!(st["test_set"], "failed", "{summary}");
    // The branches that do not need the test set ran to the end of what they can do. (Not
    // the stages with a twin, such as init and teacher_init: one of each pair is "cached".)
    for stage in [
        "train_set",
        "tokenizer",
        "base",
        "teacher",
        "self.iter1.relabel",
        "self.iter1.train",
        "distill.iter1.train",
    ] {
        assert_eq!(st[stage], "executed", "{stage}: {summary}");
    }
    for stage in ["eval_base", "eval_teacher", "self.iter1.evaluate", "report"] {
        assert_ne!(
            st[stage], "executed",
            "{stage} needs the test set: {summary}"
        );
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stage_logs(&env.store, "test_set")
    );
    assert!(
        text.contains("empty.jsonl") && text.contains("stage test_set"),
        "{text}"
    );
    let again = env.run(&[]).0;
    let st = states(&again);
    assert_eq!(st["base"], "cached");
    assert_eq!(st["test_set"], "failed");
}

#[test]
fn a_model_directory_without_safetensors_fails_the_model_stage() {
    let env = env_with(&ci_text());
    env.run_ok(&["--stage", "init"]);
    // A Hugging Face directory whose weights are missing: config and tokenizer only.
    let hf = env.dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let init = env.output_dir("init");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(init.join(f), hf.join(f)).unwrap();
    }
    let before = env.result_count();
    let pipeline = format!(
        "{}\n[stage.imported]\nkind = \"model\"\nparams = {{ hf_dir = {:?} }}\n",
        ci_text(),
        hf.display().to_string()
    );
    std::fs::write(&env.pipeline, pipeline).unwrap();
    let (summary, out) = env.run(&["--stage", "imported", "--stage", "init"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let st = states(&summary);
    assert_eq!(st["imported"], "failed", "{summary}");
    assert_eq!(st["init"], "cached", "{summary}");
    let log = stage_logs(&env.store, "imported");
    assert!(
        log.contains("stage imported") && log.contains("no model.safetensors"),
        "{log}"
    );
    assert_eq!(
        env.result_count(),
        before,
        "nothing may be committed for the failed stage"
    );
}

#[test]
fn a_diverging_loss_fails_train_with_a_clear_message() {
    let text = ci_text().replace(
        "params = { lr = 1e-3, epochs = 4.0",
        "params = { lr = 1e6, epochs = 4.0",
    );
    let env = env_with(&text);
    let (summary, out) = env.run(&[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let st = states(&summary);
    assert_eq!(st["self.iter1.train"], "failed", "{summary}");
    assert_eq!(st["self.iter1.relabel"], "executed", "{summary}");
    assert_ne!(st["self.iter1.evaluate"], "executed");
    let log = stage_logs(&env.store, "self.iter1.train");
    assert!(
        log.contains("stage self.iter1.train: training diverged") && log.contains("NaN"),
        "{log}"
    );
    let before = env.result_count();
    let again = env.run(&[]).0;
    let st = states(&again);
    assert_eq!(
        st["self.iter1.relabel"], "cached",
        "earlier stages stay cached: {again}"
    );
    assert_eq!(st["self.iter1.train"], "failed");
    assert_eq!(
        env.result_count(),
        before,
        "nothing is committed for the failed stage"
    );
}
