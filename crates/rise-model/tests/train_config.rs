//! The trainer's config comes from the stage params (rise-stages' `TrainingParams`): the same
//! defaults, the same bounds, epochs counted as the stages count them, and one policy for
//! over-long examples (refused here, dropped by the stages).
use rise_model::checkpoint::init_random;
use rise_model::trainer::{Duration, TrainConfig, TrainError, TrainExample, Trainer};
use rise_model::{LlamaConfig, Model};
use rise_stages::kinds::{SftParams, TrainParams};
use rise_stages::params::defaults;

fn model() -> Model {
    let mut c = LlamaConfig::tiny(48);
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    init_random(&c, 1)
}

fn examples(n: usize, len: usize) -> Vec<TrainExample> {
    (0..n)
        .map(|i| TrainExample {
            ids: (0..len as u32).map(|t| (t + i as u32) % 40 + 1).collect(),
            loss_mask: (0..len).map(|t| t > 0).collect(),
            weight: 1.0,
        })
        .collect()
}

#[test]
fn the_config_is_the_stage_params() {
    let train: TrainParams = defaults(TrainParams::FIELDS).unwrap();
    let c = TrainConfig::from(&train.training);
    let p = &train.training;
    assert_eq!(
        (c.lr, c.warmup, c.weight_decay, c.grad_clip),
        (p.lr, p.warmup, p.weight_decay, p.grad_clip)
    );
    assert_eq!(
        (c.batch_size, c.grad_accum, c.max_len, c.checkpoint_every),
        (p.batch_size, p.grad_accum, p.max_len, p.checkpoint_every)
    );
    assert_eq!(c.duration, Duration::Epochs(p.epochs));
    // The library's default is the train kind's: one default per param.
    assert_eq!(TrainConfig::default(), c);
    let sft: SftParams = defaults(SftParams::FIELDS).unwrap();
    assert_eq!(TrainConfig::from(&sft.training).lr, sft.training.lr);
    assert_ne!(sft.training.lr, train.training.lr);
}

#[test]
fn fractional_epochs_are_full_steps() {
    // 10 examples, 4 per step: 2.5 epochs = 25 examples = 7 steps (the last one full, from
    // the next pass), as the stages counted before the trainer took epochs.
    let mut m = model();
    let config = TrainConfig {
        batch_size: 2,
        grad_accum: 2,
        duration: Duration::Epochs(2.5),
        max_len: 64,
        ..TrainConfig::default()
    };
    let t = Trainer::new(&mut m, config, examples(10, 6)).unwrap();
    assert_eq!(t.total_steps(), 7);
    // At least one step, however short the run.
    let config = TrainConfig {
        duration: Duration::Epochs(0.01),
        ..TrainConfig::default()
    };
    assert_eq!(
        Trainer::new(&mut m, config, examples(3, 6))
            .unwrap()
            .total_steps(),
        1
    );
}

#[test]
fn the_bounds_are_the_stage_params() {
    let mut m = model();
    let refused = |m: &mut Model, config: TrainConfig, field: &str| match Trainer::new(
        m,
        config,
        examples(2, 6),
    ) {
        Err(TrainError::Invalid { field: f, message }) => {
            assert_eq!(f, field, "{message}")
        }
        Err(e) => panic!("{field}: {e}"),
        Ok(_) => panic!("{field}: accepted"),
    };
    // What `params.lr` refuses, the trainer refuses: above 1e6, below 0.
    let lr = |lr| TrainConfig {
        lr,
        ..TrainConfig::default()
    };
    refused(&mut m, lr(2e6), "lr");
    refused(&mut m, lr(-1.0), "lr");
    refused(&mut m, lr(f64::NAN), "lr");
    assert!(Trainer::new(&mut m, lr(0.0), examples(2, 6)).is_ok());
    let warmup = TrainConfig {
        warmup: 1.5,
        ..TrainConfig::default()
    };
    refused(&mut m, warmup, "warmup");
    let batch = TrainConfig {
        batch_size: 0,
        ..TrainConfig::default()
    };
    refused(&mut m, batch, "batch_size");
}

#[test]
fn over_long_examples_are_refused_not_truncated() {
    let mut m = model();
    let config = TrainConfig {
        max_len: 8,
        ..TrainConfig::default()
    };
    let mut data = examples(3, 6);
    data.push(examples(1, 9).remove(0));
    match Trainer::new(&mut m, config.clone(), data) {
        Err(TrainError::Invalid { field, message }) => {
            assert_eq!(field, "examples[3].ids");
            assert!(message.contains("max_len = 8"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(Trainer::new(&mut m, config, examples(3, 8)).is_ok());
}
