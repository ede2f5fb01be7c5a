//! Palu latents on the CPU device (arXiv 2407.21118; layout in [`crate::lowrank`]). The
//! cache of a layer holds, per group of KV heads, the latent h = D·x of each token (r words
//! wide in the session's K/V storage type) and the token's original position. Before the
//! layer's attention the keys and values of the slots in use are rebuilt into a scratch
//! f16 cache of the full width, k = rope(A_k·h_k + b_k, position) and v = A_v·h_v + b_v, and
//! the ordinary attention (`cpu_attention`) runs over it, so every policy, budget and
//! TidalDecode works on latent slots unchanged. The scratch is one layer's worth, reused
//! layer after layer; only the latents persist between tokens. This is the reference form:
//! rebuilding every slot per layer costs n·r·g·head_dim multiply-adds per group, which
//! a fused GPU kernel would hide behind the cache reads.
//!
//! Eviction selects per group (the heads of a group share their latent slots): the slot
//! scores of the group's heads are summed ([`fold_scores`]).

use kvedge_runtime::kernels::attention::decode_head_into;
use kvedge_runtime::kernels::{kv_store, rope};
use kvedge_runtime::kv::{KvCacheConfig, KvType};
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

/// What [`rebuild`] turns latents into.
pub struct Rebuild<'a> {
    /// Layout of the latent cache (groups as heads, width r) and its storage type.
    pub lat_cfg: &'a KvCacheConfig,
    pub ty: KvType,
    pub latents: &'a [u32],
    /// [g_total·head_dim][r] up-projection.
    pub up: &'a [f32],
    /// Added after the up-projection (qwen2's K/V biases).
    pub bias: Option<&'a [f32]>,
    /// RoPE at each slot's position ([n_groups][capacity]); None for V.
    pub rope: Option<(&'a [u32], rope::RopeConfig)>,
}

/// Rebuild slots `0..n` of every head into `out`, an f16 cache laid out as `full`
/// ([n_kv_heads][capacity][row], `full.capacity` equal to the latent cache's).
pub fn rebuild(
    src: &Rebuild<'_>,
    full: &KvCacheConfig,
    n: usize,
    out: &mut [u32],
    threads: usize,
) -> Result<(), ModelError> {
    let (lat, hd) = (src.lat_cfg, full.head_dim);
    let (r, groups) = (lat.head_dim, lat.n_kv_heads);
    let g = full.n_kv_heads / groups;
    let width = g * hd;
    let row = KvType::F16.row_words(hd);
    let group_words = g * full.capacity * row;
    for (grp, out) in out.chunks_mut(group_words).take(groups).enumerate() {
        let up = &src.up[grp * width * r..(grp + 1) * width * r];
        let bias = src.bias.map(|b| &b[grp * width..(grp + 1) * width]);
        // Latents of this group, decoded to f32 ([n][r]).
        let mut h = vec![0.0f32; n * r];
        decode_head_into(lat, src.ty, src.latents, grp, n, &mut h);
        // Rows [n][g·head_dim], split over threads by slots.
        let mut rows = vec![0.0f32; n * width];
        let per = n.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            for (h, rows) in h.chunks(per * r).zip(rows.chunks_mut(per * width)) {
                s.spawn(move || {
                    for (hj, yj) in h.chunks_exact(r).zip(rows.chunks_exact_mut(width)) {
                        for (i, y) in yj.iter_mut().enumerate() {
                            *y = super::cpu::dot(&up[i * r..(i + 1) * r], hj)
                                + bias.map_or(0.0, |b| b[i]);
                        }
                    }
                });
            }
        });
        if let Some((pos, cfg)) = &src.rope {
            let cfg = rope::RopeConfig {
                n_heads: g,
                ..*cfg
            };
            let p = &pos[grp * lat.capacity..grp * lat.capacity + n];
            rope::reference(&mut rows, p, &cfg)?;
        }
        let group_cfg = KvCacheConfig {
            n_kv_heads: g,
            k_type: KvType::F16,
            v_type: KvType::F16,
            ..*full
        };
        kv_store::reference(&group_cfg, KvType::F16, &rows, out, n, 0);
    }
    Ok(())
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
            let sum: f32 = (0..g)
                .map(|hh| heads[(grp * g + hh) * capacity + j])
                .sum();
            let at = grp * capacity + j;
            let old = if accumulate && j < n_past { groups[at] } else { 0.0 };
            groups[at] = old + sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvedge_runtime::kernels::rope::{RopeConfig, RopeLayout};
    use kvedge_runtime::rng::SplitMix64;

    /// Rebuilding from latents equals up-projecting, adding the bias and rotating each row
    /// at its own position by hand, for groups of 1 and 2 heads and every latent type
    /// (within the f16 rounding of the output and the latent type's own error).
    #[test]
    fn rebuild_matches_explicit_reconstruction() {
        let mut rng = SplitMix64::new(7);
        for (n_kv, g, hd, r, ty) in [
            (2, 1, 8, 4, KvType::F16),
            (4, 2, 16, 32, KvType::Q8),
            (2, 2, 32, 64, KvType::Q4),
        ] {
            let (groups, cap, n) = (n_kv / g, 11, 9);
            let full = KvCacheConfig {
                n_layers: 1,
                n_kv_heads: n_kv,
                head_dim: hd,
                capacity: cap,
                k_type: KvType::F16,
                v_type: KvType::F16,
            };
            let lat_cfg = KvCacheConfig {
                n_kv_heads: groups,
                head_dim: r,
                k_type: ty,
                v_type: ty,
                ..full
            };
            let h: Vec<f32> = (0..cap * groups * r).map(|_| rng.next_f32() - 0.5).collect();
            let mut latents = vec![0u32; groups * cap * ty.row_words(r)];
            kv_store::reference(&lat_cfg, ty, &h, &mut latents, cap, 0);
            let up: Vec<f32> = (0..n_kv * hd * r).map(|_| rng.next_f32() - 0.5).collect();
            let bias: Vec<f32> = (0..n_kv * hd).map(|_| rng.next_f32()).collect();
            let pos: Vec<u32> = (0..groups * cap).map(|_| rng.next_u32() % 5000).collect();
            let rope_cfg = RopeConfig {
                head_dim: hd,
                n_heads: n_kv,
                n_rot: hd,
                freq_base: 10000.0,
                freq_scale: 1.0,
                layout: RopeLayout::Halves,
            };
            let mut out = vec![0u32; n_kv * cap * hd / 2];
            let src = Rebuild {
                lat_cfg: &lat_cfg,
                ty,
                latents: &latents,
                up: &up,
                bias: Some(&bias),
                rope: Some((&pos, rope_cfg)),
            };
            rebuild(&src, &full, n, &mut out, 3).unwrap();
            // Explicitly: decode the stored latents, multiply, add, rotate one row at a time.
            let mut dec = vec![0.0f32; cap * r];
            for grp in 0..groups {
                decode_head_into(&lat_cfg, ty, &latents, grp, cap, &mut dec);
                for j in 0..n {
                    let mut k = vec![0.0f32; g * hd];
                    for (i, y) in k.iter_mut().enumerate() {
                        let row = grp * g * hd + i;
                        *y = (0..r)
                            .map(|c| up[row * r + c] as f64 * dec[j * r + c] as f64)
                            .sum::<f64>() as f32
                            + bias[row];
                    }
                    let one = RopeConfig {
                        n_heads: g,
                        ..rope_cfg
                    };
                    rope::reference(&mut k, &[pos[grp * cap + j]], &one).unwrap();
                    for hh in 0..g {
                        let mut got = vec![0.0f32; cap * hd];
                        decode_head_into(&full, KvType::F16, &out, grp * g + hh, n, &mut got);
                        for d in 0..hd {
                            let (a, b) = (got[j * hd + d], k[hh * hd + d]);
                            assert!(
                                (a - b).abs() <= 2e-3 * (1.0 + b.abs()),
                                "{n_kv} heads, g {g}, {ty:?}: slot {j} head {hh} dim {d}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

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
