//! Data-parallel training throughput on CPU, for `benches/model_dp.sh`: the trainer on
//! `LlamaConfig::tiny` (as `model_bench`'s training row: a global batch of 16 × 256 tokens,
//! AdamW, clip 1.0), in 1 process and in N processes (Gloo over 127.0.0.1), each with the
//! given number of libtorch threads.
//!
//! `dp_bench RANKS THREADS [zero]` prints one JSON line: tokens per second of the global batch
//! (timed over 5 steps after one warm-up step, by rank 0, between barriers). With RANKS > 1 it
//! starts RANKS copies of itself as the ranks.
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration as Timeout, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rise_model::dist::{free_port, Backend, ProcessGroup, Rendezvous};
use rise_model::trainer::{DataParallel, Duration, TrainConfig, TrainExample, Trainer};
use rise_model::{init_random, LlamaConfig};

const VOCAB: usize = 1024;
const BATCH: usize = 16;
const LEN: usize = 256;
const STEPS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: dp_bench RANKS THREADS [zero]";
    let ranks: usize = args.get(1).ok_or(usage)?.parse()?;
    let threads: i32 = args.get(2).ok_or(usage)?.parse()?;
    let zero = args.get(3).is_some_and(|a| a == "zero");
    tch::set_num_threads(threads);
    let rdv = Rendezvous::from_env()?;
    if rdv.is_none() && ranks > 1 {
        // The launcher: RANKS copies of this program; rank 0 prints the figure.
        let port = free_port()?;
        let exe = std::env::current_exe()?;
        let children: Vec<_> = (0..ranks)
            .map(|r| {
                Command::new(&exe)
                    .args(&args[1..])
                    .env("RISE_RANK", r.to_string())
                    .env("RISE_WORLD_SIZE", ranks.to_string())
                    .env("RISE_MASTER_PORT", port.to_string())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                return Err("a rank failed".into());
            }
        }
        return Ok(());
    }
    let group = match &rdv {
        Some(rdv) => Some(ProcessGroup::init(
            rdv,
            Backend::Gloo,
            Timeout::from_secs(300),
        )?),
        None => None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let examples: Vec<TrainExample> = (0..BATCH)
        .map(|_| TrainExample {
            ids: (0..LEN)
                .map(|_| rng.random_range(3..VOCAB as u32))
                .collect(),
            loss_mask: vec![true; LEN],
            weight: 1.0,
        })
        .collect();
    let mut model = init_random(&LlamaConfig::tiny(VOCAB), 1);
    let cfg = TrainConfig {
        lr: 1e-4,
        warmup: 0.0,
        batch_size: BATCH,
        duration: Duration::Steps(STEPS + 1),
        max_len: LEN,
        ..Default::default()
    };
    let mut trainer = match &group {
        Some(g) => {
            Trainer::new_data_parallel(&mut model, cfg, examples, DataParallel { group: g, zero })?
        }
        None => Trainer::new(&mut model, cfg, examples)?,
    };
    let mut start = None;
    trainer.run(
        |p| {
            if p.step == 1 {
                start = Some(Instant::now()); // the first step warms up allocators
            }
        },
        &AtomicBool::new(false),
    )?;
    let secs = start.ok_or("no steps ran")?.elapsed().as_secs_f64();
    drop(trainer);
    if let Some(g) = &group {
        g.barrier()?;
    }
    if group.as_ref().is_none_or(|g| g.rank() == 0) {
        let tokens = BATCH * LEN * STEPS;
        println!(
            "{}",
            serde_json::json!({
                "ranks": ranks.max(1),
                "threads_per_rank": threads,
                "zero": zero,
                "train_tokens": tokens,
                "train_secs": secs,
                "train_tokens_per_s": tokens as f64 / secs,
            })
        );
    }
    Ok(())
}
