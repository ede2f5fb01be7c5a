//! Palu low-rank KV latents (Chang et al., "Palu: Compressing KV-Cache with Low-Rank
//! Projection", arXiv 2407.21118): the format of a GGUF that `kvedge compress` wrote, read
//! and checked here so that a bad file fails at load with the key or tensor at fault.
//!
//! Per layer the KV heads are split into groups of `group_size` heads, and each group's K
//! projection W (g·head_dim × n_embd) is factored offline as W ≈ A·D: a down-projection
//! D (r × n_embd) whose output h = D·x is the latent the cache stores (r values per token
//! and group instead of g·head_dim), and an up-projection A (g·head_dim × r) that attention
//! uses to rebuild the keys (then adds the bias and applies RoPE at the token's original
//! position). V is factored the same way with its own ranks. Tensors, per layer N:
//!
//! - `blk.N.attn_k_lr_down.weight`: [n_groups·r_k rows × n_embd], group after group;
//! - `blk.N.attn_k_lr_up.weight`: [n_kv_heads·head_dim rows × r_k], group G's rows are its
//!   heads' rows and multiply group G's latent;
//! - the same with `attn_v_lr_*` and r_v.
//!
//! Metadata: `kvedge.lowrank.base_architecture` (the file's `general.architecture` is
//! [`LOWRANK_ARCH`], so a build without low-rank support, or another runtime, refuses the
//! file instead of silently running the original projections), `.group_size`,
//! `.k_ranks`/`.v_ranks` (u32 per layer), `.rank_ratio`, `.whitened`, `.rank_alloc`,
//! `.rank_multiple`. The original tensors stay in the file, so `--kv-lowrank off` runs the
//! uncompressed model from it.

use kvedge_runtime::gguf::{GgufFile, MetaArray, MetaValue};
use kvedge_runtime::kv::KvType;

use crate::hparams::bad;
use crate::{HParams, ModelError};

/// `general.architecture` of a file with low-rank factors.
pub const LOWRANK_ARCH: &str = "kvedge-lowrank";
/// Metadata key prefix.
pub const PREFIX: &str = "kvedge.lowrank";

/// Tensor names of layer `layer`'s factors: (down, up) for K (`v` false) or V.
pub fn factor_names(layer: usize, v: bool) -> (String, String) {
    let kv = if v { "v" } else { "k" };
    (
        format!("blk.{layer}.attn_{kv}_lr_down.weight"),
        format!("blk.{layer}.attn_{kv}_lr_up.weight"),
    )
}

/// The low-rank layout of a compressed file.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRank {
    /// KV heads per group.
    pub group_size: usize,
    pub n_groups: usize,
    /// Latent width per group, per layer.
    pub k_ranks: Vec<usize>,
    pub v_ranks: Vec<usize>,
    /// The target ratio the compressor was given (latent width / g·head_dim).
    pub rank_ratio: f32,
    /// Factored against calibration activations (SVD-LLM/Palu whitening).
    pub whitened: bool,
    /// How ranks were spread over layers ("uniform" or "energy").
    pub rank_alloc: String,
    /// Ranks are multiples of this (32 lets q8/q4 latents hold them).
    pub rank_multiple: usize,
}

fn ranks(
    file: &GgufFile,
    key: &str,
    n_layers: usize,
    max: usize,
) -> Result<Vec<usize>, ModelError> {
    let want = format!("an array of {n_layers} ranks (u32), each in 1..={max}");
    let got: Vec<u64> = match file.header().get(key).and_then(MetaValue::as_array) {
        Some(MetaArray::U32(v)) => v.iter().map(|&r| r as u64).collect(),
        Some(MetaArray::U64(v)) => v.clone(),
        Some(MetaArray::I32(v)) if v.iter().all(|&r| r >= 0) => {
            v.iter().map(|&r| r as u64).collect()
        }
        Some(other) => return Err(bad(file, key, &want, other.elem_type().name())),
        None => return Err(bad(file, key, &want, "missing")),
    };
    if got.len() != n_layers || got.iter().any(|&r| r == 0 || r as usize > max) {
        return Err(bad(file, key, &want, format!("{got:?}")));
    }
    Ok(got.into_iter().map(|r| r as usize).collect())
}

impl LowRank {
    /// The layout of `file`, if its architecture is [`LOWRANK_ARCH`]; checks every key and
    /// every factor tensor's presence and shape.
    pub fn from_gguf(file: &GgufFile, hp: &HParams) -> Result<Option<Self>, ModelError> {
        let h = file.header();
        if h.get_str("general.architecture").ok() != Some(LOWRANK_ARCH) {
            return Ok(None);
        }
        let key = |k: &str| format!("{PREFIX}.{k}");
        let group_size = h
            .get(&key("group_size"))
            .and_then(MetaValue::as_u64)
            .ok_or_else(|| bad(file, &key("group_size"), "a head count", "missing"))?
            as usize;
        if group_size == 0 || !hp.n_kv_heads.is_multiple_of(group_size) {
            return Err(bad(
                file,
                &key("group_size"),
                &format!("a divisor of the KV head count {}", hp.n_kv_heads),
                group_size,
            ));
        }
        let full = group_size * hp.head_dim;
        let k_ranks = ranks(file, &key("k_ranks"), hp.n_layers, full)?;
        let v_ranks = ranks(file, &key("v_ranks"), hp.n_layers, full)?;
        let n_groups = hp.n_kv_heads / group_size;
        for l in 0..hp.n_layers {
            for (v, r) in [(false, k_ranks[l]), (true, v_ranks[l])] {
                let (down, up) = factor_names(l, v);
                for (name, dims) in [
                    (down, [hp.n_embd as u64, (n_groups * r) as u64]),
                    (up, [r as u64, (hp.n_kv_heads * hp.head_dim) as u64]),
                ] {
                    let t = file.tensor(&name)?;
                    if t.dims != dims {
                        return Err(ModelError::TensorShape {
                            file: file.name().into(),
                            tensor: name,
                            expected: dims.to_vec(),
                            got: t.dims.clone(),
                        });
                    }
                }
            }
        }
        Ok(Some(Self {
            group_size,
            n_groups,
            k_ranks,
            v_ranks,
            rank_ratio: h
                .get(&key("rank_ratio"))
                .and_then(MetaValue::as_f64)
                .unwrap_or(0.0) as f32,
            whitened: h
                .get(&key("whitened"))
                .and_then(MetaValue::as_bool)
                .unwrap_or(false),
            rank_alloc: h
                .get(&key("rank_alloc"))
                .and_then(MetaValue::as_str)
                .unwrap_or("unknown")
                .into(),
            rank_multiple: h
                .get(&key("rank_multiple"))
                .and_then(MetaValue::as_u64)
                .unwrap_or(1) as usize,
        }))
    }

    /// Bytes the latents of one token take over all layers, K and V in their types.
    pub fn latent_bytes_per_token(&self, k: KvType, v: KvType) -> u64 {
        let words: usize = self
            .k_ranks
            .iter()
            .zip(&self.v_ranks)
            .map(|(&rk, &rv)| k.row_words(rk) + v.row_words(rv))
            .sum();
        (4 * words * self.n_groups) as u64
    }

    /// Bytes of the original position each latent slot keeps (u32 per layer and group):
    /// keys are rebuilt and rotated at attention time, after eviction has moved them.
    pub fn position_bytes_per_token(&self) -> u64 {
        (4 * self.n_groups * self.k_ranks.len()) as u64
    }

    /// A one-line description: "group 3, ranks K 96 V 96 (ratio 0.50, whitened, uniform)".
    pub fn describe(&self) -> String {
        let span = |r: &[usize]| {
            let (lo, hi) = (r.iter().min(), r.iter().max());
            match (lo, hi) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "-".into(),
            }
        };
        format!(
            "group {} heads, ranks K {} V {} (ratio {:.2}, {}, {})",
            self.group_size,
            span(&self.k_ranks),
            span(&self.v_ranks),
            self.rank_ratio,
            if self.whitened {
                "whitened"
            } else {
                "plain SVD"
            },
            self.rank_alloc
        )
    }
}
