//! `rise exec-stage SPEC` (#15): one stage executed and committed from a job spec, as a batch
//! job runs it on a compute node. Stage by stage through exec-stage, a store ends up with the
//! same lock (every key and artifact id) as a local `rise run`; a spec whose key no longer
//! matches the pipeline runs nothing; a failure is reported in the done record.
mod support;
use support::engine::*;
use support::{stderr, stdout};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pipeline(a_param: i64) -> String {
    let mut text = header("jobs");
    text += &stage("a", &[], &format!("n = {a_param}"));
    text += &stage("b", &[("x", "a")], "n = 2");
    text
}

/// `rise lock` parsed: stage -> (key, output).
fn lock(env: &Env, store: &Path, p: &str) -> (String, BTreeMap<String, (String, String)>) {
    let out = env
        .rise(&["lock", p])
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut stages = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("[stage.") {
            current = name.trim_end_matches(']').trim_matches('"').to_string();
        } else if let Some((k, v)) = line.split_once(" = ") {
            let v = v.trim_matches('"').to_string();
            let entry = stages
                .entry(current.clone())
                .or_insert((String::new(), String::new()));
            match k {
                "key" => entry.0 = v,
                "output" => entry.1 = v,
                _ => {}
            }
        }
    }
    (text, stages)
}

struct Job {
    spec: PathBuf,
    done: PathBuf,
}

fn job(env: &Env, name: &str, p: &str, stage: &str, key: &str, inputs: &[(&str, &str)]) -> Job {
    let done = env.path(&format!("{name}.done.json"));
    let spec = serde_json::json!({
        "format": 1,
        "pipeline": env.path(p),
        "stage": stage,
        "key": key,
        "inputs": inputs.iter().map(|(i, a)| (i.to_string(), a.to_string())).collect::<BTreeMap<_, _>>(),
        "device": "cpu",
        "threads": 1,
        "done": done,
    });
    let spec_path = env.write(&format!("{name}.json"), &spec.to_string());
    Job {
        spec: spec_path,
        done,
    }
}

fn exec(env: &Env, store: &Path, job: &Job) -> std::process::Output {
    env.rise(&["exec-stage"])
        .arg(&job.spec)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap()
}

fn done(job: &Job) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&job.done).expect("done record")).unwrap()
}

#[test]
fn stages_run_as_jobs_give_the_local_runs_artifacts() {
    let env = Env::new();
    env.write("p.toml", &pipeline(1));
    let p = env.path("p.toml");
    let p = p.to_str().unwrap();
    env.ok(&["run", p]);
    env.executed();
    let (local_text, local) = lock(&env, &env.store(), p);

    // Another store, filled one job at a time. A job never creates a store.
    let remote = env.path("remote");
    let a = job(&env, "a", "p.toml", "a", &local["a"].0, &[]);
    let out = exec(&env, &remote, &a);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no rise store"), "{}", stderr(&out));
    assert!(!remote.exists());
    rise_store::Store::open(&remote).unwrap();

    let out = exec(&env, &remote, &a);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = done(&a);
    assert_eq!(d["outcome"], "committed", "{d:#}");
    assert_eq!(d["output"], local["a"].1.as_str(), "{d:#}");
    assert_eq!(d["key"], local["a"].0.as_str(), "{d:#}");
    let b = job(
        &env,
        "b",
        "p.toml",
        "b",
        &local["b"].0,
        &[("x", &local["a"].1)],
    );
    let out = exec(&env, &remote, &b);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(done(&b)["output"], local["b"].1.as_str());
    assert_eq!(env.executed(), ["a", "b"]);
    assert_eq!(
        lock(&env, &remote, p).0,
        local_text,
        "same keys, same artifacts"
    );

    // Again: the key is committed, nothing executes, the done record says so.
    std::fs::remove_file(&a.done).unwrap();
    let out = exec(&env, &remote, &a);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(done(&a)["outcome"], "committed");
    assert!(env.executed().is_empty());

    // The pipeline changed after submission: the job's key is stale and nothing runs.
    env.write("p.toml", &pipeline(5));
    std::fs::remove_file(&a.done).unwrap();
    let results = std::fs::read_dir(remote.join("results")).unwrap().count();
    let out = exec(&env, &remote, &a);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("changed since the job was submitted"),
        "{}",
        stderr(&out)
    );
    assert!(env.executed().is_empty() && !a.done.exists());
    assert_eq!(
        std::fs::read_dir(remote.join("results")).unwrap().count(),
        results
    );
}

#[test]
fn a_failing_job_reports_its_error_and_log_in_the_done_record() {
    let env = Env::new();
    env.write(
        "p.toml",
        &(header("fail")
            + "[stage.bad]\nkind = \"shell\"\noutputs = [\"out.txt\"]\n\
               cmd = '''echo doomed >&2; exit 3'''\n"),
    );
    rise_store::Store::open(env.store()).unwrap();
    // The key, from the plan the driver would make.
    let plan = env.ok(&["plan", env.path("p.toml").to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let key = find_key(&plan, "bad").expect("plan --json names the stage's key");
    let bad = job(&env, "bad", "p.toml", "bad", &key, &[]);
    let out = env.rise(&["exec-stage"]).arg(&bad.spec).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = done(&bad);
    assert_eq!(d["outcome"], "failed", "{d:#}");
    assert!(d["result"].is_null() && d["output"].is_null(), "{d:#}");
    assert!(d["error"].as_str().unwrap().contains("doomed"), "{d:#}");
    let log = PathBuf::from(d["log"].as_str().unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("doomed"));
    assert_eq!(
        std::fs::read_dir(env.store().join("results"))
            .unwrap()
            .count(),
        0
    );
}
