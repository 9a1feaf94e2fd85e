//! The import's errors: each names the file and what in it is wrong.
use std::path::PathBuf;

/// Why a GGUF file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic.
    #[error("{path}: not a GGUF file: it starts with {found}, a GGUF file starts with \"GGUF\"")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// The first bytes, shown as text and hex.
        found: String,
    },
    /// The file ends before the header or a tensor's data does.
    #[error("{path}: truncated: {message}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was cut off.
        message: String,
    },
    /// The header is malformed (a parse error from candle's GGUF reader).
    #[error("{path}: malformed GGUF header: {message}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor has a GGML type no dequantizer here handles.
    #[error(
        "{path}: {what} has tensor type {type_name} (GGML type id {type_id}), which rise cannot \
         dequantize; supported: {supported}"
    )]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor (`tensor `blk.0.attn_q.weight``) or `a tensor` when the parser cannot say.
        what: String,
        /// The type's llama.cpp name, e.g. `IQ2_XXS`.
        type_name: String,
        /// The numeric GGML type id.
        type_id: u32,
        /// The supported types.
        supported: String,
    },
    /// The model is not an architecture rise implements.
    #[error(
        "{path}: metadata `general.architecture` is {architecture:?}; rise imports {supported} \
         (its decoder implements the Llama family only)"
    )]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture the file names.
        architecture: String,
        /// The architectures rise imports.
        supported: String,
    },
    /// A metadata key is missing, has the wrong type, or a value rise does not support.
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing, unexpected, or has the wrong shape.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer described by the metadata could not be rebuilt.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The destination cannot be written as asked.
    #[error("{path}: {message}")]
    Destination {
        /// The destination directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GgufError {
        let path = path.into();
        move |source| GgufError::Io { path, source }
    }
}
