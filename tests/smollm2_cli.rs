//! `rise score` and `rise generate --chat` on the real SmolLM2-135M-Instruct
//! (`just fetch-smollm2`), against transformers on the same safetensors
//! (tests/fixtures/smollm2_reference.py).
mod support;

use serde_json::Value;
use support::model::{smollm2, smollm2_reference};
use support::{run_with_worker, stderr, stdout};

fn reference() -> Value {
    let dir = smollm2_reference();
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

#[test]
fn score_logprobs_equal_transformers() {
    let (dir, _) = smollm2();
    let refs = reference();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let lines: Vec<String> = refs["score_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = run_with_worker(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--jsonl",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), lines.len());
    for (i, row) in rows.iter().enumerate() {
        let want = refs["score_logprobs"][i].as_f64().unwrap();
        let got = row["logprob"].as_f64().unwrap();
        // A sum over ~100 fp32 log-probs: equal up to float summation order.
        assert!(
            (got - want).abs() < 1e-3,
            "text {i}: {got} vs transformers {want}"
        );
        assert_eq!(row["n_tokens"], refs["score_n_tokens"][i], "text {i}");
    }
}

#[test]
fn greedy_chat_generation_equals_transformers_for_64_tokens() {
    let (dir, _) = smollm2();
    let refs = reference();
    let new_tokens = refs["greedy_new_tokens"].to_string();
    // The two prompts the command line can say: a lone user turn (the template adds SmolLM's
    // default system message) and a system message plus a user turn.
    for i in 0..2 {
        let msgs = refs["prompts"][i].as_array().unwrap();
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--chat",
            "--show-prompt",
            "--json",
            "--temperature",
            "0",
            "--max-new-tokens",
            &new_tokens,
            "--stop",
            "<never>",
        ];
        for m in msgs {
            let flag = if m["role"] == "system" {
                "--system"
            } else {
                "--prompt"
            };
            args.extend([flag, m["content"].as_str().unwrap()]);
        }
        let out = run_with_worker(&args);
        assert!(out.status.success(), "prompt {i}: {}", stderr(&out));
        let row: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
        assert_eq!(
            row["rendered_prompt"], refs["rendered"][i],
            "prompt {i}: the rendered prompt"
        );
        let want = refs["greedy"][i].as_array().unwrap();
        assert_eq!(
            want.len(),
            64,
            "the reference runs 64 tokens without an end of turn"
        );
        assert_eq!(
            row["tokens"].as_array().unwrap(),
            want,
            "prompt {i}: greedy tokens"
        );
    }
}

#[test]
fn show_prompt_prints_the_rendered_chat_prompt() {
    let (dir, _) = smollm2();
    let refs = reference();
    let out = run_with_worker(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "--show-prompt",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--prompt",
        refs["prompts"][0][0]["content"].as_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let want = format!(
        "=== prompt 1 ===\n{}\n=== completion ===\n",
        refs["rendered"][0].as_str().unwrap()
    );
    assert!(text.starts_with(&want), "{text}");
    assert!(
        text.contains("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{text}"
    );
}
