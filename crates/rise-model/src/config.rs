//! The Llama-family configuration, read from and written to Hugging Face `config.json`.
//!
//! One struct covers Llama 2/3 (rope scaling), Mistral (explicit `head_dim`, sliding window),
//! Qwen2 (q/k/v bias) and SmolLM. Both rope spellings are accepted: the older top-level
//! `rope_theta` + `rope_scaling`, and the newer `rope_parameters` dict of transformers 5.
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// Errors reading or validating a `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The causes below are fields named `cause`, not `source`: the message already includes
    // them, and a `source` would print them twice in an error chain (`{:#}`).
    /// The file could not be read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The text is not JSON (serde names line and column).
    #[error("{path}: {cause}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        cause: serde_json::Error,
    },
    /// The JSON is not an object of settings (an array, a number, ...).
    #[error("{path}: expected a JSON object of model settings, found {found}")]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// What the top-level value is: `an array`, `a string`, ...
        found: &'static str,
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
    /// The model the config describes is larger than this machine's memory or `--max-params`
    /// allows. Refused before any tensor is allocated.
    #[error("{path}: {message}")]
    TooLarge {
        /// The config file.
        path: PathBuf,
        /// The parameter count by part, the fields behind the largest part, and the limit.
        message: String,
    },
    /// `RISE_MAX_PARAMS` (or `--max-params`) is not a parameter count.
    #[error("{0}")]
    Setting(String),
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

/// The top-level object of a config, read one field at a time so that a wrong type is an
/// error naming its field (serde's derive names only line and column, and the workspace has
/// no serde_path_to_error). An absent field and `null` both mean "not set", as in HF.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    origin: &'a Path,
}

impl Fields<'_> {
    fn invalid(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            field: field.to_string(),
            message,
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn count(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        self.get(field)
            .map(|v| count_value(v).map_err(|m| self.invalid(field, m)))
            .transpose()
    }

    fn required_count(&self, field: &str) -> Result<usize, ConfigError> {
        self.count(field)?.ok_or_else(|| {
            self.invalid(
                field,
                "is missing; every Llama-family config.json sets it".into(),
            )
        })
    }

    fn number(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_f64().ok_or_else(|| {
                    self.invalid(field, format!("expected a number, found {}", describe(v)))
                })
            })
            .transpose()
    }

    fn string(&self, field: &str) -> Result<Option<String>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    self.invalid(field, format!("expected a string, found {}", describe(v)))
                })
            })
            .transpose()
    }

    fn flag(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    self.invalid(
                        field,
                        format!("expected true or false, found {}", describe(v)),
                    )
                })
            })
            .transpose()
    }

    fn raw(&self, field: &str) -> Option<Value> {
        self.get(field).cloned()
    }
}

impl Raw {
    fn read(f: &Fields<'_>) -> Result<Raw, ConfigError> {
        Ok(Raw {
            model_type: f.string("model_type")?,
            vocab_size: f.required_count("vocab_size")?,
            hidden_size: f.required_count("hidden_size")?,
            intermediate_size: f.required_count("intermediate_size")?,
            num_hidden_layers: f.required_count("num_hidden_layers")?,
            num_attention_heads: f.required_count("num_attention_heads")?,
            num_key_value_heads: f.count("num_key_value_heads")?,
            head_dim: f.count("head_dim")?,
            max_position_embeddings: f.count("max_position_embeddings")?,
            rms_norm_eps: f.number("rms_norm_eps")?,
            rope_theta: f.number("rope_theta")?,
            rope_scaling: f.raw("rope_scaling"),
            rope_parameters: f.raw("rope_parameters"),
            tie_word_embeddings: f.flag("tie_word_embeddings")?,
            attention_bias: f.flag("attention_bias")?,
            mlp_bias: f.flag("mlp_bias")?,
            hidden_act: f.string("hidden_act")?,
            bos_token_id: f.raw("bos_token_id"),
            eos_token_id: f.raw("eos_token_id"),
            pad_token_id: f.raw("pad_token_id"),
            sliding_window: f.raw("sliding_window"),
            use_sliding_window: f.flag("use_sliding_window")?,
            torch_dtype: f.string("torch_dtype")?,
            dtype: f.string("dtype")?,
            partial_rotary_factor: f.number("partial_rotary_factor")?,
        })
    }
}

/// A JSON value as a count (a size, a number of layers or positions): a JSON integer that fits
/// `usize`. `64.0` or `1e12` is refused rather than rounded: transformers writes counts as
/// integers, so a float there is a hand edit that may not mean what it says.
fn count_value(v: &Value) -> Result<usize, String> {
    let Value::Number(n) = v else {
        return Err(format!(
            "expected a non-negative integer, found {}",
            describe(v)
        ));
    };
    if let Some(u) = n.as_u64() {
        return usize::try_from(u).map_err(|_| format!("{u} does not fit this machine's usize"));
    }
    if let Some(i) = n.as_i64() {
        return Err(format!("{i} is negative; expected a non-negative integer"));
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    // `64.0` as written, `1e12` rather than its digits.
    let shown = if f.fract() == 0.0 && f.abs() < 1e6 {
        format!("{f:.1}")
    } else {
        show(f)
    };
    // serde_json reads an integer literal past u64::MAX as a float, too.
    if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        Err(format!(
            "{shown} is a floating-point number; write the count as a JSON integer ({f:.0})"
        ))
    } else if f.fract() == 0.0 && f > 0.0 {
        Err(format!("{shown} does not fit in 64 bits"))
    } else {
        Err(format!("{shown} is not a non-negative integer"))
    }
}

/// A float as a person would write it in config.json: `1e308` rather than its 309 digits.
fn show(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `a string "x"`, `an array`: what a JSON value is, for errors.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Most positions a config may declare (`max_position_embeddings`, the rope scaling's
/// `original_max_position_embeddings`, `sliding_window`): 2^31. The longest contexts released
/// models declare are around 10^7; a larger number is a typo or an attack, and would size every
/// position-indexed buffer (training truncation, the sampler's window) absurdly.
pub const MAX_POSITIONS: usize = 1 << 31;

impl LlamaConfig {
    /// Reads `config.json` from a model directory (or the file itself).
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|cause| ConfigError::Io {
            path: file.clone(),
            cause,
        })?;
        Self::from_json_str(&text, &file)
    }

    /// Parses config JSON text; `origin` names the file in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        // JSON syntax first (serde names line and column), then each field by name.
        let value: Value = serde_json::from_str(text).map_err(|cause| ConfigError::Json {
            path: origin.to_path_buf(),
            cause,
        })?;
        let Value::Object(map) = &value else {
            return Err(ConfigError::NotAnObject {
                path: origin.to_path_buf(),
                found: match value {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                },
            });
        };
        let raw = Raw::read(&Fields { map, origin })?;
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
        if kv_heads == 0 {
            return Err(invalid("num_key_value_heads", "must be positive".into()));
        }
        if kv_heads > heads {
            return Err(invalid(
                "num_key_value_heads",
                format!("{kv_heads} exceeds num_attention_heads = {heads}; each key/value head serves a group of query heads"),
            ));
        }
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
        let positions = |field: &str, n: usize| -> Result<usize, ConfigError> {
            if n == 0 {
                Err(invalid(field, "must be positive".into()))
            } else if n > MAX_POSITIONS {
                Err(invalid(
                    field,
                    format!(
                        "{n} positions is more than the {MAX_POSITIONS} (2^31) rise accepts; \
                         released models declare at most about 10^7"
                    ),
                ))
            } else {
                Ok(n)
            }
        };
        positions("max_position_embeddings", max_position_embeddings)?;

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
                            Some(v) => {
                                let field =
                                    format!("{rope_field}.original_max_position_embeddings");
                                let n = count_value(v).map_err(|m| invalid(&field, m))?;
                                positions(&field, n)?
                            }
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
        // Every rope number divides or exponentiates: zero, negative or non-finite values give
        // NaN or infinite frequencies, never an error, so they are refused here.
        let positive = |field: String, v: f64| -> Result<(), ConfigError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(
                    &field,
                    format!("{} must be a positive, finite number", show(v)),
                ))
            }
        };
        match &rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => positive(format!("{rope_field}.factor"), *factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive(format!("{rope_field}.factor"), *factor)?;
                positive(format!("{rope_field}.low_freq_factor"), *low_freq_factor)?;
                positive(format!("{rope_field}.high_freq_factor"), *high_freq_factor)?;
                if *original_max_position_embeddings == 0 {
                    return Err(invalid(
                        &format!("{rope_field}.original_max_position_embeddings"),
                        "must be positive".into(),
                    ));
                }
            }
        }
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
        // `rope_parameters.rope_theta` wins over the top-level field, so name the one used.
        let theta_field = if raw
            .rope_parameters
            .as_ref()
            .is_some_and(|v| v.get("rope_theta").is_some())
        {
            "rope_parameters.rope_theta"
        } else {
            "rope_theta"
        };
        positive(theta_field.to_string(), rope_theta)?;
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        positive("rms_norm_eps".to_string(), rms_norm_eps)?;
        // The epsilon only keeps RMSNorm off a zero divisor (1e-6 or 1e-5 in every released
        // model); one of 1 or more swamps the mean square of activations of ordinary size
        // and silently flattens every norm.
        if rms_norm_eps >= 1.0 {
            return Err(invalid(
                "rms_norm_eps",
                format!(
                    "{} must be less than 1 (models use 1e-6 or 1e-5)",
                    show(rms_norm_eps)
                ),
            ));
        }

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
            (_, _, Some(v)) => {
                let n = count_value(v).map_err(|m| invalid("sliding_window", m))?;
                Some(positions("sliding_window", n)?)
            }
            (_, _, None) => None,
        };
        let cfg = LlamaConfig {
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
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
        };
        // A parameter count that does not even fit in 64 bits (or in libtorch's signed sizes)
        // is refused here; whether a representable one fits this machine is
        // [`LlamaConfig::check_budget`]'s question.
        let size = cfg
            .size()
            .map_err(|e| invalid(&e.fields, e.message.clone()))?;
        if size.total > MAX_REPRESENTABLE_PARAMS {
            return Err(invalid(
                size.largest_part().fields,
                format!(
                    "the model would have {} parameters ({}), more than libtorch can address",
                    size.total,
                    size.breakdown(&cfg)
                ),
            ));
        }
        Ok(cfg)
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
        std::fs::write(&path, text + "\n").map_err(|cause| ConfigError::Io { path, cause })
    }

    /// Query heads per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The number of parameters (embedding counted once when tied); `usize::MAX` for a
    /// hand-built config whose count overflows (a parsed one never does).
    pub fn num_parameters(&self) -> usize {
        self.size().map_or(usize::MAX, |s| {
            usize::try_from(s.total).unwrap_or(usize::MAX)
        })
    }

    /// The parameter count by part, in checked arithmetic: absurd field values give an error
    /// naming the fields whose product overflows, never a wrapped number.
    pub fn size(&self) -> Result<ModelSize, SizeOverflow> {
        let (h, i, d) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.head_dim as u64,
        );
        let vocab = self.vocab_size as u64;
        let q = mul(
            self.num_attention_heads as u64,
            d,
            "num_attention_heads, head_dim",
        )?;
        let kv = mul(
            self.num_key_value_heads as u64,
            d,
            "num_key_value_heads, head_dim",
        )?;
        let attn_fields = "hidden_size, num_attention_heads, num_key_value_heads, head_dim";
        // q, k, v: hidden -> heads * head_dim (k and v with the key/value heads); o: back.
        let qkv_out = add(q, mul(2, kv, attn_fields)?, attn_fields)?;
        let mut attention = add(
            mul(h, qkv_out, attn_fields)?,
            mul(q, h, attn_fields)?,
            attn_fields,
        )?;
        if self.qkv_bias {
            attention = add(attention, qkv_out, attn_fields)?;
        }
        if self.o_bias {
            attention = add(attention, h, attn_fields)?;
        }
        let mlp_fields = "hidden_size, intermediate_size";
        // gate and up: hidden -> intermediate; down: back.
        let mut mlp = mul(3, mul(h, i, mlp_fields)?, mlp_fields)?;
        if self.mlp_bias {
            mlp = add(mlp, add(mul(2, i, mlp_fields)?, h, mlp_fields)?, mlp_fields)?;
        }
        let layer_fields = "hidden_size, intermediate_size, num_attention_heads";
        let per_layer = add(
            add(attention, mlp, layer_fields)?,
            mul(2, h, "hidden_size")?,
            layer_fields,
        )?;
        let layers = mul(
            self.num_hidden_layers as u64,
            per_layer,
            "num_hidden_layers, hidden_size, intermediate_size",
        )?;
        let embedding = mul(vocab, h, "vocab_size, hidden_size")?;
        let lm_head = if self.tie_word_embeddings {
            0
        } else {
            embedding
        };
        let total_fields = "vocab_size, hidden_size, num_hidden_layers";
        let total = add(
            add(add(embedding, lm_head, total_fields)?, layers, total_fields)?,
            h,
            total_fields,
        )?;
        // norms 2, q k v o 4, gate up down 3, and the optional biases.
        let per_layer_tensors = 9
            + 3 * u64::from(self.qkv_bias)
            + u64::from(self.o_bias)
            + 3 * u64::from(self.mlp_bias);
        let tensors = (self.num_hidden_layers as u64)
            .saturating_mul(per_layer_tensors)
            .saturating_add(2 + u64::from(!self.tie_word_embeddings));
        Ok(ModelSize {
            embedding,
            attention,
            mlp,
            per_layer,
            layers,
            lm_head,
            final_norm: h,
            total,
            tensors,
        })
    }

    /// Refuses, before anything is allocated, a model that this process cannot hold: more
    /// parameters than `budget.max_params`, or weights (when they live in host memory) plus
    /// every tensor's bookkeeping (wherever its data lives) over `budget.host_bytes`.
    /// `origin` names the config in the error, which lists the parameters by part and the
    /// fields behind the largest.
    pub fn check_budget(
        &self,
        origin: &Path,
        weights: WeightPlacement,
        budget: &MemoryBudget,
    ) -> Result<ModelSize, ConfigError> {
        let size = self.size().map_err(|e| ConfigError::Invalid {
            path: origin.to_path_buf(),
            field: e.fields.clone(),
            message: e.message,
        })?;
        let largest = size.largest_part();
        let too_large = |limit: String| ConfigError::TooLarge {
            path: origin.to_path_buf(),
            message: format!(
                "the model has {} parameters ({}); {limit}. The largest part is {}: check `{}`",
                size.total,
                size.breakdown(self),
                largest.name,
                largest.fields
            ),
        };
        if let Some(max) = budget.max_params {
            if size.total > max {
                return Err(too_large(format!(
                    "that is more than --max-params (RISE_MAX_PARAMS) = {max} allows"
                )));
            }
        }
        if let Some(limit) = budget.host_bytes {
            let weight_bytes = if weights.on_host {
                u128::from(size.total) * u128::from(weights.bytes_per_param)
            } else {
                0
            };
            let bookkeeping = u128::from(size.tensors) * u128::from(TENSOR_OVERHEAD_BYTES);
            let need = weight_bytes + bookkeeping;
            if need > u128::from(limit) {
                let what = if weights.on_host {
                    format!(
                        "in {} its weights take {} (plus {} of tensor bookkeeping)",
                        weights.dtype,
                        human_bytes(weight_bytes),
                        human_bytes(bookkeeping)
                    )
                } else {
                    format!(
                        "its {} tensors alone need {} of host memory for their bookkeeping",
                        size.tensors,
                        human_bytes(bookkeeping)
                    )
                };
                return Err(too_large(format!(
                    "{what}, but this process may use at most {} for them ({})",
                    human_bytes(u128::from(limit)),
                    budget.host_source
                )));
            }
        }
        Ok(size)
    }

    /// Refuses, before anything is allocated, a sampling batch this process cannot hold: the
    /// KV cache of every row (`prompts × samples`, each up to the longest prompt plus
    /// `max_new_tokens` tokens), the rows' logits and probabilities, and the per-row state on
    /// the host. Every caller of the sampler goes through this, so `--n 100000000` is an
    /// error naming `n`, `max_new_tokens` and the prompts, not a libtorch panic.
    ///
    /// `activations` is the compute dtype and device (see `checkpoint::placement`). What lives
    /// in host memory must fit `budget.host_bytes`, the same half of the machine the weights
    /// may take (activations are the other half's business, see [`HOST_MEMORY_DIVISOR`]).
    /// On an accelerator only the host part is checked here: its memory is not known to this
    /// crate, and an allocation there that fails is a libtorch error.
    pub fn check_sampling(
        &self,
        shape: &SamplingShape,
        activations: WeightPlacement,
        budget: &MemoryBudget,
    ) -> Result<BatchMemory, BatchTooLarge> {
        let b = shape.prompts as u128;
        let rows = b.saturating_mul(shape.samples as u128);
        let m = shape.max_new_tokens as u128;
        let capacity = (shape.longest_prompt as u128).saturating_add(m);
        let e = u128::from(activations.bytes_per_param);
        let cache_row = prod(&[
            2,
            self.num_hidden_layers as u128,
            self.num_key_value_heads as u128,
            capacity,
            self.head_dim as u128,
            e,
        ]);
        // The prefill fills a cache of `prompts` rows, which is then copied out to every
        // sample: for a moment both exist.
        let cache_rows = if shape.samples > 1 {
            rows.saturating_add(b)
        } else {
            rows
        };
        let parts = [
            BatchPart {
                name: "the KV cache",
                bytes: cache_row.saturating_mul(cache_rows),
                formula: format!(
                    "2 × num_hidden_layers {} × {cache_rows} rows{} × num_key_value_heads {} × \
                     {capacity} tokens × head_dim {} × {e} bytes of {}",
                    self.num_hidden_layers,
                    if shape.samples > 1 {
                        " (with the prefill's)"
                    } else {
                        ""
                    },
                    self.num_key_value_heads,
                    self.head_dim,
                    activations.dtype
                ),
                on_host: activations.on_host,
            },
            BatchPart {
                name: "the logits",
                bytes: prod(&[rows, self.vocab_size as u128, 8]),
                formula: format!(
                    "{rows} rows × vocab_size {} × 8 bytes: float32 logits and probabilities",
                    self.vocab_size
                ),
                on_host: activations.on_host,
            },
            BatchPart {
                name: "the attention mask",
                bytes: prod(&[rows, capacity, 8]),
                formula: format!("{rows} rows × {capacity} tokens × 8 bytes"),
                on_host: activations.on_host,
            },
            BatchPart {
                name: "the rows' state",
                bytes: rows.saturating_mul(
                    u128::from(SAMPLER_ROW_BYTES).saturating_add(m.saturating_mul(8)),
                ),
                formula: format!(
                    "{rows} rows × ({SAMPLER_ROW_BYTES} + max_new_tokens {m} × 8 bytes for \
                     the tokens and their text)"
                ),
                on_host: true,
            },
        ];
        let what = format!(
            "sampling {b} prompt(s) × n {} = {rows} rows of up to {capacity} tokens (the \
             longest prompt, {}, + max_new_tokens {m})",
            shape.samples, shape.longest_prompt
        );
        // libtorch sizes are signed 64-bit: a cache dimension past that cannot even be asked.
        check_batch(
            &what,
            &parts,
            capacity.max(rows),
            budget,
            "Lower n, max_new_tokens or the prompts per batch",
        )
    }

    /// Refuses, before anything is allocated, a scoring batch (`sequences` right-padded to
    /// `longest` tokens) whose logits this process cannot hold; see
    /// [`LlamaConfig::check_sampling`] for the budget.
    pub fn check_scoring(
        &self,
        sequences: usize,
        longest: usize,
        activations: WeightPlacement,
        budget: &MemoryBudget,
    ) -> Result<BatchMemory, BatchTooLarge> {
        let b = sequences as u128;
        let t = longest as u128;
        let e = u128::from(activations.bytes_per_param);
        let parts = [
            BatchPart {
                name: "the logits",
                bytes: prod(&[b, t.saturating_sub(1), self.vocab_size as u128, 8]),
                formula: format!(
                    "{b} sequences × {} positions × vocab_size {} × 8 bytes: float32 logits \
                     and log-probabilities",
                    t.saturating_sub(1),
                    self.vocab_size
                ),
                on_host: activations.on_host,
            },
            BatchPart {
                name: "the MLP activations",
                bytes: prod(&[b, t, self.intermediate_size as u128, 3, e]),
                formula: format!(
                    "{b} sequences × {t} tokens × intermediate_size {} × 3 × {e} bytes of {}",
                    self.intermediate_size, activations.dtype
                ),
                on_host: activations.on_host,
            },
        ];
        check_batch(
            &format!("scoring {b} sequence(s) of up to {t} tokens"),
            &parts,
            b.max(t),
            budget,
            "Score fewer or shorter sequences per batch",
        )
    }
}

/// Most parameters any config may describe: every size libtorch sees is a signed 64-bit
/// number, and bytes = parameters × up to 8 must fit in one too.
pub const MAX_REPRESENTABLE_PARAMS: u64 = (i64::MAX / 8) as u64;

/// Host memory one tensor costs besides its data (libtorch's tensor and storage objects, the
/// variable's name and map entry, allocator rounding): measured at a few hundred bytes,
/// rounded up. It is what makes a config with 10^9 tiny layers too large even though its
/// parameter count is modest.
pub const TENSOR_OVERHEAD_BYTES: u64 = 1024;

/// The weights of one model may take half of the machine's memory: the rest is for
/// activations, the KV cache, gradients and optimizer state, the tokenizer, and everything
/// else running.
pub const HOST_MEMORY_DIVISOR: u64 = 2;

/// Parameters of a model by part, as its config implies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSize {
    /// `embed_tokens`: vocab_size × hidden_size.
    pub embedding: u64,
    /// One layer's attention: q, k, v, o (k and v with the key/value heads) and biases.
    pub attention: u64,
    /// One layer's MLP: gate, up, down and biases.
    pub mlp: u64,
    /// One decoder layer: attention, MLP and its two norms.
    pub per_layer: u64,
    /// Every layer: num_hidden_layers × per_layer.
    pub layers: u64,
    /// `lm_head`: vocab_size × hidden_size, or 0 when tied to the embedding.
    pub lm_head: u64,
    /// The final norm: hidden_size.
    pub final_norm: u64,
    /// Everything, the tied embedding counted once.
    pub total: u64,
    /// Separate tensors (each costs [`TENSOR_OVERHEAD_BYTES`] of host memory).
    pub tensors: u64,
}

/// One part of a [`ModelSize`], for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizePart {
    /// `the embedding`, `the layers`, `lm_head`.
    pub name: &'static str,
    /// The config fields that set its size.
    pub fields: &'static str,
    /// Its parameters.
    pub params: u64,
}

impl ModelSize {
    /// The part with the most parameters.
    pub fn largest_part(&self) -> SizePart {
        // On a tie the last wins: the embedding, which is what an untied lm_head mirrors.
        let parts = [
            SizePart {
                name: "lm_head",
                fields: "vocab_size, hidden_size, tie_word_embeddings",
                params: self.lm_head,
            },
            SizePart {
                name: "the decoder layers",
                fields: "num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim",
                params: self.layers,
            },
            SizePart {
                name: "the embedding",
                fields: "vocab_size, hidden_size",
                params: self.embedding,
            },
        ];
        parts
            .into_iter()
            .max_by_key(|p| p.params)
            .unwrap_or(parts[0])
    }

    /// `embedding 6400 (vocab_size 100 × hidden_size 64), …`: each part with the field
    /// values behind it.
    pub fn breakdown(&self, cfg: &LlamaConfig) -> String {
        let lm_head = if cfg.tie_word_embeddings {
            "lm_head tied to the embedding".to_string()
        } else {
            format!(
                "lm_head {} (vocab_size × hidden_size, tie_word_embeddings false)",
                self.lm_head
            )
        };
        format!(
            "embedding {} (vocab_size {} × hidden_size {}), {lm_head}, {} layers (num_hidden_layers {} × {} each: attention {} with num_attention_heads {}, num_key_value_heads {}, head_dim {}; MLP {} with intermediate_size {}), final norm {}",
            self.embedding,
            cfg.vocab_size,
            cfg.hidden_size,
            self.layers,
            cfg.num_hidden_layers,
            self.per_layer,
            self.attention,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            self.mlp,
            cfg.intermediate_size,
            self.final_norm
        )
    }
}

/// A product or sum of config fields that does not fit in 64 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fields {fields}: {message}")]
pub struct SizeOverflow {
    /// The fields involved, comma-separated.
    pub fields: String,
    /// The operation that overflowed.
    pub message: String,
}

fn mul(a: u64, b: u64, fields: &str) -> Result<u64, SizeOverflow> {
    a.checked_mul(b).ok_or_else(|| SizeOverflow {
        fields: fields.to_string(),
        message: format!("{a} × {b} parameters overflows 64 bits"),
    })
}

fn add(a: u64, b: u64, fields: &str) -> Result<u64, SizeOverflow> {
    a.checked_add(b).ok_or_else(|| SizeOverflow {
        fields: fields.to_string(),
        message: format!("{a} + {b} parameters overflows 64 bits"),
    })
}

/// Where a model's weights will live, for [`LlamaConfig::check_budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightPlacement {
    /// `float32`, `bfloat16`, `float16`: named in errors.
    pub dtype: &'static str,
    /// Bytes per parameter in that dtype.
    pub bytes_per_param: u64,
    /// Whether the weights are in host memory (CPU) rather than on an accelerator.
    pub on_host: bool,
}

/// Host memory one sampled row costs besides its tokens: its random stream, bookkeeping and
/// the per-step vectors of ids, positions and draws (about 200 bytes, rounded up).
pub const SAMPLER_ROW_BYTES: u64 = 256;

/// One call of the sampler, as [`LlamaConfig::check_sampling`] sizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingShape {
    /// Prompts in the batch.
    pub prompts: usize,
    /// Samples per prompt (`n`): every sample is a row of the KV cache.
    pub samples: usize,
    /// Tokens of the longest prompt (the others are left-padded to it).
    pub longest_prompt: usize,
    /// Most new tokens per sample.
    pub max_new_tokens: usize,
}

/// Bytes a sampling or scoring batch needs at least, by where they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchMemory {
    /// In host memory (everything, on the CPU).
    pub host: u128,
    /// On the accelerator (0 on the CPU).
    pub device: u128,
}

/// A sampling or scoring batch that does not fit, refused before anything is allocated. The
/// message lists what it needs by part, with the numbers and settings behind each, and the
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BatchTooLarge {
    /// What is too large, by how much, and what to lower.
    pub message: String,
    /// What the batch needs.
    pub need: BatchMemory,
}

/// One named allocation of a batch, for messages.
struct BatchPart {
    name: &'static str,
    bytes: u128,
    formula: String,
    on_host: bool,
}

/// The product, saturating: an absurd request stays absurd instead of wrapping to a small one.
fn prod(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(f))
}

/// Sums `parts` by place and refuses them when the host part exceeds the budget, or any
/// count or size is past what libtorch's signed 64-bit sizes can express. `largest_dim` is
/// the largest single dimension any tensor of the batch has.
fn check_batch(
    what: &str,
    parts: &[BatchPart],
    largest_dim: u128,
    budget: &MemoryBudget,
    advice: &str,
) -> Result<BatchMemory, BatchTooLarge> {
    let mut need = BatchMemory::default();
    for p in parts {
        let place = if p.on_host {
            &mut need.host
        } else {
            &mut need.device
        };
        *place = place.saturating_add(p.bytes);
    }
    let listing = |only_host: bool| -> String {
        parts
            .iter()
            .filter(|p| p.on_host || !only_host)
            .map(|p| format!("{} {} ({})", p.name, human_bytes(p.bytes), p.formula))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let limit = i64::MAX as u128;
    if largest_dim > limit || parts.iter().any(|p| p.bytes > limit) {
        return Err(BatchTooLarge {
            message: format!(
                "{what} needs more than libtorch can address: {}. {advice}",
                listing(false)
            ),
            need,
        });
    }
    if let Some(host_limit) = budget.host_bytes {
        if need.host > u128::from(host_limit) {
            let place = if need.device == 0 {
                ""
            } else {
                " of host memory"
            };
            return Err(BatchTooLarge {
                message: format!(
                    "{what} needs at least {}{place}: {}; this process may use at most {} \
                     for them ({}). {advice}",
                    human_bytes(need.host),
                    listing(need.device != 0),
                    human_bytes(u128::from(host_limit)),
                    budget.host_source
                ),
                need,
            });
        }
    }
    Ok(need)
}

/// What one process may allocate for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Host memory for the weights of a CPU model and for every tensor's bookkeeping
    /// (half of the machine's memory, see [`HOST_MEMORY_DIVISOR`]); `None` where it
    /// is unknown.
    pub host_bytes: Option<u64>,
    /// Where `host_bytes` came from, for errors:
    /// `half of the 24.0 GiB this process can have: MemTotal in /proc/meminfo`.
    pub host_source: String,
    /// An explicit cap on parameters (`--max-params`, `RISE_MAX_PARAMS`).
    pub max_params: Option<u64>,
}

/// The environment variable that caps the parameters of any model a rise process loads.
pub const MAX_PARAMS_VAR: &str = "RISE_MAX_PARAMS";

impl MemoryBudget {
    /// No limit at all (for tests and for callers that checked elsewhere).
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget {
            host_bytes: None,
            host_source: "no limit".into(),
            max_params: None,
        }
    }

    /// This machine's memory (the smaller of `MemTotal` and the cgroup's `memory.max`),
    /// half of it ([`HOST_MEMORY_DIVISOR`]); no parameter cap.
    pub fn of_this_machine() -> MemoryBudget {
        let Some((total, source)) = machine_memory() else {
            return MemoryBudget::unlimited();
        };
        MemoryBudget {
            host_bytes: Some(total / HOST_MEMORY_DIVISOR),
            host_source: format!(
                "half of the {} this process can have: {source}",
                human_bytes(u128::from(total))
            ),
            max_params: None,
        }
    }

    /// [`MemoryBudget::of_this_machine`] capped by `RISE_MAX_PARAMS` when it is set.
    pub fn from_env() -> Result<MemoryBudget, ConfigError> {
        let cap = match std::env::var(MAX_PARAMS_VAR) {
            Ok(text) if !text.trim().is_empty() => Some(
                parse_param_count(&text)
                    .map_err(|e| ConfigError::Setting(format!("{MAX_PARAMS_VAR}: {e}")))?,
            ),
            _ => None,
        };
        Ok(MemoryBudget::of_this_machine().with_max_params(cap))
    }

    /// The same budget with an explicit parameter cap (`None` keeps the current one).
    pub fn with_max_params(mut self, max_params: Option<u64>) -> MemoryBudget {
        if max_params.is_some() {
            self.max_params = max_params;
        }
        self
    }
}

/// `7000000000`, `7_000_000_000`, `7B`, `125M`, `1.5G`, `500k`: a parameter count (K, M, G or
/// B, T are powers of 1000).
pub fn parse_param_count(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let (number, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale: u64 = match c.to_ascii_uppercase() {
                'K' => 1_000,
                'M' => 1_000_000,
                'G' | 'B' => 1_000_000_000,
                'T' => 1_000_000_000_000,
                _ if t[..i].parse::<f64>().is_ok() => {
                    return Err(format!(
                        "`{text}`: unknown suffix `{c}` (use K, M, B or T, or a plain number)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "`{text}` is not a parameter count (e.g. 7000000000 or 7B)"
                    ))
                }
            };
            (&t[..i], scale)
        }
        _ => (t.as_str(), 1),
    };
    let bad = || format!("`{text}` is not a parameter count (e.g. 7000000000 or 7B)");
    let value = if let Ok(n) = number.parse::<u64>() {
        n.checked_mul(scale).ok_or_else(bad)?
    } else {
        let f: f64 = number.parse().map_err(|_| bad())?;
        let v = f * scale as f64;
        if !(v.is_finite() && v >= 0.0 && v < u64::MAX as f64) {
            return Err(bad());
        }
        v as u64
    };
    if value == 0 {
        return Err(format!("`{text}`: the cap must be at least 1 parameter"));
    }
    Ok(value)
}

/// Total memory and where it was read: the smaller of `MemTotal` (/proc/meminfo) and the
/// cgroup v2 limit of this process, which is what a container may really use.
fn machine_memory() -> Option<(u64, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_total(&meminfo)?;
    match cgroup_limit() {
        Some(limit) if limit < total => Some((limit, "memory.max of its cgroup")),
        _ => Some((total, "MemTotal in /proc/meminfo")),
    }
}

/// `MemTotal:  24563124 kB` in bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// This process's cgroup v2 `memory.max` in bytes, when it is a number (not `max`).
fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.max");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// `12.0 GiB`, `512 B`.
pub fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 7] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
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
        assert!(e.to_string().contains("field `vocab_size`"), "{e}");
        // Malformed JSON has no field to name: serde's line and column instead.
        let e = parse(r#"{"vocab_size": 1,"#).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse("[1, 2]").unwrap_err().to_string();
        assert_eq!(
            e,
            "config.json: expected a JSON object of model settings, found an array"
        );
    }

    /// Each `(field, message)`: BASE with that field added (it replaces BASE's own: JSON objects
    /// keep the last) is refused with an error starting `config.json: message`, said once.
    fn assert_refused(cases: &[(&str, &str)]) {
        for (extra, want) in cases {
            let e = parse(&format!("{{{BASE}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("config.json: {want}")),
                "{extra}: {e}"
            );
            let first = want.split(": ").nth(1).unwrap();
            assert_eq!(e.matches(first).count(), 1, "repeated: {e}");
        }
    }

    #[test]
    fn a_wrongly_typed_field_is_named_once() {
        let cases = [
            (
                r#""vocab_size": 1e12"#,
                "field `vocab_size`: 1e12 is a floating-point number; write the count as a JSON integer (1000000000000)",
            ),
            (r#""hidden_size": 64.0"#, "field `hidden_size`: 64.0 is a floating-point"),
            (r#""num_hidden_layers": -2"#, "field `num_hidden_layers`: -2 is negative"),
            (r#""head_dim": 8.5"#, "field `head_dim`: 8.5 is not a non-negative integer"),
            (
                r#""max_position_embeddings": 100000000000000000000"#,
                "field `max_position_embeddings`: 1e20 does not fit in 64 bits",
            ),
            (r#""rms_norm_eps": "small""#, "field `rms_norm_eps`: expected a number"),
            (r#""tie_word_embeddings": 1"#, "field `tie_word_embeddings`: expected true or false"),
            (r#""model_type": 3"#, "field `model_type`: expected a string"),
            (r#""sliding_window": 4096.0"#, "field `sliding_window`: 4096.0 is a floating-point"),
        ];
        assert_refused(&cases);
        let e = parse(r#"{"hidden_size": 64}"#).unwrap_err().to_string();
        assert!(e.contains("field `vocab_size`: is missing"), "{e}");
        // Null is "not set", as transformers reads it.
        assert_eq!(
            parse(&format!(
                r#"{{{BASE}, "head_dim": null, "sliding_window": null}}"#
            ))
            .unwrap()
            .head_dim,
            16
        );
    }

    #[test]
    fn epsilons_and_positions_are_bounded_naming_the_field() {
        let cases = [
            (r#""rms_norm_eps": 1e308"#, "field `rms_norm_eps`: 1e308 must be less than 1"),
            (r#""rms_norm_eps": 1.0"#, "field `rms_norm_eps`: 1 must be less than 1"),
            (
                r#""max_position_embeddings": 1000000000000000000"#,
                "field `max_position_embeddings`: 1000000000000000000 positions is more than the 2147483648 (2^31)",
            ),
            (
                r#""max_position_embeddings": 1e18"#,
                "field `max_position_embeddings`: 1e18 is a floating-point number",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 4294967296}"#,
                "field `rope_scaling.original_max_position_embeddings`: 4294967296 positions",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64.5}"#,
                "field `rope_scaling.original_max_position_embeddings`: 64.5 is not",
            ),
            (r#""sliding_window": 0"#, "field `sliding_window`: must be positive"),
            (r#""sliding_window": 4294967296"#, "field `sliding_window`: 4294967296 positions"),
        ];
        assert_refused(&cases);
        // The largest accepted values pass.
        let c = parse(&format!(
            r#"{{{BASE}, "rms_norm_eps": 0.5, "max_position_embeddings": 2147483648}}"#
        ))
        .unwrap();
        assert_eq!(c.max_position_embeddings, MAX_POSITIONS);
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

    fn budget(host_bytes: Option<u64>, max_params: Option<u64>) -> MemoryBudget {
        MemoryBudget {
            host_bytes,
            host_source: "half of a test machine".into(),
            max_params,
        }
    }

    const F32_ON_HOST: WeightPlacement = WeightPlacement {
        dtype: "float32",
        bytes_per_param: 4,
        on_host: true,
    };

    #[test]
    fn size_counts_every_part_with_gqa_biases_and_tying() {
        // BASE: vocab 100, hidden 64, intermediate 128, 2 layers, 4 heads of 16; 2 kv heads.
        let c = parse(&format!(r#"{{{BASE}, "num_key_value_heads": 2}}"#)).unwrap();
        let s = c.size().unwrap();
        assert_eq!(s.embedding, 100 * 64);
        // q 64->64, k and v 64->32, o 64->64.
        assert_eq!(s.attention, 64 * 64 + 2 * 64 * 32 + 64 * 64);
        assert_eq!(s.mlp, 3 * 64 * 128);
        assert_eq!(s.per_layer, s.attention + s.mlp + 2 * 64);
        assert_eq!(s.layers, 2 * s.per_layer);
        assert_eq!(s.lm_head, 100 * 64);
        assert_eq!(s.total, 2 * 6400 + s.layers + 64);
        assert_eq!(s.tensors, 2 * 9 + 3);
        assert_eq!(c.num_parameters() as u64, s.total);

        let tied = parse(&format!(
            r#"{{{BASE}, "model_type": "qwen2", "tie_word_embeddings": true, "mlp_bias": true}}"#
        ))
        .unwrap();
        let t = tied.size().unwrap();
        assert_eq!(t.lm_head, 0);
        assert_eq!(t.attention, 4 * 64 * 64 + 3 * 64, "q/k/v biases");
        assert_eq!(t.mlp, 3 * 64 * 128 + 2 * 128 + 64, "MLP biases");
        assert_eq!(t.tensors, 2 * (9 + 3 + 3) + 2);
    }

    #[test]
    fn absurd_sizes_are_refused_at_parse_time_without_overflow() {
        // 10^12 × 10^12 overflows 64 bits: the error names the fields, no wrapped number.
        let e = parse(
            r#"{"vocab_size": 1000000000000, "hidden_size": 1000000000000,
            "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("overflows 64 bits"), "{e}");
        // Representable in u64 but not by libtorch's signed sizes.
        let e = parse(
            r#"{"vocab_size": 4000000000000000000, "hidden_size": 2,
            "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("vocab_size, hidden_size") && e.contains("more than libtorch"),
            "{e}"
        );
        // usize::MAX layers: checked, not wrapped.
        let e = parse(&format!(
            r#"{{"vocab_size": 10, "hidden_size": 64, "intermediate_size": 64,
            "num_hidden_layers": {}, "num_attention_heads": 4}}"#,
            usize::MAX
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_hidden_layers"), "{e}");
    }

    #[test]
    fn the_budget_refuses_what_the_machine_cannot_hold_naming_fields_and_numbers() {
        // vocab_size 10^12 parses (it is representable) but no machine holds it.
        let c = parse(
            r#"{"vocab_size": 1000000000000, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4}"#,
        )
        .unwrap();
        let e = c
            .check_budget(
                Path::new("m/config.json"),
                F32_ON_HOST,
                &budget(Some(12 << 30), None),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("m/config.json: the model has 128000000"),
            "{e}"
        );
        for want in [
            "vocab_size 1000000000000 × hidden_size 64",
            "465.7 TiB",
            "at most 12.0 GiB",
            "half of a test machine",
            "The largest part is the embedding: check `vocab_size, hidden_size`",
        ] {
            assert!(e.contains(want), "`{want}` missing from: {e}");
        }
        // The same model fits when it goes to an accelerator: only bookkeeping is on the host.
        let on_gpu = WeightPlacement {
            dtype: "bfloat16",
            bytes_per_param: 2,
            on_host: false,
        };
        assert!(c
            .check_budget(Path::new("c"), on_gpu, &budget(Some(12 << 30), None))
            .is_ok());
        // ... unless --max-params says otherwise.
        let e = c
            .check_budget(Path::new("c"), on_gpu, &budget(None, Some(7_000_000_000)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--max-params (RISE_MAX_PARAMS) = 7000000000"),
            "{e}"
        );
    }

    #[test]
    fn many_tiny_layers_are_refused_for_their_bookkeeping() {
        // 10^9 layers of a 2-wide model: few bytes of weights per layer, but a billion
        // tensors' worth of host objects.
        let c = parse(
            r#"{"vocab_size": 4, "hidden_size": 2, "intermediate_size": 1,
            "num_hidden_layers": 1000000000, "num_attention_heads": 1}"#,
        )
        .unwrap();
        let gpu = WeightPlacement {
            dtype: "float32",
            bytes_per_param: 4,
            on_host: false,
        };
        let e = c
            .check_budget(Path::new("c"), gpu, &budget(Some(12 << 30), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("9000000003 tensors") && e.contains("num_hidden_layers"),
            "{e}"
        );
    }

    #[test]
    fn a_small_model_passes_every_budget_it_fits() {
        let c = LlamaConfig::tiny(300);
        let size = c
            .check_budget(
                Path::new("c"),
                F32_ON_HOST,
                &budget(Some(1 << 30), Some(10_000_000)),
            )
            .unwrap();
        assert_eq!(size.total as usize, c.num_parameters());
        let e = c
            .check_budget(Path::new("c"), F32_ON_HOST, &budget(Some(1 << 20), None))
            .unwrap_err();
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn non_positive_or_inconsistent_numbers_are_refused() {
        let cases = [
            (r#""rms_norm_eps": 0.0"#, "rms_norm_eps"),
            (r#""rms_norm_eps": -1e-6"#, "rms_norm_eps"),
            (r#""rope_theta": 0"#, "rope_theta"),
            (r#""rope_theta": -10000.0"#, "rope_theta"),
            (
                r#""rope_parameters": {"rope_type": "default", "rope_theta": -1.0}"#,
                "rope_parameters.rope_theta",
            ),
            (
                r#""rope_scaling": {"rope_type": "linear", "factor": 0.0}"#,
                "rope_scaling.factor",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": -1.0, "high_freq_factor": 4.0}"#,
                "rope_scaling.low_freq_factor",
            ),
            (r#""num_key_value_heads": 0"#, "num_key_value_heads"),
            (r#""num_key_value_heads": 8"#, "num_key_value_heads"),
            (r#""head_dim": 0"#, "head_dim"),
            (r#""max_position_embeddings": 0"#, "max_position_embeddings"),
        ];
        for (extra, field) in cases {
            let e = parse(&format!("{{{BASE}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("field `{field}`")), "{extra}: {e}");
        }
        let e = parse(
            r#"{"vocab_size": 10, "hidden_size": 64, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 0}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        // JSON has no NaN or infinity; an overflowing literal is a parse error with a line.
        let e = parse(&format!(r#"{{{BASE}, "rms_norm_eps": 1e999}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line"), "{e}");
    }

    const SMOLLM2: &str = r#"{"vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "tie_word_embeddings": true}"#;

    fn shape(prompts: usize, samples: usize, max_new_tokens: usize) -> SamplingShape {
        SamplingShape {
            prompts,
            samples,
            longest_prompt: 1,
            max_new_tokens,
        }
    }

    #[test]
    fn a_sampling_batch_past_the_budget_is_refused_naming_its_settings() {
        let c = parse(SMOLLM2).unwrap();
        // The issue's `--n 100000000 --max-new-tokens 3`: 300 GB per cache layer.
        let e = c
            .check_sampling(
                &shape(1, 100_000_000, 3),
                F32_ON_HOST,
                &budget(Some(12 << 30), None),
            )
            .unwrap_err();
        let m = e.to_string();
        for want in [
            "sampling 1 prompt(s) × n 100000000 = 100000000 rows of up to 4 tokens (the longest prompt, 1, + max_new_tokens 3) needs at least ",
            "the KV cache 16.8 TiB (2 × num_hidden_layers 30 × 100000001 rows (with the prefill's) × num_key_value_heads 3 × 4 tokens × head_dim 64 × 4 bytes of float32)",
            "the logits 35.8 TiB (100000000 rows × vocab_size 49152 × 8 bytes",
            "at most 12.0 GiB for them (half of a test machine)",
            "Lower n, max_new_tokens or the prompts per batch",
        ] {
            assert!(m.contains(want), "`{want}` missing from: {m}");
        }
        assert!(
            e.need.host > 300_000_000_000 && e.need.device == 0,
            "{:?}",
            e.need
        );
        // What the CPU pipelines sample fits easily.
        let need = c
            .check_sampling(
                &shape(50, 5, 40),
                F32_ON_HOST,
                &budget(Some(12 << 30), None),
            )
            .unwrap();
        assert!(need.host < 1 << 30, "{need:?}");
    }

    #[test]
    fn on_an_accelerator_only_host_state_meets_the_host_budget() {
        let c = parse(SMOLLM2).unwrap();
        let gpu = WeightPlacement {
            dtype: "bfloat16",
            bytes_per_param: 2,
            on_host: false,
        };
        let need = c
            .check_sampling(&shape(64, 16, 1024), gpu, &budget(Some(12 << 30), None))
            .unwrap();
        assert!(need.device > need.host && need.host > 0, "{need:?}");
        // Per-row host state still counts: 10^9 rows of 1000 tokens' bookkeeping.
        let e = c
            .check_sampling(
                &shape(1, 1_000_000_000, 1000),
                gpu,
                &budget(Some(12 << 30), None),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("of host memory: the rows' state") && !e.contains("the KV cache"),
            "{e}"
        );
    }

    #[test]
    fn sizes_past_64_bits_are_refused_without_overflow_even_with_no_budget() {
        let c = parse(SMOLLM2).unwrap();
        for s in [
            shape(1, 1, usize::MAX),
            shape(usize::MAX, usize::MAX, usize::MAX),
            shape(1, usize::MAX, 1),
        ] {
            let e = c
                .check_sampling(&s, F32_ON_HOST, &MemoryBudget::unlimited())
                .unwrap_err()
                .to_string();
            assert!(e.contains("more than libtorch can address"), "{e}");
        }
        let e = c
            .check_scoring(usize::MAX, 2, F32_ON_HOST, &MemoryBudget::unlimited())
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than libtorch can address"), "{e}");
    }

    #[test]
    fn a_scoring_batch_counts_its_logits() {
        let c = parse(SMOLLM2).unwrap();
        assert!(c
            .check_scoring(16, 512, F32_ON_HOST, &budget(Some(12 << 30), None))
            .is_ok());
        // One sequence of a million tokens: 393 GB of logits.
        let e = c
            .check_scoring(1, 1_000_000, F32_ON_HOST, &budget(Some(12 << 30), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("scoring 1 sequence(s) of up to 1000000 tokens needs at least")
                && e.contains("vocab_size 49152")
                && e.contains("Score fewer or shorter sequences per batch"),
            "{e}"
        );
    }

    #[test]
    fn param_counts_parse_with_suffixes() {
        assert_eq!(parse_param_count("7000000000"), Ok(7_000_000_000));
        assert_eq!(parse_param_count("7_000"), Ok(7_000));
        assert_eq!(parse_param_count("7B"), Ok(7_000_000_000));
        assert_eq!(parse_param_count("125m"), Ok(125_000_000));
        assert_eq!(parse_param_count("1.5G"), Ok(1_500_000_000));
        assert!(parse_param_count("0").is_err());
        assert!(parse_param_count("-3").is_err());
        assert!(parse_param_count("7X").is_err());
        assert!(parse_param_count("7X")
            .unwrap_err()
            .contains("unknown suffix `X`"));
        assert!(parse_param_count("lots")
            .unwrap_err()
            .contains("not a parameter count"));
        assert!(parse_param_count("99999999999T").is_err());
    }

    #[test]
    fn meminfo_and_sizes_read_as_people_write_them() {
        assert_eq!(
            meminfo_total("MemTotal:       24563124 kB\nMemFree: 1 kB\n"),
            Some(24563124 * 1024)
        );
        assert_eq!(meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(12 << 30), "12.0 GiB");
        // This machine has some memory, and the budget is half of it.
        let b = MemoryBudget::of_this_machine();
        if cfg!(target_os = "linux") {
            assert!(b.host_bytes.is_some_and(|n| n > 0), "{b:?}");
            assert!(b.host_source.starts_with("half of the"), "{b:?}");
        }
    }
}
