//! Causal grouped-query attention over the KV cache in its storage types
//! (`shaders/attention.wgsl`; f16, q8, q4 or q4c rows decoded in registers) for a
//! chunk of queries in cache slots `n_past..n_past + n_tokens` (prefill) or a single query
//! (decode). Online softmax over blocks of keys (FlashAttention, Dao et al., 2022), so
//! memory stays O(head_dim) per (query, head) at any context length.

use bytemuck::{Pod, Zeroable};

use super::{kv_pipeline, need_f32, to_u32, KvAccess};
use crate::gpu::{grid, GpuContext};
use crate::kv::{decode_row, decode_slot_q4c, KvCacheConfig};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/attention.wgsl");
/// Largest head dimension the kernel supports (4 dims per thread of 64).
pub const MAX_HEAD_DIM: usize = 256;

/// Mirrors `Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionParams {
    pub head_dim: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub n_tokens: u32,
    pub capacity: u32,
    pub n_past: u32,
    pub scale: f32,
    pub grid_x: u32,
    pub n_sel: u32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<AttentionParams>() == 48);

/// Sparse decode: the slots one query attends to, [n_kv_heads][n_sel] (TidalDecode).
pub struct Selection<'a> {
    pub slots: &'a wgpu::Buffer,
    pub n_sel: usize,
}

/// Check the shapes an attention call over `cfg` takes (head dim storable, heads a multiple
/// of the KV heads, positions within the capacity).
pub fn validate(cfg: &KvCacheConfig, n_heads: usize, n_tokens: usize, n_past: usize) -> Result<()> {
    if cfg.head_dim > MAX_HEAD_DIM
        || !cfg.k_type.supports(cfg.head_dim)
        || !cfg.v_type.supports(cfg.head_dim)
    {
        return Err(Error::InvalidArgument(format!(
            "attention: head dim {} must be at most {MAX_HEAD_DIM} and storable as K {} / V {}",
            cfg.head_dim,
            cfg.k_type.name(),
            cfg.v_type.name()
        )));
    }
    if cfg.n_kv_heads == 0 || !n_heads.is_multiple_of(cfg.n_kv_heads) {
        return Err(Error::InvalidArgument(format!(
            "attention: {n_heads} query heads is not a multiple of {} KV heads",
            cfg.n_kv_heads
        )));
    }
    if n_past + n_tokens > cfg.capacity {
        return Err(Error::InvalidArgument(format!(
            "attention: positions up to {} exceed the cache capacity {}",
            n_past + n_tokens,
            cfg.capacity
        )));
    }
    Ok(())
}

/// Record attention of `q` ([n_tokens][n_heads][head_dim]) over cache slots
/// `0..=n_past + t` into `out` (same shape as q), and the log-sum-exp of each (query,
/// head)'s scaled scores into `lse` ([n_tokens][n_heads]). Scores are scaled by `scale`
/// (1/sqrt(head_dim) for llama and qwen2).
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &wgpu::Buffer,
    kc: &wgpu::Buffer,
    vc: &wgpu::Buffer,
    out: &wgpu::Buffer,
    lse: &wgpu::Buffer,
    n_tokens: usize,
    n_past: usize,
    scale: f32,
    sel: Option<&Selection>,
) -> Result<()> {
    validate(cfg, n_heads, n_tokens, n_past)?;
    if let Some(s) = sel {
        if n_tokens != 1 || s.n_sel == 0 || s.n_sel > n_past + 1 {
            return Err(Error::InvalidArgument(format!(
                "attention: a selection of {} slots needs one query and at most {} slots",
                s.n_sel,
                n_past + 1
            )));
        }
        need_f32("attention selection", s.slots, cfg.n_kv_heads * s.n_sel)?;
    }
    let n = n_tokens * n_heads * cfg.head_dim;
    need_f32("attention q", q, n)?;
    need_f32("attention out", out, n)?;
    need_f32("attention lse", lse, n_tokens * n_heads)?;
    need_f32("attention k cache", kc, cfg.k_layer_words())?;
    need_f32("attention v cache", vc, cfg.v_layer_words())?;
    let access = KvAccess {
        k: cfg.k_type,
        v: Some(cfg.v_type),
        encode: false,
    };
    let pipeline = kv_pipeline(ctx, "attention", WGSL, &access)?;
    let groups = grid(to_u32("attention", n_tokens * n_heads)?, ctx.max_groups());
    let params = AttentionParams {
        head_dim: cfg.head_dim as u32,
        n_heads: n_heads as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        n_tokens: n_tokens as u32,
        capacity: cfg.capacity as u32,
        n_past: n_past as u32,
        scale,
        grid_x: groups.0,
        n_sel: sel.map_or(0, |s| s.n_sel as u32),
        _pad: [0; 3],
    };
    let ub = ctx.uniform("attention.params", &params);
    // Dense attention binds q in the selection's place; the shader never reads it then.
    let sel_buf = sel.map_or(q, |s| s.slots);
    let bg = ctx.bind("attention", &pipeline, &[q, kc, vc, out, lse, sel_buf, &ub]);
    ctx.dispatch(encoder, "attention", &pipeline, &bg, groups);
    Ok(())
}

/// Decode the first `n` rows of KV head `kvh` of a cache (u32 words, [kv_head][capacity]
/// [row]) into `out`, [n][head_dim] f32 values.
pub fn decode_head_into(
    cfg: &KvCacheConfig,
    ty: crate::kv::KvType,
    cache: &[u32],
    kvh: usize,
    n: usize,
    out: &mut [f32],
) {
    let (hd, row) = (cfg.head_dim, ty.row_words(cfg.head_dim));
    let region = &cache[kvh * cfg.capacity * row..(kvh + 1) * cfg.capacity * row];
    for (j, dst) in out[..n * hd].chunks_exact_mut(hd).enumerate() {
        if ty.blocks_slots() {
            decode_slot_q4c(region, hd, j, dst);
        } else {
            decode_row(ty, &region[j * row..(j + 1) * row], dst);
        }
    }
}

/// Decode the first `n` rows of KV head `kvh` of a cache into f64 values, [n][head_dim].
pub fn decode_head(
    cfg: &KvCacheConfig,
    ty: crate::kv::KvType,
    cache: &[u32],
    kvh: usize,
    n: usize,
) -> Vec<f64> {
    let mut buf = vec![0.0f32; n * cfg.head_dim];
    decode_head_into(cfg, ty, cache, kvh, n, &mut buf);
    buf.into_iter().map(f64::from).collect()
}

/// CPU reference: plain softmax(q·K^T·scale)·V per query and head, in f64, over caches of
/// u32 words laid out [kv_head][capacity][row] in the config's storage types.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    kc: &[u32],
    vc: &[u32],
    n_tokens: usize,
    n_past: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    validate(cfg, n_heads, n_tokens, n_past)?;
    let hd = cfg.head_dim;
    let group = n_heads / cfg.n_kv_heads;
    let total = n_past + n_tokens;
    let mut out = vec![0.0f32; n_tokens * n_heads * hd];
    let mut scores = Vec::with_capacity(total);
    for kvh in 0..cfg.n_kv_heads {
        // This KV head's keys and values for every slot, decoded once.
        let k = decode_head(cfg, cfg.k_type, kc, kvh, total);
        let v = decode_head(cfg, cfg.v_type, vc, kvh, total);
        for h in kvh * group..(kvh + 1) * group {
            for t in 0..n_tokens {
                let n_keys = n_past + t + 1;
                let qv = &q[(t * n_heads + h) * hd..][..hd];
                scores.clear();
                scores.extend((0..n_keys).map(|j| {
                    let kj = &k[j * hd..(j + 1) * hd];
                    qv.iter().zip(kj).map(|(&a, &b)| a as f64 * b).sum::<f64>() * scale as f64
                }));
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for sc in scores.iter_mut() {
                    *sc = (*sc - m).exp();
                    sum += *sc;
                }
                let mut acc = vec![0.0f64; hd];
                for (j, w) in scores.iter().enumerate() {
                    for (a, &vj) in acc.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                        *a += w / sum * vj;
                    }
                }
                for (o, a) in out[(t * n_heads + h) * hd..][..hd].iter_mut().zip(acc) {
                    *o = a as f32;
                }
            }
        }
    }
    Ok(out)
}

/// CPU reference of sparse decode: one query per head ([n_heads][head_dim]) attends only
/// to the slots `sel` lists per KV head ([n_kv_heads][n_sel]), in f64.
#[allow(clippy::too_many_arguments)]
pub fn reference_sparse(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    kc: &[u32],
    vc: &[u32],
    sel: &[u32],
    n_sel: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    validate(cfg, n_heads, 1, 0)?;
    let (hd, group) = (cfg.head_dim, n_heads / cfg.n_kv_heads);
    let mut out = vec![0.0f32; n_heads * hd];
    let (kr, vr) = (cfg.k_row_words(), cfg.v_row_words());
    let mut buf = vec![0.0f32; hd];
    for kvh in 0..cfg.n_kv_heads {
        let slots = &sel[kvh * n_sel..(kvh + 1) * n_sel];
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= cfg.capacity) {
            return Err(Error::InvalidArgument(format!(
                "sparse attention: slot {bad} past the capacity {}",
                cfg.capacity
            )));
        }
        // Only the selected rows are decoded.
        let rows = |cache: &[u32], ty, width: usize, buf: &mut Vec<f32>| -> Vec<f64> {
            let mut out = Vec::with_capacity(n_sel * hd);
            for &j in slots {
                let at = (kvh * cfg.capacity + j as usize) * width;
                decode_row(ty, &cache[at..at + width], buf);
                out.extend(buf.iter().map(|&x| x as f64));
            }
            out
        };
        let k = rows(kc, cfg.k_type, kr, &mut buf);
        let v = rows(vc, cfg.v_type, vr, &mut buf);
        for h in kvh * group..(kvh + 1) * group {
            let qv = &q[h * hd..(h + 1) * hd];
            let sc: Vec<f64> = k
                .chunks_exact(hd)
                .map(|kj| {
                    qv.iter().zip(kj).map(|(&a, &b)| a as f64 * b).sum::<f64>() * scale as f64
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = p.iter().sum();
            let mut acc = vec![0.0f64; hd];
            for (pj, vj) in p.iter().zip(v.chunks_exact(hd)) {
                for (a, &x) in acc.iter_mut().zip(vj) {
                    *a += pj / z * x;
                }
            }
            for (o, a) in out[h * hd..(h + 1) * hd].iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::kernels::kv_store;
    use crate::kv::KvType;
    use crate::rng::SplitMix64;

    /// Encode random K/V on the CPU (kv_store's reference; the GPU store has its own test),
    /// upload the words, attend on the GPU and compare with the reference over the same
    /// words. The bound is the same for every storage type: both sides decode identically.
    #[allow(clippy::too_many_arguments)]
    fn run(
        ctx: &GpuContext,
        kt: KvType,
        vt: KvType,
        hd: usize,
        nh: usize,
        nkv: usize,
        n_past: usize,
        n: usize,
    ) {
        let cfg = KvCacheConfig {
            k_type: kt,
            v_type: vt,
            ..KvCacheConfig::f16(1, nkv, hd, n_past + n + 3)
        };
        let mut rng = SplitMix64::new(test_seed((hd * 1000 + n_past) as u64));
        let total = n_past + n;
        let k = rng.vec_f32(total * nkv * hd, -1.5, 1.5);
        let v = rng.vec_f32(total * nkv * hd, -1.0, 1.0);
        let q = rng.vec_f32(n * nh * hd, -1.5, 1.5);
        let mut kc = vec![0u32; cfg.k_layer_words()];
        let mut vc = vec![0u32; cfg.v_layer_words()];
        kv_store::reference(&cfg, kt, &k, &mut kc, total, 0);
        kv_store::reference(&cfg, vt, &v, &mut vc, total, 0);
        let (gk, gv) = (
            ctx.upload("kc", &kc).unwrap(),
            ctx.upload("vc", &vc).unwrap(),
        );
        let gq = ctx.upload("q", &q).unwrap();
        let out = ctx.storage_f32("out", q.len()).unwrap();
        let lse = ctx.storage_f32("lse", n * nh).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut enc = ctx.encoder("test");
        record(
            ctx, &mut enc, &cfg, nh, &gq, &gk, &gv, &out, &lse, n, n_past, scale, None,
        )
        .unwrap();
        ctx.submit_wait(enc).unwrap();
        let want = reference(&cfg, nh, &q, &kc, &vc, n, n_past, scale).unwrap();
        let got = ctx.read_f32(&out, q.len()).unwrap();
        assert_close(
            &format!("attention K {kt:?} V {vt:?} hd{hd} h{nh}/{nkv} past {n_past} n {n}"),
            &got,
            &want,
            1e-5,
        );
    }

    #[test]
    fn attention_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let f = KvType::F16;
        run(ctx, f, f, 64, 9, 3, 0, 1); // first decode step: one key
        run(ctx, f, f, 64, 9, 3, 0, 37); // prefill from empty, causal inside the chunk
        run(ctx, f, f, 128, 12, 2, 150, 7); // prefill chunk after earlier chunks
        run(ctx, f, f, 46, 4, 4, 200, 1); // decode, head dim not a multiple of 4
        run(ctx, f, f, 256, 2, 1, 70, 2); // largest head dim
    }

    #[test]
    fn attention_reads_quantized_caches() {
        let Some(ctx) = test_context() else { return };
        run(ctx, KvType::Q8, KvType::Q8, 64, 9, 3, 100, 1);
        run(ctx, KvType::Q4, KvType::Q4, 128, 12, 2, 30, 19);
        run(ctx, KvType::Q8, KvType::Q4, 96, 4, 2, 65, 3);
        run(ctx, KvType::F16, KvType::Q8, 64, 2, 2, 0, 40);
    }

    /// Sparse decode over a selection equals dense attention over a cache that holds only
    /// the selected slots (the equivalent mask), on the GPU and in the CPU reference.
    #[test]
    fn sparse_attention_equals_dense_over_the_selected_slots() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(4242));
        for (kt, hd, nh, nkv, n_past, n_sel) in [
            (KvType::F16, 64, 9, 3, 200, 37),
            (KvType::Q8, 128, 12, 2, 90, 64),
            (KvType::F16, 46, 4, 4, 10, 11),
        ] {
            let cfg = KvCacheConfig {
                k_type: kt,
                v_type: kt,
                ..KvCacheConfig::f16(1, nkv, hd, n_past + 1)
            };
            let total = n_past + 1;
            let k = rng.vec_f32(total * nkv * hd, -1.5, 1.5);
            let v = rng.vec_f32(total * nkv * hd, -1.0, 1.0);
            let q = rng.vec_f32(nh * hd, -1.5, 1.5);
            let mut kc = vec![0u32; cfg.k_layer_words()];
            let mut vc = vec![0u32; cfg.v_layer_words()];
            kv_store::reference(&cfg, kt, &k, &mut kc, total, 0);
            kv_store::reference(&cfg, kt, &v, &mut vc, total, 0);
            // A random ascending selection per KV head that always holds the current slot.
            let mut sel = Vec::new();
            for _ in 0..nkv {
                let mut picked: Vec<u32> = (0..n_past as u32).collect();
                for i in (1..picked.len()).rev() {
                    picked.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut head: Vec<u32> = picked[..n_sel - 1].to_vec();
                head.push(n_past as u32);
                head.sort();
                sel.extend(head);
            }
            let scale = 1.0 / (hd as f32).sqrt();
            let want = reference_sparse(&cfg, nh, &q, &kc, &vc, &sel, n_sel, scale).unwrap();
            // The equivalent mask: the selected rows copied in order into a small cache.
            let small = KvCacheConfig {
                capacity: n_sel,
                ..cfg
            };
            let (kr, vr) = (cfg.k_row_words(), cfg.v_row_words());
            let mut mk = vec![0u32; small.k_layer_words()];
            let mut mv = vec![0u32; small.v_layer_words()];
            for h in 0..nkv {
                for (i, &j) in sel[h * n_sel..(h + 1) * n_sel].iter().enumerate() {
                    let (d, s) = (h * n_sel + i, h * cfg.capacity + j as usize);
                    mk[d * kr..(d + 1) * kr].copy_from_slice(&kc[s * kr..(s + 1) * kr]);
                    mv[d * vr..(d + 1) * vr].copy_from_slice(&vc[s * vr..(s + 1) * vr]);
                }
            }
            let masked = reference(&small, nh, &q, &mk, &mv, 1, n_sel - 1, scale).unwrap();
            assert_close("sparse reference vs masked dense", &want, &masked, 1e-6);

            let (gk, gv) = (
                ctx.upload("kc", &kc).unwrap(),
                ctx.upload("vc", &vc).unwrap(),
            );
            let (gq, gs) = (
                ctx.upload("q", &q).unwrap(),
                ctx.upload("sel", &sel).unwrap(),
            );
            let out = ctx.storage_f32("out", q.len()).unwrap();
            let lse = ctx.storage_f32("lse", nh).unwrap();
            let selection = Selection { slots: &gs, n_sel };
            let mut enc = ctx.encoder("test");
            record(
                ctx,
                &mut enc,
                &cfg,
                nh,
                &gq,
                &gk,
                &gv,
                &out,
                &lse,
                1,
                n_past,
                scale,
                Some(&selection),
            )
            .unwrap();
            ctx.submit_wait(enc).unwrap();
            let got = ctx.read_f32(&out, q.len()).unwrap();
            assert_close(
                &format!("sparse attention {kt:?} hd{hd} sel {n_sel}"),
                &got,
                &want,
                1e-5,
            );
        }
    }

    #[test]
    fn attention_rejects_bad_shapes() {
        let cfg = KvCacheConfig::f16(1, 3, 64, 8);
        assert!(validate(&cfg, 8, 1, 0).is_err(), "8 heads over 3 KV heads");
        assert!(validate(&cfg, 9, 4, 5).is_err(), "past capacity");
        let big = KvCacheConfig::f16(1, 3, 512, 8);
        assert!(validate(&big, 9, 1, 0).is_err(), "head dim too large");
        let q8 = KvCacheConfig {
            k_type: KvType::Q8,
            ..KvCacheConfig::f16(1, 3, 48, 8)
        };
        assert!(validate(&q8, 9, 1, 0).is_err(), "q8 needs a multiple of 32");
    }
}
