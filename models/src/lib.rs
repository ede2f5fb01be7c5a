//! kvedge-models: model architectures built on the runtime's kernels. This crate reads
//! each architecture's hyperparameters from GGUF metadata (never from constants) and checks
//! that the file holds every tensor the architecture needs, with the right shape.
//! Supported: `llama` (Llama 2/3, Mistral-style, SmolLM, TinyLlama) and `qwen2`
//! (Qwen2/2.5).

mod error;
pub mod gate;
mod hparams;
pub mod llama;
pub mod lowrank;
mod memory;
mod model;
pub mod synth;
mod tensors;

pub use error::ModelError;
pub use gate::Gates;
pub use hparams::{Arch, HParams, RopeScaling, TokenizerInfo};
pub use lowrank::LowRank;
pub use memory::{MemoryReport, MemoryReservation};
pub use model::{Device, LoadOptions, Model, SessionConfig};
pub use tensors::check_tensors;
