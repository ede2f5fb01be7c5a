//! Palu latents on the CPU device (arXiv 2407.21118; layout in [`crate::lowrank`]). The
//! cache of a layer holds, per group of KV heads, the latent h = D·x of each token (r words
//! wide in the session's K/V storage type) and the token's original position. Before the
//! layer's attention the keys and values of the slots in use are rebuilt into a scratch
//! f16 cache of the full width, k = rope(A_k·h_k + b_k, position) and v = A_v·h_v + b_v
//! (`kernels::lowrank_rebuild`'s reference), and the ordinary attention (`cpu_attention`)
//! runs over it, so every policy, budget and TidalDecode works on latent slots unchanged.
//! The scratch is one layer's worth, reused layer after layer; only the latents persist
//! between tokens. Rebuilding every slot per layer costs n·r·g·head_dim multiply-adds per
//! group: the price of the memory saved.
//!
//! Eviction selects per group (the heads of a group share their latent slots): the slot
//! scores of the group's heads are summed ([`fold_scores`]).

use kvedge_runtime::kv::KvCacheConfig;
use kvedge_runtime::quant::dequantize;

use super::LlamaModel;
use crate::lowrank::factor_names;
use crate::{LowRank, ModelError};

/// The factors' up-projections, dequantized once per session.
pub struct Latents {
    pub lr: LowRank,
    /// Per layer [n_kv_heads·head_dim][r_k] and [..][r_v].
    up_k: Vec<Vec<f32>>,
    up_v: Vec<Vec<f32>>,
}

impl Latents {
    pub fn new(model: &LlamaModel, lr: &LowRank) -> Result<Self, ModelError> {
        let f = &model.file;
        let load = |name: &str| -> Result<Vec<f32>, ModelError> {
            let t = f.tensor(name)?;
            let mut out = vec![0.0; t.n_elements as usize];
            dequantize(t.ty, f.tensor_data(t), &mut out)?;
            Ok(out)
        };
        let (mut up_k, mut up_v) = (Vec::new(), Vec::new());
        for l in 0..model.hp.n_layers {
            up_k.push(load(&factor_names(l, false).1)?);
            up_v.push(load(&factor_names(l, true).1)?);
        }
        Ok(Self {
            lr: lr.clone(),
            up_k,
            up_v,
        })
    }

    /// The latent caches' layouts of layer `l`: the groups as "heads" of width r.
    pub fn configs(&self, l: usize, full: &KvCacheConfig) -> (KvCacheConfig, KvCacheConfig) {
        let at = |r: usize| KvCacheConfig {
            n_layers: 1,
            n_kv_heads: self.lr.n_groups,
            head_dim: r,
            ..*full
        };
        (at(self.lr.k_ranks[l]), at(self.lr.v_ranks[l]))
    }

    pub fn up(&self, l: usize, v: bool) -> &[f32] {
        if v {
            &self.up_v[l]
        } else {
            &self.up_k[l]
        }
    }
}

/// Sum the per-head slot scores `heads` ([n_kv_heads][capacity]) over each group into
/// `groups` ([n_groups][capacity]) for slots `0..n`: added to what slots `< n_past` had
/// when `accumulate`, else written.
pub fn fold_scores(
    heads: &[f32],
    groups: &mut [f32],
    n_kv_heads: usize,
    capacity: usize,
    n: usize,
    n_past: usize,
    accumulate: bool,
) {
    let n_groups = groups.len() / capacity;
    let g = n_kv_heads / n_groups;
    for grp in 0..n_groups {
        for j in 0..n {
            let sum: f32 = (0..g).map(|hh| heads[(grp * g + hh) * capacity + j]).sum();
            let at = grp * capacity + j;
            let old = if accumulate && j < n_past {
                groups[at]
            } else {
                0.0
            };
            groups[at] = old + sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_scores_sums_heads_of_a_group() {
        // 4 heads in 2 groups, 3 slots of capacity 4, 2 of them past.
        let heads: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut groups = vec![100.0f32; 8];
        fold_scores(&heads, &mut groups, 4, 4, 3, 2, true);
        assert_eq!(&groups[..4], &[100.0 + 4.0, 100.0 + 6.0, 8.0, 100.0]);
        fold_scores(&heads, &mut groups, 4, 4, 3, 2, false);
        assert_eq!(&groups[4..], &[8.0 + 12.0, 9.0 + 13.0, 10.0 + 14.0, 100.0]);
    }
}
