//! Which cache slots survive an eviction (`shaders/kv_select.wgsl`), per KV head: the
//! protected sinks and recent slots, the top slots by score, and a seeded random sample
//! proportional to softmax(score) (Gumbel-top-k), listed in ascending slot order. Every
//! policy is a setting of [`SelectPlan`]: `window` (StreamingLLM, Xiao et al., 2023,
//! arXiv 2309.17453) protects sinks and recent slots only; `h2o` adds the top by running
//! attention; `nacl` (arXiv 2408.03675) adds the top by proxy-query attention and a random
//! sample. Runs on the GPU so that an eviction never copies the cache to the host.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, plain_pipeline};
use crate::gpu::GpuContext;
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/kv_select.wgsl");

/// How many slots of each kind an eviction keeps out of `n` in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SelectPlan {
    /// Slots in use.
    pub n: usize,
    /// Slots kept: sinks + recent + n_score + n_random.
    pub keep: usize,
    pub sinks: usize,
    pub recent: usize,
    pub n_score: usize,
    pub n_random: usize,
    pub seed: u32,
    /// Mixed into the random draw (layer and eviction count), so draws differ per layer.
    pub salt: u32,
    /// Radius of the max-pooling of scores over neighbouring slots before ranking (0:
    /// none): a slot ranks by the best score within `pool` slots of it, so the tokens
    /// around a strongly attended one are kept with it (SnapKV's clustering).
    pub pool: usize,
}

impl SelectPlan {
    pub fn validate(&self, capacity: usize) -> Result<()> {
        let parts = self.sinks + self.recent + self.n_score + self.n_random;
        if parts != self.keep || self.keep > self.n || self.n > capacity {
            return Err(Error::InvalidArgument(format!(
                "kv_select: keep {} must equal sinks {} + recent {} + by score {} + random {} \
                 and be at most the {} slots in use (capacity {capacity})",
                self.keep, self.sinks, self.recent, self.n_score, self.n_random, self.n
            )));
        }
        Ok(())
    }
}

/// Mirrors `Params` in kv_select.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct KvSelectParams {
    n: u32,
    keep: u32,
    sinks: u32,
    recent: u32,
    n_score: u32,
    n_random: u32,
    capacity: u32,
    seed: u32,
    salt: u32,
    pool: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<KvSelectParams>() == 48);

/// Record the selection for every KV head: `score` and `mark` are [n_kv_heads][capacity]
/// (mark is scratch), `kept` receives [n_kv_heads][keep] slot indices.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    n_kv_heads: usize,
    capacity: usize,
    plan: &SelectPlan,
    score: &wgpu::Buffer,
    mark: &wgpu::Buffer,
    kept: &wgpu::Buffer,
) -> Result<()> {
    plan.validate(capacity)?;
    need_f32("kv_select score", score, n_kv_heads * capacity)?;
    need_f32("kv_select mark", mark, n_kv_heads * capacity)?;
    need_f32("kv_select kept", kept, n_kv_heads * plan.keep)?;
    let pipeline = plain_pipeline(ctx, "kv_select", WGSL)?;
    let params = KvSelectParams {
        n: plan.n as u32,
        keep: plan.keep as u32,
        sinks: plan.sinks as u32,
        recent: plan.recent as u32,
        n_score: plan.n_score as u32,
        n_random: plan.n_random as u32,
        capacity: capacity as u32,
        seed: plan.seed,
        salt: plan.salt,
        pool: plan.pool as u32,
        _pad: [0; 2],
    };
    let ub = ctx.uniform("kv_select.params", &params);
    let bg = ctx.bind("kv_select", &pipeline, &[score, mark, kept, &ub]);
    ctx.dispatch(encoder, "kv_select", &pipeline, &bg, (n_kv_heads as u32, 1));
    Ok(())
}

fn hash(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// The Gumbel noise the shader adds to slot `j` of head `kvh` (same hash, f32 math).
pub fn gumbel(seed: u32, salt: u32, kvh: u32, j: u32) -> f32 {
    let h = hash(seed ^ hash(salt ^ hash(kvh.wrapping_mul(0x9e37_79b9).wrapping_add(j))));
    let u = ((h >> 8) as f32 + 0.5) / 16_777_216.0;
    -(-u.ln()).ln()
}

/// CPU reference: the same choice by sorting. Ties go to the lower slot. Returns
/// [n_kv_heads][keep] ascending slot indices.
pub fn reference(
    n_kv_heads: usize,
    capacity: usize,
    plan: &SelectPlan,
    score: &[f32],
) -> Result<Vec<u32>> {
    plan.validate(capacity)?;
    let n = plan.n;
    let mut out = Vec::with_capacity(n_kv_heads * plan.keep);
    for kvh in 0..n_kv_heads {
        let raw = &score[kvh * capacity..][..n];
        let r = plan.pool;
        let s: Vec<f32> = (0..n)
            .map(|j| {
                raw[j.saturating_sub(r)..(j + r + 1).min(n)]
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
            })
            .collect();
        let mut chosen: Vec<bool> = (0..n)
            .map(|j| j < plan.sinks || j + plan.recent >= n)
            .collect();
        let take = |need: usize, key: &dyn Fn(usize) -> f32, chosen: &mut Vec<bool>| {
            let mut order: Vec<usize> = (0..n).filter(|&j| !chosen[j]).collect();
            // Descending key, ascending slot on ties (a stable sort keeps slot order).
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
            for &j in order.iter().take(need) {
                chosen[j] = true;
            }
        };
        take(plan.n_score, &|j| s[j], &mut chosen);
        take(
            plan.n_random,
            &|j| s[j] + gumbel(plan.seed, plan.salt, kvh as u32, j as u32),
            &mut chosen,
        );
        out.extend((0..n).filter(|&j| chosen[j]).map(|j| j as u32));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{test_context, test_seed};
    use crate::rng::SplitMix64;

    fn gpu_select(
        ctx: &GpuContext,
        nkv: usize,
        cap: usize,
        plan: &SelectPlan,
        s: &[f32],
    ) -> Vec<u32> {
        let score = ctx.upload("score", s).unwrap();
        let mark = ctx.storage_f32("mark", nkv * cap).unwrap();
        let kept = ctx.storage_f32("kept", nkv * plan.keep).unwrap();
        let mut enc = ctx.encoder("test");
        record(ctx, &mut enc, nkv, cap, plan, &score, &mark, &kept).unwrap();
        ctx.submit_wait(enc).unwrap();
        let words = ctx.read_f32(&kept, nkv * plan.keep).unwrap();
        words.iter().map(|w| w.to_bits()).collect()
    }

    #[test]
    fn kv_select_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(77));
        // (heads, capacity, n, sinks, recent, by score, random, pooling radius)
        let cases = [
            (3, 100, 100, 4, 20, 0, 0, 0),     // window
            (2, 700, 613, 4, 100, 150, 0, 0),  // h2o, n not a multiple of the workgroup
            (4, 64, 50, 0, 0, 10, 0, 0),       // pure top-k
            (2, 3000, 2999, 4, 30, 400, 0, 0), // long
            (1, 9, 9, 9, 0, 0, 0, 0),          // keep everything
            (3, 500, 431, 4, 20, 90, 0, 3),    // pooled top-k
            (2, 40, 37, 1, 2, 20, 0, 1),       // pooled, most slots kept
            (2, 50, 50, 0, 0, 7, 0, 60),       // radius past both ends
        ];
        for (nkv, cap, n, sinks, recent, n_score, n_random, pool) in cases {
            let keep = sinks + recent + n_score + n_random;
            let plan = SelectPlan {
                n,
                keep,
                sinks,
                recent,
                n_score,
                n_random,
                seed: 1,
                salt: 2,
                pool,
            };
            // Scores with many exact ties (rounded) to exercise the tie rule.
            let s: Vec<f32> = rng
                .vec_f32(nkv * cap, 0.0, 4.0)
                .into_iter()
                .map(|x| (x * 8.0).round() / 8.0)
                .collect();
            let got = gpu_select(ctx, nkv, cap, &plan, &s);
            let want = reference(nkv, cap, &plan, &s).unwrap();
            assert_eq!(got, want, "kv_select {plan:?}");
        }
    }

    #[test]
    fn kv_select_random_stage_is_a_seeded_gumbel_top_k() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(78));
        let (nkv, cap, n) = (2, 900, 870);
        let s = rng.vec_f32(nkv * cap, 0.0, 3.0);
        let plan = SelectPlan {
            n,
            keep: 4 + 40 + 100 + 60,
            sinks: 4,
            recent: 40,
            n_score: 100,
            n_random: 60,
            seed: 1234,
            salt: 5,
            pool: 0,
        };
        let got = gpu_select(ctx, nkv, cap, &plan, &s);
        assert_eq!(
            got,
            gpu_select(ctx, nkv, cap, &plan, &s),
            "same seed, same slots"
        );
        let other = gpu_select(ctx, nkv, cap, &SelectPlan { seed: 99, ..plan }, &s);
        assert_ne!(got, other, "another seed draws another sample");
        let want = reference(nkv, cap, &plan, &s).unwrap();
        // GPU and CPU logarithms may differ in the last bit: a slot may only differ from
        // the reference where its noisy key is within 1e-4 of the threshold.
        for kvh in 0..nkv {
            let g: std::collections::BTreeSet<u32> = got[kvh * plan.keep..][..plan.keep]
                .iter()
                .copied()
                .collect();
            let w: std::collections::BTreeSet<u32> = want[kvh * plan.keep..][..plan.keep]
                .iter()
                .copied()
                .collect();
            let key =
                |j: u32| s[kvh * cap + j as usize] + gumbel(plan.seed, plan.salt, kvh as u32, j);
            let only_gpu: Vec<u32> = g.difference(&w).copied().collect();
            let only_cpu: Vec<u32> = w.difference(&g).copied().collect();
            assert_eq!(only_gpu.len(), only_cpu.len());
            for &j in &only_gpu {
                assert!(
                    only_cpu.iter().any(|&k| (key(j) - key(k)).abs() < 1e-4),
                    "head {kvh}: slot {j} chosen by the GPU only, and not in a near-tie"
                );
            }
            assert!(
                g.len() == plan.keep && (0..4).all(|j| g.contains(&j)),
                "sinks kept"
            );
            assert!(
                (n as u32 - 40..n as u32).all(|j| g.contains(&j)),
                "recent kept"
            );
        }
    }

    #[test]
    fn kv_select_rejects_inconsistent_plans() {
        let plan = SelectPlan {
            n: 10,
            keep: 5,
            sinks: 1,
            recent: 1,
            n_score: 1,
            n_random: 1,
            seed: 0,
            salt: 0,
            pool: 0,
        };
        assert!(plan.validate(10).is_err(), "parts do not add up");
        assert!(SelectPlan { keep: 4, ..plan }.validate(10).is_ok());
        assert!(
            SelectPlan {
                keep: 4,
                n: 11,
                ..plan
            }
            .validate(10)
            .is_err(),
            "n over capacity"
        );
    }
}
