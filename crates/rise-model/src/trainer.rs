//! Full fine-tuning with the reward-weighted loss of RISE.md §5.
//!
//! Loss of one example = mean token NLL over its masked (trained) tokens × its weight;
//! the loss of an optimizer step = the mean over the step's examples (no weight
//! normalisation). AdamW (PyTorch semantics, decoupled weight decay), cosine schedule with
//! linear warmup (transformers' `get_cosine_schedule_with_warmup`), global-norm gradient
//! clipping, gradient accumulation. fp32 on the CPU; on CUDA, fp32 master weights with bf16
//! compute.
//!
//! AdamW is written out here rather than taken from tch: tch's optimizer hides its moment
//! tensors, and exact resume needs to save and restore them.
//!
//! Checkpoints (`checkpoint_every` steps, and on cancellation) hold the weights, both Adam
//! moments, the step, the data-order seed and position, and a fingerprint of the data and
//! config; they are written to a temporary directory and renamed, then published through a
//! `latest` file that is itself replaced atomically. On the CPU, N steps + resume + N steps
//! gives byte-identical weights to 2N uninterrupted steps.
//!
//! Data parallel ([`Trainer::new_data_parallel`], one process per rank over a
//! [`rise_dist::ProcessGroup`]): every rank takes a disjoint contiguous slice of each global
//! batch (the global batch is the single-process one, so `devices` changes no step), scales its
//! loss by the *global* example count, and after backward the flat gradient buffer (with the
//! step's loss and token count appended) is summed by one all-reduce: the result is the
//! gradient of the global mean loss, as in one process up to fp32 summation order. Clipping and
//! AdamW then run identically on every rank. With `zero`, each rank keeps the AdamW moments of
//! its `1/world` slice of the (padded) flat buffer only, updates that slice of the weights, and
//! an all-gather assembles the weights: AdamW is elementwise, so this gives byte-identical
//! weights to `zero = false`. Rank 0 writes checkpoints; with `zero` every rank writes its
//! moment shard into the same checkpoint directory between two barriers. A checkpoint of either
//! form resumes a run of any world size or `zero` setting (the moments are reassembled).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use rise_dist::ProcessGroup;

use rise_stages::kinds::{TrainParams, TrainingParams};
use rise_stages::params::{check_value, defaults};

use crate::batch::{right_pad, RightPadded};
use crate::checkpoint::{self, CheckpointError};
use crate::llama::Model;

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duration {
    /// Passes over the examples, fractional allowed, as the `epochs` stage param means them:
    /// ⌈epochs × examples / (batch_size × grad_accum)⌉ optimizer steps (at least one), every
    /// one full (the last takes what it lacks from the next pass). The trainer records it as
    /// the [`Duration::Steps`] it makes.
    Epochs(f64),
    /// Whole passes over the examples, exactly: the last step may hold fewer examples.
    ExactEpochs(usize),
    /// Optimizer steps (the data order wraps into new epochs as needed).
    Steps(usize),
}

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Fraction of the steps spent warming up linearly from 0. (`warmup_frac` in the
    /// checkpoints' JSON, as before it took the stage param's name: their fingerprints hold it.)
    #[serde(rename = "warmup_frac")]
    pub warmup: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (`0` = no clipping).
    pub grad_clip: f64,
    /// Examples per forward/backward pass.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = `batch_size * grad_accum`).
    pub grad_accum: usize,
    /// How long to train.
    pub duration: Duration,
    /// The longest example, in tokens. A longer one is refused, never truncated (truncation
    /// could cut away the trained answer): callers drop them first, as the `sft` and `train`
    /// stages do (and count them).
    pub max_len: usize,
    /// Seeds the data order (a fresh permutation per epoch).
    pub seed: u64,
    /// Write a checkpoint every this many steps (`0` = only on cancellation).
    pub checkpoint_every: usize,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
}

impl Default for TrainConfig {
    /// The `train` stage kind's defaults (rise-stages' `TrainParams`, where each is written
    /// once), seed 0.
    fn default() -> Self {
        let p: TrainParams =
            defaults(TrainParams::FIELDS).expect("every param of the train kind has a default");
        TrainConfig::from(&p.training)
    }
}

impl From<&TrainingParams> for TrainConfig {
    /// A stage's training params (`sft`, `train`), field by field; the seed is the stage's
    /// to set. Adam's β and ε are PyTorch's, as in RISE's release (not stage params).
    fn from(p: &TrainingParams) -> Self {
        TrainConfig {
            lr: p.lr,
            warmup: p.warmup,
            weight_decay: p.weight_decay,
            grad_clip: p.grad_clip,
            batch_size: p.batch_size,
            grad_accum: p.grad_accum,
            duration: Duration::Epochs(p.epochs),
            max_len: p.max_len,
            seed: 0,
            checkpoint_every: p.checkpoint_every,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One training example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainExample {
    /// Token ids of the whole conversation.
    pub ids: Vec<u32>,
    /// `loss_mask[i]`: whether predicting token `i` (from tokens `< i`) carries loss.
    /// `loss_mask[0]` is ignored: nothing predicts the first token.
    pub loss_mask: Vec<bool>,
    /// Multiplies this example's mean token loss (RISE: `exp(reward / tau)`).
    pub weight: f32,
}

/// Reported after every optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// Steps completed (1-based after the first step).
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// This step's loss (weighted mean over its examples).
    pub loss: f64,
    /// The learning rate used for this step.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (real, not padding) per second during this step.
    pub tokens_per_sec: f64,
}

/// The outcome of [`Trainer::run`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSummary {
    /// Steps completed in total (including those before a resume).
    pub steps: usize,
    /// The step the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// The last step's loss.
    pub final_loss: f64,
}

/// Training failures.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config field or example is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (e.g. `batch_size`, `examples[3].loss_mask`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The loss or gradient became NaN or infinite.
    #[error(
        "non-finite {what} ({value}) at step {step}: lower the learning rate or check the data"
    )]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value.
        value: f64,
        /// The step (1-based) that produced it.
        step: usize,
    },
    /// The cancellation flag was raised; a checkpoint was written first when a checkpoint
    /// directory is configured.
    #[error("training cancelled after step {step}")]
    Cancelled {
        /// Steps completed.
        step: usize,
    },
    /// A checkpoint does not belong to this run (other data or config).
    #[error("checkpoint {path} does not match this run: {message}")]
    Mismatch {
        /// The checkpoint directory.
        path: PathBuf,
        /// Which field differs.
        message: String,
    },
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A libtorch call failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A collective failed (typically: another rank died).
    #[error("data parallel: {0}")]
    Dist(#[from] rise_dist::DistError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TrainError {
    TrainError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The JSON half of a checkpoint.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    /// Examples consumed so far (position in the epoch-wise shuffled stream).
    data_position: usize,
    /// The data-order RNG: a ChaCha8 seeded with `(seed, epoch)` per epoch, so the seed and
    /// the position determine the whole future order.
    data_seed: u64,
    data_fingerprint: String,
    config: TrainConfig,
    last_loss: f64,
    /// 0: the moments are in `optimizer.safetensors` (per parameter); n > 0: in n flat shards
    /// `optimizer.rank-R-of-N.safetensors` (data parallel with `zero`).
    #[serde(default)]
    optimizer_shards: usize,
}

/// Data-parallel training over a c10d process group (one process per rank).
#[derive(Clone, Copy)]
pub struct DataParallel<'g> {
    /// The group; its size is the number of ranks sharing each global batch.
    pub group: &'g ProcessGroup,
    /// ZeRO stage 1: each rank keeps the AdamW moments of its slice of the weights only.
    pub zero: bool,
}

/// The shard file of rank `rank` of `world`.
fn shard_file(rank: usize, world: usize) -> String {
    format!("optimizer.rank-{rank}-of-{world}.safetensors")
}

/// The trainer's flat buffers: parameters, gradients gathered per step, AdamW moments.
struct FlatState {
    /// Every parameter, then zeros up to a multiple of the world size (so that the buffer
    /// splits into equal shards for the all-gather; the padding's gradient is zero, so AdamW
    /// leaves it at zero).
    params: Tensor,
    /// The moments of the whole buffer, or with `zero` of this rank's shard only.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// `(offset, shape)` of each parameter in the buffers.
    layout: Vec<(i64, Vec<i64>)>,
    /// Elements of real parameters (the buffer holds `padded`).
    total: i64,
    padded: i64,
    /// The moments cover `shard_start..shard_start + shard_len` of the buffer.
    shard_start: i64,
    shard_len: i64,
}

impl FlatState {
    /// Moves every parameter into one buffer and makes it a view of its segment
    /// (`set_data` keeps the variable, so the model and the `VarStore` see the move).
    /// `(rank, world, zero)` size the padding and the moments.
    fn adopt(params: &mut [(String, Tensor)], rank: usize, world: usize, zero: bool) -> FlatState {
        let total: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
        let world = world.max(1) as i64;
        let padded = (total + world - 1) / world * world;
        let (shard_start, shard_len) = if zero {
            (rank as i64 * (padded / world), padded / world)
        } else {
            (0, padded)
        };
        let opts = params
            .first()
            .map_or((Kind::Float, Device::Cpu), |(_, p)| (p.kind(), p.device()));
        let flat = Tensor::zeros([padded], opts);
        let mut layout = Vec::with_capacity(params.len());
        let mut offset = 0;
        tch::no_grad(|| {
            for (_, p) in params.iter_mut() {
                let n = p.numel() as i64;
                let shape = p.size();
                let mut view = flat.narrow(0, offset, n).view(shape.as_slice());
                view.copy_(p);
                p.set_data(&view);
                layout.push((offset, shape));
                offset += n;
            }
        });
        FlatState {
            exp_avg: Tensor::zeros([shard_len], opts),
            exp_avg_sq: Tensor::zeros([shard_len], opts),
            params: flat,
            layout,
            total,
            padded,
            shard_start,
            shard_len,
        }
    }

    /// Whether the moments cover the whole buffer.
    fn full_moments(&self) -> bool {
        self.shard_len == self.padded
    }

    /// Parameter `i`'s segment of `buffer`, shaped like the parameter.
    fn segment(&self, buffer: &Tensor, i: usize) -> Tensor {
        let (offset, shape) = &self.layout[i];
        let n: i64 = shape.iter().product();
        buffer.narrow(0, *offset, n).view(shape.as_slice())
    }

    /// The gradients as one flat tensor (one copy). A parameter without a gradient
    /// contributes zeros, so weight decay and momentum still move it, where torch would skip
    /// it; every Llama parameter takes part in every forward, so this does not arise.
    /// `extra` values are appended after the padding (the data-parallel all-reduce carries
    /// the step's loss and token count with the gradient).
    fn gather_grads(&self, params: &[(String, Tensor)], extra: &[f32]) -> Tensor {
        let mut parts: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    p.zeros_like().reshape([-1])
                }
            })
            .collect();
        if self.padded > self.total {
            parts.push(Tensor::zeros(
                [self.padded - self.total],
                (self.params.kind(), self.params.device()),
            ));
        }
        if !extra.is_empty() {
            parts.push(
                Tensor::from_slice(extra)
                    .to_kind(self.params.kind())
                    .to_device(self.params.device()),
            );
        }
        Tensor::cat(&parts, 0)
    }
}

/// Trains a [`Model`] in place on a list of examples.
pub struct Trainer<'a> {
    model: &'a mut Model,
    config: TrainConfig,
    examples: Vec<TrainExample>,
    /// The parameters, each a view into `flat`.
    params: Vec<(String, Tensor)>,
    /// Every parameter in one buffer (`params` order), and both AdamW moments likewise, so
    /// that the update is a handful of whole-buffer ops rather than ~10 per parameter: on
    /// CUDA each op is a kernel launch, and a 24-layer model has over 200 parameters.
    flat: FlatState,
    step: usize,
    resumed_from: usize,
    total_steps: usize,
    last_loss: f64,
    checkpoint_dir: Option<PathBuf>,
    fingerprint: String,
    /// Cached permutation of the current epoch.
    order: (usize, Vec<usize>),
    /// Data parallel: the group and whether moments are sharded.
    parallel: Option<DataParallel<'a>>,
}

fn fingerprint(examples: &[TrainExample], config: &TrainConfig) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rise-trainer-data-v1");
    h.update(&(examples.len() as u64).to_le_bytes());
    for e in examples {
        h.update(&(e.ids.len() as u64).to_le_bytes());
        for t in &e.ids {
            h.update(&t.to_le_bytes());
        }
        for &m in &e.loss_mask {
            h.update(&[u8::from(m)]);
        }
        h.update(&e.weight.to_le_bytes());
    }
    h.update(
        serde_json::to_string(config)
            .expect("config serializes")
            .as_bytes(),
    );
    h.finalize().to_hex().to_string()
}

impl<'a> Trainer<'a> {
    /// A fresh run. Validates the config (within the stage params' bounds) and every example
    /// (lengths agree, none over `max_len`, at least one trained token, finite non-negative
    /// weight).
    pub fn new(
        model: &'a mut Model,
        config: TrainConfig,
        examples: Vec<TrainExample>,
    ) -> Result<Self, TrainError> {
        Self::build(model, config, examples, None)
    }

    /// A fresh run as one rank of `parallel.group`. Every rank must pass the same config and
    /// examples and a model with the same weights (each loads the same checkpoint).
    pub fn new_data_parallel(
        model: &'a mut Model,
        config: TrainConfig,
        examples: Vec<TrainExample>,
        parallel: DataParallel<'a>,
    ) -> Result<Self, TrainError> {
        Self::build(model, config, examples, Some(parallel))
    }

    fn build(
        model: &'a mut Model,
        mut config: TrainConfig,
        examples: Vec<TrainExample>,
        parallel: Option<DataParallel<'a>>,
    ) -> Result<Self, TrainError> {
        // The bounds of the stage params (rise-stages' `TrainingParams`), so that a config is
        // accepted here exactly when a pipeline may ask for it.
        let floats = [
            ("lr", config.lr),
            ("warmup", config.warmup),
            ("weight_decay", config.weight_decay),
            ("grad_clip", config.grad_clip),
        ];
        let ints = [
            ("batch_size", config.batch_size),
            ("grad_accum", config.grad_accum),
            ("max_len", config.max_len),
        ];
        let values = floats
            .into_iter()
            .map(|(name, v)| (name, serde_json::Value::from(v)))
            .chain(
                ints.into_iter()
                    .map(|(n, v)| (n, serde_json::Value::from(v))),
            );
        for (name, value) in values {
            check_value(TrainingParams::FIELDS, name, &value).map_err(|m| invalid(name, m))?;
        }
        if examples.is_empty() {
            return Err(invalid("examples", "no training examples"));
        }
        let vocab = model.config().vocab_size as u32;
        for (i, e) in examples.iter().enumerate() {
            if e.ids.len() != e.loss_mask.len() {
                return Err(invalid(
                    format!("examples[{i}].loss_mask"),
                    format!(
                        "has {} entries for {} tokens",
                        e.loss_mask.len(),
                        e.ids.len()
                    ),
                ));
            }
            if let Some(t) = e.ids.iter().find(|&&t| t >= vocab) {
                return Err(invalid(
                    format!("examples[{i}].ids"),
                    format!("token {t} >= vocab size {vocab}"),
                ));
            }
            if e.ids.len() > config.max_len {
                return Err(invalid(
                    format!("examples[{i}].ids"),
                    format!(
                        "{} tokens, over max_len = {}: drop longer examples first (nothing is \
                         truncated)",
                        e.ids.len(),
                        config.max_len
                    ),
                ));
            }
            if !e.loss_mask.iter().skip(1).any(|&m| m) {
                return Err(invalid(
                    format!("examples[{i}].loss_mask"),
                    "no trained token (the first token is never predicted)",
                ));
            }
            if !(e.weight.is_finite() && e.weight >= 0.0) {
                return Err(invalid(
                    format!("examples[{i}].weight"),
                    format!("{} is not finite and >= 0", e.weight),
                ));
            }
        }
        let per_step = config.batch_size * config.grad_accum;
        let total_steps = match config.duration {
            Duration::Steps(s) => s,
            Duration::ExactEpochs(e) => (examples.len() * e).div_ceil(per_step),
            Duration::Epochs(e) => {
                let steps = ((e * examples.len() as f64) / per_step as f64)
                    .ceil()
                    .max(1.0) as usize;
                // Recorded as the steps it makes, which it is: a checkpoint's config (and the
                // fingerprint that holds it) is the same however the length was given.
                config.duration = Duration::Steps(steps);
                steps
            }
        };
        if model.device().is_cuda() {
            model.llama.set_compute_kind(Kind::BFloat16);
        }
        let mut params: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, p) in &params {
            if p.kind() != Kind::Float {
                return Err(invalid(
                    "model",
                    format!(
                        "parameter {name} is {:?}; train fp32 master weights",
                        p.kind()
                    ),
                ));
            }
        }
        let (rank, world, zero) = parallel.map_or((0, 1, false), |p| {
            (
                p.group.rank(),
                p.group.world(),
                p.zero && p.group.world() > 1,
            )
        });
        let flat = FlatState::adopt(&mut params, rank, world, zero);
        let fingerprint = fingerprint(&examples, &config);
        Ok(Trainer {
            model,
            config,
            examples,
            params,
            flat,
            step: 0,
            resumed_from: 0,
            total_steps,
            last_loss: f64::NAN,
            checkpoint_dir: None,
            fingerprint,
            order: (usize::MAX, Vec::new()),
            parallel: parallel.filter(|p| p.group.world() > 1),
        })
    }

    /// This process's rank and the world size (`(0, 1)` in one process).
    pub fn rank_world(&self) -> (usize, usize) {
        self.parallel
            .map_or((0, 1), |p| (p.group.rank(), p.group.world()))
    }

    /// Elements of AdamW state this rank holds (both moments): with `zero`, `1/world` of the
    /// single-process figure (up to the padding to a multiple of the world size).
    pub fn optimizer_state_numel(&self) -> usize {
        self.flat.exp_avg.numel() + self.flat.exp_avg_sq.numel()
    }

    /// Checkpoints go to `dir`; if it already holds one for this exact run (same data and
    /// config), training continues from it.
    pub fn with_checkpoints(mut self, dir: &Path) -> Result<Self, TrainError> {
        self.checkpoint_dir = Some(dir.to_path_buf());
        let latest = dir.join("latest");
        if latest.is_file() {
            let name = std::fs::read_to_string(&latest).map_err(|cause| CheckpointError::Io {
                path: latest.clone(),
                cause,
            })?;
            self.load_checkpoint(&dir.join(name.trim()))?;
        }
        Ok(self)
    }

    /// Steps in the whole run.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The learning rate for step `step` (0-based), as transformers' cosine schedule.
    pub fn lr_at(&self, step: usize) -> f64 {
        let total = self.total_steps.max(1) as f64;
        let warmup = (self.config.warmup * total).ceil();
        let s = step as f64;
        if s < warmup {
            return self.config.lr * s / warmup.max(1.0);
        }
        let progress = (s - warmup) / (total - warmup).max(1.0);
        self.config.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// The example index at stream position `pos` (epoch-wise shuffled).
    fn example_at(&mut self, pos: usize) -> usize {
        let n = self.examples.len();
        let epoch = pos / n;
        if self.order.0 != epoch {
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            shuffle_as_rand_0_8(&mut order, &mut rng);
            self.order = (epoch, order);
        }
        self.order.1[pos % n]
    }

    /// The stream positions step `step` (0-based) consumes.
    fn step_positions(&self, step: usize) -> std::ops::Range<usize> {
        let per_step = self.config.batch_size * self.config.grad_accum;
        let start = step * per_step;
        let end = match self.config.duration {
            Duration::ExactEpochs(e) => (start + per_step).min(self.examples.len() * e),
            // `build` turned `Epochs` into `Steps`: every step is full.
            Duration::Steps(_) | Duration::Epochs(_) => start + per_step,
        };
        start..end
    }

    /// Sum over `batch` of `weight × mean NLL of trained tokens`, and the real token count.
    fn batch_loss(&self, batch: &[usize]) -> (Tensor, usize) {
        let device = self.model.device();
        let seqs: Vec<&[u32]> = batch
            .iter()
            .map(|&i| self.examples[i].ids.as_slice())
            .collect();
        let RightPadded {
            ids,
            mask,
            rows: b,
            len: t,
            tokens,
        } = right_pad(&seqs, |r, j| self.examples[batch[r]].loss_mask[j], device);
        let weights: Vec<f32> = batch.iter().map(|&i| self.examples[i].weight).collect();
        let weights = Tensor::from_slice(&weights).to_device(device);
        // Right padding needs no attention mask (see `batch`): the fused causal kernels apply.
        let input = ids.narrow(1, 0, t as i64 - 1);
        let target = ids.narrow(1, 1, t as i64 - 1);
        let tmask = mask.narrow(1, 1, t as i64 - 1);
        let hidden = self.model.hidden(&input, None, None, None);
        let h = hidden.size()[2];
        // Project only the trained positions onto the vocabulary: the lm_head and softmax
        // over every position would cost far more for the same loss.
        let flat_mask = tmask.reshape([-1]);
        let sel = flat_mask.nonzero().squeeze_dim(1);
        let hsel = hidden.reshape([-1, h]).index_select(0, &sel);
        let logits = self.model.logits(&hsel);
        let tgt = target.reshape([-1]).index_select(0, &sel);
        let nll = -logits
            .log_softmax(-1, Kind::Float)
            .gather(1, &tgt.unsqueeze(1), false)
            .squeeze_dim(1);
        let row = Tensor::arange(b as i64, (Kind::Int64, device))
            .unsqueeze(1)
            .expand([b as i64, t as i64 - 1], false);
        let row_sel = row.reshape([-1]).index_select(0, &sel);
        let per_row_sum =
            Tensor::zeros([b as i64], (Kind::Float, device)).index_add(0, &row_sel, &nll);
        let counts = tmask.sum_dim_intlist(1, false, Kind::Float);
        let loss = (per_row_sum / counts * weights).sum(Kind::Float);
        (loss, tokens)
    }

    /// Runs one optimizer step and returns its progress record.
    pub fn train_step(&mut self) -> Result<Progress, TrainError> {
        let started = Instant::now();
        let step = self.step;
        let positions = self.step_positions(step);
        let global: Vec<usize> = positions.map(|p| self.example_at(p)).collect();
        // The loss is the mean over the *global* batch on every rank, so that the summed
        // gradients are those of one process.
        let n_examples = global.len() as f64;
        let (rank, world) = self.rank_world();
        // Rank r's disjoint contiguous slice; the last ranks' may be short or empty when the
        // last step of an epoch holds fewer examples.
        let chunk = global.len().div_ceil(world);
        let indices =
            &global[(rank * chunk).min(global.len())..((rank + 1) * chunk).min(global.len())];
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
        let mut loss_total = 0.0;
        let mut tokens = 0;
        for micro in indices.chunks(self.config.batch_size) {
            let (loss_sum, n_tok) = self.batch_loss(micro);
            let loss = loss_sum / n_examples;
            let value = loss.double_value(&[]);
            // A rank alone must not leave the group (the others would wait in the
            // all-reduce): the reduced loss below is non-finite on every rank instead.
            if !value.is_finite() && self.parallel.is_none() {
                return Err(TrainError::NonFinite {
                    what: "loss",
                    value,
                    step: step + 1,
                });
            }
            loss.backward();
            loss_total += value;
            tokens += n_tok;
        }
        let lr = self.lr_at(step);
        let grad_norm = tch::no_grad(|| -> Result<f64, TrainError> {
            let mut grad = if let Some(p) = self.parallel {
                // One all-reduce: the gradient, then this rank's loss and token count.
                let mut buf = self
                    .flat
                    .gather_grads(&self.params, &[loss_total as f32, tokens as f32]);
                p.group.all_reduce_sum(&mut buf)?;
                let stats = Vec::<f64>::try_from(
                    buf.narrow(0, self.flat.padded, 2)
                        .to_kind(Kind::Double)
                        .to_device(Device::Cpu),
                )?;
                loss_total = stats[0];
                tokens = stats[1].round() as usize;
                if !loss_total.is_finite() {
                    return Err(TrainError::NonFinite {
                        what: "loss",
                        value: loss_total,
                        step: step + 1,
                    });
                }
                buf.narrow(0, 0, self.flat.padded)
            } else {
                self.flat.gather_grads(&self.params, &[])
            };
            let norm = grad.square().sum(Kind::Float).sqrt().double_value(&[]);
            if !norm.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "gradient norm",
                    value: norm,
                    step: step + 1,
                });
            }
            if self.config.grad_clip > 0.0 && norm > self.config.grad_clip {
                // As torch.nn.utils.clip_grad_norm_.
                let _ = grad.g_mul_scalar_(self.config.grad_clip / (norm + 1e-6));
            }
            self.adamw(&grad, lr, step + 1)?;
            Ok(norm)
        })?;
        self.step += 1;
        self.last_loss = loss_total;
        let secs = started.elapsed().as_secs_f64();
        Ok(Progress {
            step: self.step,
            total_steps: self.total_steps,
            loss: loss_total,
            lr,
            grad_norm,
            tokens_per_sec: if secs > 0.0 {
                tokens as f64 / secs
            } else {
                0.0
            },
        })
    }

    /// PyTorch's AdamW update for step `t` (1-based), on the flat buffers: with `zero`, on
    /// this rank's shard, then an all-gather of the weights.
    fn adamw(&mut self, grad: &Tensor, lr: f64, t: usize) -> Result<(), TrainError> {
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(t as i32);
        let bc2 = 1.0 - c.beta2.powi(t as i32);
        let sharded = !self.flat.full_moments();
        let (start, len) = (self.flat.shard_start, self.flat.shard_len);
        let FlatState {
            params: full,
            exp_avg: m,
            exp_avg_sq: v,
            ..
        } = &mut self.flat;
        let mut p = full.narrow(0, start, len);
        let grad = &grad.narrow(0, start, len);
        if c.weight_decay != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
        }
        let _ = m.g_mul_scalar_(c.beta1);
        let _ = m.g_add_(&(grad * (1.0 - c.beta1)));
        let _ = v.g_mul_scalar_(c.beta2);
        let _ = v.g_add_(&(grad.square() * (1.0 - c.beta2)));
        let denom = v.sqrt() / bc2.sqrt() + c.eps;
        let _ = p.g_sub_(&(&*m / &denom * (lr / bc1)));
        if sharded {
            let group = self.parallel.expect("sharded moments imply a group").group;
            // The input must not alias the output.
            let mine = p.copy();
            group.all_gather(full, &mine)?;
        }
        Ok(())
    }

    /// Trains to the end, calling `on_progress` after every step and checking `cancel`
    /// before each. Checkpoints every `checkpoint_every` steps and at the end (and on
    /// cancellation) when a checkpoint directory is set.
    pub fn run(
        &mut self,
        mut on_progress: impl FnMut(&Progress),
        cancel: &AtomicBool,
    ) -> Result<TrainSummary, TrainError> {
        while self.step < self.total_steps {
            if cancel.load(Ordering::SeqCst) {
                if self.checkpoint_dir.is_some() {
                    self.save_checkpoint()?;
                }
                return Err(TrainError::Cancelled { step: self.step });
            }
            let p = self.train_step()?;
            on_progress(&p);
            let every = self.config.checkpoint_every;
            if self.checkpoint_dir.is_some()
                && self.step.checked_rem(every) == Some(0)
                && self.step < self.total_steps
            {
                self.save_checkpoint()?;
            }
        }
        if self.checkpoint_dir.is_some() {
            self.save_checkpoint()?;
        }
        Ok(TrainSummary {
            steps: self.step,
            resumed_from: self.resumed_from,
            final_loss: self.last_loss,
        })
    }

    /// Writes a checkpoint of the current state into the checkpoint directory.
    pub fn save_checkpoint(&self) -> Result<(), TrainError> {
        let Some(dir) = &self.checkpoint_dir else {
            return Err(invalid(
                "checkpoint_dir",
                "no checkpoint directory set (use with_checkpoints)",
            ));
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| CheckpointError::Io { path, cause }
        };
        let (rank, world) = self.rank_world();
        let sharded = !self.flat.full_moments();
        let name = format!("step-{:08}", self.step);
        let final_dir = dir.join(&name);
        // One process: a temporary directory of its own. A group: one name every rank
        // agrees on, since each writes its shard into it.
        let tmp = if self.parallel.is_some() {
            dir.join(format!(".{name}.tmp-group"))
        } else {
            dir.join(format!(".{name}.tmp-{}", std::process::id()))
        };
        if rank == 0 {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
            }
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        }
        if let (true, Some(p)) = (sharded, self.parallel) {
            // Rank 0 has made the directory; every shard is written before rank 0 publishes.
            p.group.barrier()?;
            let shard = [
                (
                    "exp_avg".to_string(),
                    self.flat.exp_avg.to_device(Device::Cpu),
                ),
                (
                    "exp_avg_sq".to_string(),
                    self.flat.exp_avg_sq.to_device(Device::Cpu),
                ),
            ];
            checkpoint::write_atomic(
                &tmp.join(shard_file(rank, world)),
                &checkpoint::safetensors_bytes(&shard)?,
            )?;
            p.group.barrier()?;
        }
        if rank != 0 {
            // Every rank holds the same weights; rank 0 writes them.
            return Ok(());
        }
        checkpoint::save(&tmp, self.model, self.model.config())?;
        let mut moments: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate().filter(|_| !sharded) {
            let (m, v) = (
                self.flat.segment(&self.flat.exp_avg, i),
                self.flat.segment(&self.flat.exp_avg_sq, i),
            );
            moments.push((
                format!("exp_avg.{name}"),
                m.to_device(Device::Cpu).contiguous(),
            ));
            moments.push((
                format!("exp_avg_sq.{name}"),
                v.to_device(Device::Cpu).contiguous(),
            ));
        }
        if !sharded {
            checkpoint::write_atomic(
                &tmp.join("optimizer.safetensors"),
                &checkpoint::safetensors_bytes(&moments)?,
            )?;
        }
        let state = TrainerState {
            step: self.step,
            total_steps: self.total_steps,
            data_position: self.step_positions(self.step).start,
            data_seed: self.config.seed,
            data_fingerprint: self.fingerprint.clone(),
            config: self.config.clone(),
            last_loss: self.last_loss,
            optimizer_shards: if sharded { world } else { 0 },
        };
        let json = serde_json::to_string_pretty(&state).expect("state serializes");
        checkpoint::write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        checkpoint::write_atomic(&dir.join("latest"), name.as_bytes())?;
        // Older checkpoints are superseded once `latest` points past them.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                // A group's temporary directories are named by step, not process: any left
                // by a killed group is stale once a checkpoint is published.
                let stale_tmp = self.parallel.is_some() && n.starts_with(".step-");
                if (n.starts_with("step-") && n != name) || stale_tmp {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<(), TrainError> {
        let state_path = path.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|cause| CheckpointError::Io {
            path: state_path.clone(),
            cause,
        })?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Format {
                path: state_path.clone(),
                message: e.to_string(),
            })?;
        let mismatch = |message: String| TrainError::Mismatch {
            path: path.to_path_buf(),
            message,
        };
        if state.data_fingerprint != self.fingerprint {
            return Err(mismatch(
                "the examples or the training config differ".into(),
            ));
        }
        let weights = checkpoint::read_safetensors(&path.join("model.safetensors"))?;
        let get = |map: &BTreeMap<String, Tensor>, key: String| {
            map.get(&key)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| mismatch(format!("tensor `{key}` missing")))
        };
        // The moments of the whole flat buffer, whichever form the checkpoint holds, so that
        // a run of any world size and `zero` setting resumes any checkpoint of its run.
        let opts = (self.flat.params.kind(), self.flat.params.device());
        let (m_full, v_full) = (
            Tensor::zeros([self.flat.padded], opts),
            Tensor::zeros([self.flat.padded], opts),
        );
        if state.optimizer_shards == 0 {
            let moments = checkpoint::read_safetensors(&path.join("optimizer.safetensors"))?;
            for (i, (name, _)) in self.params.iter().enumerate() {
                let (mut m, mut v) = (self.flat.segment(&m_full, i), self.flat.segment(&v_full, i));
                m.copy_(&get(&moments, format!("exp_avg.{name}"))?);
                v.copy_(&get(&moments, format!("exp_avg_sq.{name}"))?);
            }
        } else {
            let n = state.optimizer_shards;
            let (mut ms, mut vs) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for r in 0..n {
                let shard = checkpoint::read_safetensors(&path.join(shard_file(r, n)))?;
                ms.push(get(&shard, "exp_avg".into())?);
                vs.push(get(&shard, "exp_avg_sq".into())?);
            }
            let (m, v) = (Tensor::cat(&ms, 0), Tensor::cat(&vs, 0));
            let total = self.flat.total;
            if m.numel() < total as usize || v.numel() != m.numel() {
                return Err(mismatch(format!(
                    "{n} optimizer shards hold {} elements for {total} parameters",
                    m.numel()
                )));
            }
            m_full.narrow(0, 0, total).copy_(&m.narrow(0, 0, total));
            v_full.narrow(0, 0, total).copy_(&v.narrow(0, 0, total));
        }
        tch::no_grad(|| -> Result<(), TrainError> {
            for (name, p) in self.params.iter_mut() {
                p.copy_(&get(&weights, name.clone())?);
            }
            let (start, len) = (self.flat.shard_start, self.flat.shard_len);
            self.flat.exp_avg.copy_(&m_full.narrow(0, start, len));
            self.flat.exp_avg_sq.copy_(&v_full.narrow(0, start, len));
            Ok(())
        })?;
        self.step = state.step;
        self.resumed_from = state.step;
        self.last_loss = state.last_loss;
        Ok(())
    }
}

/// Fisher-Yates as rand 0.8's `SliceRandom::shuffle` draws it: for i from the top, swap with
/// an index below i + 1 from Lemire's widening multiply on one `u32`, rejecting above a zone.
/// The example order is part of every trained checkpoint, and rand 0.9's shuffle draws
/// differently: keeping 0.8's draws keeps every checkpoint trained before the move to 0.9.
fn shuffle_as_rand_0_8(order: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..order.len()).rev() {
        let range = u32::try_from(i + 1).expect("fewer than 2^32 examples");
        let zone = (range << range.leading_zeros()).wrapping_sub(1);
        let j = loop {
            let wide = u64::from(rng.next_u32()) * u64::from(range);
            if (wide as u32) <= zone {
                break (wide >> 32) as usize;
            }
        };
        order.swap(i, j);
    }
}

#[cfg(test)]
mod shuffle_tests {
    use super::*;

    /// Orders drawn by rand 0.8.8's `shuffle` with rand_chacha 0.3.1, seeded as `example_at`
    /// seeds them (first ten entries, and the sum of position x entry over all of them).
    #[test]
    fn the_example_order_is_rand_0_8s() {
        let cases: [(u64, u64, usize, [usize; 10], usize); 3] = [
            (0, 0, 10, [3, 8, 5, 2, 7, 1, 0, 4, 9, 6], 211),
            (1234, 3, 25, [13, 12, 14, 23, 10, 0, 2, 17, 18, 6], 3731),
            (
                7,
                1,
                1000,
                [980, 270, 912, 703, 595, 460, 979, 433, 673, 857],
                246_053_955,
            ),
        ];
        for (seed, epoch, n, head, weighted) in cases {
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            shuffle_as_rand_0_8(&mut order, &mut rng);
            assert_eq!(order[..10], head, "seed {seed} epoch {epoch} n {n}");
            let sum: usize = order.iter().enumerate().map(|(i, &x)| i * x).sum();
            assert_eq!(sum, weighted, "seed {seed} epoch {epoch} n {n}");
        }
    }
}
