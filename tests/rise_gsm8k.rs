//! `pipelines/gsm8k.toml` on the CPU: the paper's protocol (temperature 1.0, best-of-16,
//! tau 0.4, 5 test turns, window 2) with a tiny random Hugging Face checkpoint (built by
//! `tests/fixtures/make_tiny_models.py`) and a 20-problem slice of GSM8K. The numbers are noise;
//! what is tested is that every stage runs on a real chat-template model and GSM8K data.
mod support;

use serde_json::Value;
use support::pipeline::{env_with, states};
use support::{describe, root};

#[test]
fn gsm8k_pipeline_runs_with_a_tiny_hf_checkpoint_on_a_20_problem_slice() {
    let data = root().join("../shared/data/gsm8k");
    if !data.join("train.jsonl").exists() || !data.join("test.jsonl").exists() {
        eprintln!("skipping: {} is missing", data.display());
        return;
    }
    let model = support::model::fixture("qwen2");
    let text =
        std::fs::read_to_string(root().join("pipelines/gsm8k.toml")).expect("pipelines/gsm8k.toml");
    let replace = |text: String, from: &str, to: String| {
        assert!(text.contains(from), "gsm8k.toml no longer contains {from}");
        text.replace(from, &to)
    };
    let mut text = replace(
        text,
        "hf_dir = \"checkpoints/model\"",
        format!("hf_dir = {:?}", model.display().to_string()),
    );
    for split in ["train", "test"] {
        text = replace(
            text,
            &format!("source = \"gsm8k\", path = \"data/gsm8k/{split}.jsonl\""),
            format!(
                "source = \"gsm8k\", limit = 20, path = {:?}",
                data.join(format!("{split}.jsonl")).display().to_string()
            ),
        );
    }
    // A random model never says EOS: cap responses so the test stays quick. Nothing else of
    // the protocol changes.
    text = text
        .replace("max_new_tokens = 512", "max_new_tokens = 8")
        .replace("max_len = 2048", "max_len = 4096");
    let env = env_with(&text);
    let summary = env.run_ok(&["--device", "cpu"]);
    let st = states(&summary);
    // A stage whose key another stage of this run executed takes that result ("cached"): on
    // 20 problems an iteration trains one step (effective batch 64), and that step is the 4%
    // warm-up's first, at lr 0, so iter1's model is the base's and iter2 repeats iter1's keys.
    let executed_twin = |stage: &str| {
        let all = summary["stages"].as_array().unwrap();
        let key = &all.iter().find(|s| s["stage"] == stage).unwrap()["key"];
        all.iter()
            .any(|s| s["stage"] != stage && s["key"] == *key && s["state"] == "executed")
    };
    for stage in [
        "base",
        "eval_base",
        "iter1/relabel",
        "iter1/train",
        "iter2/evaluate",
        "report",
        "export",
    ] {
        let state = st.get(stage).map(String::as_str);
        assert!(
            state == Some("executed") || (state == Some("cached") && executed_twin(stage)),
            "{stage}: {summary}"
        );
    }
    // The protocol as run: 16 candidates per wrong state, the chat template from the checkpoint.
    let relabel = env.output_dir("iter1/relabel");
    let first = std::fs::read_to_string(relabel.join("shard-00000.jsonl")).unwrap();
    let traj: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let attempts = traj["attempts"].as_array().unwrap();
    if attempts.len() > 1 {
        assert_eq!(attempts[1]["candidates"], 16, "{traj}");
    }
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(env.output_dir("report").join("report.json")).unwrap(),
    )
    .unwrap();
    for m in report["models"].as_array().unwrap() {
        assert_eq!(m["metrics"]["problems"], 20, "{m}");
        assert_eq!(m["metrics"]["turns"], 5);
        assert_eq!(m["metrics"]["parallel"], 5);
    }
    let base = env.output_dir("base");
    let format: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("rise.json")).unwrap()).unwrap();
    assert_eq!(
        format["template"], "chat",
        "the checkpoint's chat template is used"
    );
    let export = env.output_dir("export");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(
            export.join(f).is_file(),
            "export lacks {f}: {}",
            describe(&env.rise(&["show", "export"]))
        );
    }
}
