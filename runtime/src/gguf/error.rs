//! Structured parse errors of the GGUF reader: each names what was read and the values found.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("file too small for a GGUF header: {len} bytes, need at least {need}")]
    TooSmall { len: u64, need: u64 },

    #[error("bad magic: expected \"GGUF\" (47 47 55 46), got {got:02x?}")]
    BadMagic { got: [u8; 4] },

    #[error("unsupported GGUF version {got}: expected 2 or 3")]
    Version { got: u32 },

    #[error("truncated while reading {what} at byte {offset}: need {need} bytes, {left} left")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        left: u64,
    },

    #[error("{what} count {count} is impossible: at most {max} fit in the {left} bytes left")]
    CountTooLarge {
        what: String,
        count: u64,
        max: u64,
        left: u64,
    },

    #[error("{what} at byte {offset} has length {len}, over the limit of {max}")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        max: u64,
    },

    #[error("{what} at byte {offset} is not valid UTF-8")]
    Utf8 { what: String, offset: u64 },

    #[error("key '{key}': unknown value type {got} (expected 0..=12)")]
    UnknownValueType { key: String, got: u32 },

    #[error("key '{key}': arrays of arrays are not supported")]
    NestedArray { key: String },

    #[error("duplicate key '{key}'")]
    DuplicateKey { key: String },

    #[error("key '{key}': expected {expected}, got {got}")]
    KeyType {
        key: String,
        expected: String,
        got: String,
    },

    #[error("key '{key}' not found")]
    MissingKey { key: String },

    #[error("general.alignment must be a non-zero power of two, got {got}")]
    Alignment { got: u64 },

    #[error("tensor '{tensor}': {got} dimensions, expected 1..={max}")]
    Dims { tensor: String, got: u32, max: u32 },

    #[error("tensor '{tensor}': dimensions {dims:?} overflow the element count")]
    DimsOverflow { tensor: String, dims: Vec<u64> },

    #[error("tensor '{tensor}': unknown ggml type id {got}")]
    TensorType { tensor: String, got: u32 },

    #[error(
        "tensor '{tensor}': first dimension {ne0} is not a multiple of the {ty} block size {block}"
    )]
    BlockMultiple {
        tensor: String,
        ty: String,
        ne0: u64,
        block: u64,
    },

    #[error(
        "tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error(
        "tensor '{tensor}': data bytes {start}..{end} lie outside the data section of {data_len} bytes"
    )]
    OutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        data_len: u64,
    },

    #[error("tensors '{first}' and '{second}' overlap in the data section (at byte {at})")]
    Overlap {
        first: String,
        second: String,
        at: u64,
    },

    #[error("duplicate tensor name '{tensor}'")]
    DuplicateTensor { tensor: String },
}
