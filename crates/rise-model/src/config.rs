//! The Llama-family configuration, read from and written to Hugging Face `config.json`.
//!
//! One struct covers Llama 2/3 (rope scaling), Mistral (explicit `head_dim`, sliding window),
//! Qwen2 (q/k/v bias) and SmolLM. Both rope spellings are accepted: the older top-level
//! `rope_theta` + `rope_scaling`, and the newer `rope_parameters` dict of transformers 5.
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// Errors reading or validating a `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The JSON is malformed or a field has the wrong type (serde names line and column).
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        source: serde_json::Error,
    },
    /// A field is present and well-typed but its value is not supported or inconsistent.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The offending field, e.g. `rope_scaling.factor`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

/// How rotary position frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent smoothing.
    Llama3 {
        /// Divisor for low frequencies (8 for Llama 3.1).
        factor: f64,
        /// Wavelength threshold factor below which frequencies are scaled.
        low_freq_factor: f64,
        /// Wavelength threshold factor above which frequencies are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: usize,
    },
}

/// The architecture hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`: kept so that a checkpoint round-trips to the same
    /// transformers class. Models rise creates use `llama`.
    pub model_type: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when smaller than `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Per-head width; `hidden_size / num_attention_heads` unless the config says otherwise.
    pub head_dim: usize,
    /// Longest sequence the model was trained for (also the KV-cache limit).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency rescaling.
    pub rope_scaling: RopeScaling,
    /// Whether `lm_head` shares the embedding matrix (no `lm_head.weight` on disk).
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2, or `attention_bias`); the output projection gets
    /// one only with `attention_bias`.
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias: true` in Llama configs).
    pub o_bias: bool,
    /// Bias on the MLP projections (`mlp_bias`).
    pub mlp_bias: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (HF allows a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if declared.
    pub pad_token_id: Option<u32>,
    /// Mistral's sliding attention window: a query sees keys less than this many positions back.
    pub sliding_window: Option<usize>,
    /// The on-disk dtype transformers should use (`float32`, `bfloat16`, `float16`).
    pub torch_dtype: String,
}

/// The raw JSON fields we read; unknown fields are ignored because real configs carry many.
#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
    sliding_window: Option<Value>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    partial_rotary_factor: Option<f64>,
}

impl LlamaConfig {
    /// Reads `config.json` from a model directory (or the file itself).
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
            path: file.clone(),
            source,
        })?;
        Self::from_json_str(&text, &file)
    }

    /// Parses config JSON text; `origin` names the file in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: origin.to_path_buf(),
            source,
        })?;
        Self::from_raw(raw, origin)
    }

    fn from_raw(raw: Raw, origin: &Path) -> Result<Self, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let model_type = raw.model_type.unwrap_or_else(|| "llama".to_string());
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(invalid(
                "model_type",
                format!("`{model_type}` is not supported (expected llama, mistral or qwen2)"),
            ));
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(invalid(
                    "hidden_act",
                    format!("`{act}` is not supported (only silu)"),
                ));
            }
        }
        if raw.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            return Err(invalid(
                "partial_rotary_factor",
                "only 1.0 is supported".into(),
            ));
        }
        for (field, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive".into()));
            }
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads.checked_rem(kv_heads) != Some(0) {
            return Err(invalid(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) if d > 0 => d,
            Some(_) => return Err(invalid("head_dim", "must be positive".into())),
            None => {
                if raw.hidden_size.checked_rem(heads) != Some(0) {
                    return Err(invalid(
                        "num_attention_heads",
                        format!("{heads} does not divide hidden_size = {}", raw.hidden_size),
                    ));
                }
                raw.hidden_size / heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                format!("{head_dim} must be even for RoPE"),
            ));
        }
        let max_position_embeddings = raw.max_position_embeddings.unwrap_or(2048);

        // The newer `rope_parameters` wins; it may also carry `rope_theta` itself.
        let (rope_field, rope_value) = match (&raw.rope_parameters, &raw.rope_scaling) {
            (Some(v), _) if !v.is_null() => ("rope_parameters", Some(v.clone())),
            (_, Some(v)) if !v.is_null() => ("rope_scaling", Some(v.clone())),
            _ => ("rope_scaling", None),
        };
        let mut rope_theta = raw.rope_theta;
        let rope_scaling = match rope_value {
            None => RopeScaling::Default,
            Some(Value::Object(map)) => {
                if let Some(t) = map.get("rope_theta") {
                    rope_theta = Some(t.as_f64().ok_or_else(|| {
                        invalid(
                            &format!("{rope_field}.rope_theta"),
                            "must be a number".into(),
                        )
                    })?);
                }
                let kind = map
                    .get("rope_type")
                    .or_else(|| map.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let num = |key: &str| -> Result<f64, ConfigError> {
                    map.get(key).and_then(Value::as_f64).ok_or_else(|| {
                        invalid(
                            &format!("{rope_field}.{key}"),
                            "missing or not a number".into(),
                        )
                    })
                };
                match kind {
                    "default" => RopeScaling::Default,
                    "linear" => RopeScaling::Linear {
                        factor: num("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: match map
                            .get("original_max_position_embeddings")
                        {
                            Some(v) => v.as_u64().ok_or_else(|| {
                                invalid(
                                    &format!("{rope_field}.original_max_position_embeddings"),
                                    "must be a positive integer".into(),
                                )
                            })? as usize,
                            None => max_position_embeddings,
                        },
                    },
                    other => {
                        return Err(invalid(
                            &format!("{rope_field}.rope_type"),
                            format!("`{other}` is not supported (default, linear, llama3)"),
                        ))
                    }
                }
            }
            Some(_) => return Err(invalid(rope_field, "must be an object".into())),
        };
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = &rope_scaling
        {
            if high_freq_factor <= low_freq_factor {
                return Err(invalid(
                    &format!("{rope_field}.high_freq_factor"),
                    "must exceed low_freq_factor".into(),
                ));
            }
        }
        let rope_theta = rope_theta.unwrap_or(10_000.0);

        let attention_bias = raw.attention_bias.unwrap_or(false);
        let qkv_bias = attention_bias || model_type == "qwen2";
        let token = |field: &str, v: &Option<Value>| -> Result<Vec<u32>, ConfigError> {
            match v {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|x| {
                        x.as_u64()
                            .and_then(|x| u32::try_from(x).ok())
                            .ok_or_else(|| invalid(field, "must hold token ids".into()))
                    })
                    .collect(),
                Some(x) => x
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(|x| vec![x])
                    .ok_or_else(|| invalid(field, "must be a token id or a list".into())),
            }
        };
        let sliding_window = match (&model_type[..], raw.use_sliding_window, &raw.sliding_window) {
            // Qwen2 ships `sliding_window` but only uses it with `use_sliding_window`, and then
            // only on some layers: refuse rather than silently compute something else.
            ("qwen2", Some(true), _) => {
                return Err(invalid(
                    "use_sliding_window",
                    "Qwen2 per-layer sliding windows are not supported".into(),
                ))
            }
            ("qwen2", _, _) => None,
            (_, _, Some(Value::Number(n))) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        Ok(LlamaConfig {
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias: attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            bos_token_id: token("bos_token_id", &raw.bos_token_id)?.first().copied(),
            eos_token_ids: token("eos_token_id", &raw.eos_token_id)?,
            pad_token_id: token("pad_token_id", &raw.pad_token_id)?.first().copied(),
            sliding_window,
            torch_dtype: raw
                .torch_dtype
                .or(raw.dtype)
                .unwrap_or_else(|| "float32".to_string()),
        })
    }

    /// A small from-scratch Llama (the default tiny model of the CPU pipeline).
    pub fn tiny(vocab_size: usize) -> Self {
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: 256,
            intermediate_size: 688,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 32,
            max_position_embeddings: 1024,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::Default,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
            sliding_window: None,
            torch_dtype: "float32".into(),
        }
    }

    /// The config as Hugging Face JSON. Rope settings are written in the older
    /// `rope_theta` + `rope_scaling` form, which transformers 4.x, 5.x and vLLM all read.
    pub fn to_hf_json(&self) -> Value {
        let (arch, default_bias) = match self.model_type.as_str() {
            "mistral" => ("MistralForCausalLM", false),
            "qwen2" => ("Qwen2ForCausalLM", true),
            _ => ("LlamaForCausalLM", false),
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": self.torch_dtype,
            "use_cache": true,
        });
        let obj = v.as_object_mut().expect("json! object");
        match &self.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                obj.insert(
                    "rope_scaling".into(),
                    json!({
                        "rope_type": "llama3",
                        "factor": factor,
                        "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor,
                        "original_max_position_embeddings": original_max_position_embeddings,
                    }),
                );
            }
        }
        if self.model_type == "qwen2" {
            if self.o_bias {
                // Qwen2's class has no o_proj bias; such a checkpoint would not load there.
                obj.insert("attention_bias".into(), json!(true));
            }
        } else {
            if self.qkv_bias != default_bias || self.o_bias {
                obj.insert("attention_bias".into(), json!(self.qkv_bias || self.o_bias));
            }
            obj.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        if let Some(w) = self.sliding_window {
            obj.insert("sliding_window".into(), json!(w));
        } else if self.model_type == "mistral" {
            obj.insert("sliding_window".into(), Value::Null);
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(b));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), json!(one));
            }
            many => {
                obj.insert("eos_token_id".into(), json!(many));
            }
        }
        if let Some(p) = self.pad_token_id {
            obj.insert("pad_token_id".into(), json!(p));
        }
        v
    }

    /// Writes `config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.to_hf_json()).expect("config serializes");
        std::fs::write(&path, text + "\n").map_err(|source| ConfigError::Io { path, source })
    }

    /// Query heads per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads * d;
        let kv = self.num_key_value_heads * d;
        let mut layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.o_bias {
            layer += h;
        }
        if self.mlp_bias {
            layer += 2 * i + h;
        }
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LlamaConfig, ConfigError> {
        LlamaConfig::from_json_str(text, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4"#;

    #[test]
    fn older_rope_form_with_llama3_scaling() {
        let c = parse(&format!(
            r#"{{{BASE}, "num_key_value_heads": 2, "rope_theta": 500000.0,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
            "eos_token_id": [1, 2]}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.gqa_groups(), 2);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn newer_rope_parameters_form() {
        let c = parse(&format!(
            r#"{{{BASE}, "rope_parameters": {{"rope_type": "linear", "factor": 2.0,
            "rope_theta": 1000.0}}, "head_dim": 8}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 1000.0);
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn qwen2_implies_qkv_bias_but_not_o_bias() {
        let c = parse(&format!(
            r#"{{{BASE}, "model_type": "qwen2", "tie_word_embeddings": true}}"#
        ))
        .unwrap();
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(&format!(r#"{{{BASE}, "num_key_value_heads": 3}}"#)).unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = parse(&format!(
            r#"{{{BASE}, "rope_scaling": {{"rope_type": "yarn"}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rope_scaling.rope_type"), "{e}");
        let e = parse(r#"{"vocab_size": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn round_trips_through_hf_json() {
        let mut c = LlamaConfig::tiny(300);
        c.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 128,
        };
        c.eos_token_ids = vec![2];
        let text = serde_json::to_string(&c.to_hf_json()).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
    }
}
