//! A `model` stage that imports a Hugging Face directory (`hf_dir`) is keyed by the content of
//! the files in it, not by its path (DESIGN §3): replacing a checkpoint in place re-runs what
//! was built from it; moving it, or tool metadata in dot-directories, does not.
mod support;

use serde_json::Value;
use support::describe;
use support::pipeline::{env_with, Env};

fn pipeline(dir: &str) -> String {
    format!("[pipeline]\nname = \"import\"\n\n[stage.imported]\nkind = \"model\"\nparams = {{ hf_dir = {dir:?} }}\n")
}

/// The key `rise plan` computes for the `imported` stage.
fn key(env: &Env) -> String {
    let out = env.rise(&["plan", "PIPELINE", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    plan["stages"][0]["key"].as_str().expect("key").to_string()
}

#[test]
fn the_import_key_follows_the_checkpoint_content_not_its_path() {
    let env = env_with(&pipeline("ckpt"));
    let ckpt = env.dir.path().join("ckpt");
    std::fs::create_dir_all(ckpt.join("sub")).unwrap();
    std::fs::write(ckpt.join("config.json"), "{}").unwrap();
    std::fs::write(ckpt.join("model.safetensors"), "weights v1").unwrap();
    let first = key(&env);
    assert_eq!(key(&env), first, "the key is stable");

    std::fs::write(ckpt.join("model.safetensors"), "weights v2").unwrap();
    let edited = key(&env);
    assert_ne!(edited, first, "new weights in place must change the key");

    std::fs::write(ckpt.join("sub/extra.json"), "[]").unwrap();
    let added = key(&env);
    assert_ne!(added, edited, "a new file below the directory counts");

    std::fs::create_dir_all(ckpt.join(".cache/huggingface")).unwrap();
    std::fs::write(ckpt.join(".cache/huggingface/meta"), "downloaded at noon").unwrap();
    assert_eq!(key(&env), added, "dot-entries (tool metadata) do not count");

    std::fs::rename(&ckpt, env.dir.path().join("moved")).unwrap();
    std::fs::write(&env.pipeline, pipeline("moved")).unwrap();
    assert_eq!(
        key(&env),
        added,
        "the same content elsewhere has the same key"
    );
}

#[test]
fn a_missing_checkpoint_directory_names_the_field() {
    let env = env_with(&pipeline("no/such/checkpoint"));
    let out = env.rise(&["plan", "PIPELINE"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("params.hf_dir")
            && err.contains("missing directory `no/such/checkpoint`")
            && err.contains("pipeline.toml:6"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_hash_cache_never_hides_an_edit() {
    let env = env_with(&pipeline("ckpt"));
    let ckpt = env.dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    // Above the cache's 1 MiB threshold.
    let weights = |byte: u8| vec![byte; 3 << 19];
    std::fs::write(ckpt.join("model.safetensors"), weights(1)).unwrap();
    // The first command validates the pipeline before the store exists, so it caches
    // nothing; the second does.
    let before = key(&env);
    assert!(!env.store.join("cache").exists());
    assert_eq!(key(&env), before, "the cache changes no key");
    let cache = std::fs::read_to_string(env.store.join("cache/file-hashes.json"))
        .expect("the hash of the large file is cached in the store");
    assert!(cache.contains("model.safetensors"), "{cache}");
    assert_eq!(key(&env), before, "a cache hit gives the same key");

    // Same size, same name, new content: the metadata moved, so it is hashed again.
    std::fs::write(ckpt.join("model.safetensors"), weights(2)).unwrap();
    let edited = key(&env);
    assert_ne!(
        edited, before,
        "an edit behind the cache must change the key"
    );
    assert_eq!(key(&env), edited);
}
