//! Errors of model loading: structured, naming the file, key or tensor and the values.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] kvedge_runtime::Error),

    #[error("{file}: architecture '{arch}' is not supported (supported: {supported})")]
    UnsupportedArch {
        file: String,
        arch: String,
        supported: String,
    },

    #[error("{file}: {key}: expected {expected}, got {got}")]
    BadValue {
        file: String,
        key: String,
        expected: String,
        got: String,
    },

    #[error("{file}: tensor '{tensor}': expected shape {expected:?}, got {got:?}")]
    TensorShape {
        file: String,
        tensor: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },

    #[error("GPU memory cap: {what}: {need} bytes needed, {available} of the {cap}-byte cap left")]
    OutOfMemory {
        what: String,
        need: u64,
        available: u64,
        cap: u64,
    },
}
