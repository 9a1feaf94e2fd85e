//! The architecture a GGUF file's metadata describes, and the Hugging Face `config.json` for it.
use serde_json::{json, Value};

use crate::metadata::Meta;
use crate::GgufError;

/// Architectures whose GGUF layout this crate maps to Hugging Face names. llama.cpp writes
/// Llama 2/3, Mistral and SmolLM as `llama`.
pub(crate) const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// The hyper-parameters of a Llama-family decoder, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// `general.architecture`.
    pub name: String,
    /// Layers (`{arch}.block_count`).
    pub num_layers: usize,
    /// Residual width (`{arch}.embedding_length`).
    pub hidden_size: usize,
    /// SwiGLU inner width (`{arch}.feed_forward_length`).
    pub intermediate_size: usize,
    /// Query heads (`{arch}.attention.head_count`).
    pub num_heads: usize,
    /// Key/value heads (`{arch}.attention.head_count_kv`, default: the query heads).
    pub num_kv_heads: usize,
    /// Per-head width (`{arch}.attention.key_length`, default: width / heads).
    pub head_dim: usize,
    /// Trained context (`{arch}.context_length`).
    pub context_length: usize,
    /// RMSNorm epsilon (`{arch}.attention.layer_norm_rms_epsilon`).
    pub rms_norm_eps: f64,
    /// RoPE base (`{arch}.rope.freq_base`, default 10000 as in llama.cpp).
    pub rope_theta: f64,
    /// Linear RoPE scaling factor, if any (`{arch}.rope.scaling.type = linear`).
    pub rope_linear_factor: Option<f64>,
    /// Vocabulary size (`{arch}.vocab_size`, else the token list's length).
    pub vocab_size: usize,
}

impl Architecture {
    /// Reads and checks the architecture; `vocab_len` is the token list's length.
    pub(crate) fn read(meta: &Meta<'_>, vocab_len: Option<usize>) -> Result<Self, GgufError> {
        let name = meta.str("general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&name) {
            return Err(GgufError::UnsupportedArchitecture {
                path: meta.path.to_path_buf(),
                architecture: name.to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
        let key = |k: &str| format!("{name}.{k}");
        let hidden_size = meta.usize(&key("embedding_length"))?;
        let num_heads = meta.usize(&key("attention.head_count"))?;
        if num_heads == 0 || hidden_size % num_heads != 0 && !meta.has(&key("attention.key_length"))
        {
            return Err(meta.error(
                &key("attention.head_count"),
                format!("{num_heads} heads do not divide the width {hidden_size}"),
            ));
        }
        let num_kv_heads = meta
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(meta.error(
                &key("attention.head_count_kv"),
                format!("{num_kv_heads} key/value heads do not divide the {num_heads} query heads"),
            ));
        }
        let head_dim = meta
            .opt_usize(&key("attention.key_length"))?
            .unwrap_or(hidden_size / num_heads);
        if let Some(v) = meta.opt_usize(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(meta.error(
                    &key("attention.value_length"),
                    format!("{v} differs from the key length {head_dim}; rise's attention needs them equal"),
                ));
            }
        }
        if let Some(rot) = meta.opt_usize(&key("rope.dimension_count"))? {
            if rot != head_dim {
                return Err(meta.error(
                    &key("rope.dimension_count"),
                    format!("rotary embedding on {rot} of {head_dim} head dimensions (partial rotary) is not supported"),
                ));
            }
        }
        if head_dim % 2 != 0 {
            return Err(meta.error(
                &key("attention.key_length"),
                format!("head width {head_dim} is odd; RoPE needs pairs"),
            ));
        }
        let rope_linear_factor = match meta.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => None,
            Some("linear") => {
                let k = key("rope.scaling.factor");
                let f = meta.opt_f64(&k)?.ok_or_else(|| {
                    meta.error(&k, "missing (linear rope scaling needs a factor)")
                })?;
                (f != 1.0).then_some(f)
            }
            Some(other) => {
                return Err(meta.error(
                    &key("rope.scaling.type"),
                    format!("rope scaling {other:?} is not supported (only none and linear)"),
                ))
            }
        };
        if let Some(n) = meta.opt_usize(&key("expert_count"))? {
            if n > 0 {
                return Err(meta.error(
                    &key("expert_count"),
                    format!("{n} experts: mixture-of-experts models are not supported"),
                ));
            }
        }
        let vocab_size = match (meta.opt_usize(&key("vocab_size"))?, vocab_len) {
            (Some(v), Some(len)) if v != len => {
                return Err(meta.error(
                    &key("vocab_size"),
                    format!("{v}, but tokenizer.ggml.tokens lists {len} tokens"),
                ))
            }
            (Some(v), _) => v,
            (None, Some(len)) => len,
            (None, None) => {
                return Err(meta.error(
                    "tokenizer.ggml.tokens",
                    "missing, and so is the vocabulary size: no tokenizer to rebuild",
                ))
            }
        };
        Ok(Architecture {
            name: name.to_string(),
            num_layers: meta.usize(&key("block_count"))?,
            hidden_size,
            intermediate_size: meta.usize(&key("feed_forward_length"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            context_length: meta.usize(&key("context_length"))?,
            rms_norm_eps: meta
                .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| meta.error(&key("attention.layer_norm_rms_epsilon"), "missing"))?,
            rope_theta: meta.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_linear_factor,
            vocab_size,
        })
    }

    /// `config.json` for transformers' `LlamaForCausalLM` (which rise-model reads too).
    pub(crate) fn hf_config(&self, tied: bool, torch_dtype: &str, special: &SpecialIds) -> Value {
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.context_length,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": tied,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        });
        let obj = v.as_object_mut().expect("json! object");
        if let Some(factor) = self.rope_linear_factor {
            obj.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        for (key, id) in [
            ("bos_token_id", special.bos),
            ("eos_token_id", special.eos),
            ("pad_token_id", special.pad),
        ] {
            if let Some(id) = id {
                obj.insert(key.into(), json!(id));
            }
        }
        v
    }
}

/// The special token ids the metadata names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialIds {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
}
