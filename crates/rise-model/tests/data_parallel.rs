//! Data-parallel training on 2 ranks (Gloo on 127.0.0.1, one thread per rank in this
//! process): equivalence with one process, ZeRO-1 against plain, exact resume.
//!
//! Tolerance: when each rank's slice is one of the single process's micro-batches
//! (`batch_size × world = batch_size × grad_accum`), the 2-rank gradient is the same fp32 sum
//! of the same per-micro-batch gradients, and the weights are bit-identical. Otherwise (one
//! process runs one batch of 4, each rank a batch of 2) the sums are taken in another order and
//! differ by fp32 rounding (~1e-7 relative), which AdamW passes on to the weights. We require
//! max |Δw| ≤ 1e-5 (weights are O(0.1), lr 3e-3) after 4, 16 and 64 steps alike: the bound
//! does not grow with the number of steps (measured: 1.1e-8, 1.2e-7, 3.6e-7; the rounding
//! differences wander like a random walk, and the cosine schedule's decaying lr caps them).
mod common;
use common::{data, tiny_cfg};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as Timeout;

use rise_model::checkpoint::{init_random, named_tensors};
use rise_model::dist::{free_port, Backend, ProcessGroup, Rendezvous};
use rise_model::trainer::{DataParallel, Duration, TrainConfig, TrainError, Trainer};
use rise_model::Model;

const TOL: f32 = 1e-5;

fn config(duration: Duration) -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        warmup: 0.1,
        weight_decay: 0.01,
        grad_clip: 1.0,
        batch_size: 2,
        grad_accum: 2,
        duration,
        max_len: 64,
        seed: 3,
        checkpoint_every: 0,
        ..Default::default()
    }
}

type Weights = Vec<(String, Vec<f32>)>;

fn weights(model: &Model) -> Weights {
    named_tensors(model)
        .into_iter()
        .map(|(n, t)| (n, Vec::<f32>::try_from(t.reshape([-1])).unwrap()))
        .collect()
}

fn max_diff(a: &Weights, b: &Weights) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// What a run reports: its weights, the per-step losses, its optimizer state size.
struct Outcome {
    weights: Weights,
    losses: Vec<f64>,
    state_numel: usize,
    result: Result<usize, String>,
}

/// Trains a fresh copy of the tiny model (seed 5) in one process.
fn single(train: TrainConfig) -> Outcome {
    let mut model = init_random(&tiny_cfg(), 5);
    let mut t = Trainer::new(&mut model, train, data()).unwrap();
    let state_numel = t.optimizer_state_numel();
    let mut losses = Vec::new();
    let never = AtomicBool::new(false);
    let result = t
        .run(|p| losses.push(p.loss), &never)
        .map(|s| s.steps)
        .map_err(|e| e.to_string());
    drop(t);
    Outcome {
        weights: weights(&model),
        losses,
        state_numel,
        result,
    }
}

/// Trains on `world` ranks, one thread each; `cancel_at`: every rank cancels after that step.
fn parallel(
    world: usize,
    train: TrainConfig,
    zero: bool,
    checkpoints: Option<std::path::PathBuf>,
    cancel_at: Option<usize>,
) -> Vec<Outcome> {
    let port = free_port().unwrap();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let train = train.clone();
            let checkpoints = checkpoints.clone();
            std::thread::spawn(move || {
                let rdv = Rendezvous::new("127.0.0.1", port, rank, world).unwrap();
                let group =
                    ProcessGroup::init(&rdv, Backend::Gloo, Timeout::from_secs(60)).unwrap();
                let mut model = init_random(&tiny_cfg(), 5);
                let dp = DataParallel {
                    group: &group,
                    zero,
                };
                let mut t = Trainer::new_data_parallel(&mut model, train, data(), dp).unwrap();
                if let Some(dir) = &checkpoints {
                    t = t.with_checkpoints(dir).unwrap();
                }
                let state_numel = t.optimizer_state_numel();
                let mut losses = Vec::new();
                let cancel = AtomicBool::new(false);
                let result = t
                    .run(
                        |p| {
                            losses.push(p.loss);
                            if Some(p.step) == cancel_at {
                                cancel.store(true, Ordering::SeqCst);
                            }
                        },
                        &cancel,
                    )
                    .map(|s| s.steps)
                    .map_err(|e| match e {
                        TrainError::Cancelled { step } => format!("cancelled at {step}"),
                        e => e.to_string(),
                    });
                drop(t);
                Outcome {
                    weights: weights(&model),
                    losses,
                    state_numel,
                    result,
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_ranks_match_one_process_within_fp32_tolerance_that_does_not_grow() {
    // One batch of 4 in one process, a batch of 2 on each rank: another summation order.
    let cfg = |steps| TrainConfig {
        batch_size: 4,
        grad_accum: 1,
        ..config(Duration::Steps(steps))
    };
    for steps in [4, 16, 64] {
        let one = single(cfg(steps));
        let two = parallel(2, cfg(steps), false, None, None);
        assert_eq!(one.result, Ok(steps));
        // Every rank holds the same weights, bit for bit.
        assert_eq!(two[0].weights, two[1].weights);
        assert_eq!(two[0].result, Ok(steps));
        let d = max_diff(&one.weights, &two[0].weights);
        eprintln!("{steps} steps: max |w1 - w2| = {d:e}");
        assert!(d <= TOL, "{steps} steps: max |Δw| = {d:e} > {TOL:e}");
        // The weights did move (the comparison is not between two untouched models).
        let start = weights(&init_random(&tiny_cfg(), 5));
        assert!(max_diff(&start, &one.weights) > 1e-3);
        // The loss is reduced across ranks: the global batch's, on every rank.
        for r in &two {
            for (a, b) in one.losses.iter().zip(&r.losses) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "loss {a} vs {b}");
            }
        }
    }
}

#[test]
fn two_ranks_each_running_one_micro_batch_are_bit_identical_to_accumulation() {
    // batch 2 × accumulation 2 in one process; each rank's slice is one of those batches.
    let one = single(config(Duration::Steps(6)));
    let two = parallel(2, config(Duration::Steps(6)), false, None, None);
    assert_eq!(one.weights, two[0].weights);
    assert_eq!(one.weights, two[1].weights);
}

#[test]
fn a_short_last_batch_leaves_a_rank_without_examples() {
    // 5 examples, 4 per step, one epoch: step 2 holds one example, all on rank 0.
    let one = single(config(Duration::ExactEpochs(1)));
    let two = parallel(2, config(Duration::ExactEpochs(1)), false, None, None);
    assert_eq!(one.result, Ok(2));
    assert_eq!(two[1].result, Ok(2));
    assert_eq!(two[0].weights, two[1].weights);
    let d = max_diff(&one.weights, &two[1].weights);
    assert!(d <= TOL, "max |Δw| = {d:e}");
}

#[test]
fn zero_one_gives_the_same_weights_with_half_the_optimizer_state() {
    let plain = parallel(2, config(Duration::Steps(6)), false, None, None);
    let zero = parallel(2, config(Duration::Steps(6)), true, None, None);
    // AdamW is elementwise: sharding it changes no bit.
    assert_eq!(plain[0].weights, zero[0].weights);
    assert_eq!(zero[0].weights, zero[1].weights);
    let one = single(config(Duration::Steps(6)));
    for r in &zero {
        assert_eq!(r.state_numel * 2, plain[0].state_numel);
    }
    // Plain data parallel holds what one process holds (plus < world elements of padding).
    assert!(
        plain[0].state_numel >= one.state_numel && plain[0].state_numel < one.state_numel + 2 * 2
    );
}

#[test]
fn resume_after_interruption_is_byte_identical_on_two_ranks() {
    for zero in [false, true] {
        let train = TrainConfig {
            checkpoint_every: 2,
            ..config(Duration::Steps(8))
        };
        let straight = parallel(2, train.clone(), zero, None, None);
        let dir = tempfile::tempdir().unwrap();
        let first = parallel(2, train.clone(), zero, Some(dir.path().into()), Some(3));
        for r in &first {
            assert_eq!(r.result, Err("cancelled at 3".to_string()));
        }
        let latest = std::fs::read_to_string(dir.path().join("latest")).unwrap();
        let ckpt = dir.path().join(latest.trim());
        for (file, present) in [
            ("optimizer.safetensors", !zero),
            ("optimizer.rank-0-of-2.safetensors", zero),
            ("optimizer.rank-1-of-2.safetensors", zero),
        ] {
            assert_eq!(ckpt.join(file).is_file(), present, "zero={zero}: {file}");
        }
        let resumed = parallel(2, train.clone(), zero, Some(dir.path().into()), None);
        assert_eq!(resumed[0].result, Ok(8));
        assert_eq!(resumed[0].losses.len(), 5, "zero={zero}: resumed at step 3");
        assert_eq!(resumed[0].weights, straight[0].weights, "zero={zero}");
        assert_eq!(resumed[1].weights, straight[1].weights, "zero={zero}");
    }
}

#[test]
fn a_sharded_checkpoint_resumes_in_one_process() {
    // zero=1 on 2 ranks for 3 steps, then one process finishes: the moments are reassembled
    // from the shards, so it continues as the 2-rank run would (within the tolerance).
    let train = TrainConfig {
        checkpoint_every: 1,
        ..config(Duration::Steps(6))
    };
    let straight = parallel(2, train.clone(), true, None, None);
    let dir = tempfile::tempdir().unwrap();
    parallel(2, train.clone(), true, Some(dir.path().into()), Some(3));
    let mut model = init_random(&tiny_cfg(), 5);
    let never = AtomicBool::new(false);
    let summary = Trainer::new(&mut model, train, data())
        .unwrap()
        .with_checkpoints(dir.path())
        .unwrap()
        .run(|_| {}, &never)
        .unwrap();
    assert_eq!(summary.resumed_from, 3);
    let d = max_diff(&weights(&model), &straight[0].weights);
    assert!(d <= TOL, "max |Δw| = {d:e}");
}
