//! `rise import gguf` and the `model` stage's `gguf` param end to end, on the tiny GGUF
//! fixtures (tests/fixtures/make_tiny_gguf.py): what is written, what is refused (with nothing
//! written), how the stage is keyed, and chat templates that must not silently fall back.
mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::model::gguf_fixtures;
use support::pipeline::{env_with, states, Env};
use support::{describe, run_with_worker, stderr, stdout};

fn fixture(name: &str) -> PathBuf {
    gguf_fixtures().join(name)
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn import_writes_a_model_directory_and_check_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("tiny");
    let out = run_with_worker(&[
        "import",
        "gguf",
        fixture("tiny.gguf").to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["architecture"], "llama");
    assert_eq!(summary["pre_tokenizer"], "smollm");
    assert_eq!(summary["tensor_types"]["Q4_K"], 1);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(to.join(f).is_file(), "{f}");
    }
    // rise loads what it wrote (generation needs config, weights and tokenizer to agree).
    let out = run_with_worker(&[
        "generate",
        "--model",
        to.to_str().unwrap(),
        "--chat",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let check = tmp.path().join("checked");
    let out = run_with_worker(&[
        "import",
        "gguf",
        fixture("tiny.gguf").to_str().unwrap(),
        "--check",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing written"), "{}", stdout(&out));
    assert!(!check.exists());

    // A non-empty destination needs --force.
    let out = run_with_worker(&[
        "import",
        "gguf",
        fixture("tiny.gguf").to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let out = run_with_worker(&[
        "import",
        "gguf",
        fixture("tiny.gguf").to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn broken_files_fail_with_the_problem_named_and_nothing_in_to() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("tiny.gguf")).unwrap();
    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &good[..good.len() * 2 / 3]).unwrap();
    let magic = tmp.path().join("magic.gguf");
    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"\x7fELF");
    std::fs::write(&magic, &bytes).unwrap();
    let cases: [(PathBuf, &[&str]); 4] = [
        (truncated, &["truncated", "needs bytes"]),
        (magic, &["not a GGUF file", "7f454c46"]),
        (
            fixture("unknown-type.gguf"),
            &["IQ2_XXS", "GGML type id 16", "supported"],
        ),
        (
            fixture("wrong-arch.gguf"),
            &["general.architecture", "\"mamba\"", "llama"],
        ),
    ];
    for (file, words) in cases {
        let to = tmp.path().join("out");
        let out = run_with_worker(&[
            "import",
            "gguf",
            file.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            file.display(),
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains(&file.display().to_string()),
            "{err}"
        );
        for w in words {
            assert!(err.contains(w), "{}: {w:?} not in {err}", file.display());
        }
        assert!(
            !err.contains("backtrace") && err.lines().count() == 1,
            "one line: {err}"
        );
        assert!(!to.exists(), "{}: --to was created", file.display());
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    }
}

fn gguf_pipeline(extra: &str) -> String {
    format!("[pipeline]\nname = \"gguf\"\n\n[stage.imported]\nkind = \"model\"\nparams = {{ gguf = \"m.gguf\"{extra} }}\n")
}

fn key(env: &Env) -> String {
    let out = env.rise(&["plan", "PIPELINE", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["stages"][0]["key"].as_str().unwrap().to_string()
}

#[test]
fn the_gguf_param_is_keyed_by_content_and_a_replaced_file_is_imported_again() {
    let env = env_with(&gguf_pipeline(""));
    let file = env.dir.path().join("m.gguf");
    std::fs::copy(fixture("tiny.gguf"), &file).unwrap();
    let first = key(&env);
    let run = env.run_ok(&[]);
    assert_eq!(states(&run)["imported"], "executed");
    let out_dir = env.output_dir("imported");
    assert_eq!(json_file(&out_dir.join("rise.json"))["template"], "chat");
    assert_eq!(
        json_file(&out_dir.join("tokenizer_config.json"))["add_bos_token"],
        false
    );
    assert_eq!(states(&env.run_ok(&[]))["imported"], "cached");

    // Same path, other content: a new key, and the stage imports the new file.
    std::fs::copy(fixture("tiny-llama3.gguf"), &file).unwrap();
    let second = key(&env);
    assert_ne!(second, first);
    assert_eq!(states(&env.run_ok(&[]))["imported"], "executed");
    let out_dir = env.output_dir("imported");
    assert_eq!(
        json_file(&out_dir.join("tokenizer_config.json"))["add_bos_token"],
        true
    );

    // The first content again: its result is still in the store.
    std::fs::copy(fixture("tiny.gguf"), &file).unwrap();
    assert_eq!(key(&env), first);
    assert_eq!(states(&env.run_ok(&[]))["imported"], "cached");
}

#[test]
fn a_named_chat_template_is_chosen_by_param_and_an_unknown_name_is_refused() {
    let env = env_with(&gguf_pipeline(", chat_template = \"tool_use\""));
    std::fs::copy(fixture("tiny-llama3.gguf"), env.dir.path().join("m.gguf")).unwrap();
    env.run_ok(&[]);
    let cfg = json_file(&env.output_dir("imported").join("tokenizer_config.json"));
    assert!(
        cfg["chat_template"]
            .as_str()
            .unwrap()
            .starts_with("{% for message in messages %}["),
        "{cfg}"
    );

    std::fs::write(&env.pipeline, gguf_pipeline(", chat_template = \"nope\"")).unwrap();
    let (_, out) = env.run(&[]);
    assert!(!out.status.success());
    let text = describe(&out) + &support::pipeline::stage_logs(&env.store, "imported");
    assert!(
        text.contains("\"nope\"") && text.contains("default, tool_use"),
        "{text}"
    );
}

#[test]
fn chat_tokens_without_a_template_fail_the_model_stage_and_chat_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let out = run_with_worker(&[
        "import",
        "gguf",
        fixture("tiny.gguf").to_str().unwrap(),
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg = json_file(&cfg_path);
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    let out = run_with_worker(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("<|im_start|>") && err.contains("no chat template"),
        "{err}"
    );
    // Plain prompts need no template.
    let out = run_with_worker(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let env = env_with(&format!(
        "[pipeline]\nname = \"t\"\n\n[stage.imported]\nkind = \"model\"\nparams = {{ hf_dir = {:?} }}\n",
        dir.display().to_string()
    ));
    let (_, out) = env.run(&[]);
    assert!(!out.status.success());
    let text = describe(&out) + &support::pipeline::stage_logs(&env.store, "imported");
    assert!(
        text.contains("<|im_start|>") && text.contains("no chat template"),
        "{text}"
    );

    // With the template in chat_template.jinja (as transformers 5 saves it) the stage
    // succeeds and writes the template where every later stage and `rise export` read it.
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    )
    .unwrap();
    env.run_ok(&[]);
    let out_dir = env.output_dir("imported");
    assert_eq!(json_file(&out_dir.join("rise.json"))["template"], "chat");
    assert!(
        json_file(&out_dir.join("tokenizer_config.json"))["chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>{{ m.role }}")
    );
}

/// Keys of model stages written before `gguf` and `chat_template` existed. If the key scheme
/// or the `model` kind's version is bumped on purpose, these change with it; otherwise a
/// change here means every cached model (and all that follows it) would be recomputed.
#[test]
fn existing_model_stage_keys_are_unchanged() {
    let env = env_with(
        "[pipeline]\nname = \"k\"\n\n[stage.fresh]\nkind = \"model\"\nparams = { config = \"size.toml\" }\n\n\
         [stage.imported]\nkind = \"model\"\nparams = { hf_dir = \"ckpt\", system = \"\" }\n",
    );
    std::fs::write(
        env.dir.path().join("size.toml"),
        "hidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\nnum_key_value_heads = 2\n",
    )
    .unwrap();
    std::fs::create_dir_all(env.dir.path().join("ckpt")).unwrap();
    std::fs::write(env.dir.path().join("ckpt/config.json"), "{}\n").unwrap();
    let out = env.rise(&["plan", "PIPELINE", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<(&str, &str)> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [
            (
                "fresh",
                "4238a6f2ed4ddb6b0a165868ec3be916ebd8c9657405175731a6da0593748867"
            ),
            (
                "imported",
                "4267bd021235ac2b68c595c917fdc4c3022dbc8b6b52f6d6b960c52452ee1ba3"
            ),
        ]
    );
}

/// `pipelines/gsm8k-smollm2.toml` plans as written (its GGUF swapped for the tiny fixture, its
/// data paths made absolute): both arms, each relabelled by the right model.
#[test]
fn the_smollm2_pipeline_plans_both_arms() {
    let data = support::root().join("../shared/data/gsm8k");
    if !data.join("test.jsonl").exists() {
        eprintln!("skipping: {} is missing", data.display());
        return;
    }
    let text = std::fs::read_to_string(support::root().join("pipelines/gsm8k-smollm2.toml"))
        .expect("pipelines/gsm8k-smollm2.toml");
    let swap = |text: String, from: &str, to: String| {
        assert!(
            text.contains(from),
            "gsm8k-smollm2.toml no longer contains {from}"
        );
        text.replace(from, &to)
    };
    let text = swap(
        text,
        "gguf = \"../checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf\"",
        format!("gguf = {:?}", fixture("tiny.gguf").display().to_string()),
    );
    let text = swap(
        text,
        "path = \"../../shared/data/gsm8k/",
        format!("path = \"{}/", data.display()),
    );
    let env = env_with(&text);
    let out = env.rise(&["plan", "PIPELINE", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages: Vec<&str> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for arm in ["self", "distill"] {
        for iter in [1, 2] {
            for stage in ["sample", "grade", "relabel", "train", "evaluate"] {
                let name = format!("{arm}.iter{iter}.{stage}");
                assert!(
                    stages.contains(&name.as_str()),
                    "{name} missing: {stages:?}"
                );
            }
        }
    }
    assert!(stages.contains(&"eval_base") && stages.contains(&"report"));
    for wiring in [
        "inputs = { graded = \"distill.iter1.grade\", teacher = \"base\" }",
        "inputs = { graded = \"distill.iter2.grade\", teacher = \"base\" }",
        "inputs = { graded = \"self.iter2.grade\", policy = \"self.iter1.train\" }",
    ] {
        assert!(text.contains(wiring), "{wiring}");
    }
    assert!(
        text.contains("test.jsonl\", limit = 100 }"),
        "the 100-problem test slice"
    );
}
