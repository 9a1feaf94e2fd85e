//! The test cluster itself (`scripts/slurm/`, started by `tests/slurm_support`): batch jobs
//! run, see the fake GPUs they asked for, and the two emulated nodes run jobs at the same time.
//! What the Slurm executor's tests rely on, checked on its own so that a broken set-up is told
//! apart from a broken executor.
mod slurm_support;

use std::path::Path;
use std::process::Command;

/// `sbatch ARGS SCRIPT` (the script is written to `dir`); returns the job id.
fn sbatch(dir: &Path, name: &str, body: &str, args: &[&str]) -> String {
    let script = dir.join(format!("{name}.sh"));
    std::fs::write(&script, format!("#!/bin/bash\nset -eu\n{body}\n")).unwrap();
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(format!(
            "--output={}",
            dir.join(format!("{name}.log")).display()
        ))
        .args(args)
        .arg(&script)
        .output()
        .expect("run sbatch");
    assert!(
        out.status.success(),
        "sbatch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Waits (up to 60 s) until `squeue` no longer lists any of `jobs`.
fn wait_gone(jobs: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i", "-j", &jobs.join(",")])
            .output()
            .expect("run squeue");
        let listed = String::from_utf8_lossy(&out.stdout);
        if listed.trim().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs still queued after 60 s: {listed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_batch_job_sees_the_fake_gpu_it_asked_for() {
    let cluster = slurm_support::cluster();
    assert_eq!(cluster.nodes, ["n1", "n2"]);
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let job = sbatch(
        dir.path(),
        "gpu",
        &format!(
            "echo \"$SLURMD_NODENAME ${{CUDA_VISIBLE_DEVICES-unset}}\" > {}",
            seen.display()
        ),
        &["--gpus=1", "--wait"],
    );
    let text =
        std::fs::read_to_string(&seen).unwrap_or_else(|e| panic!("job {job} wrote nothing ({e})"));
    let (node, cvd) = text.trim().split_once(' ').unwrap();
    assert!(cluster.nodes.iter().any(|n| n == node), "{text}");
    // One fake GPU per emulated node: Slurm hands out its index 0.
    assert_eq!(cvd, "0", "{text}");
}

#[test]
fn the_two_nodes_run_jobs_at_the_same_time() {
    let cluster = slurm_support::cluster();
    let dir = tempfile::tempdir().unwrap();
    // Each job announces itself, then waits for the other: both finish only if both ran at
    // once. Each asks for the one GPU a node has, so they cannot share a node.
    let mut jobs = Vec::new();
    for (me, other) in [("a", "b"), ("b", "a")] {
        let d = dir.path().display();
        jobs.push(sbatch(
            dir.path(),
            me,
            &format!(
                "echo $SLURMD_NODENAME > {d}/{me}.node\n\
                 for i in $(seq 300); do [ -e {d}/{other}.node ] && exit 0; sleep 0.1; done\n\
                 echo {other} never started; exit 1"
            ),
            &["--gpus=1", "--time=2"],
        ));
    }
    wait_gone(&jobs.iter().map(String::as_str).collect::<Vec<_>>());
    let node = |n: &str| {
        std::fs::read_to_string(dir.path().join(format!("{n}.node")))
            .unwrap_or_else(|e| panic!("job {n} did not start: {e}"))
            .trim()
            .to_string()
    };
    let (a, b) = (node("a"), node("b"));
    assert_ne!(a, b, "both jobs ran on {a}");
    assert!(cluster.nodes.contains(&a) && cluster.nodes.contains(&b));
    for name in ["a", "b"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(log.is_empty(), "job {name} printed: {log}");
    }
}

#[test]
fn starting_again_leaves_the_cluster_alone() {
    slurm_support::cluster();
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/slurm/start-slurm.sh"
        ))
        .env("NODES", slurm_support::NODES.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already up"),
        "{out:?}"
    );
}
