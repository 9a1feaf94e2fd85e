//! The trainer: the RWR loss formula, accumulation, memorisation, exact resume, NaN errors.
mod common;
use common::{data, tiny_cfg};
use std::sync::atomic::{AtomicBool, Ordering};

use rise_model::checkpoint::{init_random, named_tensors};
use rise_model::trainer::{Duration, TrainConfig, TrainError, TrainExample, Trainer};
use rise_model::Model;
use tch::{Kind, Tensor};

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        warmup: 0.1,
        weight_decay: 0.01,
        grad_clip: 1.0,
        batch_size: 2,
        grad_accum: 2,
        duration: Duration::Steps(steps),
        max_len: 64,
        seed: 3,
        checkpoint_every: 0,
        ..Default::default()
    }
}

fn grads(model: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The loss of RISE.md §5 computed independently: full-vocabulary logits, per-example
/// mean NLL over masked tokens, times the weight, averaged over examples.
fn reference_loss(model: &Model, examples: &[TrainExample]) -> Tensor {
    let mut parts = Vec::new();
    for e in examples {
        let ids: Vec<i64> = e.ids.iter().map(|&t| i64::from(t)).collect();
        let x = Tensor::from_slice(&ids).unsqueeze(0);
        let logp = model
            .forward(&x, None, None, None)
            .squeeze_dim(0)
            .log_softmax(-1, Kind::Float);
        let terms: Vec<Tensor> = ids
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(i, _)| e.loss_mask[*i])
            .map(|(i, &t)| -logp.get(i as i64 - 1).get(t))
            .collect();
        let mean_nll = Tensor::stack(&terms, 0).mean(Kind::Float);
        parts.push(mean_nll * f64::from(e.weight));
    }
    let total = Tensor::stack(&parts, 0).sum(Kind::Float);
    total / examples.len() as f64
}

#[test]
fn weights_and_masks_change_the_gradient_as_the_formula_says() {
    let cfg = tiny_cfg();
    let examples = data()[..4].to_vec();
    // lr 0 and no clipping: one step leaves the weights alone and the raw gradient in place.
    let train_cfg = TrainConfig {
        lr: 0.0,
        grad_clip: 0.0,
        weight_decay: 0.0,
        batch_size: 4,
        grad_accum: 1,
        warmup: 0.0,
        ..config(1)
    };
    let mut model = init_random(&cfg, 1);
    let progress = {
        let mut t = Trainer::new(&mut model, train_cfg.clone(), examples.clone()).unwrap();
        t.train_step().unwrap()
    };
    let got = grads(&model);

    let reference = init_random(&cfg, 1);
    let loss = reference_loss(&reference, &examples);
    assert!(
        (loss.double_value(&[]) - progress.loss).abs() < 1e-5,
        "loss {} vs formula {}",
        progress.loss,
        loss.double_value(&[])
    );
    loss.backward();
    for ((name, g), (_, want)) in got.iter().zip(grads(&reference)) {
        let diff = (g - &want).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "{name}: gradient differs from the formula by {diff:e}"
        );
    }

    // Zero weight: an example contributes nothing; a different mask: a different gradient.
    let mut zeroed = examples.clone();
    zeroed[1].weight = 0.0;
    let mut m2 = init_random(&cfg, 1);
    Trainer::new(&mut m2, train_cfg.clone(), zeroed.clone())
        .unwrap()
        .train_step()
        .unwrap();
    let mut m3 = init_random(&cfg, 1);
    let mut mask_moved = zeroed.clone();
    mask_moved[1].loss_mask = vec![false, true, true, true, true, false];
    Trainer::new(&mut m3, train_cfg.clone(), mask_moved)
        .unwrap()
        .train_step()
        .unwrap();
    for ((name, a), (_, b)) in grads(&m2).iter().zip(grads(&m3)) {
        assert!(
            a.equal(&b),
            "{name}: a zero-weight example's mask changed the gradient"
        );
    }
    let mut m4 = init_random(&cfg, 1);
    let mut masked = examples.clone();
    masked[0].loss_mask = vec![false, false, false, false, false, false, true, true];
    Trainer::new(&mut m4, train_cfg, masked)
        .unwrap()
        .train_step()
        .unwrap();
    assert!(
        grads(&m4)
            .iter()
            .zip(&got)
            .any(|((_, a), (_, b))| !a.allclose(b, 1e-6, 1e-7, false)),
        "the mask had no effect"
    );
}

#[test]
fn accumulation_equals_one_big_batch() {
    let cfg = tiny_cfg();
    let base = TrainConfig {
        grad_clip: 0.0,
        ..config(1)
    };
    let mut a = init_random(&cfg, 2);
    Trainer::new(
        &mut a,
        TrainConfig {
            batch_size: 4,
            grad_accum: 1,
            ..base.clone()
        },
        data(),
    )
    .unwrap()
    .train_step()
    .unwrap();
    let mut b = init_random(&cfg, 2);
    Trainer::new(
        &mut b,
        TrainConfig {
            batch_size: 1,
            grad_accum: 4,
            ..base
        },
        data(),
    )
    .unwrap()
    .train_step()
    .unwrap();
    for ((name, x), (_, y)) in named_tensors(&a).iter().zip(named_tensors(&b)) {
        let diff = (x - &y).abs().max().double_value(&[]);
        assert!(
            diff < 1e-6,
            "{name}: accumulation changed the update by {diff:e}"
        );
    }
}

#[test]
fn loss_falls_on_a_memorisation_task() {
    let cfg = tiny_cfg();
    let mut model = init_random(&cfg, 4);
    let mut t = Trainer::new(
        &mut model,
        TrainConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..config(60)
        },
        data(),
    )
    .unwrap();
    let mut losses = Vec::new();
    t.run(|p| losses.push(p.loss), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(losses.len(), 60);
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.2 * first,
        "loss did not fall enough: {first} -> {last}"
    );
}

#[test]
fn resume_after_interruption_is_byte_identical() {
    let cfg = tiny_cfg();
    let train_cfg = TrainConfig {
        checkpoint_every: 2,
        ..config(8)
    };
    let never = AtomicBool::new(false);

    let mut straight = init_random(&cfg, 5);
    Trainer::new(&mut straight, train_cfg.clone(), data())
        .unwrap()
        .run(|_| {}, &never)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let mut first = init_random(&cfg, 5);
    let err = Trainer::new(&mut first, train_cfg.clone(), data())
        .unwrap()
        .with_checkpoints(dir.path())
        .unwrap()
        .run(
            |p| {
                if p.step == 3 {
                    cancel.store(true, Ordering::SeqCst)
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 3 }), "{err}");
    drop(first);

    // A fresh process would start from the same initial weights and find the checkpoint.
    let mut resumed = init_random(&cfg, 5);
    let summary = Trainer::new(&mut resumed, train_cfg.clone(), data())
        .unwrap()
        .with_checkpoints(dir.path())
        .unwrap()
        .run(|_| {}, &never)
        .unwrap();
    assert_eq!((summary.resumed_from, summary.steps), (3, 8));
    for ((name, a), (_, b)) in named_tensors(&straight).iter().zip(named_tensors(&resumed)) {
        assert!(
            a.equal(&b),
            "{name}: resumed weights differ from the uninterrupted run"
        );
    }

    // The checkpoint refuses a run with other data.
    let mut other = init_random(&cfg, 5);
    let mut changed = data();
    changed[0].weight = 1.0;
    let err = Trainer::new(&mut other, train_cfg, changed)
        .unwrap()
        .with_checkpoints(dir.path())
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn nan_loss_is_an_error_naming_the_step() {
    let cfg = tiny_cfg();
    let mut model = init_random(&cfg, 6);
    tch::no_grad(|| {
        let _ = model.vs.variables()["model.norm.weight"]
            .shallow_clone()
            .fill_(f64::NAN);
    });
    let err = Trainer::new(&mut model, config(3), data())
        .unwrap()
        .run(|_| {}, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { step: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("step 1"), "{err}");
}

#[test]
fn bad_examples_are_named() {
    let cfg = tiny_cfg();
    let mut model = init_random(&cfg, 7);
    let mut bad = data();
    bad[2].loss_mask = vec![false; bad[2].ids.len()];
    let err = Trainer::new(&mut model, config(1), bad)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("examples[2].loss_mask"), "{err}");
    let mut bad = data();
    bad[1].ids.push(9999);
    bad[1].loss_mask.push(true);
    let err = Trainer::new(&mut model, config(1), bad)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("examples[1].ids") && err.contains("9999"),
        "{err}"
    );
}

#[test]
fn cosine_schedule_warms_up_then_decays() {
    let cfg = tiny_cfg();
    let mut model = init_random(&cfg, 8);
    let t = Trainer::new(
        &mut model,
        TrainConfig {
            lr: 1.0,
            warmup: 0.1,
            ..config(100)
        },
        data(),
    )
    .unwrap();
    assert_eq!(t.lr_at(0), 0.0);
    assert!((t.lr_at(5) - 0.5).abs() < 1e-12);
    assert!((t.lr_at(10) - 1.0).abs() < 1e-12);
    assert!((t.lr_at(55) - 0.5).abs() < 1e-12);
    assert!(t.lr_at(99) < 0.001);
}
