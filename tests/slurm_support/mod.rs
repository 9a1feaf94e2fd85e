//! A real Slurm for the tests that need one: `scripts/slurm/start-slurm.sh` with two emulated
//! nodes, started at most once per test binary and left running for the next one (starting
//! takes ~6 s, ~10 s more the first time, when it installs the packages).
//!
//! Several test binaries may start at once (other `cargo test` invocations on the same
//! machine): a kernel lock on one file serialises the start-ups, and the script itself leaves a
//! Slurm that is already up alone. Nothing is skipped: a test that needs Slurm fails, with the
//! script's output, when Slurm cannot be started (not root, no package mirror, a controller
//! configured by someone else).
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The node count every test binary asks for (one configuration for all of them: a second
/// binary asking for another count would have to stop the cluster under the first one's jobs).
pub const NODES: usize = 2;

/// Starting includes `apt-get install` on a fresh machine.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The cluster the tests submit to.
#[derive(Debug)]
pub struct Cluster {
    /// Node names, as `sinfo` lists them (`n1`, `n2`).
    pub nodes: Vec<String>,
}

/// Slurm, up with [`NODES`] idle-or-busy nodes; panics with the reason if it cannot be started.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("this test needs Slurm, and it could not be started: {e}"),
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm/start-slurm.sh")
}

fn start() -> Result<Cluster, String> {
    let lock_path = std::env::temp_dir().join("rise-test-slurm-start.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut child = Command::new("bash")
        .arg(script())
        .env("NODES", NODES.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    // Read both pipes on threads so a chatty apt-get cannot fill one and stall the script.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {}s",
                    script().display(),
                    START_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {}: {e}", script().display())),
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(format!(
            "{} (NODES={NODES}) failed ({status}):\n{out}{err}",
            script().display()
        ));
    }
    let listing = Command::new("sinfo")
        .args(["-h", "-N", "-o", "%N"])
        .output()
        .map_err(|e| format!("Slurm started but `sinfo` cannot run: {e}"))?;
    let mut nodes: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    nodes.sort();
    nodes.dedup();
    if nodes.len() != NODES {
        return Err(format!(
            "Slurm started but `sinfo` lists nodes {nodes:?}, not {NODES}"
        ));
    }
    Ok(Cluster { nodes })
}

/// Stage -> the Slurm job id it was submitted as, from the run logs in `store/logs/` (the
/// driver logs `STAGE: slurm job ID (log ...)` after each submission).
pub fn job_ids(store: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(store.join("logs")) else {
        return out;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_none_or(|x| x != "log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            // `TIMESTAMP STAGE: slurm job ID (log PATH)`
            let Some((_, rest)) = line.split_once(' ') else {
                continue;
            };
            if let Some((stage, after)) = rest.split_once(": slurm job ") {
                if let Some(id) = after.split_whitespace().next() {
                    out.insert(stage.to_string(), id.to_string());
                }
            }
        }
    }
    out
}

/// What `scontrol show job` says of a job: `Key=Value` fields (the test cluster keeps a
/// finished job for an hour, `MinJobAge=3600`).
pub fn job(id: &str) -> BTreeMap<String, String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "--oneliner", id])
        .output()
        .expect("run scontrol");
    assert!(
        out.status.success(),
        "scontrol show job {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a job asked for a GPU, as Slurm recorded its request.
pub fn asked_for_gpus(job: &BTreeMap<String, String>) -> bool {
    job.iter()
        .any(|(k, v)| k.starts_with("TresPer") && v.contains("gpu"))
}

/// Waits (up to `limit`) until every node is idle, so that a test that needs both nodes at
/// once does not find one busy with another test's job.
pub fn wait_idle(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let out = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%N %t"])
            .output()
            .expect("run sinfo");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let idle = text.lines().filter(|l| l.ends_with(" idle")).count();
        if idle >= NODES {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes still busy after {}s:\n{text}",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
