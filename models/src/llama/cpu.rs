//! The reference forward pass on the CPU, built from the kernels' scalar references:
//! weights are read from the mapped file and dequantized when used; activations are f32
//! and never quantized (llama.cpp's CPU backend rounds them to 8 bits); the KV cache
//! holds the same encoded rows as the GPU's (f16, q8 or q4 words). Decode dots each
//! quantized row with the token directly (`quant::dot`); prefill dequantizes panels of
//! rows and multiplies them with the chunk through the `gemm` crate.
//! Projections are split by weight rows over a kept pool of threads (`cpu_pool`); attention and
//! the slot scores of H2O/NACL are computed together in f32 over threads
//! (`cpu_attention`, held to the f64 references by its tests), so long contexts run in
//! minutes rather than hours. Eviction follows the GPU cache's rules (`kv::KvPlan`) with
//! the kernels' CPU references for selection and compaction, so both devices drop the
//! same tokens.

use std::sync::Arc;

use super::cpu_attention::{self, ScoreSink};
use super::cpu_lowrank::{self, Latents};
use super::cpu_matmul::matmul_rows;
use kvedge_runtime::kernels::lowrank_rebuild::{self, RebuildShape};
use kvedge_runtime::kernels::{
    add, embed, hadamard, kv_compact, kv_gate, kv_select, kv_store, rmsnorm, rope, silu_mul,
};
use kvedge_runtime::kv::{
    KvBudget, KvCacheConfig, KvOptions, KvPlan, KvPolicy, KvStats, KvType, TidalRole,
};

use super::LlamaModel;
use crate::lowrank::factor_names;
use crate::ModelError;

/// Sees the normalized input of each layer's attention: (layer, [m][n_embd] rows, m).
/// `kvedge compress` gathers its calibration statistics through it.
pub type LayerObserver = Box<dyn FnMut(usize, &[f32], usize) + Send>;

/// Which logits a call computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logits {
    None,
    Last,
    All,
}

/// The reference forward pass with its own f16 KV cache.
pub struct CpuForward {
    model: Arc<LlamaModel>,
    cfg: KvCacheConfig,
    plan: KvPlan,
    /// Per layer, the layouts K and V are stored in: `cfg` itself, or with Palu latents
    /// the groups of KV heads as "heads" of the latent width (see `cpu_lowrank`).
    store: Vec<(KvCacheConfig, KvCacheConfig)>,
    kc: Vec<Vec<u32>>,
    vc: Vec<Vec<u32>>,
    /// Per layer, `q4c`'s pending values of K and V (empty for the other types).
    kp: Vec<Vec<f32>>,
    vp: Vec<Vec<f32>>,
    /// Palu latents' up-projections and slot positions, when the model has factors.
    latents: Option<Latents>,
    /// With latents, per layer [n_groups][capacity] original position of each slot.
    slot_pos: Vec<Vec<u32>>,
    /// Per layer [selection heads][capacity] running scores (score-based policies); the
    /// selection heads are the KV heads, or the latent groups.
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
    observer: Option<LayerObserver>,
    /// Attention-Gate: per layer, the ring of the last `window` tokens' gate keys and
    /// values (`kernels::kv_gate`); empty unless the policy is `gate`.
    gate_ring: Vec<Vec<f32>>,
    /// Gate flags over the threshold, and all flags, since the session began.
    gate_flags: (u64, u64),
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
        let mut kv = kv.clone();
        if let (Some(lr), Some(KvBudget::Bytes(b))) = (&model.lowrank, kv.budget) {
            // A byte budget buys latent slots: latents plus their positions.
            let per =
                lr.latent_bytes_per_token(kv.k_type, kv.v_type) + lr.position_bytes_per_token();
            kv.budget = Some(KvBudget::Tokens((b / per) as usize));
        }
        let mut plan = KvPlan::new(&kv, model.kv_geometry(), context, chunk)?;
        if model.lowrank.is_some() {
            // Keys are rebuilt into an f16 scratch; rotating latents is the compressor's
            // job (`kvedge compress --hadamard` folds it into the factors).
            plan.hadamard = false;
        }
        let cfg = plan.cache_config(model.kv_geometry());
        let latents = match &model.lowrank {
            Some(lr) => Some(Latents::new(&model, lr)?),
            None => None,
        };
        let store: Vec<_> = (0..hp.n_layers)
            .map(|l| {
                latents
                    .as_ref()
                    .map_or((cfg, cfg), |lt| lt.configs(l, &cfg))
            })
            .collect();
        for (k, v) in &store {
            for (ty, width) in [(k.k_type, k.head_dim), (v.v_type, v.head_dim)] {
                if latents.is_some() && ty.blocks_slots() {
                    return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                        "KV type q4c is not available for Palu latents: store them as f16, q8 or q4"
                            .into(),
                    )));
                }
                if !ty.supports(width) {
                    let what = if latents.is_some() {
                        "latent rank"
                    } else {
                        "head dim"
                    };
                    return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                        format!(
                            "KV type {} cannot store {what} {width} (f16 needs it even, q8/q4 a multiple of 32)",
                            ty.name(),
                        ),
                    )));
                }
            }
        }
        let gate_ring = match (plan.policy, &model.gates) {
            (KvPolicy::Gate, Some(g)) => vec![vec![0.0; g.shape.ring_len()]; hp.n_layers],
            (KvPolicy::Gate, None) => {
                return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                    "KV policy 'gate' needs Attention-Gate gates: pass a gate file \
                     (--kv-gates FILE, from tools/train-gates) or a model that carries them"
                        .into(),
                )))
            }
            _ => Vec::new(),
        };
        let sel_heads = store[0].0.n_kv_heads;
        let scores = if plan.policy.scores() {
            vec![vec![0.0; sel_heads * plan.slots]; hp.n_layers]
        } else {
            Vec::new()
        };
        Ok(Self {
            model,
            cfg,
            plan,
            kc: store
                .iter()
                .map(|(k, _)| vec![0; k.k_layer_words()])
                .collect(),
            vc: store
                .iter()
                .map(|(_, v)| vec![0; v.v_layer_words()])
                .collect(),
            kp: store
                .iter()
                .map(|(k, _)| vec![0.0; k.k_pending_words()])
                .collect(),
            vp: store
                .iter()
                .map(|(_, v)| vec![0.0; v.v_pending_words()])
                .collect(),
            slot_pos: match &latents {
                Some(lt) => vec![vec![0; lt.lr.n_groups * cfg.capacity]; hp.n_layers],
                None => Vec::new(),
            },
            store,
            latents,
            scores,
            used: 0,
            position: 0,
            evicted: 0,
            evictions: 0,
            chunk: chunk.min(plan.max_chunk()),
            tidal_sel: Vec::new(),
            observer: None,
            gate_ring,
            gate_flags: (0, 0),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Layer `layer`'s slot scores ([selection heads][capacity]: accumulated attention
    /// under H2O/NACL, the gates' scores under `gate`); None for the other policies.
    pub fn slot_scores(&self, layer: usize) -> Option<&[f32]> {
        self.scores.get(layer).map(|s| s.as_slice())
    }

    /// Call `obs` with each layer's normalized attention input from now on.
    pub fn set_observer(&mut self, obs: LayerObserver) {
        self.observer = Some(obs);
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
            plan: match &self.latents {
                Some(lt) => format!(
                    "{}, Palu latents: {}",
                    self.plan.describe(),
                    lt.lr.describe()
                ),
                None => self.plan.describe(),
            } + &match (&self.model.gates, self.gate_flags) {
                (Some(g), (kept, seen)) if seen > 0 && self.plan.policy == KvPolicy::Gate => {
                    format!(
                        ", {}; flags keep {:.1} % of tokens",
                        g.describe(),
                        100.0 * kept as f64 / seen as f64
                    )
                }
                _ => String::new(),
            },
            slots: self.cfg.capacity,
            used: self.used,
            evicted: self.evicted,
            evictions: self.evictions,
            kv_bytes: self.kv_bytes(),
            // Scores, the gates' rings, and the latents' positions.
            aux_bytes: self.scores.iter().map(|s| s.len() as u64 * 4).sum::<u64>()
                + self
                    .gate_ring
                    .iter()
                    .map(|r| r.len() as u64 * 4)
                    .sum::<u64>()
                + self
                    .slot_pos
                    .iter()
                    .map(|p| p.len() as u64 * 4)
                    .sum::<u64>(),
        }
    }

    /// Drop every layer down to `plan.keep` slots, as `KvCache::evict` does on the GPU.
    fn evict(&mut self) -> Result<(), ModelError> {
        let n = self.used;
        for l in 0..self.cfg.n_layers {
            let (kcfg, vcfg) = self.store[l];
            let nsel = kcfg.n_kv_heads;
            let sel = self.plan.select(n, l, self.evictions);
            let zeros;
            let score = match self.scores.get(l) {
                Some(s) => s,
                None => {
                    zeros = vec![0.0; nsel * self.cfg.capacity];
                    &zeros
                }
            };
            let kept = kv_select::reference(nsel, self.cfg.capacity, &sel, score)?;
            let (k, v) = (kcfg.k_type, vcfg.v_type);
            compact(&kcfg, k, sel.keep, &kept, &mut self.kc[l], &mut self.kp[l]);
            compact(&vcfg, v, sel.keep, &kept, &mut self.vc[l], &mut self.vp[l]);
            if let Some(s) = self.scores.get_mut(l) {
                kv_compact::reference(&kcfg, 1, sel.keep, &kept, s);
            }
            if let Some(p) = self.slot_pos.get_mut(l) {
                kv_compact::reference(&kcfg, 1, sel.keep, &kept, p);
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

    /// Bytes of the stored K and V (or latents) of every layer.
    pub fn kv_bytes(&self) -> u64 {
        4 * self
            .store
            .iter()
            .map(|(k, v)| {
                (k.k_layer_words() + v.v_layer_words() + k.k_pending_words() + v.v_pending_words())
                    as u64
            })
            .sum::<u64>()
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

    /// Run `tokens` at the next positions like [`Self::forward`], for the cache and the
    /// observer only: no output projection, no logits.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), ModelError> {
        self.run(tokens, Logits::None).map(|_| ())
    }

    /// Run `tokens` and return the logits of the last one ([n_vocab]): the output
    /// projection runs for that token only.
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.run(tokens, Logits::Last)
    }

    /// Run `tokens` at the next positions, chunk by chunk; returns the logits of every
    /// token ([tokens.len()][n_vocab]).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.run(tokens, Logits::All)
    }

    fn run(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, ModelError> {
        let m = tokens.len();
        if m == 0 || (!self.plan.evicts() && self.used + m > self.cfg.capacity) {
            return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
                format!(
                    "CPU forward: {m} tokens at position {} do not fit a context of {}",
                    self.used, self.cfg.capacity
                ),
            )));
        }
        let mut out = Vec::new();
        let n_chunks = m.div_ceil(self.chunk);
        for (i, chunk) in tokens.chunks(self.chunk).enumerate() {
            let oneshot = self.plan.evicts_oneshot(self.used, chunk.len());
            if !oneshot && self.plan.evicts() && self.used + chunk.len() > self.cfg.capacity {
                self.evict()?;
            }
            let want = match logits {
                Logits::Last if i + 1 < n_chunks => Logits::None,
                l => l,
            };
            out.extend(self.run_chunk(chunk, want)?);
        }
        Ok(out)
    }

    fn run_chunk(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, ModelError> {
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
            capacity: self.plan.staging_capacity(self.cfg.capacity),
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
            if let Some(obs) = self.observer.as_mut() {
                obs(l, &xn, m);
            }
            // Attention-Gate scores of the chunk's tokens ([m][n_kv_heads]).
            let gate_scores = match (self.gate_ring.get_mut(l), &model.gates) {
                (Some(ring), Some(g)) => Some(kv_gate::reference(
                    &g.shape,
                    &g.layers[l],
                    &xn,
                    m,
                    self.position,
                    ring,
                )?),
                _ => None,
            };
            let mut q = self.proj(&b("attn_q.weight"), &xn, m)?;
            if hp.arch.qkv_bias() {
                add::reference(&mut q, &model.vector(&b("attn_q.bias"))?);
            }
            rope::reference(&mut q, &pos, &model.rope(hp.n_heads))?;
            // K and V to store: the rotated projections, or the Palu latents.
            let (mut k, mut v) = if self.latents.is_some() {
                let (kd, vd) = (factor_names(l, false).0, factor_names(l, true).0);
                (self.proj(&kd, &xn, m)?, self.proj(&vd, &xn, m)?)
            } else {
                let mut k = self.proj(&b("attn_k.weight"), &xn, m)?;
                let mut v = self.proj(&b("attn_v.weight"), &xn, m)?;
                if hp.arch.qkv_bias() {
                    add::reference(&mut k, &model.vector(&b("attn_k.bias"))?);
                    add::reference(&mut v, &model.vector(&b("attn_v.bias"))?);
                }
                rope::reference(&mut k, &pos, &model.rope(hp.n_kv_heads))?;
                (k, v)
            };
            if self.plan.hadamard {
                hadamard::reference(&mut q, hp.head_dim)?;
                hadamard::reference(&mut k, hp.head_dim)?;
                hadamard::reference(&mut v, hp.head_dim)?;
            }
            let (kst, vst) = self.store[l];
            let staged = |c: KvCacheConfig| KvCacheConfig {
                capacity: stage_cfg.capacity,
                ..c
            };
            // NACL's one-shot eviction works in a staging copy of the layer (see gpu.rs).
            let (mut sk, mut sv, mut ss, mut sp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (cfg, kst, vst, kc, vc, layer_scores, slot_pos) = if oneshot {
                let (sc, used) = (stage_cfg, self.used);
                let (kd, vd) = (staged(kst), staged(vst));
                // A q4c block's parameters sit in all of its rows: whole blocks move.
                let (ku, vu) = (block_rows(kst.k_type, used), block_rows(vst.v_type, used));
                sk = stage_rows(&kst, &kd, kst.k_row_words(), ku, &self.kc[l]);
                sv = stage_rows(&vst, &vd, vst.v_row_words(), vu, &self.vc[l]);
                ss = vec![0.0f32; kst.n_kv_heads * sc.capacity];
                if let Some(p) = self.slot_pos.get(l) {
                    sp = stage_rows(&kst, &kd, 1, used, p);
                }
                let sp = self.latents.as_ref().map(|_| &mut sp);
                (sc, kd, vd, &mut sk, &mut sv, Some(&mut ss), sp)
            } else {
                (
                    self.cfg,
                    kst,
                    vst,
                    &mut self.kc[l],
                    &mut self.vc[l],
                    self.scores.get_mut(l),
                    self.slot_pos.get_mut(l),
                )
            };
            let (kp, vp) = (&mut self.kp[l], &mut self.vp[l]);
            store_rows(&kst, kst.k_type, &k, kc, kp, m, self.used);
            store_rows(&vst, vst.v_type, &v, vc, vp, m, self.used);
            let n_slots = self.used + m;
            // With latents, attention reads keys and values rebuilt into an f16 scratch and
            // scores per KV head, summed per group after.
            let (mut k_full, mut v_full);
            let mut head_scores = Vec::new();
            let (acfg, kread, vread): (KvCacheConfig, &[u32], &[u32]) =
                if let (Some(lt), Some(slot_pos)) = (&self.latents, slot_pos) {
                    for grp in 0..kst.n_kv_heads {
                        for i in 0..m {
                            slot_pos[grp * kst.capacity + self.used + i] = pos[i];
                        }
                    }
                    let acfg = KvCacheConfig {
                        k_type: KvType::F16,
                        v_type: KvType::F16,
                        ..cfg
                    };
                    k_full = vec![0u32; acfg.k_layer_words()];
                    v_full = vec![0u32; acfg.v_layer_words()];
                    let bias = |n: &str| -> Result<Option<Vec<f32>>, ModelError> {
                        Ok(if hp.arch.qkv_bias() {
                            Some(model.vector(&b(n))?)
                        } else {
                            None
                        })
                    };
                    let (kb, vb) = (bias("attn_k.bias")?, bias("attn_v.bias")?);
                    let kshape = RebuildShape {
                        latent: kst,
                        ty: kst.k_type,
                        full: acfg,
                        rope: Some(model.rope(1)),
                    };
                    let (up_k, up_v) = (lt.up(l, false), lt.up(l, true));
                    lowrank_rebuild::reference(
                        &kshape,
                        kc,
                        up_k,
                        kb.as_deref(),
                        slot_pos,
                        &mut k_full,
                        n_slots,
                        threads,
                    )?;
                    let vshape = RebuildShape {
                        latent: vst,
                        ty: vst.v_type,
                        rope: None,
                        ..kshape
                    };
                    lowrank_rebuild::reference(
                        &vshape,
                        vc,
                        up_v,
                        vb.as_deref(),
                        slot_pos,
                        &mut v_full,
                        n_slots,
                        threads,
                    )?;
                    head_scores = vec![0.0f32; acfg.n_kv_heads * acfg.capacity];
                    (acfg, &k_full, &v_full)
                } else {
                    (cfg, kc, vc)
                };
            // Where attention writes slot scores: the layer's, or per head for folding.
            let (mut layer_scores, group_scores) = if self.latents.is_some() {
                let fold = layer_scores;
                (fold.as_ref().map(|_| &mut head_scores), fold)
            } else {
                (layer_scores, None)
            };
            let cfg = acfg;
            let (kc, vc) = (kread, vread);
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
            if let (Some(groups), Some((_, accumulate))) = (group_scores, score_range) {
                let (nkv, cap) = (cfg.n_kv_heads, cfg.capacity);
                cpu_lowrank::fold_scores(
                    &head_scores,
                    groups,
                    nkv,
                    cap,
                    n_slots,
                    self.used,
                    accumulate,
                );
            }
            if oneshot {
                let (sc, nsel) = (stage_cfg, kst.n_kv_heads);
                let sel = self.plan.select(self.used + m, l, self.evictions);
                let kept = kv_select::reference(nsel, sc.capacity, &sel, &ss)?;
                let (kr, vr) = (kst.k_row_words(), vst.v_row_words());
                let (kty, vty) = (kst.k_type, vst.v_type);
                compact(&kst, kty, sel.keep, &kept, &mut sk, &mut self.kp[l]);
                compact(&vst, vty, sel.keep, &kept, &mut sv, &mut self.vp[l]);
                kv_compact::reference(&kst, 1, sel.keep, &kept, &mut ss);
                let (kt, vt) = self.store[l];
                let (kk, vk) = (block_rows(kty, sel.keep), block_rows(vty, sel.keep));
                unstage_rows(&kst, &kt, kr, kk, &sk, &mut self.kc[l]);
                unstage_rows(&vst, &vt, vr, vk, &sv, &mut self.vc[l]);
                if let Some(s) = self.scores.get_mut(l) {
                    unstage_rows(&kst, &kt, 1, sel.keep, &ss, s);
                }
                if let Some(p) = self.slot_pos.get_mut(l) {
                    kv_compact::reference(&kst, 1, sel.keep, &kept, &mut sp);
                    unstage_rows(&kst, &kt, 1, sel.keep, &sp, p);
                }
            }
            if let (Some(gs), Some(g)) = (&gate_scores, &model.gates) {
                self.gate_flags.0 += gs.iter().filter(|&&x| x > g.threshold).count() as u64;
                self.gate_flags.1 += gs.len() as u64;
                // Each stored slot's score is its gate's; a latent group takes its heads'
                // highest.
                let (cap, nkv) = (self.cfg.capacity, hp.n_kv_heads);
                let sel_heads = self.store[l].0.n_kv_heads;
                let per = nkv / sel_heads;
                let scores = &mut self.scores[l];
                for sh in 0..sel_heads {
                    for i in 0..m {
                        let row = &gs[i * nkv + sh * per..i * nkv + (sh + 1) * per];
                        scores[sh * cap + self.used + i] =
                            row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    }
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
        let logits = match logits {
            Logits::All => self.proj(model.output_name(), &xn, m)?,
            Logits::Last => self.proj(model.output_name(), &xn[(m - 1) * e..], 1)?,
            Logits::None => Vec::new(),
        };
        if oneshot {
            self.count_eviction(self.used + m);
        } else {
            self.used += m;
        }
        self.position += m;
        Ok(logits)
    }
}

/// Store `m` rows of `x` at slot `slot0` of each head, in `ty` (with `q4c`, re-encoding
/// the blocks touched from the pending values).
fn store_rows(
    cfg: &KvCacheConfig,
    ty: KvType,
    x: &[f32],
    cache: &mut [u32],
    pending: &mut [f32],
    m: usize,
    slot0: usize,
) {
    if ty.blocks_slots() {
        kv_store::reference_q4c(cfg, cfg.head_dim, x, cache, pending, m, slot0);
    } else {
        kv_store::reference(cfg, ty, x, cache, m, slot0);
    }
}

/// Gather the `keep` kept slots per head to the front (with `q4c`, decoded and encoded
/// again, see `kv_compact::reference_q4c`).
fn compact(
    cfg: &KvCacheConfig,
    ty: KvType,
    keep: usize,
    kept: &[u32],
    cache: &mut [u32],
    pending: &mut [f32],
) {
    let width = ty.row_words(cfg.head_dim);
    if ty.blocks_slots() {
        kv_compact::reference_q4c(cfg, cfg.head_dim, keep, kept, cache, pending);
    } else {
        kv_compact::reference(cfg, width, keep, kept, cache);
    }
}

/// Rows to move so that `n` slots arrive whole: a q4c block's parameters sit in every row
/// of the block, so its rows move as a block.
fn block_rows(ty: KvType, n: usize) -> usize {
    if ty.blocks_slots() {
        n.next_multiple_of(kvedge_runtime::kv::Q4C_SLOTS)
    } else {
        n
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
