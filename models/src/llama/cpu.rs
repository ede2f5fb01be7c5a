//! The reference forward pass on the CPU, built from the kernels' scalar references:
//! weights are read from the mapped file and each row dequantized when used; activations
//! are f32, dot products accumulate in f32 over 16 lanes (as llama.cpp's CPU backend
//! does); the KV cache holds the same encoded rows as the GPU's (f16, q8 or q4 words).
//! Projections are split over threads by weight rows (std::thread::scope); attention and
//! the slot scores of H2O/NACL are computed together in f32 over threads
//! (`cpu_attention`, held to the f64 references by its tests), so long contexts run in
//! minutes rather than hours. Eviction follows the GPU cache's rules (`kv::KvPlan`) with
//! the kernels' CPU references for selection and compaction, so both devices drop the
//! same tokens.

use std::sync::Arc;

use super::cpu_attention::{self, ScoreSink};
use kvedge_runtime::gguf::TensorInfo;
use kvedge_runtime::kernels::{
    add, embed, hadamard, kv_compact, kv_select, kv_store, rmsnorm, rope, silu_mul,
};
use kvedge_runtime::kv::{KvCacheConfig, KvOptions, KvPlan, KvPolicy, KvStats, TidalRole};
use kvedge_runtime::quant::dequantize;

use super::LlamaModel;
use crate::ModelError;

/// The reference forward pass with its own f16 KV cache.
pub struct CpuForward {
    model: Arc<LlamaModel>,
    cfg: KvCacheConfig,
    plan: KvPlan,
    kc: Vec<Vec<u32>>,
    vc: Vec<Vec<u32>>,
    /// Per layer [n_kv_heads][capacity] running scores (score-based policies).
    scores: Vec<Vec<f32>>,
    /// Slots used and tokens seen.
    used: usize,
    position: usize,
    evicted: u64,
    evictions: u64,
    chunk: usize,
    threads: usize,
    /// TidalDecode's last selection ([n_kv_heads][k]).
    tidal_sel: Vec<u32>,
}

/// Dot product in f32 over 16 independent lanes, a shape the compiler vectorizes
/// (a single running sum would serialize on the add latency).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `y[m][n] = x[m][k] · W[n][k]^T` with W read from the file, rows split over threads.
pub fn matmul_rows(
    w: &TensorInfo,
    bytes: &[u8],
    x: &[f32],
    m: usize,
    threads: usize,
) -> Result<Vec<f32>, ModelError> {
    let (k, n) = (w.n_cols() as usize, w.n_rows() as usize);
    let row_bytes = bytes.len() / n.max(1);
    let mut y = vec![0.0f32; m * n];
    // Column-major result per thread, transposed after: each thread owns rows of W.
    let per = n.div_ceil(threads.max(1));
    let parts: Vec<Result<Vec<f32>, ModelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per.max(1))
            .map(|r0| {
                let r1 = (r0 + per).min(n);
                s.spawn(move || -> Result<Vec<f32>, ModelError> {
                    // Rows are dequantized BLOCK at a time, so that each activation row
                    // is read once from memory per block of weight rows, not per row.
                    const BLOCK: usize = 8;
                    let mut rows = vec![0.0f32; BLOCK * k];
                    let mut out = vec![0.0f32; (r1 - r0) * m];
                    for b0 in (r0..r1).step_by(BLOCK) {
                        let b1 = (b0 + BLOCK).min(r1);
                        for r in b0..b1 {
                            let dst = &mut rows[(r - b0) * k..(r - b0 + 1) * k];
                            dequantize(w.ty, &bytes[r * row_bytes..(r + 1) * row_bytes], dst)?;
                        }
                        for i in 0..m {
                            let xi = &x[i * k..(i + 1) * k];
                            for r in b0..b1 {
                                out[(r - r0) * m + i] =
                                    dot(&rows[(r - b0) * k..(r - b0 + 1) * k], xi);
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                        "CPU worker thread panicked".into(),
                    )))
                })
            })
            .collect()
    });
    for (p, part) in parts.into_iter().enumerate() {
        let part = part?;
        let r0 = p * per;
        for (rr, chunk) in part.chunks(m).enumerate() {
            for (i, &v) in chunk.iter().enumerate() {
                y[i * n + r0 + rr] = v;
            }
        }
    }
    Ok(y)
}

impl CpuForward {
    /// A session of up to `context` positions (unbounded when `kv` evicts), running
    /// prefill in chunks of at most `chunk` tokens.
    pub fn new(
        model: Arc<LlamaModel>,
        context: usize,
        chunk: usize,
        kv: &KvOptions,
    ) -> Result<Self, ModelError> {
        let hp = model.hp.clone();
        if chunk == 0 || context == 0 {
            return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                "chunk and context must be positive".into(),
            )));
        }
        let plan = KvPlan::new(kv, model.kv_geometry(), context, chunk)?;
        let cfg = plan.cache_config(model.kv_geometry());
        for ty in [cfg.k_type, cfg.v_type] {
            if !ty.supports(cfg.head_dim) {
                return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                    format!(
                        "KV type {} cannot store head dim {} (f16 needs it even, q8/q4 a multiple of 32)",
                        ty.name(),
                        cfg.head_dim
                    ),
                )));
            }
        }
        let scores = if plan.policy.scores() {
            vec![vec![0.0; hp.n_kv_heads * plan.slots]; hp.n_layers]
        } else {
            Vec::new()
        };
        Ok(Self {
            model,
            cfg,
            plan,
            kc: vec![vec![0; cfg.k_layer_words()]; hp.n_layers],
            vc: vec![vec![0; cfg.v_layer_words()]; hp.n_layers],
            scores,
            used: 0,
            position: 0,
            evicted: 0,
            evictions: 0,
            chunk: chunk.min(plan.max_chunk()),
            tidal_sel: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Tokens seen.
    pub fn len(&self) -> usize {
        self.position
    }

    /// Positions the session can reach: the context, or unbounded with eviction.
    pub fn capacity(&self) -> usize {
        if self.plan.evicts() {
            u32::MAX as usize
        } else {
            self.cfg.capacity
        }
    }

    pub fn reset(&mut self) {
        self.used = 0;
        self.position = 0;
    }

    /// The slots TidalDecode's last selection layer chose ([n_kv_heads][k]), for tests.
    pub fn tidal_selection(&self) -> Option<Vec<u32>> {
        self.plan.tidal.map(|_| self.tidal_sel.clone())
    }

    pub fn kv_stats(&self) -> KvStats {
        KvStats {
            plan: self.plan.describe(),
            slots: self.cfg.capacity,
            used: self.used,
            evicted: self.evicted,
            evictions: self.evictions,
            kv_bytes: self.kv_bytes(),
            aux_bytes: self.scores.iter().map(|s| s.len() as u64 * 4).sum(),
        }
    }

    /// Drop every layer down to `plan.keep` slots, as `KvCache::evict` does on the GPU.
    fn evict(&mut self) -> Result<(), ModelError> {
        let n = self.used;
        let nkv = self.cfg.n_kv_heads;
        for l in 0..self.cfg.n_layers {
            let sel = self.plan.select(n, l, self.evictions);
            let zeros;
            let score = match self.scores.get(l) {
                Some(s) => s,
                None => {
                    zeros = vec![0.0; nkv * self.cfg.capacity];
                    &zeros
                }
            };
            let kept = kv_select::reference(nkv, self.cfg.capacity, &sel, score)?;
            let (kr, vr) = (self.cfg.k_row_words(), self.cfg.v_row_words());
            kv_compact::reference(&self.cfg, kr, sel.keep, &kept, &mut self.kc[l]);
            kv_compact::reference(&self.cfg, vr, sel.keep, &kept, &mut self.vc[l]);
            if let Some(s) = self.scores.get_mut(l) {
                kv_compact::reference(&self.cfg, 1, sel.keep, &kept, s);
            }
        }
        self.count_eviction(n);
        Ok(())
    }

    /// Count an eviction of every layer from `n` slots in use down to `plan.keep`.
    fn count_eviction(&mut self, n: usize) {
        let keep = self.plan.keep.min(n);
        self.evicted += (n - keep) as u64;
        self.evictions += 1;
        self.used = keep;
    }

    pub fn kv_bytes(&self) -> u64 {
        self.cfg.total_bytes()
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn n_vocab(&self) -> usize {
        self.model.hp.n_vocab
    }

    pub fn is_empty(&self) -> bool {
        self.position == 0
    }

    fn proj(&self, name: &str, x: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        let f = &self.model.file;
        let t = f.tensor(name)?;
        matmul_rows(t, f.tensor_data(t), x, m, self.threads)
    }

    /// Run `tokens` at the next positions, chunk by chunk; returns the logits of every
    /// token ([tokens.len()][n_vocab]).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let m = tokens.len();
        if m == 0 || (!self.plan.evicts() && self.used + m > self.cfg.capacity) {
            return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                format!(
                    "CPU forward: {m} tokens at position {} do not fit a context of {}",
                    self.used, self.cfg.capacity
                ),
            )));
        }
        let mut out = Vec::with_capacity(m * self.model.hp.n_vocab);
        for chunk in tokens.chunks(self.chunk) {
            let oneshot = self.plan.evicts_oneshot(self.used, chunk.len());
            if !oneshot && self.plan.evicts() && self.used + chunk.len() > self.cfg.capacity {
                self.evict()?;
            }
            out.extend(self.run_chunk(chunk)?);
        }
        Ok(out)
    }

    fn run_chunk(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let model = self.model.clone();
        let hp = &model.hp;
        let m = tokens.len();
        let e = hp.n_embd;
        let emb = model.file.tensor("token_embd.weight")?;
        let mut x = embed::reference(
            emb.ty,
            model.file.tensor_data(emb),
            e,
            emb.n_rows() as usize,
            tokens,
        )?;
        let pos: Vec<u32> = (self.position..self.position + m)
            .map(|p| p as u32)
            .collect();
        let oneshot = self.plan.evicts_oneshot(self.used, m);
        let stage_cfg = KvCacheConfig {
            capacity: self.cfg.capacity + self.plan.oneshot,
            ..self.cfg
        };
        // The scoring of the GPU pass (see gpu.rs).
        let score_range = match self.plan.policy {
            KvPolicy::H2o => Some((0, true)),
            KvPolicy::Nacl if m == 1 => Some((0, true)),
            KvPolicy::Nacl => Some((m - KvPlan::proxy_queries(m), false)),
            _ => None,
        };
        let threads = self.threads;
        for l in 0..hp.n_layers {
            let b = |n: &str| format!("blk.{l}.{n}");
            let xn = rmsnorm::reference(&x, &model.vector(&b("attn_norm.weight"))?, e, hp.rms_eps);
            let mut q = self.proj(&b("attn_q.weight"), &xn, m)?;
            let mut k = self.proj(&b("attn_k.weight"), &xn, m)?;
            let mut v = self.proj(&b("attn_v.weight"), &xn, m)?;
            if hp.arch.qkv_bias() {
                add::reference(&mut q, &model.vector(&b("attn_q.bias"))?);
                add::reference(&mut k, &model.vector(&b("attn_k.bias"))?);
                add::reference(&mut v, &model.vector(&b("attn_v.bias"))?);
            }
            rope::reference(&mut q, &pos, &model.rope(hp.n_heads))?;
            rope::reference(&mut k, &pos, &model.rope(hp.n_kv_heads))?;
            if self.plan.hadamard {
                hadamard::reference(&mut q, hp.head_dim)?;
                hadamard::reference(&mut k, hp.head_dim)?;
                hadamard::reference(&mut v, hp.head_dim)?;
            }
            // NACL's one-shot eviction works in a staging copy of the layer (see gpu.rs).
            let (mut sk, mut sv, mut ss) = (Vec::new(), Vec::new(), Vec::new());
            let (cfg, kc, vc, layer_scores) = if oneshot {
                let (sc, used) = (stage_cfg, self.used);
                sk = stage_rows(&self.cfg, &sc, sc.k_row_words(), used, &self.kc[l]);
                sv = stage_rows(&self.cfg, &sc, sc.v_row_words(), used, &self.vc[l]);
                ss = vec![0.0f32; sc.n_kv_heads * sc.capacity];
                (sc, &mut sk, &mut sv, Some(&mut ss))
            } else {
                (
                    self.cfg,
                    &mut self.kc[l],
                    &mut self.vc[l],
                    self.scores.get_mut(l),
                )
            };
            let (kt, vt) = (cfg.k_type, cfg.v_type);
            kv_store::reference(&cfg, kt, &k, kc, m, self.used);
            kv_store::reference(&cfg, vt, &v, vc, m, self.used);
            // TidalDecode, as the GPU pass does it (see kv::config).
            let tidal = self.plan.tidal.filter(|t| m == 1 && self.used + 1 > t.k);
            let role = tidal.map_or(TidalRole::Dense, |t| t.role(l));
            let scale = model.attn_scale();
            // TidalDecode's selection layer ranks slots by this token's attention alone.
            let mut tidal_score = match (role, tidal) {
                (TidalRole::DenseAndSelect, Some(_)) => {
                    Some(vec![0.0f32; cfg.n_kv_heads * cfg.capacity])
                }
                _ => None,
            };
            let mut layer_scores = layer_scores;
            let att = if let (TidalRole::Sparse, Some(t)) = (role, tidal) {
                cpu_attention::attend_sparse(
                    &cfg,
                    hp.n_heads,
                    &q,
                    kc,
                    vc,
                    &self.tidal_sel,
                    t.k,
                    scale,
                    threads,
                )?
            } else {
                let sink = match (
                    tidal_score.as_mut(),
                    score_range,
                    layer_scores.as_deref_mut(),
                ) {
                    (Some(score), _, _) => Some(ScoreSink {
                        score,
                        q0: 0,
                        accumulate: false,
                    }),
                    (None, Some((q0, accumulate)), Some(score)) => Some(ScoreSink {
                        score,
                        q0,
                        accumulate,
                    }),
                    _ => None,
                };
                cpu_attention::attend(
                    &cfg, hp.n_heads, &q, kc, vc, m, self.used, scale, sink, threads,
                )?
            };
            if let (Some(score), Some(t)) = (&tidal_score, tidal) {
                // A decode step: the running scores (q0 0, accumulating) gain the same
                // attention; the new token's slot starts from it.
                if let (Some(_), Some(scores)) = (score_range, layer_scores) {
                    for kvh in 0..cfg.n_kv_heads {
                        for j in 0..=self.used {
                            let at = kvh * cfg.capacity + j;
                            let old = if j < self.used { scores[at] } else { 0.0 };
                            scores[at] = old + score[at];
                        }
                    }
                }
                self.tidal_sel = kv_select::reference(
                    cfg.n_kv_heads,
                    cfg.capacity,
                    &t.select(self.used + 1),
                    score,
                )?;
            }
            if oneshot {
                let (sc, nkv) = (stage_cfg, self.cfg.n_kv_heads);
                let sel = self.plan.select(self.used + m, l, self.evictions);
                let kept = kv_select::reference(nkv, sc.capacity, &sel, &ss)?;
                let (kr, vr) = (sc.k_row_words(), sc.v_row_words());
                kv_compact::reference(&sc, kr, sel.keep, &kept, &mut sk);
                kv_compact::reference(&sc, vr, sel.keep, &kept, &mut sv);
                kv_compact::reference(&sc, 1, sel.keep, &kept, &mut ss);
                unstage_rows(&sc, &self.cfg, kr, sel.keep, &sk, &mut self.kc[l]);
                unstage_rows(&sc, &self.cfg, vr, sel.keep, &sv, &mut self.vc[l]);
                if let Some(s) = self.scores.get_mut(l) {
                    unstage_rows(&sc, &self.cfg, 1, sel.keep, &ss, s);
                }
            }
            let mut att = att;
            if self.plan.hadamard {
                hadamard::reference(&mut att, hp.head_dim)?;
            }
            let o = self.proj(&b("attn_output.weight"), &att, m)?;
            add::reference(&mut x, &o);
            let xn = rmsnorm::reference(&x, &model.vector(&b("ffn_norm.weight"))?, e, hp.rms_eps);
            let g = self.proj(&b("ffn_gate.weight"), &xn, m)?;
            let u = self.proj(&b("ffn_up.weight"), &xn, m)?;
            let a = silu_mul::reference(&g, &u);
            let d = self.proj(&b("ffn_down.weight"), &a, m)?;
            add::reference(&mut x, &d);
        }
        let xn = rmsnorm::reference(&x, &model.vector("output_norm.weight")?, e, hp.rms_eps);
        let logits = self.proj(model.output_name(), &xn, m)?;
        if oneshot {
            self.count_eviction(self.used + m);
        } else {
            self.used += m;
        }
        self.position += m;
        Ok(logits)
    }
}

/// The first `used` rows of each head of a cache laid out as `from`, in a buffer laid out
/// as `to` (more slots per head): NACL's staging copy.
fn stage_rows<T: Copy + Default>(
    from: &KvCacheConfig,
    to: &KvCacheConfig,
    width: usize,
    used: usize,
    cache: &[T],
) -> Vec<T> {
    let mut out = vec![T::default(); to.n_kv_heads * to.capacity * width];
    for h in 0..from.n_kv_heads {
        let (a, b) = (h * from.capacity * width, h * to.capacity * width);
        out[b..b + used * width].copy_from_slice(&cache[a..a + used * width]);
    }
    out
}

/// The first `keep` rows of each head of `staged` (laid out as `from`) back into `cache`
/// (laid out as `to`).
fn unstage_rows<T: Copy>(
    from: &KvCacheConfig,
    to: &KvCacheConfig,
    width: usize,
    keep: usize,
    staged: &[T],
    cache: &mut [T],
) {
    for h in 0..from.n_kv_heads {
        let (a, b) = (h * from.capacity * width, h * to.capacity * width);
        cache[b..b + keep * width].copy_from_slice(&staged[a..a + keep * width]);
    }
}
