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
