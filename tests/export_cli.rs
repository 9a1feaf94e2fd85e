//! `rise export`: a model stage's output leaves the store as a Hugging Face directory that
//! transformers loads, and nothing else is accepted as a model.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{root, run_at as rise};

/// dataset -> tokenizer -> a micro model initialised from configs/micro.toml.
fn model_pipeline(dir: &Path) -> PathBuf {
    let config = root().join("configs/micro.toml");
    let text = format!(
        r#"[pipeline]
name = "export-test"
seed = 3

[stage.data]
kind = "dataset"
params = {{ source = "synthetic", split = "train", synthetic = {{ n_train = 40, n_test = 4, max_steps = 2 }} }}

[stage.tokenizer]
kind = "tokenizer"
inputs = {{ data = "data" }}
params = {{ vocab_size = 200 }}

[stage.init]
kind = "model"
inputs = {{ tokenizer = "tokenizer" }}
params = {{ config = {config:?}, system = "" }}
"#,
        config = config.display().to_string()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn export_writes_a_directory_transformers_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let pipeline = model_pipeline(tmp.path());
    let out = rise(&store, &["run", pipeline.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dest = tmp.path().join("hf");
    let out = rise(&store, &["export", "init", "--to", dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dest.join(file).is_file(), "{file} missing from the export");
    }
    assert!(
        !dest.join("rise.json").exists(),
        "rise's own format file must stay in the store"
    );
    // No temporary directory is left beside the export.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".rise-export-"))
        .collect();
    assert!(leftovers.is_empty(), "staging directory left behind");

    // A second export into the now non-empty directory is refused.
    let again = rise(&store, &["export", "init", "--to", dest.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let python = root().join(".venv/bin/python");
    let probe = Command::new(&python)
        .arg("-c")
        .arg(
            "import sys, torch, transformers as t\n\
             m = t.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n\
             tok = t.PreTrainedTokenizerFast.from_pretrained(sys.argv[1])\n\
             ids = tok('Ann has 3 pens.', return_tensors='pt').input_ids\n\
             print(m(ids).logits.shape[-1] == m.config.vocab_size)",
        )
        .arg(&dest)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run `just setup-test`",
                python.display()
            )
        });
    assert!(
        probe.status.success(),
        "transformers could not load the export (run `just setup-test` if it is missing): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "True");
}

#[test]
fn export_refuses_a_stage_that_is_not_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let pipeline = model_pipeline(tmp.path());
    let out = rise(
        &store,
        &["run", pipeline.to_str().unwrap(), "--stage", "data"],
    );
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = tmp.path().join("hf");
    let out = rise(&store, &["export", "data", "--to", dest.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a model") && err.contains("config.json"),
        "{err}"
    );
    assert!(
        !dest.exists(),
        "nothing may be written for a refused export"
    );
}
