//! The `tokenizer` kind: a byte-level BPE trained on a dataset, or a model's own tokenizer.
use rise_data::conversation::{feedback_message, PlainTemplate, DEFAULT_SYSTEM};
use rise_model::tokenizer::Tokenizer;
use rise_stages::kinds::TokenizerParams;
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};

use super::common::{fail, load_dataset, set_threads};

/// Special tokens of from-scratch tokenizers: padding first (id 0), then the plain template's
/// role markers, whose `<|end|>` doubles as end of sequence.
const PAD: &str = "<|pad|>";

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    if let Some(model) = ctx.inputs.get("model") {
        let tok = Tokenizer::from_dir(model).map_err(|e| f(&format!("input `model`: {e}")))?;
        tok.save(&ctx.out_dir).map_err(|e| f(&e))?;
        ctx.log(format!(
            "took the tokenizer of {} ({} tokens)",
            model.display(),
            tok.vocab_size()
        ));
        return Ok(());
    }
    if !ctx.inputs.contains_key("data") {
        return Err(f(
            &"wire input `data` (train a BPE on a dataset) or `model` (take its tokenizer)",
        ));
    }
    let (_meta, problems) = load_dataset(ctx, "data")?;
    let TokenizerParams { vocab_size } = ctx.params()?;
    let plain = PlainTemplate::default();
    let mut specials = vec![PAD];
    specials.extend(plain.special_tokens());
    // Everything the model will read or write: questions, solutions, the feedback message and
    // the default instruction. Sorted input order is already deterministic (dataset order).
    let mut texts: Vec<String> = Vec::with_capacity(problems.len() * 3 + 1);
    texts.push(DEFAULT_SYSTEM.to_string());
    for p in &problems {
        texts.push(p.question.clone());
        texts.push(p.solution.clone());
        texts.push(feedback_message(&p.question));
    }
    let tok = Tokenizer::train_bpe(texts.iter().map(String::as_str), vocab_size, &specials)
        .and_then(|t| t.with_special(None, Some(&plain.end), Some(PAD)))
        .map_err(|e| f(&e))?;
    tok.save(&ctx.out_dir).map_err(|e| f(&e))?;
    ctx.metric("vocab_size", tok.vocab_size().into());
    ctx.log(format!(
        "trained a {}-token BPE on {} problems",
        tok.vocab_size(),
        problems.len()
    ));
    Ok(())
}
