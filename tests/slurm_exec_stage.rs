//! `rise exec-stage` as a real Slurm batch job (#15), on the test cluster of `scripts/slurm/`:
//! a stage asking for a GPU sees the one Slurm gave it, and `scancel` of a running stage
//! commits nothing while the re-submitted job resumes from the kept scratch directory and
//! gives the artifact an uninterrupted local run gives.
mod slurm_support;
mod support;
use support::engine::*;
use support::{stderr, stdout};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Writes a job spec for `stage` of `p.toml` (key from `rise plan --json` on `store`).
fn spec(env: &Env, store: &Path, name: &str, stage: &str) -> (PathBuf, PathBuf) {
    let out = env
        .rise(&["plan", env.path("p.toml").to_str().unwrap(), "--json"])
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = find_key(&plan, stage).expect("plan names the key");
    let done = env.path(&format!("{name}.done.json"));
    let spec = serde_json::json!({
        "format": 1,
        "pipeline": env.path("p.toml"),
        "stage": stage,
        "key": key,
        "inputs": BTreeMap::<String, String>::new(),
        "device": "cpu",
        "threads": 1,
        "done": done,
    });
    (env.write(&format!("{name}.json"), &spec.to_string()), done)
}

/// `sbatch [extra] --wrap "exec rise --store STORE exec-stage SPEC"`; the job id.
fn submit(env: &Env, store: &Path, spec: &Path, extra: &[&str]) -> String {
    let wrap = format!(
        "exec {} --store {} exec-stage {}",
        env!("CARGO_BIN_EXE_rise"),
        store.display(),
        spec.display()
    );
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(format!("--chdir={}", env.dir.path().display()))
        .arg(format!("--output={}.slurm.log", spec.display()))
        .args(extra)
        .arg("--wrap")
        .arg(wrap)
        .env("COUNTER", env.counter())
        .output()
        .unwrap();
    assert!(out.status.success(), "sbatch: {}", stderr(&out));
    stdout(&out).trim().split(';').next().unwrap().to_string()
}

fn wait_gone(job: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i", "-j", job])
            .output()
            .unwrap();
        if stdout(&out).trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "job {job} still queued");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn done(path: &Path) -> serde_json::Value {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no done record at {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_stage_job_sees_the_gpu_slurm_gave_it() {
    slurm_support::cluster();
    let env = Env::new();
    env.write(
        "p.toml",
        &(header("gpu")
            + "[stage.g]\nkind = \"shell\"\noutputs = [\"out.txt\"]\n\
               cmd = '''echo \"gpus=${CUDA_VISIBLE_DEVICES-unset}\" > \"$RISE_OUT/out.txt\"'''\n"),
    );
    let store = rise_store::Store::open(env.store()).unwrap();
    let (spec, done_path) = spec(&env, &env.store(), "g", "g");
    let job = submit(&env, &env.store(), &spec, &["--gpus=1", "--wait"]);
    let d = done(&done_path);
    assert_eq!(d["outcome"], "committed", "job {job}: {d:#}");
    let output: rise_store::ArtifactId = d["output"].as_str().unwrap().parse().unwrap();
    let dir = store.artifact_path(&output).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "gpus=0\n"
    );
}

#[test]
fn scancel_commits_nothing_and_the_resubmitted_job_resumes() {
    slurm_support::cluster();
    let env = Env::new();
    let started = env.path("started");
    env.write("p.toml", &slow_pipeline(&started));
    rise_store::Store::open(env.store()).unwrap();
    let (spec, done_path) = spec(&env, &env.store(), "slow", "slow");

    let job = submit(&env, &env.store(), &spec, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(
            Instant::now() < deadline,
            "job {job} never started its stage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("scancel").arg(&job).output().unwrap();
    assert!(out.status.success(), "scancel: {}", stderr(&out));
    wait_gone(&job);
    assert_eq!(
        std::fs::read_dir(env.store().join("results"))
            .unwrap()
            .count(),
        0,
        "a cancelled job committed a result"
    );
    assert_eq!(done(&done_path)["outcome"], "cancelled");
    let scratch: Vec<PathBuf> = std::fs::read_dir(env.store().join("scratch"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("lines"))
        .collect();
    assert_eq!(scratch.len(), 1, "the scratch directory is kept");
    let kept = std::fs::read_to_string(&scratch[0]).unwrap();
    assert!(kept.lines().count() < 15, "cancelled too late: {kept}");

    std::fs::remove_file(&done_path).unwrap();
    let again = submit(&env, &env.store(), &spec, &["--wait"]);
    let d = done(&done_path);
    assert_eq!(d["outcome"], "committed", "job {again}: {d:#}");
    let from = std::fs::read_to_string(env.path("started.from")).unwrap();
    assert_eq!(
        from,
        format!("0\n{}\n", kept.lines().count()),
        "the second job resumes after the kept lines"
    );

    // The same stage run locally without interruption, on a store of its own.
    std::fs::remove_file(&started).ok();
    let local = env.path("local");
    let out = env
        .rise(&["run", env.path("p.toml").to_str().unwrap()])
        .arg("--store")
        .arg(&local)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let local_store = rise_store::Store::open(&local).unwrap();
    let (_, m) = local_store.latest("slow", "slow").unwrap().unwrap();
    assert_eq!(d["output"], m.output.to_hex(), "resumed != uninterrupted");
}
