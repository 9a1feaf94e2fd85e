//! Full cache keys, as `rise plan` computes them on an empty store, of the stages it can key
//! there (those without inputs), pinned: a store filled before a refactor must still hit its
//! cache after it. Pinned before the params became typed structs (issue 14).
//!
//! Stages with inputs are keyed from their inputs' artifact ids, which an empty store does
//! not have; `crates/rise-stages/tests/stage_keys_pinned.rs` pins what the kinds put into every
//! stage's key (kind, version, resolved params) for all of them.
mod support;

fn planned_keys(pipeline: &str) -> String {
    let store = tempfile::tempdir().unwrap();
    let out = support::rise()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["plan", "--json", "--store"])
        .arg(store.path().join("store"))
        .arg(format!("pipelines/{pipeline}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rise plan {pipeline}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<String> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some(format!("{} {}", s["stage"].as_str()?, s["key"].as_str()?)))
        .collect();
    lines.join("\n")
}

#[test]
fn rise_toml_root_keys() {
    assert_eq!(
        planned_keys("rise.toml"),
        "\
train_set 1b476347384ef1e8a4a5259234b6d4818d8de10988c92ae54d0c286eb67f531f
test_set 43d4ce6cdc2f53afe11e4f3c68811766e1866a68c7f68a1407fe6012e7e593a0"
    );
}

#[test]
fn rise_ci_toml_root_keys() {
    assert_eq!(
        planned_keys("rise-ci.toml"),
        "\
train_set 5168a3a6cc65c60b003dbab4a58c53e9247ef822f89c07a3397cdf84e783caaa
test_set 68d3a2844638d9fa88fc4a292010c0bfc9eafbcfcf2cb0a4d5b5f110cda72bd5
teacher_set 600cfb614e2ab833eb6635bc1efd5524fac72a7e66ac0ac62876ace682c656d0"
    );
}
