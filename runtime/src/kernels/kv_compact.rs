//! In-place compaction of one layer's cache after an eviction
//! (`shaders/kv_compact.wgsl`): the kept slots (ascending, from `kv_select`) are gathered
//! to the front of a second buffer of the same layout, K, V and the running scores
//! together, and the caller swaps that buffer with the layer's. Order is preserved, so
//! attention stays causal by slot; positions need no bookkeeping because K carries RoPE.
//! Source and destination may hold different numbers of slots per head: NACL's one-shot
//! eviction gathers from a layer's staging buffer (cache + prompt chunk) into the cache.

use bytemuck::{Pod, Zeroable};

use super::{kv_store, need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::kv::{decode_slot_q4c, KvCacheConfig, KvType, Q4C_SLOTS};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/kv_compact.wgsl");

/// Mirrors `Params` in kv_compact.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct KvCompactParams {
    k_words: u32,
    v_words: u32,
    n_kv_heads: u32,
    keep: u32,
    capacity: u32,
    has_score: u32,
    grid_x: u32,
    src_capacity: u32,
}
const _: () = assert!(std::mem::size_of::<KvCompactParams>() == 32);

/// One layer's buffers: K, V ([n_kv_heads][capacity][row] in their storage types) and
/// optionally the running scores ([n_kv_heads][capacity] f32).
pub struct LayerBuffers<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub score: Option<&'a wgpu::Buffer>,
}

/// Record the gather of `keep` slots per head (`kept`, [n_kv_heads][keep], slots of
/// `src`) from `src`, `src_capacity` slots per head, into the front of `dst`, laid out as
/// `cfg` (`cfg.capacity` slots per head).
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    src_capacity: usize,
    keep: usize,
    kept: &wgpu::Buffer,
    src: &LayerBuffers,
    dst: &LayerBuffers,
) -> Result<()> {
    if keep > cfg.capacity || keep > src_capacity || src.score.is_some() != dst.score.is_some() {
        return Err(Error::InvalidArgument(format!(
            "kv_compact: {keep} kept slots into {} (from {src_capacity}), scores on both sides or neither",
            cfg.capacity
        )));
    }
    let src_cfg = KvCacheConfig {
        capacity: src_capacity,
        ..*cfg
    };
    let (kw, vw) = (cfg.k_layer_words(), cfg.v_layer_words());
    let (skw, svw) = (src_cfg.k_layer_words(), src_cfg.v_layer_words());
    for (name, b, words) in [
        ("src k", src.k, skw),
        ("src v", src.v, svw),
        ("dst k", dst.k, kw),
        ("dst v", dst.v, vw),
    ] {
        need_f32(&format!("kv_compact {name}"), b, words)?;
    }
    need_f32("kv_compact kept", kept, cfg.n_kv_heads * keep)?;
    let n = cfg.n_kv_heads * keep * cfg.k_row_words().max(cfg.v_row_words());
    if n == 0 {
        return Ok(());
    }
    let pipeline = plain_pipeline(ctx, "kv_compact", WGSL)?;
    let groups = grid(to_u32("kv_compact", n)?.div_ceil(64), ctx.max_groups());
    let params = KvCompactParams {
        k_words: cfg.k_row_words() as u32,
        v_words: cfg.v_row_words() as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        keep: keep as u32,
        capacity: cfg.capacity as u32,
        has_score: src.score.is_some() as u32,
        grid_x: groups.0,
        src_capacity: src_capacity as u32,
    };
    let ub = ctx.uniform("kv_compact.params", &params);
    // Without scores the score bindings get two one-word placeholders the shader never
    // touches (a buffer may not be bound read-only and writable in one dispatch).
    let placeholders;
    let (ss, ds) = match (src.score, dst.score) {
        (Some(s), Some(d)) => {
            need_f32("kv_compact src score", s, cfg.n_kv_heads * src_capacity)?;
            need_f32("kv_compact dst score", d, cfg.n_kv_heads * cfg.capacity)?;
            (s, d)
        }
        _ => {
            placeholders = (
                ctx.storage_f32("kv_compact.no_score", 1)?,
                ctx.storage_f32("kv_compact.no_score", 1)?,
            );
            (&placeholders.0, &placeholders.1)
        }
    };
    let bg = ctx.bind(
        "kv_compact",
        &pipeline,
        &[kept, src.k, src.v, ss, dst.k, dst.v, ds, &ub],
    );
    ctx.dispatch(encoder, "kv_compact", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference, in place: move each head's kept slots (ascending) to the front of its
/// region of `cache` ([n_kv_heads][capacity][width]); used for K and V (width: row words)
/// and scores (width 1). Ascending order makes the in-place move safe (kept[i] >= i).
pub fn reference<T: Copy>(
    cfg: &KvCacheConfig,
    width: usize,
    keep: usize,
    kept: &[u32],
    cache: &mut [T],
) {
    for h in 0..cfg.n_kv_heads {
        let base = h * cfg.capacity * width;
        for (i, &from) in kept[h * keep..][..keep].iter().enumerate() {
            let from = from as usize;
            debug_assert!(from >= i);
            if from != i {
                cache.copy_within(
                    base + from * width..base + (from + 1) * width,
                    base + i * width,
                );
            }
        }
    }
}

/// The compaction of a `q4c` cache (`kv::format`), whose rows cannot move alone (a row's
/// block holds its scales): the kept slots of each head are decoded, then stored again
/// from slot 0 (`kv_store::reference_q4c`), which also refills `pending` with the block
/// still filling. The kept values are quantized a second time, over their new blocks.
pub fn reference_q4c(
    cfg: &KvCacheConfig,
    width: usize,
    keep: usize,
    kept: &[u32],
    cache: &mut [u32],
    pending: &mut [f32],
) {
    let head = KvCacheConfig {
        n_kv_heads: 1,
        ..*cfg
    };
    let rw = KvType::Q4C.row_words(width);
    for h in 0..cfg.n_kv_heads {
        let region = &mut cache[h * cfg.capacity * rw..(h + 1) * cfg.capacity * rw];
        let mut vals = vec![0.0f32; keep * width];
        for (i, &from) in kept[h * keep..][..keep].iter().enumerate() {
            decode_slot_q4c(
                region,
                width,
                from as usize,
                &mut vals[i * width..(i + 1) * width],
            );
        }
        let pend = &mut pending[h * Q4C_SLOTS * width..(h + 1) * Q4C_SLOTS * width];
        kv_store::reference_q4c(&head, width, &vals, region, pend, keep, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{test_context, test_seed};
    use crate::kernels::kv_select::{self, SelectPlan};
    use crate::kv::KvType;
    use crate::rng::SplitMix64;

    /// A q4c compaction keeps each kept slot's values within the quantization error of
    /// the originals, and the cache it leaves goes on as one built from the kept values:
    /// storing further tokens after it equals storing kept + new tokens afresh.
    #[test]
    fn q4c_compaction_reencodes_the_kept_slots() {
        let mut rng = SplitMix64::new(test_seed(31));
        let (hd, nkv, n, keep) = (64, 2, 70, 45);
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: nkv,
            head_dim: hd,
            capacity: 96,
            k_type: KvType::Q4C,
            v_type: KvType::Q4,
        };
        let x = rng.vec_f32(n * nkv * hd, -2.0, 2.0);
        let mut cache = vec![0u32; cfg.k_layer_words()];
        let mut pend = vec![0.0f32; cfg.k_pending_words()];
        kv_store::reference_q4c(&cfg, hd, &x, &mut cache, &mut pend, n, 0);
        // Kept: every head its own ascending slots.
        let mut kept = Vec::new();
        for h in 0..nkv {
            let mut s: Vec<u32> = (0..n as u32)
                .filter(|j| !(j * 7 + h as u32).is_multiple_of(3))
                .collect();
            s.truncate(keep);
            assert_eq!(s.len(), keep);
            kept.extend(s);
        }
        let rw = KvType::Q4C.row_words(hd);
        let before = cache.clone();
        reference_q4c(&cfg, hd, keep, &kept, &mut cache, &mut pend);
        let mut want = vec![0.0f32; hd];
        let mut got = vec![0.0f32; hd];
        let mut kept_vals = vec![0.0f32; keep * nkv * hd];
        for h in 0..nkv {
            let region = |c: &[u32]| c[h * 96 * rw..(h + 1) * 96 * rw].to_vec();
            for (i, &from) in kept[h * keep..(h + 1) * keep].iter().enumerate() {
                decode_slot_q4c(&region(&before), hd, from as usize, &mut want);
                decode_slot_q4c(&region(&cache), hd, i, &mut got);
                for c in 0..hd {
                    let orig = x[(from as usize * nkv + h) * hd + c];
                    assert!(
                        (orig - got[c]).abs() <= 4.0 / 15.0 + 1e-3,
                        "twice quantized"
                    );
                    assert!((want[c] - got[c]).abs() <= 4.0 / 30.0 + 1e-3, "re-encoded");
                }
                kept_vals[(i * nkv + h) * hd..(i * nkv + h + 1) * hd].copy_from_slice(&want);
            }
        }
        // Going on from the compacted cache = a fresh cache of the kept slots' decoded values
        // (what the compaction re-encodes) + new ones.
        let more = rng.vec_f32(5 * nkv * hd, -2.0, 2.0);
        kv_store::reference_q4c(&cfg, hd, &more, &mut cache, &mut pend, 5, keep);
        let mut fresh = vec![0u32; cfg.k_layer_words()];
        let mut fpend = vec![0.0f32; cfg.k_pending_words()];
        kv_store::reference_q4c(&cfg, hd, &kept_vals, &mut fresh, &mut fpend, keep, 0);
        kv_store::reference_q4c(&cfg, hd, &more, &mut fresh, &mut fpend, 5, keep);
        for h in 0..nkv {
            for j in 0..keep + 5 {
                let r = |c: &[u32]| c[h * 96 * rw..(h + 1) * 96 * rw].to_vec();
                decode_slot_q4c(&r(&cache), hd, j, &mut want);
                decode_slot_q4c(&r(&fresh), hd, j, &mut got);
                assert_eq!(want, got, "head {h} slot {j}");
            }
        }
    }

    #[test]
    fn kv_compact_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(91));
        // (heads, head dim, source slots, used, kept, destination slots, K type, V type)
        let cases = [
            (3, 64, 120, 117, 40, 120, KvType::F16, KvType::F16),
            (2, 64, 50, 50, 50, 50, KvType::Q8, KvType::Q4),
            (1, 128, 33, 20, 1, 33, KvType::Q4, KvType::F16),
            (2, 46, 21, 21, 9, 21, KvType::F16, KvType::F16),
            // One-shot eviction: a larger staging buffer into a smaller cache.
            (3, 64, 97, 90, 30, 35, KvType::Q8, KvType::F16),
        ];
        for (nkv, hd, cap, n, keep, dcap, kt, vt) in cases {
            let cfg = KvCacheConfig {
                k_type: kt,
                v_type: vt,
                ..KvCacheConfig::f16(1, nkv, hd, cap)
            };
            let dcfg = KvCacheConfig {
                capacity: dcap,
                ..cfg
            };
            // Compaction moves words and never looks inside them: random words will do.
            let mut words = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.next_u32()).collect() };
            let (k, v) = (words(cfg.k_layer_words()), words(cfg.v_layer_words()));
            let s = rng.vec_f32(nkv * cap, 0.0, 1.0);
            let plan = SelectPlan {
                n,
                keep,
                sinks: 0,
                recent: 0,
                n_score: keep,
                n_random: 0,
                seed: 0,
                salt: 0,
                pool: 0,
            };
            let kept = kv_select::reference(nkv, cap, &plan, &s).unwrap();
            let up = |name: &str, d: &[u32]| ctx.upload(name, d).unwrap();
            let (sk, sv, gk) = (up("k", &k), up("v", &v), up("kept", &kept));
            let ss = ctx.upload("s", &s).unwrap();
            let f = |name: &str, n: usize| ctx.storage_f32(name, n).unwrap();
            let (dkw, dvw) = (dcfg.k_layer_words(), dcfg.v_layer_words());
            let (dk, dv, ds) = (f("dk", dkw), f("dv", dvw), f("ds", nkv * dcap));
            let (dk2, dv2) = (f("dk2", dkw), f("dv2", dvw));
            let mut enc = ctx.encoder("test");
            let src = LayerBuffers {
                k: &sk,
                v: &sv,
                score: Some(&ss),
            };
            let dst = LayerBuffers {
                k: &dk,
                v: &dv,
                score: Some(&ds),
            };
            record(ctx, &mut enc, &dcfg, cap, keep, &gk, &src, &dst).unwrap();
            // And without scores (the window policy).
            let src2 = LayerBuffers {
                k: &sk,
                v: &sv,
                score: None,
            };
            let dst2 = LayerBuffers {
                k: &dk2,
                v: &dv2,
                score: None,
            };
            record(ctx, &mut enc, &dcfg, cap, keep, &gk, &src2, &dst2).unwrap();
            ctx.submit_wait(enc).unwrap();
            let (mut wk, mut wv, mut ws) = (k.clone(), v.clone(), s.clone());
            reference(&cfg, cfg.k_row_words(), keep, &kept, &mut wk);
            reference(&cfg, cfg.v_row_words(), keep, &kept, &mut wv);
            reference(&cfg, 1, keep, &kept, &mut ws);
            let read = |b: &wgpu::Buffer, n: usize| -> Vec<u32> {
                ctx.read_f32(b, n)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            let gs = ctx.read_f32(&ds, nkv * dcap).unwrap();
            for (name, buf, want, row, words) in [
                ("K", &dk, &wk, cfg.k_row_words(), dkw),
                ("V", &dv, &wv, cfg.v_row_words(), dvw),
                ("K without scores", &dk2, &wk, cfg.k_row_words(), dkw),
                ("V without scores", &dv2, &wv, cfg.v_row_words(), dvw),
            ] {
                let got = read(buf, words);
                for h in 0..nkv {
                    let g = h * dcap * row..(h * dcap + keep) * row;
                    let w = h * cap * row..(h * cap + keep) * row;
                    assert_eq!(got[g], want[w], "{name} head {h} ({kt:?}/{vt:?})");
                }
            }
            for h in 0..nkv {
                let (g, w) = (h * dcap..h * dcap + keep, h * cap..h * cap + keep);
                assert_eq!(gs[g], ws[w], "scores head {h}");
            }
        }
    }
}
