//! ggml tensor types: the `#[repr(C)]` block layouts of the quantized formats (sizes asserted
//! at compile time), their scalar CPU dequantizers, and random well-formed blocks for tests
//! and synthetic models.
//!
//! The layouts and formulas are ggml's (`ggml-common.h`, `ggml-quants.c`): legacy formats
//! quantize blocks of 32 weights with one f16 scale (and a min for the `_1` kinds); the
//! k-quants group 256 weights into a super-block whose sub-block scales are themselves
//! quantized (6-bit for Q4_K/Q5_K/Q3_K, 4-bit for Q2_K, 8-bit for Q6_K).

mod blocks;
mod dequant;
pub mod dot;
mod random;
mod types;

pub use blocks::*;
pub use dequant::{dequantize, dequantize_row};
pub use random::random_blocks;
pub use types::GgmlType;

/// Elements in a k-quant super-block.
pub const QK_K: usize = 256;
