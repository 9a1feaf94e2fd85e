//! `rise score` and `rise generate` end to end: the real `rise` binary delegating to
//! `rise-worker`, against transformers' reference outputs for tiny Llama/Mistral/Qwen2.
mod support;

use support::model::{fixture, reference, ARCHS};
use support::{run_with_worker, stderr, stdout};

#[test]
fn score_matches_transformers_logprobs() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let refs = reference(&dir);
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.jsonl");
        // Each reference sequence twice: once as text (tokenized by rise), once as ids.
        let mut lines = Vec::new();
        for (i, text) in refs["texts"].as_array().unwrap().iter().enumerate() {
            lines.push(serde_json::json!({ "text": text }).to_string());
            lines.push(serde_json::json!({ "tokens": refs["ids"][i] }).to_string());
        }
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let out = run_with_worker(&[
            "score",
            "--model",
            dir.to_str().unwrap(),
            "--jsonl",
            input.to_str().unwrap(),
            "--batch-size",
            "2",
        ]);
        assert!(out.status.success(), "{arch}: {}", stderr(&out));
        let got: Vec<serde_json::Value> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), lines.len());
        for (k, row) in got.iter().enumerate() {
            let i = k / 2;
            let want = refs["logprobs"][i].as_f64().unwrap();
            let lp = row["logprob"].as_f64().unwrap();
            assert!(
                (lp - want).abs() < 1e-3 * want.abs().max(1.0),
                "{arch} line {}: logprob {lp} vs transformers {want}",
                k + 1
            );
            assert_eq!(
                row["n_tokens"],
                refs["n_tokens"][i],
                "{arch} line {}",
                k + 1
            );
        }
    }
}

#[test]
fn greedy_generate_matches_transformers() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let refs = reference(&dir);
        let cases = refs["greedy"].as_array().unwrap();
        let max_new = refs["greedy_new_tokens"].to_string();
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            &max_new,
            "--json",
        ];
        for c in cases {
            args.extend(["--prompt", c["prompt"].as_str().unwrap()]);
        }
        let out = run_with_worker(&args);
        assert!(out.status.success(), "{arch}: {}", stderr(&out));
        let rows: Vec<serde_json::Value> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), cases.len());
        for (row, case) in rows.iter().zip(cases) {
            assert_eq!(row["tokens"], case["tokens"], "{arch}: {}", case["prompt"]);
        }
    }
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let dir = fixture("llama");
    let args = [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "The quick",
        "--n",
        "3",
        "--seed",
        "4",
        "--max-new-tokens",
        "10",
        "--json",
    ];
    let a = run_with_worker(&args);
    let b = run_with_worker(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(stdout(&a).lines().count(), 3);
}

#[test]
fn chat_prompts_use_the_template_and_stop_at_eos_string() {
    let dir = fixture("qwen2");
    let out = run_with_worker(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "What is 2 + 2?",
        "--chat",
        "--system",
        "Be brief.",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let row: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert!(["eos", "stop", "length"].contains(&row["finish_reason"].as_str().unwrap()));
    assert!(!row["text"].as_str().unwrap().contains("<|eos|>"));
}

#[test]
fn bad_input_lines_are_named_and_the_exit_code_is_the_workers() {
    let dir = fixture("llama");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("bad.jsonl");
    std::fs::write(&input, "{\"tokens\": [1, 2]}\n{\"tokens\": \"oops\"}\n").unwrap();
    let out = run_with_worker(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--jsonl",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.jsonl:2"), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "nothing is printed before the whole file is valid"
    );

    std::fs::write(&input, "{\"text\": \"a\", \"tokens\": [1]}\n").unwrap();
    let out = run_with_worker(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--jsonl",
        input.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("bad.jsonl:1") && stderr(&out).contains("exactly one"),
        "{}",
        stderr(&out)
    );

    // Clap's usage error in the worker (exit 2) comes through unchanged.
    let out = run_with_worker(&["score", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn models_without_safetensors_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"tokens\": [1, 2]}\n").unwrap();
    let model = tmp.path().join("pickled");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("pytorch_model.bin"), b"\x80\x02").unwrap();
    let out = run_with_worker(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--jsonl",
        input.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pytorch_model.bin") && stderr(&out).contains("safetensors"),
        "{}",
        stderr(&out)
    );

    let missing = tmp.path().join("nope");
    let out = run_with_worker(&[
        "generate",
        "--model",
        missing.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
}
