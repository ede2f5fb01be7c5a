//! Attention received per cache slot (`shaders/attn_score.wgsl`): the score the eviction
//! policies rank tokens by. H2O (Zhang et al., 2023, arXiv 2306.14048) keeps a running sum
//! of the attention each key receives from every query so far; NACL (Chen et al., 2024,
//! arXiv 2408.03675) scores keys once by the attention from proxy queries (the last
//! tokens of the prompt). Both are this kernel: a range of the chunk's queries, summed
//! over the query heads of each KV head, accumulated into the running score or not.
//! Probabilities are recomputed from the log-sum-exp the attention kernel wrote, so no
//! score matrix is stored.

use bytemuck::{Pod, Zeroable};

use super::{kv_pipeline, need_f32, to_u32, KvAccess};
use crate::gpu::{grid, GpuContext};
use crate::kv::KvCacheConfig;
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/attn_score.wgsl");

/// Mirrors `Params` in attn_score.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttnScoreParams {
    pub head_dim: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub n_tokens: u32,
    pub capacity: u32,
    pub n_past: u32,
    pub q0: u32,
    pub accumulate: u32,
    pub scale: f32,
    pub grid_x: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<AttnScoreParams>() == 48);

/// What one scoring pass covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreRange {
    /// Query heads (a multiple of the KV heads).
    pub n_heads: usize,
    /// Queries in the chunk; they sit in slots `n_past..n_past + n_tokens`.
    pub n_tokens: usize,
    pub n_past: usize,
    /// First query of the chunk that contributes.
    pub q0: usize,
    /// Add to the scores of slots below `n_past` instead of overwriting them.
    pub accumulate: bool,
}

fn validate(cfg: &KvCacheConfig, r: &ScoreRange) -> Result<()> {
    if cfg.n_kv_heads == 0 || !r.n_heads.is_multiple_of(cfg.n_kv_heads) {
        return Err(Error::InvalidArgument(format!(
            "attn_score: {} query heads is not a multiple of {} KV heads",
            r.n_heads, cfg.n_kv_heads
        )));
    }
    if r.n_past + r.n_tokens > cfg.capacity || r.q0 > r.n_tokens {
        return Err(Error::InvalidArgument(format!(
            "attn_score: queries {}..{} of a {}-token chunk after {} slots do not fit a capacity of {}",
            r.q0, r.n_tokens, r.n_tokens, r.n_past, cfg.capacity
        )));
    }
    Ok(())
}

/// Record the scoring of slots `0..n_past + n_tokens` of every KV head into `score`
/// ([n_kv_heads][capacity] f32). `q` and `lse` are the attention kernel's inputs and
/// log-sum-exp output for the same chunk.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    r: &ScoreRange,
    q: &wgpu::Buffer,
    kc: &wgpu::Buffer,
    lse: &wgpu::Buffer,
    score: &wgpu::Buffer,
    scale: f32,
) -> Result<()> {
    validate(cfg, r)?;
    need_f32("attn_score q", q, r.n_tokens * r.n_heads * cfg.head_dim)?;
    need_f32("attn_score lse", lse, r.n_tokens * r.n_heads)?;
    need_f32("attn_score score", score, cfg.n_kv_heads * cfg.capacity)?;
    need_f32("attn_score k cache", kc, cfg.k_layer_words())?;
    let access = KvAccess {
        k: cfg.k_type,
        v: None,
        encode: false,
    };
    let pipeline = kv_pipeline(ctx, "attn_score", WGSL, &access)?;
    let threads = cfg.n_kv_heads * (r.n_past + r.n_tokens);
    let groups = grid(
        to_u32("attn_score", threads)?.div_ceil(64),
        ctx.max_groups(),
    );
    let params = AttnScoreParams {
        head_dim: cfg.head_dim as u32,
        n_heads: r.n_heads as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        n_tokens: r.n_tokens as u32,
        capacity: cfg.capacity as u32,
        n_past: r.n_past as u32,
        q0: r.q0 as u32,
        accumulate: r.accumulate as u32,
        scale,
        grid_x: groups.0,
        _pad: [0; 2],
    };
    let ub = ctx.uniform("attn_score.params", &params);
    let bg = ctx.bind("attn_score", &pipeline, &[q, kc, lse, score, &ub]);
    ctx.dispatch(encoder, "attn_score", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference: the same sums in f64 with each probability from a plain softmax over
/// the slots the query sees. `kc` is the K cache's words; `score` is
/// [n_kv_heads][capacity].
pub fn reference(
    cfg: &KvCacheConfig,
    r: &ScoreRange,
    q: &[f32],
    kc: &[u32],
    score: &mut [f32],
    scale: f32,
) -> Result<()> {
    validate(cfg, r)?;
    let (hd, group) = (cfg.head_dim, r.n_heads / cfg.n_kv_heads);
    let n_slots = r.n_past + r.n_tokens;
    for kvh in 0..cfg.n_kv_heads {
        let k = super::attention::decode_head(cfg, cfg.k_type, kc, kvh, n_slots);
        let mut sums = vec![0.0f64; n_slots];
        for t in r.q0..r.n_tokens {
            let seen = r.n_past + t + 1;
            for h in kvh * group..(kvh + 1) * group {
                let qv = &q[(t * r.n_heads + h) * hd..][..hd];
                let s: Vec<f64> = (0..seen)
                    .map(|j| {
                        let dot: f64 = qv
                            .iter()
                            .zip(&k[j * hd..(j + 1) * hd])
                            .map(|(&a, &b)| a as f64 * b)
                            .sum();
                        dot * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (j, x) in s.iter().enumerate() {
                    sums[j] += (x - m).exp() / z;
                }
            }
        }
        for (j, v) in sums.into_iter().enumerate() {
            let at = kvh * cfg.capacity + j;
            let old = if r.accumulate && j < r.n_past {
                score[at] as f64
            } else {
                0.0
            };
            score[at] = (old + v) as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::kv::KvType;
    use crate::rng::SplitMix64;

    #[allow(clippy::too_many_arguments)]
    fn run(
        ctx: &GpuContext,
        kt: KvType,
        hd: usize,
        nh: usize,
        nkv: usize,
        n_past: usize,
        n: usize,
        q0: usize,
    ) {
        let cfg = KvCacheConfig {
            k_type: kt,
            ..KvCacheConfig::f16(1, nkv, hd, n_past + n + 5)
        };
        let mut rng = SplitMix64::new(test_seed((hd * 7919 + n_past * 31 + n) as u64));
        let x = rng.vec_f32(cfg.capacity * nkv * hd, -1.5, 1.5);
        let mut kc = vec![0u32; cfg.k_layer_words()];
        crate::kernels::kv_store::reference(&cfg, kt, &x, &mut kc, cfg.capacity, 0);
        let vc = vec![0u32; cfg.v_layer_words()];
        let q = rng.vec_f32(n * nh * hd, -2.0, 2.0);
        let prev = rng.vec_f32(nkv * cfg.capacity, 0.0, 3.0);
        let scale = 1.0 / (hd as f32).sqrt();
        for accumulate in [false, true] {
            let r = ScoreRange {
                n_heads: nh,
                n_tokens: n,
                n_past,
                q0,
                accumulate,
            };
            let gk = ctx.upload("kc", &kc).unwrap();
            let gv = ctx.upload("vc", &vc).unwrap();
            let gq = ctx.upload("q", &q).unwrap();
            let out = ctx.storage_f32("out", q.len()).unwrap();
            let lse = ctx.storage_f32("lse", n * nh).unwrap();
            let score = ctx.upload("score", &prev).unwrap();
            let mut enc = ctx.encoder("test");
            attention::record(
                ctx, &mut enc, &cfg, nh, &gq, &gk, &gv, &out, &lse, n, n_past, scale, None,
            )
            .unwrap();
            record(ctx, &mut enc, &cfg, &r, &gq, &gk, &lse, &score, scale).unwrap();
            ctx.submit_wait(enc).unwrap();
            let got = ctx.read_f32(&score, prev.len()).unwrap();
            let mut want = prev.clone();
            reference(&cfg, &r, &q, &kc, &mut want, scale).unwrap();
            // Only slots that hold tokens are defined.
            let live = |v: &[f32]| -> Vec<f32> {
                (0..nkv)
                    .flat_map(|h| v[h * cfg.capacity..][..n_past + n].to_vec())
                    .collect()
            };
            assert_close(
                &format!(
                    "attn_score hd{hd} h{nh}/{nkv} past {n_past} n {n} q0 {q0} acc {accumulate}"
                ),
                &live(&got),
                &live(&want),
                1e-5,
            );
        }
    }

    #[test]
    fn attn_score_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let f = KvType::F16;
        run(ctx, f, 64, 9, 3, 0, 37, 0); // prefill from empty, every query
        run(ctx, f, 64, 9, 3, 40, 19, 11); // proxy queries: the last 8 of a chunk
        run(ctx, f, 46, 4, 2, 100, 1, 0); // decode step, odd head dim
        run(ctx, f, 128, 2, 2, 13, 70, 69); // one query
        run(ctx, KvType::Q8, 64, 9, 3, 40, 19, 11); // quantized keys
        run(ctx, KvType::Q4, 128, 4, 2, 7, 9, 0);
    }

    #[test]
    fn attn_score_rejects_bad_ranges() {
        let cfg = KvCacheConfig::f16(1, 2, 8, 10);
        let r = ScoreRange {
            n_heads: 4,
            n_tokens: 4,
            n_past: 7,
            q0: 0,
            accumulate: false,
        };
        assert!(validate(&cfg, &r).is_err(), "past capacity");
        assert!(
            validate(
                &cfg,
                &ScoreRange {
                    n_past: 0,
                    q0: 5,
                    ..r
                }
            )
            .is_err(),
            "q0 past the chunk"
        );
        assert!(
            validate(
                &cfg,
                &ScoreRange {
                    n_past: 0,
                    n_heads: 3,
                    ..r
                }
            )
            .is_err(),
            "heads"
        );
        assert!(validate(&cfg, &ScoreRange { n_past: 0, ..r }).is_ok());
    }
}
