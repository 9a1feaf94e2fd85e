//! Training shared by `sft` and `train`: rise-model's trainer with the stage's params,
//! checkpoints in scratch (resumed after a kill), progress and a clear failure on divergence.
use rise_model::trainer::{
    DataParallel, TrainConfig, TrainError, TrainExample, TrainSummary, Trainer,
};
use rise_model::Model;
use rise_stages::kinds::TrainingParams;
use rise_stages::rise_engine::{StageContext, StageError};

/// The one policy for over-long examples: those longer than `params.max_len` are dropped
/// (the trainer refuses them, and never truncates: that could cut away the trained message);
/// returns the rest and the number dropped, which the stage records.
pub fn fit(
    ctx: &StageContext,
    p: &TrainingParams,
    model_ctx: usize,
    examples: Vec<TrainExample>,
) -> Result<(Vec<TrainExample>, usize), StageError> {
    let max_len = p.max_len;
    if max_len > model_ctx {
        ctx.log(format!(
            "note: params.max_len = {max_len} exceeds the model's max_position_embeddings = {model_ctx}"
        ));
    }
    let before = examples.len();
    let kept: Vec<TrainExample> = examples
        .into_iter()
        .filter(|e| e.ids.len() <= max_len)
        .collect();
    let dropped = before - kept.len();
    if kept.is_empty() {
        return Err(StageError::msg(format!(
            "stage {}: all {before} examples are longer than params.max_len = {max_len} tokens",
            ctx.stage
        )));
    }
    if dropped > 0 {
        ctx.log(format!(
            "dropped {dropped} of {before} examples longer than {max_len} tokens"
        ));
    }
    Ok((kept, dropped))
}

/// Trains `model` on `examples` with the stage's params. Whether the run resumed goes to the
/// log only: outputs must not depend on it, so a resumed run's artifact equals an
/// uninterrupted one's.
pub fn train(
    ctx: &StageContext,
    p: &TrainingParams,
    model: &mut Model,
    examples: Vec<TrainExample>,
) -> Result<TrainSummary, StageError> {
    let f = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
    let config = TrainConfig {
        seed: ctx.seed,
        ..TrainConfig::from(p)
    };
    let n = examples.len();
    // A rank of a data-parallel stage (crate::ranks) trains in its group.
    let group = crate::ranks::join(ctx)?;
    let trainer = match &group {
        Some((group, zero)) => {
            let dp = DataParallel { group, zero: *zero };
            Trainer::new_data_parallel(model, config, examples, dp)
        }
        None => Trainer::new(model, config, examples),
    }
    .map_err(|e| f(&e))?;
    let mut trainer = trainer
        .with_checkpoints(&ctx.scratch_dir.join("checkpoints"))
        .map_err(|e| f(&format!("resuming from {}: {e}", ctx.scratch_dir.display())))?;
    let total = trainer.total_steps();
    if trainer.step() > 0 {
        ctx.log(format!(
            "resumed from the checkpoint at step {} of {total}",
            trainer.step()
        ));
    }
    ctx.progress.start(Some(total as u64), "steps");
    ctx.progress.advance(trainer.step() as u64);
    let mut first_loss = None;
    let summary = trainer
        .run(
            |pr| {
                first_loss.get_or_insert(pr.loss);
                ctx.progress.advance(1);
                if pr.step % 10 == 0 || pr.step == pr.total_steps {
                    ctx.progress.set_message(&format!("loss {:.4}, lr {:.2e}, {:.0} tok/s", pr.loss, pr.lr, pr.tokens_per_sec));
                }
            },
            &ctx.cancel,
        )
        .map_err(|e| match e {
            TrainError::Cancelled { .. } => StageError::cancelled(),
            TrainError::NonFinite { what, value, step } => f(&format!(
                "training diverged: the {what} is {value} at step {step} of {total} (lr {}); nothing is \
                 committed for this stage: lower params.lr or raise params.tau",
                p.lr
            )),
            other => f(&other),
        })?;
    ctx.metric("loss", summary.final_loss.into());
    ctx.metric("steps", summary.steps.into());
    ctx.log(format!(
        "trained {} steps on {n} examples{}; loss {} -> {:.4}",
        summary.steps,
        if summary.resumed_from > 0 {
            format!(" (resumed at step {})", summary.resumed_from)
        } else {
            String::new()
        },
        first_loss.map_or("(none this run)".to_string(), |l| format!("{l:.4}")),
        summary.final_loss
    ));
    Ok(summary)
}
