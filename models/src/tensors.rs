//! The tensors a llama-family GGUF must hold, with their shapes (ggml order, innermost
//! first), checked before anything is uploaded.

use kvedge_runtime::gguf::GgufFile;

use crate::{HParams, ModelError};

/// Check every tensor the architecture needs. Returns whether the output matrix is tied to
/// the token embedding (no `output.weight`).
pub fn check_tensors(file: &GgufFile, hp: &HParams) -> Result<bool, ModelError> {
    let (e, v, ff) = (hp.n_embd as u64, hp.n_vocab as u64, hp.n_ff as u64);
    let q = (hp.n_heads * hp.head_dim) as u64;
    let kv = (hp.n_kv_heads * hp.head_dim) as u64;
    let shape = |name: &str, want: &[u64]| -> Result<(), ModelError> {
        let t = file.tensor(name)?;
        if t.dims != want {
            return Err(ModelError::TensorShape {
                file: file.name().into(),
                tensor: name.into(),
                expected: want.to_vec(),
                got: t.dims.clone(),
            });
        }
        Ok(())
    };
    shape("token_embd.weight", &[e, v])?;
    shape("output_norm.weight", &[e])?;
    let tied = file.tensor("output.weight").is_err();
    if !tied {
        shape("output.weight", &[e, v])?;
    }
    for i in 0..hp.n_layers {
        let b = |n: &str| format!("blk.{i}.{n}");
        shape(&b("attn_norm.weight"), &[e])?;
        shape(&b("attn_q.weight"), &[e, q])?;
        shape(&b("attn_k.weight"), &[e, kv])?;
        shape(&b("attn_v.weight"), &[e, kv])?;
        shape(&b("attn_output.weight"), &[q, e])?;
        if hp.arch.qkv_bias() {
            shape(&b("attn_q.bias"), &[q])?;
            shape(&b("attn_k.bias"), &[kv])?;
            shape(&b("attn_v.bias"), &[kv])?;
        }
        shape(&b("ffn_norm.weight"), &[e])?;
        shape(&b("ffn_gate.weight"), &[e, ff])?;
        shape(&b("ffn_up.weight"), &[e, ff])?;
        shape(&b("ffn_down.weight"), &[ff, e])?;
    }
    Ok(tied)
}
