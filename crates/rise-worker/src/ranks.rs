//! Data-parallel stages: one process per rank.
//!
//! `sft` and `train` take `devices = N` (and `zero = 0|1`). `rise-worker stage SPEC` with
//! N > 1 is then a *launcher*: it picks a free port on 127.0.0.1 and starts N copies of itself
//! on the same spec, each with `RISE_RANK`, `RISE_WORLD_SIZE`, `RISE_MASTER_ADDR`,
//! `RISE_MASTER_PORT`, `RISE_LOCAL_RANK` and `RISE_LOCAL_WORLD_SIZE` set. Rank 0's stdout is
//! the launcher's (the engine's progress events and logs: only rank 0 reports); the others'
//! is discarded, and every rank's stderr is forwarded line by line as `rank R: ...`. When a
//! rank fails or dies, the launcher kills the others and fails naming it, so the engine
//! commits nothing; each rank is also killed if the launcher dies (`PR_SET_PDEATHSIG`).
//!
//! A rank (any process whose environment names one: the launcher's children, or a Slurm task
//! with `SLURM_PROCID`/`SLURM_NTASKS`, see `rise_dist::Rendezvous::from_env`) runs the stage
//! on its own copy of the spec: ranks other than 0 write their outputs under
//! `scratch/ranks/rank-R/` (rank 0's are the stage's), a `cuda` device becomes
//! `cuda:<local rank>`, and the stage's threads are shared among the ranks of one machine.
//! The trainer joins the group in [`join`].
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rise_model::dist::{
    self, Backend, ProcessGroup, Rendezvous, ENV_MASTER_ADDR, ENV_MASTER_PORT, ENV_RANK, ENV_WORLD,
};
use rise_stages::kinds::{self, TrainingParams};
use rise_stages::rise_engine::{StageContext, StageError, StageSpec};
use serde::Deserialize;

use crate::stages;

/// The rank among the ranks on this machine (the device index on a multi-GPU node).
pub const ENV_LOCAL_RANK: &str = "RISE_LOCAL_RANK";
/// The number of ranks on this machine (they share its CPU threads).
pub const ENV_LOCAL_WORLD: &str = "RISE_LOCAL_WORLD_SIZE";
/// Seconds a rank waits for the others in the rendezvous and in any collective (default 1800:
/// a checkpoint of a large model may keep rank 0 busy while the others wait at a barrier).
pub const ENV_TIMEOUT: &str = "RISE_DIST_TIMEOUT_S";

/// The data-parallel params of a stage: `(devices, zero)`, `(1, false)` for kinds that do
/// not train. The launcher decides before any stage code runs, so it resolves the params
/// against the kind's schema itself (bounds and defaults in one place: `TrainingParams`).
pub fn parallel_params(
    kind: &str,
    stage: &str,
    params: &serde_json::Value,
) -> Result<(usize, bool)> {
    let Some(schema) = kinds::worker_schema(kind) else {
        return Ok((1, false));
    };
    if !schema.fields.iter().any(|f| f.name == "devices") {
        return Ok((1, false));
    }
    let resolved = schema
        .resolve(params)
        .map_err(|e| anyhow::anyhow!("stage {stage}: {e}"))?;
    let p = TrainingParams::deserialize(&resolved)
        .with_context(|| format!("stage {stage}: training params"))?;
    Ok((p.devices.unwrap_or(1), p.zero == Some(1)))
}

/// `rise-worker stage SPEC`: a rank's run, a launcher's, or the plain one-process run.
pub fn run_stage(args: stages::Args) -> Result<()> {
    if let Some(rdv) = Rendezvous::from_env().context("data-parallel environment")? {
        return run_rank(args, &rdv);
    }
    let spec = StageSpec::read(&args.spec)?;
    let (devices, _) = parallel_params(&spec.kind, &spec.stage, &spec.params)?;
    if devices <= 1 {
        return stages::run(args);
    }
    launch(&args.spec, &spec, devices)
}

/// Runs this process's rank of the stage on a copy of the spec adjusted for the rank.
fn run_rank(args: stages::Args, rdv: &Rendezvous) -> Result<()> {
    let spec = StageSpec::read(&args.spec)?;
    let local_rank = env_usize(ENV_LOCAL_RANK).or_else(|| env_usize("SLURM_LOCALID"));
    let local_world = env_usize(ENV_LOCAL_WORLD).or_else(|| env_usize("SLURM_NTASKS_PER_NODE"));
    let spec = rank_spec(spec, rdv.rank, local_rank.unwrap_or(rdv.rank), local_world);
    let dir = spec.scratch_dir.join("ranks");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("rank-{}.spec.json", rdv.rank));
    spec.write(&path)?;
    stages::run(stages::Args { spec: path })
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// The spec rank `rank` runs: outputs of ranks other than 0 go to scratch (every rank
/// computes the same model; only rank 0's is the stage's), `cuda` becomes the local rank's
/// device, and the threads are divided among the ranks of the machine.
pub fn rank_spec(
    mut spec: StageSpec,
    rank: usize,
    local_rank: usize,
    local_world: Option<usize>,
) -> StageSpec {
    if rank != 0 {
        spec.out_dir = spec
            .scratch_dir
            .join("ranks")
            .join(format!("rank-{rank}"))
            .join("out");
    }
    if spec.device.trim() == "cuda" {
        spec.device = format!("cuda:{local_rank}");
    }
    if let Some(n) = local_world.filter(|&n| n > 0) {
        spec.threads = (spec.threads / n).max(1);
    }
    spec
}

/// Joins the stage's group when this process is a rank of one: the group and `zero`, after
/// which the trainer runs data parallel. `None` in a one-process run.
pub fn join(ctx: &StageContext) -> Result<Option<(ProcessGroup, bool)>, StageError> {
    let fail = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
    let Some(rdv) = Rendezvous::from_env().map_err(|e| fail(&e))? else {
        return Ok(None);
    };
    let (_, zero) = parallel_params(&ctx.kind, &ctx.stage, &ctx.params).map_err(|e| fail(&e))?;
    let device = rise_model::parse_device(ctx.device.trim()).unwrap_or(tch::Device::Cpu);
    let timeout = Duration::from_secs(env_usize(ENV_TIMEOUT).unwrap_or(1800) as u64);
    let group =
        ProcessGroup::init(&rdv, Backend::for_device(device), timeout).map_err(|e| fail(&e))?;
    ctx.log(format!(
        "data parallel: rank {} of {} ({:?}, master {}:{}){}",
        rdv.rank,
        rdv.world,
        group.backend(),
        rdv.addr,
        rdv.port,
        if zero {
            ", ZeRO-1 optimizer shards"
        } else {
            ""
        }
    ));
    Ok(Some((group, zero)))
}

/// The last stderr lines each rank wrote (for the launcher's error).
type Tails = Arc<Mutex<Vec<Vec<String>>>>;

const TAIL_LINES: usize = 8;

/// Starts `devices` ranks of the stage and waits for all; the first to fail stops the rest.
fn launch(spec_path: &Path, spec: &StageSpec, devices: usize) -> Result<()> {
    let exe = std::env::current_exe().context("locating rise-worker")?;
    let port = dist::free_port().context("finding a free port for the ranks' rendezvous")?;
    let tails: Tails = Arc::new(Mutex::new(vec![Vec::new(); devices]));
    let mut children: Vec<Option<Child>> = Vec::with_capacity(devices);
    let mut forwarders = Vec::with_capacity(devices);
    for rank in 0..devices {
        let child = spawn_rank(&exe, spec_path, rank, devices, port);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                stop(&mut children);
                return Err(e).with_context(|| {
                    format!("stage {}: starting rank {rank} of {devices}", spec.stage)
                });
            }
        };
        let stderr = child.stderr.take().expect("stderr is piped");
        let tails = Arc::clone(&tails);
        forwarders.push(std::thread::spawn(move || forward(rank, stderr, &tails)));
        children.push(Some(child));
    }
    // Poll rather than wait on one: whichever rank fails first must be seen first.
    let mut failures: Vec<(usize, ExitStatus)> = Vec::new();
    let mut grace = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait().context("waiting for a rank")? {
                *slot = None;
                if !status.success() {
                    failures.push((rank, status));
                }
            }
        }
        // A rank that dies takes the others' collectives down with it, and they exit with
        // errors of their own soon after: give them a moment, so that the cause (a rank
        // killed by a signal, else the first to fail) is told apart from its consequences.
        if !failures.is_empty() {
            let since = *grace.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > Duration::from_millis(300) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(&mut children);
    for f in forwarders {
        let _ = f.join();
    }
    if failures.is_empty() {
        return Ok(());
    }
    // Stable: among equals, the first seen stays first.
    failures.sort_by_key(|(_, status)| {
        use std::os::unix::process::ExitStatusExt;
        status.signal().is_none()
    });
    let tails = tails.lock().unwrap_or_else(|e| e.into_inner());
    let said = |rank: usize| {
        tails[rank]
            .iter()
            .rev()
            .find(|l| l.contains("error"))
            .or_else(|| tails[rank].last())
            .map(|l| format!(": {l}"))
            .unwrap_or_default()
    };
    let (rank, status) = failures[0];
    let mut msg = format!(
        "stage {}: rank {rank} of {devices} {}{}",
        spec.stage,
        describe(status),
        said(rank)
    );
    for &(other, status) in &failures[1..] {
        msg.push_str(&format!("; then rank {other} {}", describe(status)));
    }
    msg.push_str("; the other ranks were stopped");
    bail!(msg)
}

fn spawn_rank(exe: &Path, spec_path: &Path, rank: usize, world: usize, port: u16) -> Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("stage")
        .arg(spec_path)
        .env(ENV_RANK, rank.to_string())
        .env(ENV_WORLD, world.to_string())
        .env(ENV_MASTER_ADDR, "127.0.0.1")
        .env(ENV_MASTER_PORT, port.to_string())
        .env(ENV_LOCAL_RANK, rank.to_string())
        .env(ENV_LOCAL_WORLD, world.to_string())
        .stdin(Stdio::null())
        .stdout(if rank == 0 {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A rank must not outlive its launcher (the engine kills the launcher's process
            // group on cancel, but a SIGKILL of the launcher alone would leave the ranks).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

/// Copies rank `rank`'s stderr to ours, prefixed, keeping its last lines.
fn forward(rank: usize, stderr: std::process::ChildStderr, tails: &Tails) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "rank {rank}: {text}");
        }
        let mut t = tails.lock().unwrap_or_else(|e| e.into_inner());
        let tail = &mut t[rank];
        tail.push(text);
        if tail.len() > TAIL_LINES {
            tail.remove(0);
        }
    }
}

/// Kills and reaps every rank still running.
fn stop(children: &mut [Option<Child>]) {
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
    }
    for slot in children.iter_mut() {
        if let Some(mut child) = slot.take() {
            let _ = child.wait();
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("failed (exit status {code})"),
        (None, Some(sig)) => format!("died (killed by signal {sig})"),
        _ => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn spec(kind: &str, params: serde_json::Value) -> StageSpec {
        StageSpec {
            pipeline: "p".into(),
            stage: "s".into(),
            kind: kind.into(),
            kind_version: 1,
            params,
            inputs: BTreeMap::new(),
            out_dir: PathBuf::from("/o"),
            scratch_dir: PathBuf::from("/s"),
            seed: 0,
            device: "cuda".into(),
            threads: 4,
        }
    }

    #[test]
    fn devices_and_zero_are_read_for_training_kinds_only() {
        let p = serde_json::json!({"devices": 2, "zero": 1});
        let read = |kind: &str, p: &serde_json::Value| parallel_params(kind, "s", p);
        assert_eq!(read("train", &p).unwrap(), (2, true));
        assert_eq!(read("sft", &serde_json::json!({})).unwrap(), (1, false));
        assert_eq!(
            read("sft", &serde_json::json!({"devices": 3})).unwrap(),
            (3, false)
        );
        assert_eq!(read("sample", &serde_json::json!({})).unwrap(), (1, false));
        assert_eq!(read("shell", &p).unwrap(), (1, false));
        for bad in [
            serde_json::json!({"devices": 0}),
            serde_json::json!({"devices": 1.5}),
            serde_json::json!({"zero": 2}),
        ] {
            let err = read("sft", &bad).unwrap_err().to_string();
            assert!(err.contains("stage s: params."), "{err}");
        }
    }

    #[test]
    fn a_rank_spec_moves_outputs_devices_and_threads() {
        let s = spec("sft", serde_json::json!({}));
        let r0 = rank_spec(s.clone(), 0, 0, Some(2));
        assert_eq!(r0.out_dir, PathBuf::from("/o"));
        assert_eq!((r0.device.as_str(), r0.threads), ("cuda:0", 2));
        let r1 = rank_spec(s.clone(), 1, 1, Some(2));
        assert_eq!(r1.out_dir, PathBuf::from("/s/ranks/rank-1/out"));
        assert_eq!(r1.device, "cuda:1");
        let mut one_card = s;
        one_card.device = "cuda:0".into();
        // Two ranks on one named card stay there.
        assert_eq!(rank_spec(one_card, 1, 1, Some(8)).device, "cuda:0");
    }
}
