//! kvedge-runtime: everything model-independent.
//!
//! - [`gguf`]: a hardened zero-copy GGUF reader over an mmap, and a writer.
//! - [`quant`]: ggml block layouts and their scalar CPU dequantizers (the reference every
//!   GPU kernel is held against).
//! - [`gpu`]: wgpu device creation with the adapter's own limits, tensor upload split into
//!   binding-sized chunks, and the pipeline cache.
//! - [`kernels`]: one module per WGSL file in `shaders/`, each with its params struct,
//!   dispatch function and scalar CPU reference.

pub mod chat;
pub mod error;
pub mod gguf;
pub mod gpu;
pub mod kernels;
pub mod kv;
pub mod perplexity;
pub mod quant;
pub mod rng;
pub mod sample;
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};
/// The wgpu version kvedge is built against, for callers that pass their own device.
pub use wgpu;
