//! The CPU device's attention: the math of `kernels::attention::reference` (softmax of the
//! scaled q·k over slots `0..=n_past + t`, times V) and, in the same pass, the attention
//! each slot receives (`kernels::attn_score::reference`, for H2O's and NACL's scores), in
//! f32 with the vectorizing `dot`, split over threads. The references stay in f64 and
//! single-threaded as the yardstick; this is what makes the CPU device usable at long
//! contexts (streaming perplexity over 8k tokens), and the tests below hold it to them.
//!
//! Work items are (token, query head) pairs dealt round-robin to the threads, so the
//! causal mask's growing rows spread evenly; each thread writes its rows to a local buffer
//! (and its slot sums to a local [kv_head][slot] array), merged after. Prefill chunks
//! take the blocked form (`attend_blocked`): per head and block of 32 queries, scores and
//! outputs are two `gemm` products around an in-place masked softmax.

use kvedge_runtime::kernels::attention;
use kvedge_runtime::kv::{decode_row, decode_slot_q4c, KvCacheConfig, KvType};
use kvedge_runtime::{Error, Result};

use super::cpu_matmul::{dot, gemm_f32, MatRef};
use super::cpu_pool;

/// Where the slot sums go: as `attn_score::reference` with a `ScoreRange` of this chunk.
pub struct ScoreSink<'a> {
    /// [n_kv_heads][capacity].
    pub score: &'a mut [f32],
    /// First query of the chunk that contributes.
    pub q0: usize,
    /// Add to the scores of slots below `n_past` instead of overwriting them.
    pub accumulate: bool,
}

/// Rows `0..n` of every KV head, decoded to f32: [kv_head][n][head_dim].
fn decode_heads(cfg: &KvCacheConfig, cache: &[u32], ty: KvType, n: usize) -> Vec<f32> {
    let per_head = n * cfg.head_dim;
    let mut out = vec![0.0f32; cfg.n_kv_heads * per_head];
    for (kvh, dst) in out
        .chunks_exact_mut(per_head.max(1))
        .enumerate()
        .take(cfg.n_kv_heads)
    {
        attention::decode_head_into(cfg, ty, cache, kvh, n, dst);
    }
    out
}

/// Attention of `q` ([n_tokens][n_heads][head_dim]) over the cache, and the slot sums
/// into `sink` when given. `threads` workers (at least one).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    kc: &[u32],
    vc: &[u32],
    n_tokens: usize,
    n_past: usize,
    scale: f32,
    sink: Option<ScoreSink<'_>>,
    threads: usize,
) -> Result<Vec<f32>> {
    check(cfg, n_heads, q, n_tokens, n_past)?;
    if n_tokens == 1 {
        return attend_step(cfg, n_heads, q, kc, vc, n_past, scale, sink, threads);
    }
    let total = n_past + n_tokens;
    let keys = decode_heads(cfg, kc, cfg.k_type, total);
    let values = decode_heads(cfg, vc, cfg.v_type, total);
    attend_decoded(
        cfg, n_heads, q, &keys, &values, n_tokens, n_past, scale, sink, threads,
    )
}

/// Decodes slot `j` of KV head `kvh` into `out` (head_dim values).
fn decode_slot(
    cfg: &KvCacheConfig,
    ty: KvType,
    cache: &[u32],
    kvh: usize,
    j: usize,
    out: &mut [f32],
) {
    let (hd, row) = (cfg.head_dim, ty.row_words(cfg.head_dim));
    let region = &cache[kvh * cfg.capacity * row..(kvh + 1) * cfg.capacity * row];
    if ty.blocks_slots() {
        decode_slot_q4c(region, hd, j, out);
    } else {
        decode_row(ty, &region[j * row..(j + 1) * row], out);
    }
}

/// One decode step's partial attention: a KV head's query heads over a range of slots,
/// with the softmax taken against the range's own maximum (merged after, as
/// flash-decoding does).
struct StepPart {
    kvh: usize,
    start: usize,
    /// Per query head of the group: the range's maximum score and sum of exponentials.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// [group][head_dim] unnormalized outputs.
    out: Vec<f32>,
    /// [group][len] exponentials of the scores (for the slot sums).
    exp: Vec<f32>,
}

/// `attend` for one token (a decode step): each K and V row is decoded once into a small
/// buffer and used by all query heads of its KV head, instead of decoding the whole
/// cache into f32 arrays first (which wrote and read back the cache's f32 image on every
/// layer of every step and dominated decode at long contexts). Slots are split into
/// ranges across the threads; each range keeps its own softmax maximum and sum, and the
/// ranges are merged exactly (rescaled by exp(max_range − max)).
#[allow(clippy::too_many_arguments)]
fn attend_step(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    kc: &[u32],
    vc: &[u32],
    n_past: usize,
    scale: f32,
    mut sink: Option<ScoreSink<'_>>,
    threads: usize,
) -> Result<Vec<f32>> {
    let (hd, nkv) = (cfg.head_dim, cfg.n_kv_heads);
    let (group, total) = (n_heads / nkv, n_past + 1);
    let threads = threads.max(1);
    // Ranges of at least 64 slots, about four items per thread in all.
    let ranges = (4 * threads).div_ceil(nkv).min(total.div_ceil(64)).max(1);
    let len = total.div_ceil(ranges);
    let ranges = total.div_ceil(len);
    let part = |item: usize| -> StepPart {
        let (kvh, r) = (item / ranges, item % ranges);
        let (start, end) = (r * len, ((r + 1) * len).min(total));
        let n = end - start;
        let qs = &q[kvh * group * hd..(kvh + 1) * group * hd];
        let mut row = vec![0.0f32; hd];
        let mut exp = vec![0.0f32; group * n];
        for j in start..end {
            decode_slot(cfg, cfg.k_type, kc, kvh, j, &mut row);
            for (g, qg) in qs.chunks_exact(hd).enumerate() {
                exp[g * n + j - start] = dot(qg, &row) * scale;
            }
        }
        let mut max = vec![f32::NEG_INFINITY; group];
        let mut sum = vec![0.0f32; group];
        for g in 0..group {
            let e = &mut exp[g * n..(g + 1) * n];
            max[g] = e.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            for x in e.iter_mut() {
                *x = (*x - max[g]).exp();
                sum[g] += *x;
            }
        }
        let mut out = vec![0.0f32; group * hd];
        for j in start..end {
            decode_slot(cfg, cfg.v_type, vc, kvh, j, &mut row);
            for (g, o) in out.chunks_exact_mut(hd).enumerate() {
                let w = exp[g * n + j - start];
                for (a, &x) in o.iter_mut().zip(&row) {
                    *a += w * x;
                }
            }
        }
        StepPart {
            kvh,
            start,
            max,
            sum,
            out,
            exp,
        }
    };
    let parts = cpu_pool::run_parts(threads, nkv * ranges, "attention", part)?;
    let mut out = vec![0.0f32; n_heads * hd];
    let mut sums = vec![0.0f32; if sink.is_some() { nkv * total } else { 0 }];
    for (kvh, head_parts) in parts.chunks_exact(ranges).enumerate() {
        for g in 0..group {
            let m = head_parts
                .iter()
                .fold(f32::NEG_INFINITY, |a, p| a.max(p.max[g]));
            let z: f32 = head_parts
                .iter()
                .map(|p| p.sum[g] * (p.max[g] - m).exp())
                .sum();
            let o = &mut out[(kvh * group + g) * hd..(kvh * group + g + 1) * hd];
            for p in head_parts {
                let w = (p.max[g] - m).exp() / z;
                for (a, &x) in o.iter_mut().zip(&p.out[g * hd..(g + 1) * hd]) {
                    *a += w * x;
                }
                if sink.as_ref().is_some_and(|s| s.q0 == 0) {
                    let n = p.exp.len() / group;
                    let s = &mut sums[kvh * total + p.start..kvh * total + p.start + n];
                    for (sj, &e) in s.iter_mut().zip(&p.exp[g * n..(g + 1) * n]) {
                        *sj += e * w;
                    }
                }
            }
            debug_assert_eq!(head_parts[0].kvh, kvh);
        }
    }
    if let Some(sink) = sink.as_mut() {
        merge_sums(cfg, sink, &[&sums], total, n_past);
    }
    Ok(out)
}

/// The shapes `attend` needs: the cache's (`attention::validate`) and the queries'.
fn check(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    n_tokens: usize,
    n_past: usize,
) -> Result<()> {
    attention::validate(cfg, n_heads, n_tokens, n_past)?;
    let want = n_tokens * n_heads * cfg.head_dim;
    if q.len() != want {
        return Err(Error::ShapeMismatch {
            what: "CPU attention queries".into(),
            expected: want,
            got: q.len(),
        });
    }
    Ok(())
}

/// `attend` over keys and values already decoded, [n_kv_heads][n_past + n_tokens][head_dim].
#[allow(clippy::too_many_arguments)]
fn attend_decoded(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_tokens: usize,
    n_past: usize,
    scale: f32,
    mut sink: Option<ScoreSink<'_>>,
    threads: usize,
) -> Result<Vec<f32>> {
    if n_tokens >= BLOCK_MIN_TOKENS {
        return attend_blocked(
            cfg, n_heads, q, keys, values, n_tokens, n_past, scale, sink, threads,
        );
    }
    let hd = cfg.head_dim;
    let (group, total, nkv) = (n_heads / cfg.n_kv_heads, n_past + n_tokens, cfg.n_kv_heads);
    let q0 = sink.as_ref().map(|s| s.q0);
    let items = n_tokens * n_heads;
    let threads = threads.clamp(1, items.max(1));
    // Each worker: its rows (in item order) and its slot sums.
    let work = |w: usize| -> (Vec<f32>, Vec<f32>) {
        let mut rows = Vec::with_capacity(items.div_ceil(threads) * hd);
        let mut sums = vec![0.0f32; if q0.is_some() { nkv * total } else { 0 }];
        let mut p = vec![0.0f32; total];
        for item in (w..items).step_by(threads) {
            let (t, h) = (item / n_heads, item % n_heads);
            let kvh = h / group;
            let seen = n_past + t + 1;
            let qv = &q[item * hd..(item + 1) * hd];
            let k = &keys[kvh * total * hd..];
            let v = &values[kvh * total * hd..];
            let mut m = f32::NEG_INFINITY;
            for (j, pj) in p[..seen].iter_mut().enumerate() {
                *pj = dot(qv, &k[j * hd..(j + 1) * hd]) * scale;
                m = m.max(*pj);
            }
            let mut z = 0.0f32;
            for pj in &mut p[..seen] {
                *pj = (*pj - m).exp();
                z += *pj;
            }
            let inv = 1.0 / z;
            let start = rows.len();
            rows.resize(start + hd, 0.0);
            let o = &mut rows[start..];
            for (j, &pj) in p[..seen].iter().enumerate() {
                let w = pj * inv;
                for (a, &x) in o.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                    *a += w * x;
                }
            }
            if q0.is_some_and(|q0| t >= q0) {
                let s = &mut sums[kvh * total..(kvh + 1) * total];
                for (sj, &pj) in s.iter_mut().zip(&p[..seen]) {
                    *sj += pj * inv;
                }
            }
        }
        (rows, sums)
    };
    let parts = cpu_pool::run_parts(threads, threads, "attention", work)?;
    let mut out = vec![0.0f32; items * hd];
    for (w, (rows, _)) in parts.iter().enumerate() {
        for (i, row) in rows.chunks_exact(hd).enumerate() {
            let item = w + i * threads;
            out[item * hd..(item + 1) * hd].copy_from_slice(row);
        }
    }
    if let Some(sink) = sink.as_mut() {
        let sums: Vec<&[f32]> = parts.iter().map(|(_, s)| s.as_slice()).collect();
        merge_sums(cfg, sink, &sums, total, n_past);
    }
    Ok(out)
}

/// Adds the workers' slot sums ([n_kv_heads][total] each) into the sink's scores.
fn merge_sums(
    cfg: &KvCacheConfig,
    sink: &mut ScoreSink<'_>,
    parts: &[&[f32]],
    total: usize,
    n_past: usize,
) {
    for kvh in 0..cfg.n_kv_heads {
        for j in 0..total {
            let add: f32 = parts.iter().map(|s| s[kvh * total + j]).sum();
            let at = kvh * cfg.capacity + j;
            let old = if sink.accumulate && j < n_past {
                sink.score[at]
            } else {
                0.0
            };
            sink.score[at] = old + add;
        }
    }
}

/// Chunks of at least this many tokens (prefill) take the blocked path.
const BLOCK_MIN_TOKENS: usize = 8;
/// Queries per block of the blocked path.
const QUERY_BLOCK: usize = 32;

/// `attend_decoded` for a chunk of many tokens, as matrix products: per query head and
/// block of `QUERY_BLOCK` consecutive queries, the scores of the block against every slot
/// the block's last query sees are one `gemm` (Q_b · K^T), the causal mask and a row
/// softmax follow in place, and the output is a second `gemm` (P · V), so the
/// multiplications run register-tiled instead of one short dot product per (query,
/// slot). Same math and the same slot sums as the per-query path; items (head, block)
/// are dealt round-robin to the threads.
#[allow(clippy::too_many_arguments)]
fn attend_blocked(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_tokens: usize,
    n_past: usize,
    scale: f32,
    mut sink: Option<ScoreSink<'_>>,
    threads: usize,
) -> Result<Vec<f32>> {
    let hd = cfg.head_dim;
    let (group, total, nkv) = (n_heads / cfg.n_kv_heads, n_past + n_tokens, cfg.n_kv_heads);
    let q0 = sink.as_ref().map(|s| s.q0);
    let blocks = n_tokens.div_ceil(QUERY_BLOCK);
    let items = blocks * n_heads;
    let threads = threads.clamp(1, items.max(1));
    let q_stride = n_heads * hd;
    // Each worker: its blocks' outputs in item order ([rows][hd] each) and its slot sums.
    let work = |w: usize| -> Result<(Vec<f32>, Vec<f32>)> {
        let mut rows = Vec::new();
        let mut sums = vec![0.0f32; if q0.is_some() { nkv * total } else { 0 }];
        let mut p = vec![0.0f32; QUERY_BLOCK * total];
        for item in (w..items).step_by(threads) {
            let (b, h) = (item / n_heads, item % n_heads);
            let kvh = h / group;
            let (t0, t1) = (b * QUERY_BLOCK, ((b + 1) * QUERY_BLOCK).min(n_tokens));
            let (m, seen) = (t1 - t0, n_past + t1);
            let k = &keys[kvh * total * hd..(kvh * total + seen) * hd];
            let v = &values[kvh * total * hd..(kvh * total + seen) * hd];
            let qb = &q[t0 * q_stride + h * hd..];
            gemm_f32(
                &mut p[..m * seen],
                seen,
                MatRef::rows(qb, m, hd, q_stride),
                MatRef::transposed(k, hd, seen, hd),
                scale,
            )?;
            for (i, row) in p[..m * seen].chunks_exact_mut(seen).enumerate() {
                let visible = n_past + t0 + i + 1;
                let mx = row[..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let mut z = 0.0f32;
                for x in &mut row[..visible] {
                    *x = (*x - mx).exp();
                    z += *x;
                }
                let inv = 1.0 / z;
                for x in &mut row[..visible] {
                    *x *= inv;
                }
                row[visible..].fill(0.0);
                if q0.is_some_and(|q0| t0 + i >= q0) {
                    let s = &mut sums[kvh * total..kvh * total + visible];
                    for (sj, &pj) in s.iter_mut().zip(&row[..visible]) {
                        *sj += pj;
                    }
                }
            }
            let start = rows.len();
            rows.resize(start + m * hd, 0.0);
            gemm_f32(
                &mut rows[start..],
                hd,
                MatRef::rows(&p[..m * seen], m, seen, seen),
                MatRef::rows(v, seen, hd, hd),
                1.0,
            )?;
        }
        Ok((rows, sums))
    };
    let parts = cpu_pool::run_parts(threads, threads, "attention", work)?
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut out = vec![0.0f32; n_tokens * n_heads * hd];
    for (w, (rows, _)) in parts.iter().enumerate() {
        let mut at = 0;
        for item in (w..items).step_by(threads) {
            let (b, h) = (item / n_heads, item % n_heads);
            let (t0, t1) = (b * QUERY_BLOCK, ((b + 1) * QUERY_BLOCK).min(n_tokens));
            for t in t0..t1 {
                let dst = (t * n_heads + h) * hd;
                out[dst..dst + hd].copy_from_slice(&rows[at..at + hd]);
                at += hd;
            }
        }
    }
    if let Some(sink) = sink.as_mut() {
        let sums: Vec<&[f32]> = parts.iter().map(|(_, s)| s.as_slice()).collect();
        merge_sums(cfg, sink, &sums, total, n_past);
    }
    Ok(out)
}

/// TidalDecode's sparse step: one query per head over only the slots `sel` lists per KV
/// head ([n_kv_heads][n_sel]), as `attention::reference_sparse` does: the selected rows
/// are decoded into `n_sel` slots per head, which `attend` reads whole.
#[allow(clippy::too_many_arguments)]
pub fn attend_sparse(
    cfg: &KvCacheConfig,
    n_heads: usize,
    q: &[f32],
    kc: &[u32],
    vc: &[u32],
    sel: &[u32],
    n_sel: usize,
    scale: f32,
    threads: usize,
) -> Result<Vec<f32>> {
    if n_sel == 0 || sel.len() != cfg.n_kv_heads * n_sel {
        return Err(Error::InvalidArgument(format!(
            "sparse attention: {} selected slots for {} KV heads of {n_sel}",
            sel.len(),
            cfg.n_kv_heads
        )));
    }
    if let Some(&bad) = sel.iter().find(|&&s| s as usize >= cfg.capacity) {
        return Err(Error::InvalidArgument(format!(
            "sparse attention: slot {bad} past the capacity {}",
            cfg.capacity
        )));
    }
    let sub = KvCacheConfig {
        capacity: n_sel,
        ..*cfg
    };
    let hd = cfg.head_dim;
    // The selected slots of each head, decoded: [n_kv_heads][n_sel][head_dim].
    let gather = |cache: &[u32], ty: KvType| -> Vec<f32> {
        let row = ty.row_words(hd);
        let mut out = vec![0.0f32; cfg.n_kv_heads * n_sel * hd];
        for kvh in 0..cfg.n_kv_heads {
            let region = &cache[kvh * cfg.capacity * row..(kvh + 1) * cfg.capacity * row];
            let picks = &sel[kvh * n_sel..(kvh + 1) * n_sel];
            let dst = &mut out[kvh * n_sel * hd..(kvh + 1) * n_sel * hd];
            for (&j, o) in picks.iter().zip(dst.chunks_exact_mut(hd)) {
                let j = j as usize;
                if ty.blocks_slots() {
                    decode_slot_q4c(region, hd, j, o);
                } else {
                    decode_row(ty, &region[j * row..(j + 1) * row], o);
                }
            }
        }
        out
    };
    let k = gather(kc, cfg.k_type);
    let v = gather(vc, cfg.v_type);
    check(&sub, n_heads, q, 1, n_sel - 1)?;
    attend_decoded(&sub, n_heads, q, &k, &v, 1, n_sel - 1, scale, None, threads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvedge_runtime::kernels::attn_score::{self, ScoreRange};
    use kvedge_runtime::kernels::check::test_seed;
    use kvedge_runtime::kv::encode_row;
    use kvedge_runtime::rng::SplitMix64;

    fn cache(cfg: &KvCacheConfig, ty: KvType, rng: &mut SplitMix64) -> Vec<u32> {
        let row = ty.row_words(cfg.head_dim);
        let mut c = vec![0u32; cfg.n_kv_heads * cfg.capacity * row];
        let mut x = vec![0.0f32; cfg.head_dim];
        for r in c.chunks_exact_mut(row) {
            x.iter_mut().for_each(|v| *v = rng.uniform(-1.0, 1.0));
            encode_row(ty, &x, r);
        }
        c
    }

    /// Odd shapes, every storage type, prefill chunks and single-token decode, 1 to 3
    /// threads, against the f64 references: outputs and accumulated slot sums.
    #[test]
    fn matches_the_references() {
        let mut rng = SplitMix64::new(test_seed(0xA77E));
        let shapes = [
            // (n_kv_heads, group, head_dim, n_tokens, n_past, q0)
            (1, 1, 32, 1, 0, 0),
            (2, 3, 64, 7, 13, 2),
            (3, 2, 32, 1, 90, 0),
            // A decode step over enough slots for several ranges per head.
            (2, 3, 64, 1, 300, 0),
            (2, 4, 128, 19, 5, 18),
            // Chunks of several query blocks (the blocked path), one ending mid-block.
            (1, 2, 32, 64, 0, 0),
            (2, 3, 64, 71, 9, 40),
        ];
        for (i, &(nkv, group, hd, n_tokens, n_past, q0)) in shapes.iter().enumerate() {
            for (kt, vt) in [(KvType::F16, KvType::F16), (KvType::Q8, KvType::Q4)] {
                let cfg = KvCacheConfig {
                    n_layers: 1,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    capacity: n_past + n_tokens + 3,
                    k_type: kt,
                    v_type: vt,
                };
                let n_heads = nkv * group;
                let (kc, vc) = (cache(&cfg, kt, &mut rng), cache(&cfg, vt, &mut rng));
                let q = rng.vec_f32(n_tokens * n_heads * hd, -2.0, 2.0);
                let scale = 1.0 / (hd as f32).sqrt();
                let want =
                    attention::reference(&cfg, n_heads, &q, &kc, &vc, n_tokens, n_past, scale)
                        .unwrap();
                let old = rng.vec_f32(nkv * cfg.capacity, 0.0, 1.0);
                let mut want_score = old.clone();
                let r = ScoreRange {
                    n_heads,
                    n_tokens,
                    n_past,
                    q0,
                    accumulate: true,
                };
                attn_score::reference(&cfg, &r, &q, &kc, &mut want_score, scale).unwrap();
                for threads in 1..=3 {
                    let mut score = old.clone();
                    let sink = ScoreSink {
                        score: &mut score,
                        q0,
                        accumulate: true,
                    };
                    let got = attend(
                        &cfg,
                        n_heads,
                        &q,
                        &kc,
                        &vc,
                        n_tokens,
                        n_past,
                        scale,
                        Some(sink),
                        threads,
                    )
                    .unwrap();
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        err < 1e-5,
                        "shape {i} {kt:?}/{vt:?} threads {threads}: output error {err}"
                    );
                    let serr = score
                        .iter()
                        .zip(&want_score)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        serr < 1e-4,
                        "shape {i} threads {threads}: score error {serr}"
                    );
                }
            }
        }
    }

    #[test]
    fn sparse_matches_the_reference() {
        let mut rng = SplitMix64::new(test_seed(0x5BA5));
        for &(nkv, group, hd, capacity, n_sel) in
            &[(1, 1, 32, 5, 1), (2, 3, 64, 40, 17), (3, 3, 64, 300, 128)]
        {
            let cfg = KvCacheConfig {
                n_layers: 1,
                n_kv_heads: nkv,
                head_dim: hd,
                capacity,
                k_type: KvType::Q8,
                v_type: KvType::F16,
            };
            let n_heads = nkv * group;
            let (kc, vc) = (
                cache(&cfg, KvType::Q8, &mut rng),
                cache(&cfg, KvType::F16, &mut rng),
            );
            let q = rng.vec_f32(n_heads * hd, -2.0, 2.0);
            // Distinct slots per head, in no particular order.
            let mut sel = Vec::new();
            for _ in 0..nkv {
                let mut all: Vec<u32> = (0..capacity as u32).collect();
                for i in (1..all.len()).rev() {
                    all.swap(i, rng.below(i as u64 + 1) as usize);
                }
                sel.extend_from_slice(&all[..n_sel]);
            }
            let scale = 0.125;
            let want = attention::reference_sparse(&cfg, n_heads, &q, &kc, &vc, &sel, n_sel, scale)
                .unwrap();
            for threads in 1..=3 {
                let got = attend_sparse(&cfg, n_heads, &q, &kc, &vc, &sel, n_sel, scale, threads)
                    .unwrap();
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    err < 1e-5,
                    "{nkv}x{group} heads, {n_sel} of {capacity} slots, {threads} threads: {err}"
                );
            }
        }
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 32,
            capacity: 4,
            k_type: KvType::F16,
            v_type: KvType::F16,
        };
        let c = vec![0u32; 4 * KvType::F16.row_words(32)];
        let q = vec![0.0f32; 32];
        assert!(
            attend_sparse(&cfg, 1, &q, &c, &c, &[4], 1, 1.0, 1).is_err(),
            "slot past the capacity"
        );
        assert!(
            attend_sparse(&cfg, 1, &q, &c, &c, &[], 0, 1.0, 1).is_err(),
            "empty selection"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: 2,
            head_dim: 32,
            capacity: 8,
            k_type: KvType::F16,
            v_type: KvType::F16,
        };
        let row = KvType::F16.row_words(32);
        let c = vec![0u32; 2 * 8 * row];
        let q = vec![0.0f32; 4 * 32];
        assert!(
            attend(&cfg, 4, &q, &c, &c, 1, 8, 1.0, None, 2).is_err(),
            "past the capacity"
        );
        assert!(
            attend(&cfg, 3, &q, &c, &c, 1, 0, 1.0, None, 2).is_err(),
            "heads not a multiple"
        );
        assert!(
            attend(&cfg, 4, &q[..64], &c, &c, 1, 0, 1.0, None, 2).is_err(),
            "short queries"
        );
    }
}
