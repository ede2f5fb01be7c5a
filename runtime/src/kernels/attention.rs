//! Causal grouped-query attention over the f16 KV cache (`shaders/attention.wgsl`) for a
//! chunk of queries in cache slots `n_past..n_past + n_tokens` (prefill) or a single query
//! (decode). Online softmax over blocks of keys (FlashAttention, Dao et al., 2022), so
//! memory stays O(head_dim) per (query, head) at any context length.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::kv::KvCacheConfig;
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
}
const _: () = assert!(std::mem::size_of::<AttentionParams>() == 32);

fn validate(cfg: &KvCacheConfig, n_heads: usize, n_tokens: usize, n_past: usize) -> Result<()> {
    if cfg.head_dim > MAX_HEAD_DIM || !cfg.head_dim.is_multiple_of(2) {
        return Err(Error::InvalidArgument(format!(
            "attention: head dim must be even and at most {MAX_HEAD_DIM}, got {}",
            cfg.head_dim
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
) -> Result<()> {
    validate(cfg, n_heads, n_tokens, n_past)?;
    let n = n_tokens * n_heads * cfg.head_dim;
    need_f32("attention q", q, n)?;
    need_f32("attention out", out, n)?;
    need_f32("attention lse", lse, n_tokens * n_heads)?;
    let pipeline = plain_pipeline(ctx, "attention", WGSL)?;
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
    };
    let ub = ctx.uniform("attention.params", &params);
    let bg = ctx.bind("attention", &pipeline, &[q, kc, vc, out, lse, &ub]);
    ctx.dispatch(encoder, "attention", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference: plain softmax(q·K^T·scale)·V per query and head, in f64, over caches
/// laid out [kv_head][capacity][head_dim].
#[allow(clippy::too_many_arguments)]
pub fn reference(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    kc: &[f16],
    vc: &[f16],
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
        // This KV head's keys and values for every position, widened once.
        let widen = |c: &[f16]| -> Vec<f64> {
            c[kvh * cfg.capacity * hd..][..total * hd]
                .iter()
                .map(|v| v.to_f64())
                .collect()
        };
        let (k, v) = (widen(kc), widen(vc));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::kernels::kv_store;
    use crate::rng::SplitMix64;

    /// Fill the cache through kv_store (testing it too), then attend.
    fn run(
        ctx: &GpuContext,
        head_dim: usize,
        n_heads: usize,
        n_kv_heads: usize,
        n_past: usize,
        n_tokens: usize,
    ) {
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads,
            head_dim,
            capacity: n_past + n_tokens + 3,
        };
        let mut rng = SplitMix64::new(test_seed((head_dim * 1000 + n_past) as u64));
        let total = n_past + n_tokens;
        let k = rng.vec_f32(total * n_kv_heads * head_dim, -1.5, 1.5);
        let v = rng.vec_f32(total * n_kv_heads * head_dim, -1.0, 1.0);
        let q = rng.vec_f32(n_tokens * n_heads * head_dim, -1.5, 1.5);
        let words = (cfg.layer_bytes() / 4) as usize;
        let kc = ctx.storage_f32("kc", words).unwrap();
        let vc = ctx.storage_f32("vc", words).unwrap();
        let (gk, gv) = (ctx.upload("k", &k).unwrap(), ctx.upload("v", &v).unwrap());
        let gq = ctx.upload("q", &q).unwrap();
        let out = ctx.storage_f32("out", q.len()).unwrap();
        let lse = ctx.storage_f32("lse", n_tokens * n_heads).unwrap();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut enc = ctx.encoder("test");
        kv_store::record(ctx, &mut enc, &cfg, &gk, &gv, &kc, &vc, total, 0).unwrap();
        record(
            ctx, &mut enc, &cfg, n_heads, &gq, &kc, &vc, &out, &lse, n_tokens, n_past, scale,
        )
        .unwrap();
        ctx.submit_wait(enc).unwrap();

        let mut kr = vec![f16::ZERO; words * 2];
        let mut vr = kr.clone();
        kv_store::reference(&cfg, &k, &mut kr, total, 0);
        kv_store::reference(&cfg, &v, &mut vr, total, 0);
        let kc_got: Vec<f32> = ctx.read_f32(&kc, words).unwrap();
        let kc_got: Vec<f32> = bytemuck::cast_slice::<f32, f16>(&kc_got)
            .iter()
            .map(|x| x.to_f32())
            .collect();
        let kr32: Vec<f32> = kr.iter().map(|x| x.to_f32()).collect();
        assert_close(&format!("kv_store hd{head_dim}"), &kc_got, &kr32, 0.0);

        let want = reference(&cfg, n_heads, &q, &kr, &vr, n_tokens, n_past, scale).unwrap();
        let got = ctx.read_f32(&out, q.len()).unwrap();
        assert_close(
            &format!("attention hd{head_dim} h{n_heads}/{n_kv_heads} n_past {n_past} n {n_tokens}"),
            &got,
            &want,
            1e-5,
        );
    }

    #[test]
    fn attention_matches_reference() {
        let Some(ctx) = test_context() else { return };
        run(ctx, 64, 9, 3, 0, 1); // first decode step: one key
        run(ctx, 64, 9, 3, 0, 37); // prefill from empty, causal inside the chunk
        run(ctx, 128, 12, 2, 150, 7); // prefill chunk after earlier chunks
        run(ctx, 46, 4, 4, 200, 1); // decode, head dim not a multiple of 4
        run(ctx, 256, 2, 1, 70, 2); // largest head dim
    }

    #[test]
    fn attention_rejects_bad_shapes() {
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: 3,
            head_dim: 64,
            capacity: 8,
        };
        assert!(validate(&cfg, 8, 1, 0).is_err(), "8 heads over 3 KV heads");
        assert!(validate(&cfg, 9, 4, 5).is_err(), "past capacity");
        let cfg = KvCacheConfig {
            head_dim: 512,
            ..cfg
        };
        assert!(validate(&cfg, 9, 1, 0).is_err(), "head dim too large");
    }
}
