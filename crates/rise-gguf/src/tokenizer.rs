//! The tokenizer a GGUF file describes, rebuilt as a Hugging Face `tokenizer.json` with the
//! `tokenizers` crate (so the file is exactly what that library, and transformers, load).
//!
//! Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is rebuilt. Its pre-tokenizer is not
//! stored in the file but implied by `tokenizer.ggml.pre`, which names the regexes llama.cpp
//! splits text with (`llama-vocab.cpp`); each supported name maps to the `tokenizer.json`
//! pre-tokenizer that splits the same way:
//!
//! - `gpt2`: GPT-2's regex (`ByteLevel` with its built-in regex).
//! - `smollm`, `starcoder`, `refact`, `codeshell`, `command-r`, `exaone`, `minerva`: every digit
//!   alone first (`\p{N}`), then GPT-2's regex: `Digits(individual_digits)` + `ByteLevel`, as
//!   SmolLM's own `tokenizer.json` has it.
//! - `llama-bpe`, `llama3`, `llama-v3`, `smaug-bpe`, `falcon3`: Llama 3's regex (numbers in
//!   groups of up to three), with merges ignored for words already in the vocabulary, as
//!   llama.cpp does for these.
//!
//! Any other name is refused rather than guessed: a wrong split changes token ids silently.
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::hf_config::SpecialIds;
use crate::metadata::Meta;
use crate::GgufError;

/// Llama 3's pre-tokenizer regex, as in its `tokenizer.json` (and llama.cpp's `LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const DIGIT_SPLIT_PRES: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "command-r",
    "exaone",
    "minerva",
];
const LLAMA3_PRES: &[&str] = &["llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3"];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The rebuilt tokenizer and what `tokenizer_config.json` needs besides.
pub(crate) struct Rebuilt {
    pub tokenizer: Tokenizer,
    pub special: SpecialIds,
    pub add_bos: bool,
    pub add_eos: bool,
    pub tokens: Vec<String>,
    /// The pre-tokenizer name the split was chosen by.
    pub pre: String,
}

fn pre_tokenizer(pre: &str) -> Option<(PreTokenizerWrapper, bool)> {
    if pre == "gpt2" {
        return Some((ByteLevel::new(false, true, true).into(), false));
    }
    if DIGIT_SPLIT_PRES.contains(&pre) {
        let seq = Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ]);
        return Some((seq.into(), false));
    }
    if LLAMA3_PRES.contains(&pre) {
        let split = Split::new(
            SplitPattern::Regex(LLAMA3_SPLIT.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .ok()?;
        let seq = Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ]);
        return Some((seq.into(), true));
    }
    None
}

/// Rebuilds the tokenizer from `tokenizer.ggml.*`.
pub(crate) fn rebuild(meta: &Meta<'_>) -> Result<Rebuilt, GgufError> {
    let err = |message: String| GgufError::Tokenizer {
        path: meta.path.to_path_buf(),
        message,
    };
    let model = meta.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(meta.error(
            "tokenizer.ggml.model",
            format!(
                "{model:?}: only byte-level BPE (\"gpt2\") tokenizers are rebuilt; \
                 SentencePiece (\"llama\") and others are not supported"
            ),
        ));
    }
    let pre = meta.opt_str("tokenizer.ggml.pre")?.unwrap_or("gpt2");
    let supported = || {
        let mut all = vec!["gpt2"];
        all.extend(DIGIT_SPLIT_PRES);
        all.extend(LLAMA3_PRES);
        all.join(", ")
    };
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        meta.error(
            "tokenizer.ggml.pre",
            format!(
                "{pre:?}: a pre-tokenizer rise does not know; it would split text differently \
                 from llama.cpp. Known: {}",
                supported()
            ),
        )
    })?;
    let tokens = meta
        .opt_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| meta.error("tokenizer.ggml.tokens", "missing"))?;
    let merges_text = meta
        .opt_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| meta.error("tokenizer.ggml.merges", "missing (a BPE needs its merges)"))?;
    let types = meta.opt_int_array("tokenizer.ggml.token_type")?;
    if let Some(types) = &types {
        if types.len() != tokens.len() {
            return Err(meta.error(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", types.len(), tokens.len()),
            ));
        }
    }
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| err("more than 2^32 tokens".into()))?;
        if let Some(first) = vocab.insert((*token).to_string(), id) {
            return Err(meta.error(
                "tokenizer.ggml.tokens",
                format!("token {token:?} appears twice (ids {first} and {id})"),
            ));
        }
    }
    let mut merges: Merges = Vec::with_capacity(merges_text.len());
    for (i, m) in merges_text.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            meta.error(
                &format!("tokenizer.ggml.merges[{i}]"),
                format!("{m:?} is not two tokens separated by a space"),
            )
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| err(format!("the BPE model does not build: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    let id_of = |key: &str| -> Result<Option<u32>, GgufError> {
        match meta.opt_u32(key)? {
            Some(id) if id as usize >= tokens.len() => Err(meta.error(
                key,
                format!(
                    "token id {id} is outside the {}-token vocabulary",
                    tokens.len()
                ),
            )),
            other => Ok(other),
        }
    };
    let special = SpecialIds {
        bos: id_of("tokenizer.ggml.bos_token_id")?,
        eos: id_of("tokenizer.ggml.eos_token_id")?,
        pad: id_of("tokenizer.ggml.padding_token_id")?,
        unk: id_of("tokenizer.ggml.unknown_token_id")?,
    };
    // llama.cpp adds BOS to byte-level vocabularies only when the file says so.
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos = meta
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let byte_level_post: PostProcessorWrapper = ByteLevel::new(true, false, true).into();
    let post = if add_bos || add_eos {
        let token = |id: Option<u32>, key: &str| {
            id.map(|id| (tokens[id as usize].to_string(), id))
                .ok_or_else(|| meta.error(key, "missing, but the file asks for it to be added"))
        };
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Vec::new();
        if add_bos {
            let (t, id) = token(special.bos, "tokenizer.ggml.bos_token_id")?;
            single.push(t.clone());
            pair.push(format!("{t}:0"));
            specials.push((t, id));
        }
        single.push("$A".to_string());
        pair.push("$A:0".to_string());
        if add_eos {
            let (t, id) = token(special.eos, "tokenizer.ggml.eos_token_id")?;
            single.push(t.clone());
            pair.push(format!("{t}:0"));
            specials.push((t, id));
        }
        let second: Vec<String> = pair
            .iter()
            .map(|p| p.replace(":0", ":1").replace("$A", "$B"))
            .collect();
        pair.extend(second);
        let template = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| err(format!("post-processor: {e}")))?
            .special_tokens(specials)
            .build()
            .map_err(|e| err(format!("post-processor: {e}")))?;
        ProcessorSequence::new(vec![byte_level_post, template.into()]).into()
    } else {
        byte_level_post
    };
    tokenizer.with_post_processor(Some(post));

    // Control tokens (`<|im_start|>`, ...) are special: matched whole, skipped by
    // `skip_special_tokens`; user-defined ones are matched whole but are ordinary text.
    let mut control = Vec::new();
    let mut user_defined = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let ty = types.as_ref().map_or(1, |t| t[id]);
        let is_named =
            [special.bos, special.eos, special.pad, special.unk].contains(&Some(id as u32));
        if ty == TOKEN_TYPE_CONTROL || is_named {
            control.push(AddedToken::from((*token).to_string(), true).normalized(false));
        } else if ty == TOKEN_TYPE_USER_DEFINED {
            user_defined.push(AddedToken::from((*token).to_string(), false).normalized(false));
        }
    }
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| err(format!("special tokens: {e}")))?;
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| err(format!("user-defined tokens: {e}")))?;
    if tokenizer.get_vocab_size(true) != tokens.len() {
        return Err(err(format!(
            "rebuilt with {} tokens instead of {}",
            tokenizer.get_vocab_size(true),
            tokens.len()
        )));
    }
    Ok(Rebuilt {
        tokenizer,
        special,
        add_bos,
        add_eos,
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        pre: pre.to_string(),
    })
}

/// The chat templates the metadata carries: `tokenizer.chat_template` (the default) and the
/// named ones llama.cpp writes as `tokenizer.chat_template.NAME`.
pub(crate) fn chat_templates(meta: &Meta<'_>) -> Result<Vec<(String, String)>, GgufError> {
    let mut out = Vec::new();
    if let Some(t) = meta.opt_str("tokenizer.chat_template")? {
        out.push(("default".to_string(), t.to_string()));
    }
    let mut named: Vec<&String> = meta
        .values
        .keys()
        .filter(|k| k.starts_with("tokenizer.chat_template."))
        .collect();
    named.sort();
    for key in named {
        let name = &key["tokenizer.chat_template.".len()..];
        out.push((name.to_string(), meta.str(key)?.to_string()));
    }
    Ok(out)
}

/// `tokenizer_config.json`: special tokens by text, whether BOS/EOS are added, the context
/// length and the chat template(s) (a string for one, the list form for several).
pub(crate) fn tokenizer_config(
    rebuilt: &Rebuilt,
    templates: &[(String, String)],
    context_length: usize,
) -> Value {
    let name = |id: Option<u32>| id.map(|id| rebuilt.tokens[id as usize].clone());
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "add_bos_token": rebuilt.add_bos,
        "add_eos_token": rebuilt.add_eos,
        "model_max_length": context_length,
    });
    let obj = cfg.as_object_mut().expect("json! object");
    for (key, id) in [
        ("bos_token", rebuilt.special.bos),
        ("eos_token", rebuilt.special.eos),
        ("pad_token", rebuilt.special.pad),
        ("unk_token", rebuilt.special.unk),
    ] {
        if let Some(t) = name(id) {
            obj.insert(key.into(), json!(t));
        }
    }
    match templates {
        [] => {}
        [(_, only)] => {
            obj.insert("chat_template".into(), json!(only));
        }
        many => {
            let list: Vec<Value> = many
                .iter()
                .map(|(n, t)| json!({"name": n, "template": t}))
                .collect();
            obj.insert("chat_template".into(), Value::Array(list));
        }
    }
    cfg
}

/// Serialises the tokenizer as `tokenizer.json` text.
pub(crate) fn to_json(rebuilt: &Rebuilt, path: &Path) -> Result<String, GgufError> {
    rebuilt
        .tokenizer
        .to_string(true)
        .map_err(|e| GgufError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("cannot serialise: {e}"),
        })
}
