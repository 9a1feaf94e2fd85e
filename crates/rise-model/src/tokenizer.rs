//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate (no network
//! features), chat templates found where transformers 5 looks for them and rendered with
//! minijinja, and byte-level BPE training for from-scratch models.
//!
//! Chat templates are looked up in the order transformers 5 uses: `chat_template.jinja` (the
//! default template) and `additional_chat_templates/*.jinja` (named ones); else the legacy
//! `chat_template.json`; else `tokenizer_config.json`'s `chat_template` (a string, or a list of
//! `{name, template}`). A model whose vocabulary has chat markers such as `<|im_start|>` but
//! no template anywhere is an error when a chat template is asked for, never a silent fall
//! back to rise's plain role markers: that would train and evaluate on a format the model
//! has never seen.
use std::collections::BTreeMap;
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
    /// The vocabulary has chat markers but no chat template was found.
    #[error(
        "{dir}: the tokenizer has chat tokens ({markers}) but no chat template: looked for \
         chat_template.jinja, additional_chat_templates/*.jinja, chat_template.json and \
         tokenizer_config.json's `chat_template`. rise does not fall back to its plain role \
         markers for such a model (it was never trained on them); add the model's template \
         as chat_template.jinja"
    )]
    NoChatTemplate {
        /// The tokenizer directory.
        dir: PathBuf,
        /// The chat markers found in the vocabulary, comma-separated.
        markers: String,
    },
    /// Several named templates and none chosen (and none called `default`), or the chosen
    /// name does not exist.
    #[error("{path}: {message} (templates here: {available})")]
    TemplateChoice {
        /// Where the templates were found.
        path: PathBuf,
        /// What is wrong.
        message: String,
        /// The template names found, comma-separated.
        available: String,
    },
    /// The chat template does not compile.
    #[error("{path}: {source}")]
    Template {
        /// Where the template came from.
        path: PathBuf,
        /// The compile error.
        source: TemplateError,
    },
}

/// Markers of Hugging Face chat formats that rise's plain template never uses. A vocabulary
/// that holds one of them belongs to a chat model, whose template must be found.
const CHAT_MARKERS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
];

/// The chat templates of a model directory, by name, and the file they came from.
#[derive(Clone, Debug, Default)]
struct FoundTemplates {
    /// Template name → Jinja source; a single unnamed template is called `default`.
    templates: BTreeMap<String, String>,
    /// The file (or directory) they were read from, for error messages.
    origin: PathBuf,
}

/// Reads a text file, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A `chat_template` JSON value (from `tokenizer_config.json` or `chat_template.json`): a
/// string, a list of `{name, template}`, or a `{name: template}` table.
fn templates_from_json(
    value: &Value,
    path: &Path,
    field: &str,
) -> Result<BTreeMap<String, String>, TokenizerError> {
    let bad = |message: String| TokenizerError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut out = BTreeMap::new();
    match value {
        Value::Null => {}
        Value::String(s) => {
            out.insert("default".to_string(), s.clone());
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => {
                        out.insert(n.to_string(), t.to_string());
                    }
                    _ => {
                        return Err(bad(format!(
                            "field `{field}[{i}]` must be {{\"name\": ..., \"template\": ...}}"
                        )))
                    }
                }
            }
        }
        Value::Object(map) => {
            for (name, t) in map {
                let t = t.as_str().ok_or_else(|| {
                    bad(format!("field `{field}.{name}` must be a template string"))
                })?;
                out.insert(name.clone(), t.to_string());
            }
        }
        _ => {
            return Err(bad(format!(
                "field `{field}` must be a string, a list of {{name, template}} or a table of templates"
            )))
        }
    }
    Ok(out)
}

/// Finds a directory's chat templates where transformers 5 looks (see the module docs).
fn find_templates(
    dir: &Path,
    config: &serde_json::Map<String, Value>,
) -> Result<FoundTemplates, TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    let extra_dir = dir.join("additional_chat_templates");
    let legacy = dir.join("chat_template.json");
    let mut templates = BTreeMap::new();
    if let Some(text) = read_optional(&jinja)? {
        templates.insert("default".to_string(), text);
    }
    if extra_dir.is_dir() {
        let entries = std::fs::read_dir(&extra_dir).map_err(|source| TokenizerError::Io {
            path: extra_dir.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| TokenizerError::Io {
                    path: extra_dir.clone(),
                    source,
                })?
                .path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jinja"))
            else {
                continue;
            };
            let text = read_optional(&path)?.unwrap_or_default();
            templates.insert(name.to_string(), text);
        }
    }
    let legacy_text = read_optional(&legacy)?;
    if !templates.is_empty() {
        // transformers' tokenizer reads only the .jinja files, its processor prefers the
        // legacy file: when both are present and disagree, neither choice is safe.
        if let Some(text) = legacy_text {
            let from_json = parse_json_object(&text, &legacy)?;
            let legacy_templates = templates_from_json(
                from_json.get("chat_template").unwrap_or(&Value::Null),
                &legacy,
                "chat_template",
            )?;
            if legacy_templates.get("default") != templates.get("default") {
                return Err(TokenizerError::Format {
                    path: legacy,
                    message: "disagrees with chat_template.jinja next to it; transformers' \
                              tokenizer and processor would each pick a different one. Keep one \
                              of the two files"
                        .into(),
                });
            }
        }
        let origin = if templates.contains_key("default") {
            jinja
        } else {
            extra_dir
        };
        return Ok(FoundTemplates { templates, origin });
    }
    if let Some(text) = legacy_text {
        let from_json = parse_json_object(&text, &legacy)?;
        let templates = templates_from_json(
            from_json.get("chat_template").unwrap_or(&Value::Null),
            &legacy,
            "chat_template",
        )?;
        if !templates.is_empty() {
            return Ok(FoundTemplates {
                templates,
                origin: legacy,
            });
        }
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let templates = templates_from_json(
        config.get("chat_template").unwrap_or(&Value::Null),
        &cfg_path,
        "chat_template",
    )?;
    Ok(FoundTemplates {
        templates,
        origin: cfg_path,
    })
}

fn parse_json_object(
    text: &str,
    path: &Path,
) -> Result<serde_json::Map<String, Value>, TokenizerError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TokenizerError::Format {
            path: path.to_path_buf(),
            message: "not a JSON object".into(),
        }),
        Err(e) => Err(TokenizerError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// A tokenizer with its special tokens and chat template.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    /// The chosen chat template's source.
    chat_template: Option<String>,
    /// Every template found, by name, and where (kept for the error when none is chosen).
    found: FoundTemplates,
    /// The directory this tokenizer was loaded from, for error messages.
    dir: Option<PathBuf>,
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
    /// Loads `tokenizer.json` from `dir`, plus `tokenizer_config.json` when present (BOS/EOS/PAD
    /// tokens) and the chat template called `default` (or the only one), found as the module
    /// docs say.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_dir_with_template(dir, None)
    }

    /// Like [`Tokenizer::from_dir`], choosing the chat template called `template` when the
    /// directory has several (an error naming the ones there if it has no such template).
    pub fn from_dir_with_template(
        dir: &Path,
        template: Option<&str>,
    ) -> Result<Self, TokenizerError> {
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
        let config = match read_optional(&cfg_path)? {
            Some(text) => parse_json_object(&text, &cfg_path)?,
            None => serde_json::Map::new(),
        };
        let found = find_templates(dir, &config)?;
        let names = || {
            found
                .templates
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chat_template = match template {
            Some(name) => match found.templates.get(name) {
                Some(t) => Some(t.clone()),
                None => {
                    return Err(TokenizerError::TemplateChoice {
                        path: found.origin.clone(),
                        message: format!("no chat template called {name:?}"),
                        available: if found.templates.is_empty() {
                            "none".into()
                        } else {
                            names()
                        },
                    })
                }
            },
            None if found.templates.len() == 1 => found.templates.values().next().cloned(),
            // Several templates and none called `default`: the error is raised when a chat
            // template is asked for, as transformers does.
            None => found.templates.get("default").cloned(),
        };
        let tok = Tokenizer {
            inner,
            bos_token: token_field(&config, "bos_token"),
            eos_token: token_field(&config, "eos_token"),
            pad_token: token_field(&config, "pad_token"),
            chat_template,
            found,
            dir: Some(dir.to_path_buf()),
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
            found: FoundTemplates::default(),
            dir: None,
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
        self.save_config(dir)
    }

    /// Writes only `tokenizer_config.json` into `dir`: the special tokens and the chosen chat
    /// template as one string, so that a directory whose template came from
    /// `chat_template.jinja` (or was chosen by name) carries it in the file every loader and
    /// `rise export` read.
    pub fn save_config(&self, dir: &Path) -> Result<(), TokenizerError> {
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
            // Several named templates, none chosen: keep them all, in the list form.
            None if !self.found.templates.is_empty() => config.insert(
                "chat_template".into(),
                Value::Array(
                    self.found
                        .templates
                        .iter()
                        .map(|(name, t)| json!({"name": name, "template": t}))
                        .collect(),
                ),
            ),
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

    /// The chosen Jinja chat template, if the directory has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Where the chat templates were found (`chat_template.jinja`, ...), if any were.
    pub fn chat_template_origin(&self) -> Option<&Path> {
        (!self.found.templates.is_empty()).then_some(self.found.origin.as_path())
    }

    /// The names of every chat template found (`default` for a single unnamed one).
    pub fn chat_template_names(&self) -> Vec<&str> {
        self.found.templates.keys().map(String::as_str).collect()
    }

    /// The chat markers (`<|im_start|>`, ...) in the vocabulary: a model that has them was
    /// trained on a chat format of its own.
    pub fn chat_markers(&self) -> Vec<&'static str> {
        CHAT_MARKERS
            .iter()
            .copied()
            .filter(|m| self.inner.token_to_id(m).is_some())
            .collect()
    }

    /// The model's chat template: its Jinja template when it has one; the plain role-marker
    /// template of from-scratch models when it has none and no chat markers either. A
    /// vocabulary with chat markers and no template, or several templates none of which is
    /// chosen, is an error.
    pub fn chat_template(&self) -> Result<Template, TokenizerError> {
        let origin = || {
            self.dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("<tokenizer>"))
        };
        match &self.chat_template {
            Some(src) => JinjaTemplate::new(
                src,
                self.bos_token.clone().unwrap_or_default(),
                self.eos_token.clone().unwrap_or_default(),
            )
            .map(Template::Jinja)
            .map_err(|source| TokenizerError::Template {
                path: if self.found.templates.is_empty() {
                    origin()
                } else {
                    self.found.origin.clone()
                },
                source,
            }),
            None if !self.found.templates.is_empty() => Err(TokenizerError::TemplateChoice {
                path: self.found.origin.clone(),
                message: "several chat templates and none is called `default`; choose one by \
                          name (`chat_template` param of the model stage, `--chat-template`)"
                    .into(),
                available: self.chat_template_names().join(", "),
            }),
            None => {
                let markers = self.chat_markers();
                if markers.is_empty() {
                    Ok(Template::Plain(PlainTemplate::default()))
                } else {
                    Err(TokenizerError::NoChatTemplate {
                        dir: origin(),
                        markers: markers.join(", "),
                    })
                }
            }
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

    /// A saved tokenizer whose vocabulary has `<|im_start|>`/`<|im_end|>`, with no template.
    fn chat_vocab_dir() -> tempfile::TempDir {
        let tok = Tokenizer::train_bpe(
            CORPUS.iter().copied().cycle().take(40),
            300,
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        )
        .unwrap()
        .with_special(None, Some("<|im_end|>"), None)
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        dir
    }

    fn render_user(tok: &Tokenizer) -> String {
        tok.chat_template()
            .unwrap()
            .render(&[Message::new(Role::User, "hi")], true)
            .unwrap()
    }

    #[test]
    fn chat_markers_without_a_template_are_an_error_not_the_plain_fallback() {
        let dir = chat_vocab_dir();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        let err = tok.chat_template().unwrap_err().to_string();
        assert!(
            err.contains("<|im_start|>")
                && err.contains("chat_template.jinja")
                && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
        // A from-scratch tokenizer (plain role markers only) keeps the plain template.
        assert!(matches!(trained().chat_template(), Ok(Template::Plain(_))));
    }

    #[test]
    fn templates_are_found_where_transformers_5_looks_first() {
        let dir = chat_vocab_dir();
        let cfg = dir.path().join("tokenizer_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        config["chat_template"] = json!("CONFIG{{ messages[0].content }}");
        std::fs::write(&cfg, config.to_string()).unwrap();
        assert_eq!(
            render_user(&Tokenizer::from_dir(dir.path()).unwrap()),
            "CONFIGhi"
        );

        // The legacy processor file beats tokenizer_config.json ...
        std::fs::write(
            dir.path().join("chat_template.json"),
            json!({"chat_template": "JSON{{ messages[0].content }}"}).to_string(),
        )
        .unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(render_user(&tok), "JSONhi");
        assert!(tok
            .chat_template_origin()
            .unwrap()
            .ends_with("chat_template.json"));

        // ... and chat_template.jinja beats both, but must agree with the legacy file.
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "JINJA{{ messages[0].content }}",
        )
        .unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("chat_template.json") && err.contains("disagrees"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("chat_template.json")).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(render_user(&tok), "JINJAhi");
        assert!(tok
            .chat_template_origin()
            .unwrap()
            .ends_with("chat_template.jinja"));

        // Saving writes the chosen template into tokenizer_config.json, so that a copy of
        // that file alone (as `rise export` makes) carries it.
        let out = tempfile::tempdir().unwrap();
        tok.save(out.path()).unwrap();
        assert!(!out.path().join("chat_template.jinja").exists());
        assert_eq!(
            render_user(&Tokenizer::from_dir(out.path()).unwrap()),
            "JINJAhi"
        );
    }

    #[test]
    fn named_templates_use_default_or_the_one_asked_for() {
        let dir = chat_vocab_dir();
        let extra = dir.path().join("additional_chat_templates");
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(
            extra.join("tool_use.jinja"),
            "TOOLS{{ messages[0].content }}",
        )
        .unwrap();
        std::fs::write(extra.join("rag.jinja"), "RAG{{ messages[0].content }}").unwrap();
        // No default: asking for a template is an error that lists the names.
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        let err = tok.chat_template().unwrap_err().to_string();
        assert!(
            err.contains("rag, tool_use") && err.contains("default"),
            "{err}"
        );
        let tok = Tokenizer::from_dir_with_template(dir.path(), Some("tool_use")).unwrap();
        assert_eq!(render_user(&tok), "TOOLShi");
        let err = Tokenizer::from_dir_with_template(dir.path(), Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("rag, tool_use"),
            "{err}"
        );
        // With chat_template.jinja, `default` is chosen unless another is named.
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "DEF{{ messages[0].content }}",
        )
        .unwrap();
        assert_eq!(
            render_user(&Tokenizer::from_dir(dir.path()).unwrap()),
            "DEFhi"
        );
        let tok = Tokenizer::from_dir_with_template(dir.path(), Some("rag")).unwrap();
        assert_eq!(render_user(&tok), "RAGhi");
        assert_eq!(tok.chat_template_names(), ["default", "rag", "tool_use"]);

        // The list form of tokenizer_config.json is read too.
        let dir = chat_vocab_dir();
        let cfg = dir.path().join("tokenizer_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        config["chat_template"] = json!([
            {"name": "default", "template": "D{{ messages[0].content }}"},
            {"name": "tool_use", "template": "T{{ messages[0].content }}"}
        ]);
        std::fs::write(&cfg, config.to_string()).unwrap();
        assert_eq!(
            render_user(&Tokenizer::from_dir(dir.path()).unwrap()),
            "Dhi"
        );
        let tok = Tokenizer::from_dir_with_template(dir.path(), Some("tool_use")).unwrap();
        assert_eq!(render_user(&tok), "Thi");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
