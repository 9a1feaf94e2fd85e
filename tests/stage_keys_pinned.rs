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

// Re-pinned on 2026-12-03 when the pipeline's test split grew to 1000 problems and it gained the
// teacher's data (issue 12): a change of params, not of how keys are computed.
#[test]
fn rise_toml_root_keys() {
    assert_eq!(
        planned_keys("rise.toml"),
        "\
train_set ee7601a89c5a992d1671d545883f59b8546769c67c29adc02ec66e5cb087c9fb
test_set e19676baf86dd55f6038348d32cb5bd4dc1503f744df413d432d9dbbda29a4a5
teacher_set a91987b8b9a89a9f454cbb0981cbd8c1ccc265e9570131844f50d1f0c58d1c70"
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
