//! Two `rise run` of one pipeline at once on one store: every stage executes exactly once in
//! total, and both runs succeed.
mod support;
use support::engine::*;
use support::stderr;

#[test]
fn two_runs_execute_each_stage_once() {
    let env = Env::new();
    let mut text = header("race");
    text += &stage("a", &[], "n = 1").replace(
        "echo \\\"$RISE_STAGE\\\" >> \\\"$COUNTER\\\";",
        "echo \\\"$RISE_STAGE\\\" >> \\\"$COUNTER\\\"; sleep 0.3;",
    );
    for i in 0..6 {
        text += &stage(&format!("s{i}"), &[("x", "a")], &format!("n = {i}"))
            .replace("; :", "; sleep 0.1; :");
    }
    text += &stage("z", &[("x", "s0"), ("y", "s5")], "n = 9");
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    // Create the store first: concurrent first-time creation is the store's concern
    // (reported), this test is about concurrent runs.
    env.ok(&["plan", p]);
    let first = env
        .rise(&["run", p, "--jobs", "2", "--quiet"])
        .spawn()
        .unwrap();
    let second = env
        .rise(&["run", p, "--jobs", "3", "--quiet"])
        .spawn()
        .unwrap();
    let a = first.wait_with_output().unwrap();
    let b = second.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(
        env.executed(),
        ["a", "s0", "s1", "s2", "s3", "s4", "s5", "z"]
    );
    let lock = env.ok(&["lock", p]);
    assert!(lock.contains("[stage.z]"), "{lock}");
    env.ok(&["audit"]);
}

/// A run that waits for another run's lock on a key and then takes that run's result (it
/// "reused" it) makes the result its own pipeline stage's latest, as a cache hit does: gc keeps
/// it, and `rise status` shows the stage up to date. Before, the waiting pipeline recorded
/// nothing, so gc after the other pipeline moved on deleted a result it still used.
#[test]
fn a_result_reused_from_a_concurrent_run_is_the_waiting_pipelines_own() {
    let env = Env::new();
    let stages = |n: u32| {
        let mut text = stage("a", &[], "n = 1").replace("; :", "; sleep 0.4; :");
        text += &stage("c", &[("x", "a")], &format!("n = {n}")).replace("; :", "; sleep 0.4; :");
        text
    };
    let p = env.write("p.toml", &(header("first") + &stages(1)));
    let q = env.write("q.toml", &(header("second") + &stages(1)));
    let p2 = env.write("p2.toml", &(header("first") + &stages(2)));
    let (p, q, p2) = (
        p.to_str().unwrap(),
        q.to_str().unwrap(),
        p2.to_str().unwrap(),
    );
    env.ok(&["plan", p]);
    let first = env.rise(&["run", p, "--quiet"]).spawn().unwrap();
    // Let the first run take the keys' locks, so the second waits and reuses.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = env.run(&["run", q]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(first.wait_with_output().unwrap().status.success());
    assert_eq!(env.executed(), ["a", "c"], "each key executed once");
    assert!(
        stderr(&second).contains("executed by another run"),
        "the second run waited and reused:\n{}",
        stderr(&second)
    );
    // The first pipeline moves on; gc must keep what the second pipeline's latest uses.
    env.ok(&["run", p2, "--quiet"]);
    env.ok(&["gc"]);
    let status = env.ok(&["status", q]);
    assert!(
        !status.contains("never run") && !status.contains("not run"),
        "the second pipeline's stages keep their results after gc:\n{status}"
    );
    env.ok(&["show", "c", "--pipeline", "second"]);
    env.ok(&["audit"]);
}
