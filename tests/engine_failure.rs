//! A failing stage: its dependents are skipped, independent branches finish, the run exits 1
//! with a summary naming the failed stage and its log, and nothing of it is committed.
mod support;
use support::engine::*;
use support::{stderr, stdout};

#[test]
fn failure_skips_dependents_and_finishes_other_branches() {
    let env = Env::new();
    let mut text = header("fail");
    text += &stage("a", &[], "n = 1");
    text += "[stage.broken]\nkind = \"shell\"\ninputs = { x = \"a\" }\ncmd = 'echo \"$RISE_STAGE\" >> \"$COUNTER\"; echo boom-on-stderr >&2; exit 3'\n\n";
    text += &stage("after", &[("x", "broken")], "n = 2");
    text += &stage("other", &[("x", "a")], "n = 3");
    text += &stage("missing_output", &[], "n = 4").replace(
        "outputs = [\"out.txt\"]",
        "outputs = [\"out.txt\", \"never.txt\"]",
    );
    let p = env.write("p.toml", &text);
    let out = env.run(&["run", p.to_str().unwrap(), "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("FAILED broken: command failed: exit code 3"),
        "{err}"
    );
    assert!(
        err.contains("declared output `never.txt` was not written"),
        "{err}"
    );
    assert!(err.contains("skipped (an input failed): after"), "{err}");
    assert_eq!(env.executed(), ["a", "broken", "missing_output", "other"]);

    // The log named in the summary holds the stage's stderr.
    let log_line = err
        .lines()
        .find(|l| l.trim_start().starts_with("log:") && l.contains("broken"))
        .expect("log path");
    let log_path = log_line.trim_start().trim_start_matches("log:").trim();
    let log = std::fs::read_to_string(log_path).expect("stage log exists");
    assert!(log.contains("boom-on-stderr"), "{log}");

    // Nothing committed for the failed stages; the others are cached.
    let status = env.ok(&["status", p.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let state = |name: &str| {
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("a"), "up to date");
    assert_eq!(state("other"), "up to date");
    assert_eq!(state("broken"), "never run");
    assert_eq!(state("missing_output"), "never run");
    assert_eq!(state("after"), "never run");

    // JSON summary for scripts.
    let out = env.run(&["run", p.to_str().unwrap(), "--json", "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let broken = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "failed");
    assert!(broken["log"].as_str().unwrap().ends_with("broken.log"));
}
