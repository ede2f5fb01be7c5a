//! The llama family (llama and qwen2 GGUF architectures): pre-norm decoder blocks of
//! grouped-query attention with RoPE and a SwiGLU MLP (Touvron et al., 2023; Qwen2 adds
//! Q/K/V biases and rotates halves). [`LlamaModel`] holds the mapped file and its checked
//! hyperparameters; [`cpu::CpuForward`] is the plain reference forward pass and
//! [`gpu::GpuForward`] the product's GPU pass, which tests hold against it.
//!
//! Per block, for the hidden states x of a chunk of tokens at positions p:
//!   xn = rmsnorm(x)·w_attn_norm; q, k, v = xn·Wq (+bq), xn·Wk (+bk), xn·Wv (+bv)
//!   q, k = rope(q, p), rope(k, p); store k, v in the cache at p
//!   x += attention(q, cache)·Wo
//!   xn = rmsnorm(x)·w_ffn_norm; x += (silu(xn·Wgate) * (xn·Wup))·Wdown
//! then logits = (rmsnorm(x)·w_out_norm)·Wout (Wout = token embedding when tied).

pub mod cpu;
pub mod cpu_attention;
mod cpu_lowrank;
pub mod cpu_matmul;
mod cpu_pool;
pub mod gpu;

use std::path::Path;
use std::sync::Arc;

use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::kernels::rope::RopeConfig;
use kvedge_runtime::quant::dequantize;

use crate::{check_tensors, Gates, HParams, LowRank, ModelError, RopeScaling};

/// A loaded llama-family GGUF: the mapped file, its hyperparameters, whether the output
/// matrix is tied to the embedding.
pub struct LlamaModel {
    pub file: Arc<GgufFile>,
    pub hp: HParams,
    pub tied_output: bool,
    /// Palu factors of the K/V projections, when the file has them and they are in use
    /// (see [`crate::lowrank`]); None runs the original projections.
    pub lowrank: Option<LowRank>,
    /// Attention-Gate eviction gates (the `gate` KV policy), from the model file itself or
    /// attached from a gate file ([`Self::attach_gates`]).
    pub gates: Option<Arc<Gates>>,
}

impl LlamaModel {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_file(Arc::new(GgufFile::open(path)?))
    }

    pub fn from_file(file: Arc<GgufFile>) -> Result<Self, ModelError> {
        let hp = HParams::from_gguf(&file)?;
        if let RopeScaling::Other { kind, .. } = &hp.rope_scaling {
            return Err(ModelError::BadValue {
                file: file.name().into(),
                key: format!("{}.rope.scaling.type", hp.arch.name()),
                expected: "none or linear".into(),
                got: kind.clone(),
            });
        }
        if hp.head_dim > kvedge_runtime::kernels::attention::MAX_HEAD_DIM {
            return Err(ModelError::BadValue {
                file: file.name().into(),
                key: format!("{}.attention.key_length", hp.arch.name()),
                expected: format!(
                    "at most {}",
                    kvedge_runtime::kernels::attention::MAX_HEAD_DIM
                ),
                got: hp.head_dim.to_string(),
            });
        }
        let tied_output = check_tensors(&file, &hp)?;
        for t in file.tensors() {
            if !t.ty.can_dequantize() {
                return Err(ModelError::Runtime(
                    kvedge_runtime::Error::UnsupportedType {
                        what: format!("{}: tensor '{}'", file.name(), t.name),
                        ty: t.ty,
                        supported: kvedge_runtime::quant::GgmlType::compute_type_names(),
                    },
                ));
            }
        }
        let lowrank = LowRank::from_gguf(&file, &hp)?;
        let gates = if Gates::present(&file) {
            Some(Arc::new(Gates::load(&file, &file, &hp)?))
        } else {
            None
        };
        Ok(Self {
            file,
            hp,
            tied_output,
            lowrank,
            gates,
        })
    }

    /// Use the gates of the gate file at `path` (refused when trained for another model).
    pub fn attach_gates(&mut self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let gates = GgufFile::open(path)?;
        self.gates = Some(Arc::new(Gates::load(&gates, &self.file, &self.hp)?));
        Ok(())
    }

    /// The name of the output matrix (the embedding when tied).
    pub fn output_name(&self) -> &'static str {
        if self.tied_output {
            "token_embd.weight"
        } else {
            "output.weight"
        }
    }

    /// A small tensor (norm weight, bias) dequantized to f32.
    pub fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.file.tensor(name)?;
        let mut out = vec![0.0; t.n_elements as usize];
        dequantize(t.ty, self.file.tensor_data(t), &mut out)?;
        Ok(out)
    }

    pub fn rope(&self, n_heads: usize) -> RopeConfig {
        RopeConfig {
            head_dim: self.hp.head_dim,
            n_heads,
            n_rot: self.hp.rope_dims,
            freq_base: self.hp.rope_freq_base,
            freq_scale: match self.hp.rope_scaling {
                RopeScaling::Linear { factor } if factor > 0.0 => 1.0 / factor,
                _ => 1.0,
            },
            layout: self.hp.arch.rope_layout(),
        }
    }

    /// The KV cache's shape.
    pub fn kv_geometry(&self) -> kvedge_runtime::kv::KvGeometry {
        kvedge_runtime::kv::KvGeometry {
            n_layers: self.hp.n_layers,
            n_kv_heads: self.hp.n_kv_heads,
            head_dim: self.hp.head_dim,
        }
    }

    /// Attention score scale, 1/sqrt(head_dim).
    pub fn attn_scale(&self) -> f32 {
        1.0 / (self.hp.head_dim as f32).sqrt()
    }
}
