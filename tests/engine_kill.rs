//! kill -9 during a stage, then re-run: finished stages are not re-executed, the killed one is,
//! and `rise lock` equals an uninterrupted run's.
mod engine_support;
use engine_support::*;
use std::time::{Duration, Instant};

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
