//! kill -9 during a stage, then re-run: finished stages are not re-executed, the killed one is,
//! and `rise lock` equals an uninterrupted run's.
mod support;
use std::time::{Duration, Instant};
use support::engine::*;
use support::stderr;

fn pipeline() -> String {
    let mut text = header("kill");
    text += &stage("a", &[], "n = 1");
    text += &stage("b", &[("x", "a")], "n = 2");
    // Blocks (without affecting its output) until the file `gate` exists next to the pipeline.
    text += &stage("slow", &[("x", "b")], "n = 3").replace(
        "; :",
        "; if [ ! -e gate ]; then touch started; sleep 60; fi; :",
    );
    text += &stage("d", &[("x", "slow")], "n = 4");
    text
}

#[test]
fn kill_then_resume_matches_uninterrupted_run() {
    let env = Env::new();
    let p = env.write("p.toml", &pipeline());
    let p = p.to_str().unwrap();
    let mut child = env.rise(&["run", p, "--quiet"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.path("started").exists() {
        assert!(Instant::now() < deadline, "the slow stage never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "rise exited before the slow stage started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(env.executed(), ["a", "b", "slow"]);

    env.write("gate", "");
    env.ok(&["run", p, "--quiet"]);
    assert_eq!(
        env.executed(),
        ["d", "slow"],
        "only the killed stage and what follows run again"
    );
    env.ok(&["audit"]);
    let resumed = env.ok(&["lock", p]);

    let clean = Env::new();
    let q = clean.write("p.toml", &pipeline());
    clean.write("gate", "");
    clean.ok(&["run", q.to_str().unwrap(), "--quiet"]);
    assert_eq!(clean.executed(), ["a", "b", "d", "slow"]);
    assert_eq!(resumed, clean.ok(&["lock", q.to_str().unwrap()]));
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_scratch() {
    let env = Env::new();
    let mut text = header("interrupt");
    text += &stage("a", &[], "n = 1");
    // Leaves resumable state in its scratch, then blocks until `gate` exists.
    text += &stage("slow", &[("x", "a")], "n = 2").replace(
        "; :",
        "; echo partial > \"$RISE_SCRATCH/state\"; if [ ! -e gate ]; then touch started; sleep 60; fi; :",
    );
    text += &stage("after", &[("x", "slow")], "n = 3");
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    let child = env
        .rise(&["run", p, "--plain"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.path("started").exists() {
        assert!(Instant::now() < deadline, "the slow stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    // Nothing committed for the interrupted stage; its scratch is still there.
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", p, "--json"])).unwrap();
    assert_eq!(status["stages"][1]["stage"], "slow");
    assert_eq!(status["stages"][1]["state"], "never run");
    let scratch: Vec<_> = std::fs::read_dir(env.store().join("scratch"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        scratch.iter().any(|d| d.path().join("state").exists()),
        "the interrupted stage's scratch was kept"
    );
    assert_eq!(env.executed(), ["a", "slow"]);
    env.write("gate", "");
    env.ok(&["run", p, "--quiet"]);
    assert_eq!(env.executed(), ["after", "slow"]);
}
