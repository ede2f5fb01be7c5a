//! The runtime's error type: one enum, structured variants that name what was expected and
//! what was found. Nothing a file or a caller can cause panics; it becomes one of these.

use std::path::PathBuf;

use crate::gguf::GgufError;
use crate::quant::GgmlType;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: {source}")]
    Gguf {
        file: String,
        #[source]
        source: GgufError,
    },

    #[error("tensor '{name}' not found in {file}")]
    MissingTensor { file: String, name: String },

    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        what: String,
        expected: usize,
        got: usize,
    },

    #[error("{what}: type {ty} is not supported here (supported: {supported})")]
    UnsupportedType {
        what: String,
        ty: GgmlType,
        supported: String,
    },

    #[error("no GPU adapter found for backends {backends}. {hint}")]
    NoAdapter { backends: String, hint: String },

    #[error("adapter index {index} out of range: {count} adapter(s) found (see `kvedge devices`)")]
    AdapterIndex { index: usize, count: usize },

    #[error("could not open device on adapter '{adapter}': {message}")]
    RequestDevice { adapter: String, message: String },

    #[error("GPU {what}: {message}")]
    Gpu { what: String, message: String },

    #[error("{what}: {bytes} bytes exceed the device limit of {limit} bytes ({limit_name})")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },

    #[error("{0}")]
    Model(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
