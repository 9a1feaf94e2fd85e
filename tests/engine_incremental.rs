//! Incremental re-runs: a no-op re-run executes nothing; editing one param re-runs exactly that
//! stage and its descendants; reverting the edit executes nothing.
mod support;
use support::engine::*;

fn pipeline(b_param: i64) -> String {
    // a -> b -> d, a -> c -> d, and an independent e.
    let mut text = header("incr");
    text += &stage("a", &[], "n = 1");
    text += &stage("b", &[("x", "a")], &format!("n = {b_param}"));
    text += &stage("c", &[("x", "a")], "n = 3");
    text += &stage("d", &[("left", "b"), ("right", "c")], "n = 4");
    text += &stage("e", &[], "n = 5");
    text
}

#[test]
fn noop_edit_and_revert() {
    let env = Env::new();
    let p = env.write("p.toml", &pipeline(2));
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--jobs", "2"]);
    assert_eq!(env.executed(), ["a", "b", "c", "d", "e"]);

    env.ok(&["run", p]);
    assert_eq!(
        env.executed(),
        Vec::<String>::new(),
        "a no-op re-run executes nothing"
    );

    env.write("p.toml", &pipeline(20));
    let plan = env.ok(&["plan", p]);
    assert!(
        plan.contains("params.params.n: 2 -> 20"),
        "plan says why b runs:\n{plan}"
    );
    env.ok(&["run", p]);
    assert_eq!(
        env.executed(),
        ["b", "d"],
        "exactly the edited stage and its descendants"
    );

    env.write("p.toml", &pipeline(2));
    env.ok(&["run", p]);
    assert_eq!(
        env.executed(),
        Vec::<String>::new(),
        "reverting finds the old results"
    );

    // The output of d carries both branches, in input-name order.
    let show = env.ok(&["show", "d", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    let dir = v["output_path"].as_str().unwrap();
    let text = std::fs::read_to_string(std::path::Path::new(dir).join("out.txt")).unwrap();
    assert_eq!(text, "a RISE_PARAM_N=1 \nb RISE_PARAM_N=2 \na RISE_PARAM_N=1 \nc RISE_PARAM_N=3 \nd RISE_PARAM_N=4 \n");
}

#[test]
fn explain_marks_the_changed_field() {
    let env = Env::new();
    let p = env.write("p.toml", &pipeline(2));
    let p = p.to_str().unwrap();
    env.ok(&["run", p]);
    env.write("p.toml", &pipeline(7));
    let out = env.ok(&["explain", p, "b", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let differing: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["differs"] == true)
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(differing, ["params.params.n"]);
    // d's inputs are not known yet, but its own fields are unchanged.
    let out = env.ok(&["explain", p, "d"]);
    assert!(out.contains("will be rebuilt"), "{out}");
    assert!(out.contains("will run"), "{out}");
}

#[test]
fn targets_run_only_what_they_need() {
    let env = Env::new();
    let p = env.write("p.toml", &pipeline(2));
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--stage", "b"]);
    assert_eq!(env.executed(), ["a", "b"]);
    env.ok(&["run", p]);
    assert_eq!(env.executed(), ["c", "d", "e"]);
}
