//! Model configs are bounded before anything is allocated: through the real `rise generate`,
//! `rise score` and the `model` stage, an absurd `config.json` is a clean error naming its
//! fields and numbers, never a libtorch panic, an abort or an out-of-memory kill.
mod support;

use support::engine::{header, Env};
use support::pipeline::{check_worker, stage_logs};
use support::stderr;

/// A three-word tokenizer: `generate` reads the tokenizer before the model.
const TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": null, "decoder": null,
    "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hi": 1, "x": 2}, "unk_token": "<unk>"}}"#;

/// A model directory with `config` as config.json, a tokenizer and an empty
/// model.safetensors: enough to reach the config check, which comes before the weights are
/// read.
fn model_dir(env: &Env, name: &str, config: &str) -> std::path::PathBuf {
    env.write(&format!("{name}/config.json"), config);
    env.write(&format!("{name}/tokenizer.json"), TOKENIZER);
    env.write(&format!("{name}/model.safetensors"), "");
    env.path(name)
}

const HUGE_VOCAB: &str = r#"{"vocab_size": 1000000000000, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}"#;

const TINY: &str = r#"{"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4}"#;

/// Exited by itself with a failure status: not 101 (a Rust panic), not killed by a signal
/// (an abort is SIGABRT, an out-of-memory kill SIGKILL), and nothing says "panicked".
fn assert_clean_failure(out: &std::process::Output, what: &str) {
    let err = stderr(out);
    match out.status.code() {
        Some(code) if code != 0 && code != 101 => {}
        other => panic!("{what}: exit {other:?} (a panic or a signal), stderr:\n{err}"),
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[test]
fn generate_refuses_a_vocabulary_no_machine_holds_naming_fields_and_numbers() {
    check_worker();
    let env = Env::new();
    let dir = model_dir(&env, "huge", HUGE_VOCAB);
    let dir = dir.to_str().unwrap();
    env.write("in.jsonl", "{\"text\": \"hi\"}\n");
    for cmd in [
        vec!["generate", "--model", dir, "--prompt", "hi"],
        vec!["score", "--model", dir, "--jsonl", "in.jsonl"],
    ] {
        let out = env.run(&cmd);
        assert_clean_failure(&out, cmd[0]);
        let err = stderr(&out);
        for want in [
            "huge/config.json: the model has 128000000082240 parameters",
            "vocab_size 1000000000000 × hidden_size 64",
            "The largest part is the embedding: check `vocab_size, hidden_size`",
            "at most",
            "half of the",
        ] {
            assert!(
                err.contains(want),
                "rise {}: `{want}` missing:\n{err}",
                cmd[0]
            );
        }
    }
}

#[test]
fn absurd_widths_and_depths_are_refused_before_allocation() {
    check_worker();
    let env = Env::new();
    let cases = [
        (
            // 10^6 wide: 64 GB of zeros in fp32 before this check existed.
            r#"{"vocab_size": 32000, "hidden_size": 1000000, "intermediate_size": 2000000,
            "num_hidden_layers": 2, "num_attention_heads": 8}"#,
            "the model has",
        ),
        (
            // 10^9 layers: a billion layer objects, whatever their width.
            r#"{"vocab_size": 100, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1000000000, "num_attention_heads": 2}"#,
            "check `num_hidden_layers",
        ),
        (
            r#"{"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 0.0}"#,
            "field `rms_norm_eps`: 0 must be a positive, finite number",
        ),
        (
            r#"{"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rope_theta": -1.0}"#,
            "field `rope_theta`",
        ),
    ];
    for (i, (config, want)) in cases.iter().enumerate() {
        let dir = model_dir(&env, &format!("m{i}"), config);
        let out = env.run(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "x",
        ]);
        assert_clean_failure(&out, want);
        assert!(stderr(&out).contains(want), "`{want}`:\n{}", stderr(&out));
    }
}

#[test]
fn max_params_caps_what_a_command_loads_and_a_small_model_passes_without_it() {
    check_worker();
    let env = Env::new();
    let dir = model_dir(&env, "tiny", TINY);
    let dir = dir.to_str().unwrap();
    let out = env.run(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "x",
        "--max-params",
        "1K",
    ]);
    assert_clean_failure(&out, "--max-params");
    assert!(
        stderr(&out).contains("more than --max-params (RISE_MAX_PARAMS) = 1000 allows"),
        "{}",
        stderr(&out)
    );
    let out = env
        .rise(&["generate", "--model", dir, "--prompt", "x"])
        .env("RISE_MAX_PARAMS", "1000")
        .output()
        .expect("spawn");
    assert!(
        stderr(&out).contains("RISE_MAX_PARAMS) = 1000"),
        "{}",
        stderr(&out)
    );
    // Without a cap the tiny config passes the check: loading goes on to the (empty) weights.
    let out = env.run(&["generate", "--model", dir, "--prompt", "x"]);
    assert_clean_failure(&out, "tiny");
    let err = stderr(&out);
    assert!(
        err.contains("model.safetensors") && !err.contains("the model has"),
        "{err}"
    );
    let out = env.run(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "x",
        "--max-params",
        "lots",
    ]);
    assert!(
        stderr(&out).contains("`lots` is not a parameter count"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_model_stage_refuses_an_absurd_checkpoint_and_commits_nothing() {
    check_worker();
    let env = Env::new();
    let dir = model_dir(&env, "huge", HUGE_VOCAB);
    let p = env.write(
        "m.toml",
        &format!(
            "{}[stage.imported]\nkind = \"model\"\nparams = {{ hf_dir = {:?} }}\n",
            header("m"),
            dir.display().to_string()
        ),
    );
    let out = env.run(&["run", p.to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stage_logs(&env.store(), "imported");
    assert!(
        log.contains("stage imported: params.hf_dir")
            && log.contains("vocab_size 1000000000000 × hidden_size 64")
            && !log.contains("panicked"),
        "{log}"
    );
    let results = std::fs::read_dir(env.store().join("results")).map_or(0, |rd| rd.count());
    assert_eq!(results, 0, "nothing is committed for the failed stage");
}

#[test]
fn generate_into_a_reader_that_stops_early_ends_quietly() {
    check_worker();
    let env = Env::new();
    let model = support::model::fixture("llama");
    let err_path = env.path("stderr.txt");
    // 1000 samples as JSON lines, about 180 KB: well over a 64 KiB pipe buffer (300 gave about
    // 56 KB, which fits: `rise` then finished, status 0, before the reader stopped).
    let mut child = env
        .rise(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a",
            "--n",
            "1000",
            "--max-new-tokens",
            "16",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with('{'), "{first}");
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    // As `cat` would: the status of a SIGPIPE death (141), nothing on stderr.
    assert_eq!(status.code(), Some(141), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

/// The sampler's batch (prompts × n rows of prompt + max_new_tokens tokens) is checked
/// against the machine before its KV cache is allocated: `--n 100000000` on a tiny model
/// asked libtorch for 300 GB and panicked.
#[test]
fn generate_refuses_a_batch_whose_kv_cache_cannot_fit_naming_n_and_max_new_tokens() {
    check_worker();
    let env = Env::new();
    let model = support::model::fixture("llama");
    let model = model.to_str().unwrap();
    for (n, max_new, want) in [
        // The issue's case: a few hundred GB, more than half of any test machine.
        (
            "100000000",
            "3",
            "sampling 1 prompt(s) × n 100000000 = 100000000 rows",
        ),
        // Past 64 bits: checked, not wrapped to a small capacity.
        (
            "1",
            "18446744073709551615",
            "more than libtorch can address",
        ),
    ] {
        let out = env.run(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "hi",
            "--n",
            n,
            "--max-new-tokens",
            max_new,
        ]);
        assert_clean_failure(&out, n);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        for want in [
            &format!("--n {n} samples for each of 1 --prompt(s), --max-new-tokens {max_new}")[..],
            want,
            "the KV cache",
            "num_hidden_layers 2",
            "Lower n, max_new_tokens or the prompts per batch",
        ] {
            assert!(err.contains(want), "`{want}` missing:\n{err}");
        }
    }
}

/// `score` checks every batch's logits (sequences × length × vocabulary) before scoring any.
#[test]
fn score_refuses_a_batch_whose_logits_cannot_fit() {
    check_worker();
    let env = Env::new();
    let model = support::model::fixture("llama");
    // Thirty million tokens in one sequence: 77 GB of float32 logits at vocabulary 320, and
    // 35 GB of MLP activations, more than half of any machine these tests run on.
    let ids = vec!["1"; 30_000_000].join(",");
    env.write("long.jsonl", &format!("{{\"tokens\": [{ids}]}}\n"));
    let out = env.run(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--jsonl",
        "long.jsonl",
    ]);
    assert_clean_failure(&out, "score");
    let err = stderr(&out);
    for want in [
        "--batch-size 16: a batch of 1 sequence(s), the longest 30000000 tokens",
        "scoring 1 sequence(s) of up to 30000000 tokens needs at least",
        "vocab_size 320",
    ] {
        assert!(err.contains(want), "`{want}` missing:\n{err}");
    }
}

/// The stages sample through the same check: `evaluate` with 4096 prompts per batch × 64
/// parallel samples × 32768 new tokens is refused naming its params, and commits nothing.
#[test]
fn a_sampling_stage_refuses_a_batch_that_cannot_fit_naming_its_params() {
    check_worker();
    let env = Env::new();
    let model = support::model::fixture("qwen2");
    let p = env.write(
        "e.toml",
        &format!(
            "{}[stage.test_set]\nkind = \"dataset\"\nparams = {{ source = \"synthetic\", \
             split = \"test\", synthetic = {{ n_train = 1, n_test = 4096 }} }}\n\n\
             [stage.base]\nkind = \"model\"\nparams = {{ hf_dir = {:?} }}\n\n\
             [stage.eval]\nkind = \"evaluate\"\ninputs = {{ model = \"base\", data = \"test_set\" }}\n\
             params = {{ parallel = 64, turns = 1, max_new_tokens = 32768, batch_size = 4096 }}\n",
            header("e"),
            model.display().to_string()
        ),
    );
    let out = env.run(&["run", p.to_str().unwrap(), "--quiet", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stage_logs(&env.store(), "eval");
    for want in [
        "stage eval: sampling params.batch_size = 4096 prompts per batch (this one has 4096), 64 samples each",
        "params.max_new_tokens = 32768",
        "sampling 4096 prompt(s) × n 64 = 262144 rows",
        "the KV cache",
    ] {
        assert!(log.contains(want), "`{want}` missing:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
}

/// config.json errors name the field once: a JSON float where a count belongs, an epsilon
/// that would flatten every norm, a context longer than any model's.
#[test]
fn config_values_are_named_when_refused() {
    check_worker();
    let env = Env::new();
    let with = |extra: &str| {
        format!(
            r#"{{"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, {extra}}}"#
        )
    };
    let cases = [
        (
            r#"{"vocab_size": 1e12, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4}"#
                .to_string(),
            "field `vocab_size`: 1e12 is a floating-point number; write the count as a JSON integer (1000000000000)",
        ),
        (
            with(r#""rms_norm_eps": 1e308"#),
            "field `rms_norm_eps`: 1e308 must be less than 1",
        ),
        (
            with(r#""max_position_embeddings": 1000000000000000000"#),
            "field `max_position_embeddings`: 1000000000000000000 positions is more than",
        ),
        (
            with(r#""max_position_embeddings": 1e18"#),
            "field `max_position_embeddings`: 1e18 is a floating-point number",
        ),
    ];
    for (i, (config, want)) in cases.iter().enumerate() {
        let dir = model_dir(&env, &format!("c{i}"), config);
        let out = env.run(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "x",
        ]);
        assert_clean_failure(&out, want);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("c{i}/config.json: {want}")),
            "`{want}`:\n{err}"
        );
        // The cause is said once, not again by an error chain.
        let cause = want.split(": ").nth(1).unwrap();
        assert_eq!(err.matches(cause).count(), 1, "repeated:\n{err}");
    }
}
