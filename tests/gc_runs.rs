//! `rise gc --runs-older-than DURATION` prunes run records and logs, and nothing else.
mod support;
use std::time::{Duration, SystemTime};
use support::engine::*;
use support::stderr;

fn age(path: &std::path::Path, days: u64) {
    let when = SystemTime::now() - Duration::from_secs(days * 86_400);
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(when).unwrap();
}

#[test]
fn old_run_records_and_logs_are_pruned() {
    let env = Env::new();
    let p = env.write(
        "p.toml",
        &(header("runs") + &stage("a", &[], "n = 1") + &stage("b", &[("x", "a")], "n = 2")),
    );
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet"]);
    let runs = env.store().join("runs");
    let first: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(first.len(), 1);
    let first_id = first[0].file_stem().unwrap().to_str().unwrap().to_string();
    // Make the first run 40 days old: its record, its run log, its stage logs.
    age(&first[0], 40);
    let logs = env.store().join("logs");
    for path in snapshot(&logs.join(&first_id)).into_iter().map(|(p, _)| p) {
        age(&path, 40);
    }
    age(&logs.join(&first_id), 40);
    age(&logs.join(format!("{first_id}.log")), 40);
    std::thread::sleep(Duration::from_millis(5));
    env.ok(&["run", p, "--quiet"]);
    let objects_before = snapshot(&env.store().join("objects")).len();

    let out = env.ok(&["gc", "--runs-older-than", "30d", "--dry-run"]);
    assert!(
        out.contains("would delete the records and logs of 1 runs"),
        "{out}"
    );
    assert!(runs.join(format!("{first_id}.json")).exists());

    let out = env.ok(&["gc", "--runs-older-than", "30d", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["pruned_runs"]["removed_runs"],
        serde_json::json!([first_id])
    );
    assert_eq!(report["pruned_runs"]["kept_runs"], 1);
    assert!(!runs.join(format!("{first_id}.json")).exists());
    assert!(!logs.join(&first_id).exists());
    assert!(!logs.join(format!("{first_id}.log")).exists());
    assert_eq!(
        std::fs::read_dir(&runs).unwrap().count(),
        1,
        "the young run stays"
    );
    // Artifacts are untouched, and the pipeline is still a no-op.
    assert_eq!(snapshot(&env.store().join("objects")).len(), objects_before);
    env.ok(&["run", p, "--quiet"]);
    assert_eq!(
        env.executed(),
        ["a", "b"],
        "only the first run executed anything"
    );

    let out = env.run(&["gc", "--runs-older-than", "thirty days"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--runs-older-than"),
        "{}",
        stderr(&out)
    );
}
