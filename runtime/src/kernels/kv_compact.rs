//! In-place compaction of one layer's cache after an eviction
//! (`shaders/kv_compact.wgsl`): the kept slots (ascending, from `kv_select`) are gathered
//! to the front of a second buffer of the same layout, K, V and the running scores
//! together, and the caller swaps that buffer with the layer's. Order is preserved, so
//! attention stays causal by slot; positions need no bookkeeping because K carries RoPE.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::kv::KvCacheConfig;
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/kv_compact.wgsl");

/// Mirrors `Params` in kv_compact.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct KvCompactParams {
    head_dim: u32,
    n_kv_heads: u32,
    keep: u32,
    capacity: u32,
    has_score: u32,
    grid_x: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<KvCompactParams>() == 32);

/// One layer's buffers: K, V ([n_kv_heads][capacity][head_dim] f16) and optionally the
/// running scores ([n_kv_heads][capacity] f32).
pub struct LayerBuffers<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub score: Option<&'a wgpu::Buffer>,
}

/// Record the gather of `keep` slots per head (`kept`, [n_kv_heads][keep]) from `src`
/// into the front of `dst`.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    keep: usize,
    kept: &wgpu::Buffer,
    src: &LayerBuffers,
    dst: &LayerBuffers,
) -> Result<()> {
    if keep > cfg.capacity || src.score.is_some() != dst.score.is_some() {
        return Err(Error::InvalidArgument(format!(
            "kv_compact: {keep} kept slots of {} (scores on both sides or neither)",
            cfg.capacity
        )));
    }
    let words = (cfg.layer_bytes() / 4) as usize;
    for (name, b) in [
        ("src k", src.k),
        ("src v", src.v),
        ("dst k", dst.k),
        ("dst v", dst.v),
    ] {
        need_f32(&format!("kv_compact {name}"), b, words)?;
    }
    need_f32("kv_compact kept", kept, cfg.n_kv_heads * keep)?;
    let n = cfg.n_kv_heads * keep * cfg.head_dim / 2;
    if n == 0 {
        return Ok(());
    }
    let pipeline = plain_pipeline(ctx, "kv_compact", WGSL)?;
    let groups = grid(to_u32("kv_compact", n)?.div_ceil(64), ctx.max_groups());
    let params = KvCompactParams {
        head_dim: cfg.head_dim as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        keep: keep as u32,
        capacity: cfg.capacity as u32,
        has_score: src.score.is_some() as u32,
        grid_x: groups.0,
        _pad: [0; 2],
    };
    let ub = ctx.uniform("kv_compact.params", &params);
    // Without scores the score bindings get two one-word placeholders the shader never
    // touches (a buffer may not be bound read-only and writable in one dispatch).
    let placeholders;
    let (ss, ds) = match (src.score, dst.score) {
        (Some(s), Some(d)) => {
            need_f32("kv_compact src score", s, cfg.n_kv_heads * cfg.capacity)?;
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
/// region of `cache` ([n_kv_heads][capacity][width]); used for K, V (width head_dim) and
/// scores (width 1). Ascending order makes the in-place move safe (kept[i] >= i).
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

/// The reference for f16 caches (K or V).
pub fn reference_f16(cfg: &KvCacheConfig, keep: usize, kept: &[u32], cache: &mut [f16]) {
    reference(cfg, cfg.head_dim, keep, kept, cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{test_context, test_seed};
    use crate::kernels::kv_select::{self, SelectPlan};
    use crate::rng::SplitMix64;

    #[test]
    fn kv_compact_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(91));
        for (nkv, hd, cap, n, keep) in [
            (3, 64, 120, 117, 40),
            (2, 46, 50, 50, 50),
            (1, 128, 33, 20, 1),
        ] {
            let cfg = KvCacheConfig {
                n_layers: 1,
                n_kv_heads: nkv,
                head_dim: hd,
                capacity: cap,
            };
            let words = (cfg.layer_bytes() / 4) as usize;
            let k: Vec<f16> = rng
                .vec_f32(words * 2, -2.0, 2.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let v: Vec<f16> = rng
                .vec_f32(words * 2, -2.0, 2.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
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
            };
            let kept = kv_select::reference(nkv, cap, &plan, &s).unwrap();
            let g = |name: &str, d: &[f16]| ctx.upload(name, d).unwrap();
            let (sk, sv, ss) = (g("k", &k), g("v", &v), ctx.upload("s", &s).unwrap());
            let (dk, dv, ds) = (
                ctx.storage_f32("dk", words).unwrap(),
                ctx.storage_f32("dv", words).unwrap(),
                ctx.storage_f32("ds", nkv * cap).unwrap(),
            );
            let gk = ctx.upload("kept", &kept).unwrap();
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
            record(ctx, &mut enc, &cfg, keep, &gk, &src, &dst).unwrap();
            // And without scores (the window policy), into a second pair of buffers.
            let (dk2, dv2) = (
                ctx.storage_f32("dk2", words).unwrap(),
                ctx.storage_f32("dv2", words).unwrap(),
            );
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
            record(ctx, &mut enc, &cfg, keep, &gk, &src2, &dst2).unwrap();
            ctx.submit_wait(enc).unwrap();
            let (mut wk, mut wv, mut ws) = (k.clone(), v.clone(), s.clone());
            reference_f16(&cfg, keep, &kept, &mut wk);
            reference_f16(&cfg, keep, &kept, &mut wv);
            reference(&cfg, 1, keep, &kept, &mut ws);
            let read16 = |b: &wgpu::Buffer| -> Vec<f16> {
                bytemuck::cast_slice::<f32, f16>(&ctx.read_f32(b, words).unwrap()).to_vec()
            };
            let (gk, gv, gs) = (
                read16(&dk),
                read16(&dv),
                ctx.read_f32(&ds, nkv * cap).unwrap(),
            );
            let (gk2, gv2) = (read16(&dk2), read16(&dv2));
            for h in 0..nkv {
                let r = h * cap * hd..(h * cap + keep) * hd;
                assert_eq!(gk[r.clone()], wk[r.clone()], "K head {h}");
                assert_eq!(gv[r.clone()], wv[r.clone()], "V head {h}");
                assert_eq!(gk2[r.clone()], wk[r.clone()], "K head {h}, no scores");
                assert_eq!(gv2[r.clone()], wv[r], "V head {h}, no scores");
                assert_eq!(
                    gs[h * cap..h * cap + keep],
                    ws[h * cap..h * cap + keep],
                    "scores head {h}"
                );
            }
        }
    }
}
