//! Files that travel with a model artifact besides the Hugging Face ones.
//!
//! `rise.json` ([`ModelFormat`]) fixes the conversation format a model is trained and evaluated
//! with, so that every stage downstream of a `model` stage renders conversations the same way
//! (RISE.md §2: one template everywhere) without repeating settings in every stage.
use std::path::Path;

use rise_engine::StageError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The files of a model artifact that transformers and vLLM load; `rise.json` is rise's own and
/// stays in the store. Shared by the `export` stage and `rise export`.
pub const HF_MODEL_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The file name of [`ModelFormat`] in a model directory.
pub const FORMAT_FILE: &str = "rise.json";

/// How conversations with a model are rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFormat {
    /// The system instruction ("" = no system message).
    pub system: String,
    /// `plain` (role markers, from-scratch models) or `chat` (the model's Jinja template).
    pub template: String,
}

impl ModelFormat {
    /// Reads `rise.json` from a model directory.
    pub fn read(dir: &Path) -> Result<Self, StageError> {
        crate::kinds::dataset::read_json(&dir.join(FORMAT_FILE))
    }

    /// Writes `rise.json` into a model directory.
    pub fn write(&self, dir: &Path) -> Result<(), StageError> {
        crate::kinds::dataset::write_json(&dir.join(FORMAT_FILE), self)
    }
}

/// The architecture keys a size config (`configs/*.toml`) may set; everything else in a Hugging
/// Face config.json is derived (vocabulary and special tokens come from the tokenizer).
const SIZE_KEYS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
];

/// Reads a model size config (TOML) and returns it as Hugging Face `config.json` fields
/// (without `vocab_size` and token ids, which the caller adds). Unknown keys are errors that
/// name the file and the key.
pub fn read_size_config(path: &Path) -> Result<serde_json::Map<String, Value>, StageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StageError::with_source(format!("{}: {e}", path.display()), e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
    let mut out = serde_json::Map::new();
    for (key, value) in table {
        if !SIZE_KEYS.contains(&key.as_str()) {
            return Err(StageError::msg(format!(
                "{}: unknown key `{key}`; a size config sets: {}",
                path.display(),
                SIZE_KEYS.join(", ")
            )));
        }
        let v = serde_json::to_value(&value)
            .map_err(|e| StageError::msg(format!("{}: `{key}`: {e}", path.display())))?;
        out.insert(key, v);
    }
    for required in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    ] {
        if !out.contains_key(required) {
            return Err(StageError::msg(format!(
                "{}: missing key `{required}`",
                path.display()
            )));
        }
    }
    out.insert("model_type".into(), Value::from("llama"));
    out.insert("hidden_act".into(), Value::from("silu"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_configs_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.toml");
        std::fs::write(&p, "hidden_size = 64\nintermediate_size = 128\nnum_hidden_layers = 2\nnum_attention_heads = 4\n").unwrap();
        let m = read_size_config(&p).unwrap();
        assert_eq!(m["hidden_size"], 64);
        std::fs::write(&p, "hidden_size = 64\nhiden = 3\n").unwrap();
        let e = read_size_config(&p).unwrap_err().to_string();
        assert!(e.contains("tiny.toml") && e.contains("`hiden`"), "{e}");
    }

    #[test]
    fn format_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = ModelFormat {
            system: String::new(),
            template: "plain".into(),
        };
        f.write(dir.path()).unwrap();
        assert_eq!(ModelFormat::read(dir.path()).unwrap(), f);
    }
}
