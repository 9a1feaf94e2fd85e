//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate (no network
//! features), chat templates from `tokenizer_config.json` rendered with minijinja, and
//! byte-level BPE training for from-scratch models.
use std::path::{Path, PathBuf};

use rise_data::conversation::{ChatTemplate, Message, PlainTemplate, TemplateError, TokenizeText};
use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, TokenizerImpl};

/// Errors loading, training or saving a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `tokenizer.json` or `tokenizer_config.json` is malformed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (for JSON, with line and column).
        message: String,
    },
    /// Training or encoding failed inside the `tokenizers` crate.
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    /// A named special token is not in the vocabulary.
    #[error("special token {0:?} is not in the vocabulary")]
    UnknownToken(String),
}

/// A tokenizer with its special tokens and chat template.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    chat_template: Option<String>,
    /// `tokenizer_config.json` as read, so that fields we do not interpret survive a save.
    config: serde_json::Map<String, Value>,
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_field(config: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir`, plus `tokenizer_config.json` when present (chat
    /// template, BOS/EOS/PAD tokens).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|source| TokenizerError::Io {
            path: path.clone(),
            source,
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|source| TokenizerError::Io {
                path: cfg_path.clone(),
                source,
            })?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(TokenizerError::Format {
                        path: cfg_path,
                        message: "not a JSON object".into(),
                    })
                }
                Err(e) => {
                    return Err(TokenizerError::Format {
                        path: cfg_path,
                        message: e.to_string(),
                    })
                }
            }
        } else {
            serde_json::Map::new()
        };
        let chat_template = match config.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // The list form names several templates; the one called "default" is the chat one.
            Some(Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            Some(_) => {
                return Err(TokenizerError::Format {
                    path: cfg_path,
                    message: "field `chat_template` must be a string or a list of {name, template}"
                        .into(),
                })
            }
        };
        let tok = Tokenizer {
            inner,
            bos_token: token_field(&config, "bos_token"),
            eos_token: token_field(&config, "eos_token"),
            pad_token: token_field(&config, "pad_token"),
            chat_template,
            config,
        };
        for t in [&tok.bos_token, &tok.eos_token, &tok.pad_token]
            .into_iter()
            .flatten()
        {
            if tok.inner.token_to_id(t).is_none() {
                return Err(TokenizerError::Format {
                    path: dir.join("tokenizer_config.json"),
                    message: format!("special token {t:?} is not in tokenizer.json's vocabulary"),
                });
            }
        }
        Ok(tok)
    }

    /// Trains a byte-level BPE on `texts` (any text round-trips: the 256 byte symbols are
    /// always in the vocabulary). `special_tokens` get ids `0..n` in order and are never
    /// split. BOS/EOS/PAD are unset; name them with [`Tokenizer::with_special`].
    ///
    /// Training is deterministic for the same texts and parameters.
    pub fn train_bpe<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
        special_tokens: &[&str],
    ) -> Result<Self, TokenizerError> {
        let specials: Vec<AddedToken> = special_tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(specials.clone())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk: TokenizerImpl<
            BPE,
            NormalizerWrapper,
            ByteLevel,
            PostProcessorWrapper,
            ByteLevel,
        > = TokenizerImpl::new(BPE::default());
        tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tk.with_decoder(Some(ByteLevel::default()));
        tk.train(&mut trainer, texts)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut inner: tokenizers::Tokenizer = tk.into();
        inner.add_special_tokens(&specials);
        Ok(Tokenizer {
            inner,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            chat_template: None,
            config: serde_json::Map::new(),
        })
    }

    /// Names the BOS, EOS and PAD tokens (each must be in the vocabulary).
    pub fn with_special(
        mut self,
        bos: Option<&str>,
        eos: Option<&str>,
        pad: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        for t in [bos, eos, pad].into_iter().flatten() {
            if self.inner.token_to_id(t).is_none() {
                return Err(TokenizerError::UnknownToken(t.to_string()));
            }
        }
        self.bos_token = bos.map(str::to_string);
        self.eos_token = eos.map(str::to_string);
        self.pad_token = pad.map(str::to_string);
        Ok(self)
    }

    /// Sets (or clears) the Jinja chat template saved in `tokenizer_config.json`.
    pub fn with_chat_template(mut self, template: Option<String>) -> Self {
        self.chat_template = template;
        self
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), TokenizerError> {
        std::fs::create_dir_all(dir).map_err(|source| TokenizerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json).map_err(|source| TokenizerError::Io { path, source })?;
        let mut config = self.config.clone();
        config
            .entry("tokenizer_class")
            .or_insert_with(|| json!("PreTrainedTokenizerFast"));
        config
            .entry("clean_up_tokenization_spaces")
            .or_insert(json!(false));
        for (key, value) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
        ] {
            match value {
                Some(v) => config.insert(key.into(), json!(v)),
                None => config.remove(key),
            };
        }
        match &self.chat_template {
            Some(t) => config.insert("chat_template".into(), json!(t)),
            None => config.remove("chat_template"),
        };
        let path = dir.join("tokenizer_config.json");
        let text =
            serde_json::to_string_pretty(&Value::Object(config)).expect("json serializes") + "\n";
        std::fs::write(&path, text).map_err(|source| TokenizerError::Io { path, source })
    }

    /// Token ids for `text`; `add_special_tokens` applies the tokenizer's post-processor
    /// (e.g. a BOS prefix), as transformers' `tokenizer(text)` does.
    pub fn encode_with(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Text for `ids`; `skip_special_tokens` drops BOS/EOS/markers.
    pub fn decode_with(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The BOS token id.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// The EOS token id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// The padding token id.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// The raw Jinja chat template, if `tokenizer_config.json` has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template: its Jinja template when it has one, else the plain
    /// role-marker template of from-scratch models.
    pub fn chat_template(&self) -> Result<Template, TemplateError> {
        match &self.chat_template {
            Some(src) => Ok(Template::Jinja(JinjaTemplate::new(
                src,
                self.bos_token.clone().unwrap_or_default(),
                self.eos_token.clone().unwrap_or_default(),
            )?)),
            None => Ok(Template::Plain(PlainTemplate::default())),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

impl TokenizeText for Tokenizer {
    /// No special tokens are added (the trait's contract); an encoding error (which the
    /// byte-level models used here cannot produce) yields no tokens.
    fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, false).unwrap_or_default()
    }

    /// Special tokens are kept, so role markers and stop strings stay visible.
    fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false).unwrap_or_default()
    }
}

/// A Hugging Face chat template (Jinja), rendered as transformers renders it: trimmed and
/// left-stripped blocks, loop controls, `raise_exception`, `tojson`, and Python string
/// methods (`strip`, `startswith`, …) on values.
#[derive(Debug)]
pub struct JinjaTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl JinjaTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the strings templates see.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, TemplateError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Render(format!("{e:#}")))?;
        Ok(JinjaTemplate {
            env,
            source: source.to_string(),
            bos_token,
            eos_token,
        })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl ChatTemplate for JinjaTemplate {
    fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(format!("{e:#}")))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TemplateError::Render(format!("{e:#}")))
    }

    /// The EOS string: chat models end a turn with it.
    fn stop_strings(&self) -> Vec<String> {
        if self.eos_token.is_empty() {
            vec![]
        } else {
            vec![self.eos_token.clone()]
        }
    }
}

/// Either kind of chat template, as chosen by [`Tokenizer::chat_template`].
#[derive(Debug)]
pub enum Template {
    /// Role markers for from-scratch models.
    Plain(PlainTemplate),
    /// A Hugging Face Jinja template.
    Jinja(JinjaTemplate),
}

impl ChatTemplate for Template {
    fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        match self {
            Template::Plain(t) => t.render(messages, add_generation_prompt),
            Template::Jinja(t) => t.render(messages, add_generation_prompt),
        }
    }

    fn stop_strings(&self) -> Vec<String> {
        match self {
            Template::Plain(t) => t.stop_strings(),
            Template::Jinja(t) => t.stop_strings(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rise_data::conversation::Role;

    const CORPUS: &[&str] = &[
        "12 + 30 = 42",
        "The answer is \\boxed{42}.",
        "café 東京 🙂",
        "7 * 6 = 42",
    ];

    fn trained() -> Tokenizer {
        Tokenizer::train_bpe(
            CORPUS.iter().copied().cycle().take(40),
            300,
            &["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"],
        )
        .unwrap()
        .with_special(None, Some("<|end|>"), Some("<|pad|>"))
        .unwrap()
    }

    #[test]
    fn trained_bpe_round_trips_unseen_text_and_keeps_specials_whole() {
        let tok = trained();
        for text in ["never seen: ß∂ƒ© 😀 \t\n 123", "<|user|>hi<|end|>"] {
            let ids = tok.encode(text);
            assert_eq!(tok.decode(&ids), text);
        }
        let ids = tok.encode("<|user|>hi<|end|>");
        assert_eq!(ids[0], tok.token_to_id("<|user|>").unwrap());
        assert_eq!(*ids.last().unwrap(), 1);
        assert_eq!(tok.eos_token_id(), Some(1));
        // Merges were learnt: a frequent word is fewer tokens than bytes.
        assert!(tok.encode("answer").len() < "answer".len());
    }

    #[test]
    fn training_is_deterministic_and_save_load_round_trips() {
        let a = trained();
        let b = trained();
        assert_eq!(
            a.inner().to_string(false).unwrap(),
            b.inner().to_string(false).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let a = a.with_chat_template(Some("{{ messages[0]['content'] }}".into()));
        a.save(dir.path()).unwrap();
        let c = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(c.encode("12 + 30"), a.encode("12 + 30"));
        assert_eq!(c.eos_token_id(), Some(1));
        assert_eq!(
            c.chat_template_source(),
            Some("{{ messages[0]['content'] }}")
        );
    }

    #[test]
    fn jinja_templates_support_hf_helpers() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\
                   {% if loop.index > 2 %}{% break %}{% endif %}[{{ m.role }}]{{ m.content | trim }}{{ m.content.strip() | tojson }}{% endfor %}\
                   {% if add_generation_prompt %}[assistant]{% endif %}";
        let t = JinjaTemplate::new(src, "<s>".into(), "</s>".into()).unwrap();
        let msgs = vec![
            Message::new(Role::User, "  hi  "),
            Message::new(Role::Assistant, "yo"),
            Message::new(Role::User, "dropped by break"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<s>[user]hi\"hi\"[assistant]yo\"yo\"[assistant]"
        );
        let err = JinjaTemplate::new(
            "{{ raise_exception('bad role') }}",
            String::new(),
            String::new(),
        )
        .unwrap()
        .render(&msgs, false)
        .unwrap_err();
        assert!(err.to_string().contains("bad role"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
