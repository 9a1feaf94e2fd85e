//! `rise run --executor slurm` (#15) on the test cluster of `scripts/slurm/`: every stage that
//! misses the cache is one sbatch job running `rise exec-stage`, and the store ends up as a
//! local run leaves it (the same keys and artifacts); a re-run submits nothing; a failing job
//! names its Slurm state and logs; SIGTERM to the driver cancels its jobs, commits nothing, and
//! the re-run resumes; two drivers on one store submit each key once.
mod slurm_support;
mod support;
use support::engine::*;
use support::{stderr, stdout};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Five shell stages, two of them independent (submitted at once under `--jobs 2`), with a
/// pipeline-wide and a per-stage `resources` table when `resources` is set.
fn pipeline(resources: bool) -> String {
    let mut text = header("slurmy");
    if resources {
        text.push_str("[pipeline.resources]\ncpus = 1\nmem = \"200M\"\n\n");
    }
    text.push_str(&stage("a", &[], "n = 1"));
    text.push_str(&stage("b", &[], "n = 2"));
    text.push_str(&stage("c", &[("x", "a"), ("y", "b")], ""));
    if resources {
        text.push_str("[stage.c.resources]\ntime = \"5:00\"\nextra = [\"--nice=0\"]\n\n");
    }
    text.push_str(&stage("d", &[("x", "c")], "k = \"v\""));
    text.push_str(&stage("e", &[("x", "d"), ("y", "a")], ""));
    text
}

fn run(env: &Env, store: &Path, file: &str, extra: &[&str]) -> Output {
    let mut cmd = env.rise(&["run", env.path(file).to_str().unwrap(), "--plain"]);
    cmd.args(extra).arg("--store").arg(store);
    support::output(&mut cmd)
}

fn lock(env: &Env, store: &Path, file: &str) -> String {
    let out = support::output(
        env.rise(&["lock", env.path(file).to_str().unwrap()])
            .arg("--store")
            .arg(store),
    );
    assert!(out.status.success(), "rise lock: {}", stderr(&out));
    stdout(&out)
}

/// The job specs (`*.job.json`) a run's directory of logs holds: one per submitted job.
fn submitted(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let logs = store.join("logs");
    for run in std::fs::read_dir(&logs).unwrap().flatten() {
        if let Ok(files) = std::fs::read_dir(run.path()) {
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(stage) = name.strip_suffix(".job.json") {
                    out.push(stage.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn slurm_runs_commit_what_a_local_run_does_and_a_rerun_submits_nothing() {
    slurm_support::cluster();
    let env = Env::new();
    env.write("slurm.toml", &pipeline(true));
    env.write("local.toml", &pipeline(false));
    let (slurm, local) = (env.path("slurm-store"), env.path("local-store"));

    let out = run(
        &env,
        &slurm,
        "slurm.toml",
        &["--executor", "slurm", "--jobs", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.executed(), ["a", "b", "c", "d", "e"]);
    assert_eq!(
        submitted(&slurm),
        ["a", "b", "c", "d", "e"],
        "one job per stage"
    );
    let err = stderr(&out);
    assert!(err.contains("slurm job "), "{err}");
    let out = run(&env, &local, "local.toml", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.executed();
    // Same keys (resources and the executor are not part of them) and the same artifacts.
    assert_eq!(
        lock(&env, &slurm, "slurm.toml"),
        lock(&env, &local, "local.toml")
    );

    // Nothing to do: no job is submitted.
    let out = run(&env, &slurm, "slurm.toml", &["--executor", "slurm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("5 cached"), "{}", stderr(&out));
    assert_eq!(submitted(&slurm).len(), 5, "a re-run submitted a job");
    assert!(env.executed().is_empty());
}

#[test]
fn the_pipeline_file_chooses_slurm_and_a_stage_gets_the_gpus_it_asks_for() {
    slurm_support::cluster();
    let env = Env::new();
    env.write(
        "p.toml",
        "[pipeline]\nname = \"gpu\"\nexecutor = \"slurm\"\n\n\
         [stage.g]\nkind = \"shell\"\noutputs = [\"out.txt\"]\n\
         cmd = '''echo \"gpus=${CUDA_VISIBLE_DEVICES-unset}\" > \"$RISE_OUT/out.txt\"'''\n\
         [stage.g.resources]\ngpus = 1\n",
    );
    let store = env.store();
    let out = run(&env, &store, "p.toml", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(submitted(&store), ["g"]);
    let (_, m) = rise_store::Store::open(&store)
        .unwrap()
        .latest("gpu", "g")
        .unwrap()
        .unwrap();
    let dir = rise_store::Store::open(&store)
        .unwrap()
        .artifact_path(&m.output)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "gpus=0\n"
    );

    // A resources table sbatch cannot be given is refused before anything is submitted.
    env.write(
        "bad.toml",
        "[pipeline]\nname = \"bad\"\n[pipeline.resources]\ncpus = \"many\"\n\
         [stage.s]\nkind = \"shell\"\noutputs = []\ncmd = 'true'\n",
    );
    let out = run(&env, &store, "bad.toml", &["--executor", "slurm"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pipeline.resources.cpus: expected an integer >= 1"),
        "{}",
        stderr(&out)
    );

    // Resources Slurm refuses fail the stage at submission, the reason in the reported log.
    env.write(
        "huge.toml",
        "[pipeline]\nname = \"huge\"\n[stage.s]\nkind = \"shell\"\noutputs = []\ncmd = 'true'\n\
         [stage.s.resources]\npartition = \"no-such-partition\"\n",
    );
    let out = run(&env, &store, "huge.toml", &["--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot submit a Slurm job: sbatch"), "{err}");
    let log = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("log: "))
        .unwrap_or_else(|| panic!("{err}"));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("not submitted: cannot submit a Slurm job"),
        "{text}"
    );
}

#[test]
fn a_failing_job_reports_its_slurm_state_and_its_logs() {
    slurm_support::cluster();
    let env = Env::new();
    env.write(
        "p.toml",
        &(header("failing")
            + "[stage.bad]\nkind = \"shell\"\noutputs = [\"x\"]\n\
               cmd = 'echo broken-on-purpose >&2; exit 3'\n\n\
               [stage.killed]\nkind = \"shell\"\noutputs = [\"x\"]\n\
               cmd = 'kill -9 $PPID; sleep 5'\n\n"
            + &stage("after", &[("x", "bad")], "")),
    );
    let store = env.store();
    let out = run(
        &env,
        &store,
        "p.toml",
        &["--executor", "slurm", "--jobs", "2"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    // The stage failed: the job's state, the stage's error and both logs.
    let line = err
        .lines()
        .find(|l| l.starts_with("FAILED bad:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("slurm job ") && line.contains(" FAILED: "),
        "{line}"
    );
    assert!(line.contains("exit code 3"), "{line}");
    let slurm_log = line
        .split("slurm log: ")
        .nth(1)
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no slurm log in {line}"));
    assert!(Path::new(slurm_log).exists(), "{slurm_log}");
    let stage_log = line
        .split("stage log: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap();
    let text = std::fs::read_to_string(stage_log).unwrap();
    assert!(text.contains("broken-on-purpose"), "{text}");
    // The job died without a done record: its Slurm state and log say what happened.
    let line = err
        .lines()
        .find(|l| l.starts_with("FAILED killed:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(" FAILED without a done record") && line.contains("slurm log: "),
        "{line}"
    );
    assert!(err.contains("skipped (an input failed): after"), "{err}");
    assert_eq!(
        std::fs::read_dir(store.join("results")).unwrap().count(),
        0,
        "a failed job committed a result"
    );
}

/// A stage that asks for more than any node has, which sbatch accepts (64 CPUs on nodes of
/// one), pends with a reason that never clears (`PartitionConfig`): its stage fails with the
/// job id, the reason and the log, the job is cancelled, and the other stages carry on. Before
/// this was handled the driver waited forever, so it gets two minutes here.
#[test]
fn a_job_that_can_never_start_fails_its_stage_instead_of_pending_forever() {
    slurm_support::cluster();
    let env = Env::new();
    env.write(
        "p.toml",
        &(header("never")
            + &stage("fine", &[], "")
            + "[stage.huge]\nkind = \"shell\"\noutputs = []\ncmd = 'true'\n\
               [stage.huge.resources]\ncpus = 64\n"),
    );
    let store = env.store();
    let mut driver = env
        .rise(&["run", env.path("p.toml").to_str().unwrap(), "--plain"])
        .args(["--executor", "slurm", "--jobs", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while driver.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = driver.kill();
            let out = driver.wait_with_output().unwrap();
            panic!("the driver still waited after 120 s:\n{}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = driver.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let id = slurm_support::job_ids(&store)
        .remove("huge")
        .unwrap_or_else(|| panic!("huge was not submitted: {err}"));
    let line = err
        .lines()
        .find(|l| l.starts_with("FAILED huge:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!(
            "slurm job {id} can never start: pending with reason PartitionConfig"
        )),
        "{line}"
    );
    assert!(line.contains("--cpus-per-task=64"), "{line}");
    let slurm_log = line
        .split("slurm log: ")
        .nth(1)
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no slurm log in {line}"));
    // The job never ran: the log holds the reason rise gave up.
    let text = std::fs::read_to_string(slurm_log).unwrap();
    assert!(text.contains("PartitionConfig"), "{text}");
    assert!(err.contains(&format!("       log: {slurm_log}")), "{err}");
    // Cancelled, not left in the queue.
    let job = slurm_support::job(&id);
    assert_eq!(job["JobState"], "CANCELLED", "{job:?}");
    // The other stage ran and committed; the one that never started committed nothing.
    assert_eq!(env.executed(), ["fine"]);
    assert_eq!(std::fs::read_dir(store.join("results")).unwrap().count(), 1);
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_to_the_driver_cancels_its_jobs_and_the_rerun_resumes() {
    slurm_support::cluster();
    let env = Env::new();
    let started = env.path("started");
    env.write("p.toml", &slow_pipeline(&started));
    let store = env.store();
    let driver = env
        .rise(&["run", env.path("p.toml").to_str().unwrap(), "--plain"])
        .args(["--executor", "slurm"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&started, "the job never started its stage");
    // `rise status` names the running stage's job.
    let status = env.ok(&["status", env.path("p.toml").to_str().unwrap()]);
    let running = status
        .lines()
        .find(|l| l.starts_with("running slow: "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(running.contains("slurm job "), "{running}");
    // SAFETY: signalling the child we spawned.
    assert_eq!(unsafe { libc::kill(driver.id() as i32, libc::SIGTERM) }, 0);
    let out = driver.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cancelling slurm jobs"), "{err}");
    // The driver waited for its job to end: it is cancelled, and nothing was committed.
    let spec = submitted(&store);
    assert_eq!(spec, ["slow"]);
    let job = std::fs::read_dir(store.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let rest = text.split("slurm job ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .expect("the run log names the job");
    assert!(running.ends_with(&format!("slurm job {job}")), "{running}");
    let state = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%T", "-j", &job])
        .output()
        .unwrap();
    let state = stdout(&state);
    assert!(
        state.trim().is_empty() || state.trim() == "CANCELLED",
        "job {job}: {state}"
    );
    assert_eq!(
        std::fs::read_dir(store.join("results")).unwrap().count(),
        0,
        "a cancelled job committed a result"
    );

    // The re-run resumes from the kept scratch and gives what an uninterrupted run gives.
    let out = run(&env, &store, "p.toml", &["--executor", "slurm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from = std::fs::read_to_string(env.path("started.from")).unwrap();
    let starts: Vec<&str> = from.lines().collect();
    assert_eq!(starts.len(), 2, "{from}");
    assert_eq!(starts[0], "0");
    assert_ne!(starts[1], "0", "the re-run did not resume");
    let local = env.path("local");
    let out = run(&env, &local, "p.toml", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lock(&env, &store, "p.toml"), lock(&env, &local, "p.toml"));
}

#[test]
fn two_drivers_on_one_store_submit_each_key_once() {
    slurm_support::cluster();
    let env = Env::new();
    let mut text = header("twice");
    for name in ["a", "b", "c"] {
        text.push_str(&format!(
            "[stage.{name}]\nkind = \"shell\"\noutputs = [\"out.txt\"]\n\
             cmd = '''echo \"$RISE_STAGE\" >> \"$COUNTER\"; sleep 1; echo {name} > \"$RISE_OUT/out.txt\"'''\n\n"
        ));
    }
    env.write("p.toml", &text);
    let store = env.store();
    let spawn = || {
        env.rise(&["run", env.path("p.toml").to_str().unwrap(), "--plain"])
            .args(["--executor", "slurm", "--jobs", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn(), spawn());
    for driver in [one, two] {
        let out = driver.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(env.executed(), ["a", "b", "c"], "a key was executed twice");
    assert_eq!(
        submitted(&store),
        ["a", "b", "c"],
        "a key was submitted twice"
    );
}

/// The output of every stage in a `rise run --json` summary.
fn outputs(summary: &serde_json::Value) -> Vec<(String, String)> {
    summary["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            let name = s["stage"].as_str().unwrap().to_string();
            (name, s["output"].as_str().unwrap_or("none").to_string())
        })
        .collect()
}

/// `pipelines/rise-ci.toml` up to `eval_base` (6 jobs: datasets, tokenizer, and the torch
/// stages model, sft, evaluate in `rise-worker` on the node; the whole file is 26 stages, over
/// this test's budget of about 10 jobs) gives every artifact a local run gives. `--threads 1`
/// on both: sft's output depends on the thread count (threads are not part of keys).
#[test]
fn rise_ci_under_slurm_gives_the_local_artifacts() {
    slurm_support::cluster();
    let slurm = support::pipeline::ci_env();
    let local = support::pipeline::ci_env();
    let target = ["--stage", "eval_base"];
    let s = slurm.run_ok(&[&target[..], &["--executor", "slurm", "--jobs", "4"]].concat());
    let l = local.run_ok(&target);
    let got = outputs(&s);
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(got.iter().all(|(_, o)| o != "none"), "{got:?}");
    assert_eq!(got, outputs(&l));
    assert_eq!(submitted(&slurm.store).len(), 6);
    // A re-run submits no job.
    let again = slurm.run_ok(&[&target[..], &["--executor", "slurm"]].concat());
    assert!(
        again["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "cached"),
        "{again:#}"
    );
    assert_eq!(submitted(&slurm.store).len(), 6, "a re-run submitted a job");
}
