//! GGUF: the file format of ggml/llama.cpp models. A file is a header (magic `GGUF`,
//! version, tensor count, key-value count), typed key-value metadata, tensor infos (name,
//! dims, type, offset) and an aligned data section.
//!
//! [`GgufFile::open`] maps the file (memmap2) and parses it in place: metadata is decoded
//! into owned values, tensor data is never copied, only viewed. The parser is hardened the
//! way llama.cpp's `gguf.cpp` is: every read is checked against the bytes left, every count
//! is checked against what could possibly fit before anything is allocated, string lengths
//! are capped, dims are checked for overflow and block divisibility, and every tensor's byte
//! range must lie inside the data section without overlapping another. A malformed file
//! gives a [`GgufError`] naming the key or tensor and the values found; it never panics.
//!
//! [`GgufWriter`] writes files: synthetic models, compressed models and test fixtures.

mod error;
mod metadata;
mod reader;
mod writer;

pub use error::GgufError;
pub use metadata::{MetaArray, MetaValue, ValueType};
pub use reader::{
    parse, GgufFile, GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS,
};
pub use writer::GgufWriter;
