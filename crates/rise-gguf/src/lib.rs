//! `rise-gguf`: imports a llama.cpp GGUF checkpoint as a Hugging Face model directory that
//! rise and transformers both load, without libtorch.
//!
//! The file is parsed and every tensor dequantized by candle (`candle_core::quantized`: the
//! GGUF reader and GGML's block formats, k-quants included); nothing here decodes quantized
//! blocks itself. What this crate adds is the mapping, checked against the metadata:
//!
//! - `config.json` from `{arch}.*` metadata ([`Architecture`]);
//! - `model.safetensors` in HF names, fp32 or bf16, with llama.cpp's rotary permutation of
//!   the q/k rows undone (its converter interleaves each head's two rotary halves);
//! - `tokenizer.json` rebuilt from `tokenizer.ggml.*` with the `tokenizers` crate, the
//!   pre-tokenizer chosen by `tokenizer.ggml.pre` (see the `tokenizer` module);
//! - `tokenizer_config.json` with the special tokens and `tokenizer.chat_template`.
//!
//! [`import`] writes into a staging directory next to the destination and renames it into
//! place at the end, so a failed import leaves nothing behind.

mod error;
mod hf_config;
mod metadata;
mod tensors;
mod tokenizer;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

pub use error::GgufError;
pub use hf_config::{Architecture, SpecialIds};
pub use tensors::OutDtype;

use metadata::Meta;

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The dtype of the written weights.
    pub dtype: OutDtype,
    /// Replace a non-empty destination (otherwise it is an error).
    pub replace: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: OutDtype::F32,
            replace: false,
        }
    }
}

/// What was imported.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The architecture, as read from the metadata.
    pub architecture: Architecture,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// Parameters written (the tied output projection counted once).
    pub parameters: u64,
    /// GGML tensor types in the file and how many tensors have each.
    pub tensor_types: BTreeMap<String, usize>,
    /// Whether the output projection is the embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// `tokenizer.ggml.pre`, which chose the pre-tokenizer.
    pub pre_tokenizer: String,
    /// The chat template names found (`default` for `tokenizer.chat_template`).
    pub chat_templates: Vec<String>,
    /// The files written, in order.
    pub files: Vec<String>,
}

/// The GGML type ids llama.cpp defines, for naming a type candle cannot read.
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2 (removed from GGML)",
        5 => "Q4_3 (removed from GGML)",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is
/// set: users need what is wrong with their file, not our stack.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

/// Turns a candle parse error into one that says what is wrong with the file.
fn header_error(path: &Path, e: candle_core::Error) -> GgufError {
    let message = candle_message(&e);
    if let Some(id) = message
        .strip_prefix("unknown dtype for tensor ")
        .and_then(|rest| rest.trim().parse::<u32>().ok())
    {
        return GgufError::UnsupportedTensorType {
            path: path.to_path_buf(),
            what: "a tensor".into(),
            type_name: ggml_type_name(id).to_string(),
            type_id: id,
            supported: SUPPORTED_TYPES.into(),
        };
    }
    // candle checks every length against the bytes left ("... only N remaining") and reports
    // a short read as an I/O error.
    let eof = message.contains("remaining")
        || message.contains("unexpected end of file")
        || message.contains("failed to fill whole buffer");
    if eof {
        GgufError::Truncated {
            path: path.to_path_buf(),
            message: format!("the header ends early ({message})"),
        }
    } else {
        GgufError::Header {
            path: path.to_path_buf(),
            message,
        }
    }
}

/// The parsed header of a GGUF file and a read-only map of its bytes.
struct Opened {
    content: Content,
    mmap: memmap2::Mmap,
}

fn open(path: &Path) -> Result<Opened, GgufError> {
    let file = File::open(path).map_err(GgufError::io(path))?;
    let len = file.metadata().map_err(GgufError::io(path))?.len();
    let mut magic = [0u8; 4];
    let mut head = (&file).take(4);
    let got = head.read(&mut magic).map_err(GgufError::io(path))?;
    if got < 4 && len < 4 {
        return Err(GgufError::Truncated {
            path: path.to_path_buf(),
            message: format!("{len} bytes, not even the 4-byte magic"),
        });
    }
    if &magic != b"GGUF" {
        let text: String = magic
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        return Err(GgufError::NotGguf {
            path: path.to_path_buf(),
            found: format!(
                "{text:?} (hex {})",
                magic.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        });
    }
    let mut reader = BufReader::new(File::open(path).map_err(GgufError::io(path))?);
    let content = Content::read(&mut reader).map_err(|e| header_error(path, e))?;
    for (name, info) in &content.tensor_infos {
        let start = content.tensor_data_offset.saturating_add(info.offset);
        let end = start.saturating_add(tensors::stored_bytes(info));
        if end > len {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{name}` ({}, {:?}) needs bytes {start}..{end}, but the file has {len} bytes",
                    tensors::type_name(info.ggml_dtype),
                    info.shape.dims()
                ),
            });
        }
    }
    // SAFETY: a read-only map; the file is not ours to modify and is read once, start to
    // end, while it is mapped (another process truncating it meanwhile is the usual mmap
    // caveat and would surface as a failed read, not wrong weights, since sizes were checked).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(GgufError::io(path))?;
    Ok(Opened { content, mmap })
}

/// Reads and checks a GGUF file's header without writing anything: its architecture,
/// tensor types and tokenizer. What `rise import gguf --check` prints.
pub fn inspect(path: &Path) -> Result<ImportSummary, GgufError> {
    let opened = open(path)?;
    let (summary, _, _) = prepare(path, &opened)?;
    Ok(summary)
}

type Prepared<'a> = (ImportSummary, Vec<tensors::Planned<'a>>, tokenizer::Rebuilt);

fn prepare<'a>(path: &Path, opened: &'a Opened) -> Result<Prepared<'a>, GgufError> {
    let meta = Meta {
        path,
        values: &opened.content.metadata,
    };
    let vocab_len = meta
        .opt_str_array("tokenizer.ggml.tokens")?
        .map(|t| t.len());
    let arch = Architecture::read(&meta, vocab_len)?;
    let (planned, tied) = tensors::plan(path, &opened.content.tensor_infos, &arch)?;
    let rebuilt = tokenizer::rebuild(&meta)?;
    let templates = tokenizer::chat_templates(&meta)?;
    let mut tensor_types = BTreeMap::new();
    for info in opened.content.tensor_infos.values() {
        *tensor_types
            .entry(tensors::type_name(info.ggml_dtype).to_string())
            .or_insert(0) += 1;
    }
    let parameters = planned
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64)
        .sum();
    let summary = ImportSummary {
        name: meta.opt_str("general.name")?.map(str::to_string),
        architecture: arch,
        parameters,
        tensor_types,
        tied_embeddings: tied,
        pre_tokenizer: rebuilt.pre.clone(),
        chat_templates: templates.iter().map(|(n, _)| n.clone()).collect(),
        files: Vec::new(),
    };
    Ok((summary, planned, rebuilt))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), GgufError> {
    std::fs::write(path, bytes).map_err(GgufError::io(path))
}

/// Writes the Hugging Face files for `gguf` into `out`, an existing directory the caller
/// owns (a staging directory, or a pipeline stage's fresh output directory). On error, what
/// was written is the caller's to discard.
pub fn write_hf_dir(
    gguf: &Path,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary, GgufError> {
    let opened = open(gguf)?;
    let (mut summary, planned, rebuilt) = prepare(gguf, &opened)?;
    let meta = Meta {
        path: gguf,
        values: &opened.content.metadata,
    };
    let templates = tokenizer::chat_templates(&meta)?;

    let config = summary.architecture.hf_config(
        summary.tied_embeddings,
        options.dtype.torch_name(),
        &rebuilt.special,
    );
    let text = serde_json::to_string_pretty(&config).expect("config serializes") + "\n";
    write_file(&out.join("config.json"), text.as_bytes())?;
    summary.files.push("config.json".into());

    let error = RefCell::new(None);
    let views: Vec<(String, tensors::LazyTensor<'_>)> = planned
        .iter()
        .map(|p| {
            (
                p.hf_name.clone(),
                tensors::LazyTensor {
                    planned: p,
                    mmap: &opened.mmap,
                    data_offset: opened.content.tensor_data_offset,
                    dtype: options.dtype,
                    path: gguf,
                    error: &error,
                },
            )
        })
        .collect();
    let weights = out.join("model.safetensors");
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), &weights).map_err(|e| {
        GgufError::Destination {
            path: weights.clone(),
            message: format!("cannot write: {e}"),
        }
    })?;
    if let Some(e) = error.into_inner() {
        return Err(e);
    }
    // safetensors writes through a private temporary file (mode 0600); give the weights the
    // permissions the other files got from the umask.
    let perms = std::fs::metadata(out.join("config.json"))
        .map_err(GgufError::io(out.join("config.json")))?
        .permissions();
    std::fs::set_permissions(&weights, perms).map_err(GgufError::io(&weights))?;
    summary.files.push("model.safetensors".into());

    let tok_path = out.join("tokenizer.json");
    write_file(&tok_path, tokenizer::to_json(&rebuilt, gguf)?.as_bytes())?;
    summary.files.push("tokenizer.json".into());
    let tok_cfg =
        tokenizer::tokenizer_config(&rebuilt, &templates, summary.architecture.context_length);
    let text = serde_json::to_string_pretty(&tok_cfg).expect("config serializes") + "\n";
    write_file(&out.join("tokenizer_config.json"), text.as_bytes())?;
    summary.files.push("tokenizer_config.json".into());
    Ok(summary)
}

/// Whether `dir` is missing or an empty directory.
fn absent_or_empty(dir: &Path) -> Result<bool, GgufError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(GgufError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// Imports `gguf` into the directory `to`: everything is written into a staging directory
/// beside it (`.NAME.import-PID`), fsynced, and renamed to `to` only when complete, so a
/// failure leaves `to` as it was. A non-empty `to` is refused unless `options.replace`.
pub fn import(gguf: &Path, to: &Path, options: &ImportOptions) -> Result<ImportSummary, GgufError> {
    if to.exists() && !to.is_dir() {
        return Err(GgufError::Destination {
            path: to.to_path_buf(),
            message: "exists and is not a directory".into(),
        });
    }
    let empty = absent_or_empty(to)?;
    if !empty && !options.replace {
        return Err(GgufError::Destination {
            path: to.to_path_buf(),
            message: "is not empty; import into a new directory, or pass --force to replace it"
                .into(),
        });
    }
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| GgufError::Destination {
            path: to.to_path_buf(),
            message: "has no directory name".into(),
        })?;
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(GgufError::io(&parent))?;
    let staging = parent.join(format!(".{name}.import-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(GgufError::io(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(GgufError::io(&staging))?;
    let result = write_hf_dir(gguf, &staging, options).and_then(|summary| {
        for f in &summary.files {
            let p = staging.join(f);
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(GgufError::io(&p))?;
        }
        move_into_place(&staging, to, &parent, &name)?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Renames the complete staging directory to `to`, moving an existing `to` aside first and
/// deleting it only after the rename succeeded.
fn move_into_place(staging: &Path, to: &Path, parent: &Path, name: &str) -> Result<(), GgufError> {
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = to.exists();
    if had_old {
        std::fs::rename(to, &old).map_err(GgufError::io(to))?;
    }
    if let Err(e) = std::fs::rename(staging, to) {
        if had_old {
            let _ = std::fs::rename(&old, to);
        }
        return Err(GgufError::Io {
            path: to.to_path_buf(),
            source: e,
        });
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(GgufError::io(&old))?;
    }
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}
