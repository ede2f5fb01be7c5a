//! The GPU forward pass. [`GpuWeights`] uploads every matrix as its raw GGUF blocks
//! (split into binding-sized chunks where needed) and the small vectors as f32;
//! [`GpuForward`] owns a session's KV cache and scratch buffers, all allocated up front
//! for a chunk of `chunk` tokens. A call runs its tokens chunk by chunk, one command
//! submission per chunk: matrix-matrix kernels for chunks of several tokens, matvec for a
//! single token (decode), and one readback of the last token's logits.

use std::sync::Arc;

use kvedge_runtime::gpu::{GpuContext, GpuMatrix};
use kvedge_runtime::kernels::attention::Selection;
use kvedge_runtime::kernels::attn_score::{self, ScoreRange};
use kvedge_runtime::kernels::kv_gate::{self, GateBuffers, GateShape};
use kvedge_runtime::kernels::kv_select;
use kvedge_runtime::kernels::lowrank_rebuild::{self, RebuildShape};
use kvedge_runtime::kernels::{
    add, attention, embed, hadamard, kv_store, matmul, matvec, rmsnorm, rope, silu_mul,
};
use kvedge_runtime::kv::{
    KvCache, KvCacheConfig, KvOptions, KvPlan, KvPolicy, KvType, LayerView, TidalRole,
};
use kvedge_runtime::{wgpu, Error};

use super::LlamaModel;
use crate::lowrank::factor_names;
use crate::{MemoryReservation, ModelError};

struct GpuLayer {
    attn_norm: wgpu::Buffer, // [n_embd]
    wq: GpuMatrix,           // [n_heads * head_dim rows][n_embd]
    wk: Option<GpuMatrix>,   // [n_kv_heads * head_dim][n_embd]; None with latents
    wv: Option<GpuMatrix>,   // [n_kv_heads * head_dim][n_embd]; None with latents
    lowrank: Option<GpuLowRank>,
    bias: Option<[wgpu::Buffer; 3]>, // q, k, v biases (qwen2)
    wo: GpuMatrix,                   // [n_embd][n_heads * head_dim]
    ffn_norm: wgpu::Buffer,          // [n_embd]
    gate: GpuMatrix,                 // [n_ff][n_embd]
    up: GpuMatrix,                   // [n_ff][n_embd]
    down: GpuMatrix,                 // [n_embd][n_ff]
}

/// A layer's Palu factors (see `crate::lowrank`): the down-projections as matrices, the
/// up-projections as f32 for `lowrank_rebuild`.
struct GpuLowRank {
    k_down: GpuMatrix,  // [n_groups * r_k][n_embd]
    v_down: GpuMatrix,  // [n_groups * r_v][n_embd]
    k_up: wgpu::Buffer, // [n_kv_heads * head_dim][r_k]
    v_up: wgpu::Buffer, // [n_kv_heads * head_dim][r_v]
}

/// The model's weights on the GPU (immutable, shareable by sessions).
pub struct GpuWeights {
    embd: GpuMatrix,           // [n_vocab][n_embd]
    output: Option<GpuMatrix>, // [n_vocab][n_embd]; None when tied to embd
    output_norm: wgpu::Buffer, // [n_embd]
    layers: Vec<GpuLayer>,
}

impl GpuWeights {
    pub fn upload(ctx: &GpuContext, model: &LlamaModel) -> Result<Self, ModelError> {
        Self::upload_with_progress(ctx, model, &mut |_, _| {})
    }

    /// Upload, calling `progress(done, total)` after each layer.
    pub fn upload_with_progress(
        ctx: &GpuContext,
        model: &LlamaModel,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let f = &model.file;
        let matrix = |name: &str| -> Result<GpuMatrix, ModelError> {
            let t = f.tensor(name)?;
            Ok(GpuMatrix::upload(
                ctx,
                name,
                t.ty,
                t.n_cols() as usize,
                t.n_rows() as usize,
                f.tensor_data(t),
            )?)
        };
        let vector = |name: &str| -> Result<wgpu::Buffer, ModelError> {
            Ok(ctx.upload(name, &model.vector(name)?)?)
        };
        let lowrank = model.lowrank.is_some();
        let mut layers = Vec::with_capacity(model.hp.n_layers);
        for l in 0..model.hp.n_layers {
            let b = |n: &str| format!("blk.{l}.{n}");
            layers.push(GpuLayer {
                attn_norm: vector(&b("attn_norm.weight"))?,
                wq: matrix(&b("attn_q.weight"))?,
                wk: match lowrank {
                    true => None,
                    false => Some(matrix(&b("attn_k.weight"))?),
                },
                wv: match lowrank {
                    true => None,
                    false => Some(matrix(&b("attn_v.weight"))?),
                },
                lowrank: match lowrank {
                    true => {
                        let (kd, ku) = factor_names(l, false);
                        let (vd, vu) = factor_names(l, true);
                        Some(GpuLowRank {
                            k_down: matrix(&kd)?,
                            v_down: matrix(&vd)?,
                            k_up: vector(&ku)?,
                            v_up: vector(&vu)?,
                        })
                    }
                    false => None,
                },
                bias: if model.hp.arch.qkv_bias() {
                    Some([
                        vector(&b("attn_q.bias"))?,
                        vector(&b("attn_k.bias"))?,
                        vector(&b("attn_v.bias"))?,
                    ])
                } else {
                    None
                },
                wo: matrix(&b("attn_output.weight"))?,
                ffn_norm: vector(&b("ffn_norm.weight"))?,
                gate: matrix(&b("ffn_gate.weight"))?,
                up: matrix(&b("ffn_up.weight"))?,
                down: matrix(&b("ffn_down.weight"))?,
            });
            progress(l + 1, model.hp.n_layers + 1);
        }
        let out = Self {
            embd: matrix("token_embd.weight")?,
            output: if model.tied_output {
                None
            } else {
                Some(matrix("output.weight")?)
            },
            output_norm: vector("output_norm.weight")?,
            layers,
        };
        progress(model.hp.n_layers + 1, model.hp.n_layers + 1);
        Ok(out)
    }

    /// Bytes of all weights on the device.
    pub fn bytes(&self) -> u64 {
        let mut n = self.embd.bytes()
            + self.output.as_ref().map_or(0, |o| o.bytes())
            + self.output_norm.size();
        for l in &self.layers {
            n += l.attn_norm.size() + l.ffn_norm.size();
            n += [&l.wq, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .map(|m| m.bytes())
                .sum::<u64>();
            n += [&l.wk, &l.wv]
                .iter()
                .flat_map(|m| m.iter())
                .map(|m| m.bytes())
                .sum::<u64>();
            n += l.lowrank.as_ref().map_or(0, |f| {
                f.k_down.bytes() + f.v_down.bytes() + f.k_up.size() + f.v_up.size()
            });
            n += l
                .bias
                .as_ref()
                .map_or(0, |b| b.iter().map(|x| x.size()).sum());
        }
        n
    }
}

/// Activations for one chunk, allocated once.
struct Scratch {
    ids: wgpu::Buffer,    // [chunk] u32
    pos: wgpu::Buffer,    // [chunk] u32
    x: wgpu::Buffer,      // [chunk][n_embd] residual stream
    xn: wgpu::Buffer,     // [chunk][n_embd] normalized
    q: wgpu::Buffer,      // [chunk][n_heads * head_dim]
    k: wgpu::Buffer,      // [chunk][n_kv_heads * head_dim]
    v: wgpu::Buffer,      // [chunk][n_kv_heads * head_dim]
    att: wgpu::Buffer,    // [chunk][n_heads * head_dim]
    lse: wgpu::Buffer,    // [chunk][n_heads] attention log-sum-exp
    proj: wgpu::Buffer,   // [chunk][n_embd] output of Wo / Wdown
    gate: wgpu::Buffer,   // [chunk][n_ff]
    up: wgpu::Buffer,     // [chunk][n_ff]
    act: wgpu::Buffer,    // [chunk][n_ff] silu(gate) * up
    xlast: wgpu::Buffer,  // [n_embd] last token, normalized
    logits: wgpu::Buffer, // [n_vocab]
}

/// TidalDecode's per-step buffers: scores of every slot, selection scratch, and the
/// selected slots [n_kv_heads][k].
/// Attention-Gate's buffers (`kernels::kv_gate`): per layer the packed gate weights and
/// the ring of the last `window` tokens' gate keys and values, and one scratch for a
/// chunk's projections.
struct GpuGates {
    shape: GateShape,
    weights: Vec<wgpu::Buffer>,
    rings: Vec<wgpu::Buffer>,
    qkv: wgpu::Buffer,
}

struct TidalBuffers {
    score: wgpu::Buffer,
    mark: wgpu::Buffer,
    sel: wgpu::Buffer,
}

/// Which logits a chunk produces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logits {
    None,
    Last,
    /// Every token's, into `logits_all` (perplexity).
    All,
}

/// A session's Palu latent cache: per layer the K and V latents (groups of KV heads as
/// "heads" of the latent width, in the session's K/V storage types), each slot's position,
/// and one layer's f16 K and V that `lowrank_rebuild` fills before the layer's attention.
struct GpuLatents {
    cfgs: Vec<(KvCacheConfig, KvCacheConfig)>,
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
    /// [n_groups][capacity]: slot j holds position j (no eviction on this device yet).
    pos: wgpu::Buffer,
    /// The rebuilt layer's layout (all KV heads, f16) and its buffers.
    full: KvCacheConfig,
    scratch_k: wgpu::Buffer,
    scratch_v: wgpu::Buffer,
    /// This chunk's latents, [chunk][n_groups * rank].
    hk: wgpu::Buffer,
    hv: wgpu::Buffer,
}

/// A session's GPU state: KV cache and scratch, driven over shared weights.
pub struct GpuForward {
    ctx: Arc<GpuContext>,
    model: Arc<LlamaModel>,
    w: Arc<GpuWeights>,
    kv: KvCache,
    chunk: usize,
    s: Scratch,
    tidal: Option<TidalBuffers>,
    gates: Option<GpuGates>,
    latents: Option<GpuLatents>,
    /// [rows][n_vocab] logits of every token, allocated on first use by `forward_all`.
    logits_all: Option<(wgpu::Buffer, usize)>,
    /// This session's share of the model's GPU memory cap, released on drop.
    _memory: Option<MemoryReservation>,
}

impl GpuForward {
    /// Hold `r` (the bytes this session takes of a memory cap) as long as the session.
    pub fn hold_memory(&mut self, r: MemoryReservation) {
        self._memory = Some(r);
    }

    /// A session of up to `context` positions (unbounded when `kv` evicts), running
    /// prefill in chunks of at most `chunk` tokens.
    pub fn new(
        ctx: Arc<GpuContext>,
        model: Arc<LlamaModel>,
        w: Arc<GpuWeights>,
        context: usize,
        chunk: usize,
        kv: &KvOptions,
    ) -> Result<Self, ModelError> {
        let hp = &model.hp;
        if chunk == 0 || context == 0 {
            return Err(ModelError::Runtime(Error::InvalidArgument(
                "chunk and context must be positive".into(),
            )));
        }
        let mut plan = KvPlan::new(kv, model.kv_geometry(), context, chunk)?;
        let chunk = chunk.min(plan.max_chunk());
        let f = |name: &str, n: usize| ctx.storage_f32(name, n);
        let (kv, latents) = match &model.lowrank {
            None => (KvCache::new(&ctx, model.kv_geometry(), plan)?, None),
            Some(lr) => {
                if plan.evicts() {
                    return Err(ModelError::Runtime(Error::InvalidArgument(format!(
                        "Palu latents on the gpu device run with the full cache (policy full, \
                         optionally TidalDecode); policy '{}' over latents runs on the cpu device",
                        plan.policy.name()
                    ))));
                }
                // Rotating latents is folded into the factors (`kvedge compress --hadamard`).
                plan.hadamard = false;
                let full = KvCacheConfig {
                    k_type: KvType::F16,
                    v_type: KvType::F16,
                    ..plan.cache_config(model.kv_geometry())
                };
                let cap = full.capacity;
                let cfgs: Vec<_> = (0..hp.n_layers)
                    .map(|l| {
                        let at = |r: usize| KvCacheConfig {
                            n_layers: 1,
                            n_kv_heads: lr.n_groups,
                            head_dim: r,
                            k_type: plan.k_type,
                            v_type: plan.v_type,
                            capacity: cap,
                        };
                        (at(lr.k_ranks[l]), at(lr.v_ranks[l]))
                    })
                    .collect();
                for (kc, vc) in &cfgs {
                    for (ty, r) in [(kc.k_type, kc.head_dim), (vc.v_type, vc.head_dim)] {
                        if ty.blocks_slots() {
                            return Err(ModelError::Runtime(Error::InvalidArgument(
                                "KV type q4c is not available for Palu latents: store them \
                                 as f16, q8 or q4"
                                    .into(),
                            )));
                        }
                        if !ty.supports(r) {
                            return Err(ModelError::Runtime(Error::InvalidArgument(format!(
                                "KV type {} cannot store latent rank {r} (f16 needs it even, \
                                 q8/q4 a multiple of 32)",
                                ty.name()
                            ))));
                        }
                    }
                }
                if full.k_layer_words() as u64 * 4 > ctx.max_binding() {
                    return Err(ModelError::Runtime(Error::TooLarge {
                        what: format!("one layer's rebuilt K ({cap} slots)"),
                        bytes: full.k_layer_words() as u64 * 4,
                        limit: ctx.max_binding(),
                        limit_name: "max_storage_buffer_binding_size",
                    }));
                }
                let positions: Vec<u32> = (0..lr.n_groups).flat_map(|_| 0..cap as u32).collect();
                let max_r = |r: &[usize]| r.iter().copied().max().unwrap_or(0);
                let lat = GpuLatents {
                    k: cfgs
                        .iter()
                        .enumerate()
                        .map(|(l, (c, _))| f(&format!("kv.latent.k.{l}"), c.k_layer_words()))
                        .collect::<Result<_, _>>()?,
                    v: cfgs
                        .iter()
                        .enumerate()
                        .map(|(l, (_, c))| f(&format!("kv.latent.v.{l}"), c.v_layer_words()))
                        .collect::<Result<_, _>>()?,
                    cfgs,
                    pos: ctx.upload("kv.latent.pos", &positions)?,
                    full,
                    scratch_k: f("kv.rebuilt.k", full.k_layer_words())?,
                    scratch_v: f("kv.rebuilt.v", full.v_layer_words())?,
                    hk: f("latent.k", chunk * lr.n_groups * max_r(&lr.k_ranks))?,
                    hv: f("latent.v", chunk * lr.n_groups * max_r(&lr.v_ranks))?,
                };
                let kv_bytes: u64 = lat.k.iter().chain(&lat.v).map(|b| b.size()).sum();
                let aux = lat.pos.size() + lat.scratch_k.size() + lat.scratch_v.size();
                let kv = KvCache::counters(model.kv_geometry(), plan, kv_bytes, aux)?;
                (kv, Some(lat))
            }
        };
        let (e, qd, kvd) = (
            hp.n_embd,
            hp.n_heads * hp.head_dim,
            hp.n_kv_heads * hp.head_dim,
        );
        let s = Scratch {
            ids: f("ids", chunk)?,
            pos: f("pos", chunk)?,
            x: f("x", chunk * e)?,
            xn: f("xn", chunk * e)?,
            q: f("q", chunk * qd)?,
            k: f("k", chunk * kvd)?,
            v: f("v", chunk * kvd)?,
            att: f("att", chunk * qd)?,
            lse: f("lse", chunk * hp.n_heads)?,
            proj: f("proj", chunk * e)?,
            gate: f("gate", chunk * hp.n_ff)?,
            up: f("up", chunk * hp.n_ff)?,
            act: f("act", chunk * hp.n_ff)?,
            xlast: f("xlast", e)?,
            logits: f("logits", hp.n_vocab)?,
        };
        let gates = match (kv.plan.policy, &model.gates) {
            (KvPolicy::Gate, Some(g)) => Some(GpuGates {
                shape: g.shape,
                weights: g
                    .layers
                    .iter()
                    .map(|w| ctx.upload("gate.weights", &w.packed()))
                    .collect::<Result<_, _>>()?,
                rings: (0..hp.n_layers)
                    .map(|_| f("gate.ring", g.shape.ring_len()))
                    .collect::<Result<_, _>>()?,
                qkv: f("gate.qkv", chunk * 3 * g.shape.width())?,
            }),
            (KvPolicy::Gate, None) => {
                return Err(ModelError::Runtime(Error::InvalidArgument(
                    "KV policy 'gate' needs Attention-Gate gates: pass a gate file \
                     (--kv-gates FILE, from tools/train-gates) or a model that carries them"
                        .into(),
                )))
            }
            _ => None,
        };
        let tidal = match kv.plan.tidal {
            Some(t) => {
                let per_head = hp.n_kv_heads * kv.config.capacity;
                Some(TidalBuffers {
                    score: f("tidal.score", per_head)?,
                    mark: f("tidal.mark", per_head)?,
                    sel: f("tidal.sel", hp.n_kv_heads * t.k)?,
                })
            }
            None => None,
        };
        Ok(Self {
            ctx,
            model,
            w,
            kv,
            chunk,
            s,
            tidal,
            gates,
            latents,
            logits_all: None,
            _memory: None,
        })
    }

    pub fn device_name(&self) -> String {
        format!("GPU {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// The cache's statistics, naming the latents when the model has them.
    pub fn kv_stats(&self) -> kvedge_runtime::kv::KvStats {
        let mut st = self.kv.stats();
        if let Some(lr) = &self.model.lowrank {
            st.plan = format!("{}, Palu latents: {}", st.plan, lr.describe());
        }
        st
    }

    /// Forget the context (keeps the allocations).
    pub fn reset(&mut self) {
        self.kv.clear();
    }

    fn proj(
        &self,
        enc: &mut wgpu::CommandEncoder,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<(), Error> {
        if m == 1 {
            matvec::record(&self.ctx, enc, w, x, y)
        } else {
            matmul::record(&self.ctx, enc, w, x, m, y)
        }
    }

    /// The slots TidalDecode's last selection layer chose ([n_kv_heads][k]), for tests.
    pub fn tidal_selection(&self) -> Result<Option<Vec<u32>>, ModelError> {
        let (Some(t), Some(b)) = (self.kv.plan.tidal, &self.tidal) else {
            return Ok(None);
        };
        let words = self.ctx.read_f32(&b.sel, self.model.hp.n_kv_heads * t.k)?;
        Ok(Some(words.iter().map(|w| w.to_bits()).collect()))
    }

    /// Positions the session can reach: the context, or unbounded with eviction.
    pub fn capacity(&self) -> usize {
        if self.kv.plan.evicts() {
            u32::MAX as usize
        } else {
            self.kv.config.capacity
        }
    }

    fn check_fit(&self, tokens: &[u32]) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Runtime(Error::InvalidArgument(
                "no tokens to run".into(),
            )));
        }
        if !self.kv.plan.evicts() && tokens.len() > self.kv.free() {
            return Err(ModelError::Runtime(Error::InvalidArgument(format!(
                "{} tokens do not fit: the context holds {} and {} are used",
                tokens.len(),
                self.kv.config.capacity,
                self.kv.len()
            ))));
        }
        embed::check_ids(tokens, self.model.hp.n_vocab)?;
        Ok(())
    }

    /// Run `tokens` at the next positions and return the logits of the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.check_fit(tokens)?;
        let chunks: Vec<&[u32]> = tokens.chunks(self.chunk).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let mode = if ci + 1 == chunks.len() {
                Logits::Last
            } else {
                Logits::None
            };
            self.run_chunk(chunk, mode)?;
        }
        Ok(self.ctx.read_f32(&self.s.logits, self.model.hp.n_vocab)?)
    }

    /// Run `tokens` and return the logits of every one ([tokens.len()][n_vocab]), for
    /// perplexity. Chunks are cut so that a chunk's logits fit one binding.
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.check_fit(tokens)?;
        let vocab = self.model.hp.n_vocab;
        if self.logits_all.is_none() {
            let rows = ((self.ctx.max_binding() as usize / (vocab * 4)).min(self.chunk)).max(1);
            self.logits_all = Some((self.ctx.storage_f32("logits_all", rows * vocab)?, rows));
        }
        let rows = self.logits_all.as_ref().map_or(1, |l| l.1).min(self.chunk);
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        for chunk in tokens.chunks(rows) {
            self.run_chunk(chunk, Logits::All)?;
            if let Some((buf, _)) = &self.logits_all {
                out.extend(self.ctx.read_f32(buf, chunk.len() * vocab)?);
            }
        }
        Ok(out)
    }

    fn run_chunk(&mut self, tokens: &[u32], logits: Logits) -> Result<(), ModelError> {
        let m = tokens.len();
        // NACL evicts a chunk that overflows the budget after each layer's attention
        // (one-shot, through the staging area); the other policies make room before it.
        let oneshot = self.kv.plan.evicts_oneshot(self.kv.len(), m);
        if !oneshot && self.kv.needs_eviction(m) {
            let mut enc = self.ctx.encoder("evict");
            self.kv.evict(&self.ctx, &mut enc)?;
            self.ctx.queue.submit([enc.finish()]);
        }
        let (ctx, model, w, s) = (&*self.ctx, &*self.model, &*self.w, &self.s);
        let hp = &model.hp;
        let pos0 = self.kv.position();
        let n_past = self.kv.len();
        // NACL scores keys by the chunk's last tokens (proxy queries) and, in decode, adds
        // each generated token's attention; H2O adds every query's.
        let score_range = match self.kv.plan.policy {
            KvPolicy::H2o => Some((0, true)),
            KvPolicy::Nacl if m == 1 => Some((0, true)),
            KvPolicy::Nacl => Some((m - KvPlan::proxy_queries(m), false)),
            _ => None,
        };
        // TidalDecode applies to decode steps once the cache holds more than k slots.
        let tidal = match (self.kv.plan.tidal, &self.tidal) {
            (Some(t), Some(b)) if m == 1 && n_past + 1 > t.k => Some((t, b)),
            _ => None,
        };
        let positions: Vec<u32> = (pos0..pos0 + m).map(|p| p as u32).collect();
        ctx.queue
            .write_buffer(&s.ids, 0, bytemuck::cast_slice(tokens));
        ctx.queue
            .write_buffer(&s.pos, 0, bytemuck::cast_slice(&positions));
        let (e, qd, kvd) = (
            hp.n_embd,
            hp.n_heads * hp.head_dim,
            hp.n_kv_heads * hp.head_dim,
        );
        let rope_q = model.rope(hp.n_heads);
        let rope_k = model.rope(hp.n_kv_heads);
        let mut enc = ctx.encoder("forward");
        embed::record(ctx, &mut enc, &w.embd, &s.ids, m, &s.x)?;
        for (l, lw) in w.layers.iter().enumerate() {
            rmsnorm::record(ctx, &mut enc, &s.x, &lw.attn_norm, &s.xn, e, m, hp.rms_eps)?;
            self.proj(&mut enc, &lw.wq, &s.xn, &s.q, m)?;
            if let Some([bq, _, _]) = &lw.bias {
                add::record(ctx, &mut enc, &s.q, bq, m * qd, qd)?;
            }
            rope::record(ctx, &mut enc, &s.q, &s.pos, m, &rope_q)?;
            let rotate = self.kv.plan.hadamard;
            let view = if let (Some(lat), Some(f)) = (&self.latents, &lw.lowrank) {
                // Palu: store this chunk's latents, rebuild the layer's K and V from all
                // of them, attend over the rebuilt layer.
                let (kc, vc) = lat.cfgs[l];
                self.proj(&mut enc, &f.k_down, &s.xn, &lat.hk, m)?;
                self.proj(&mut enc, &f.v_down, &s.xn, &lat.hv, m)?;
                kv_store::record_split(
                    ctx,
                    &mut enc,
                    &kc,
                    vc.head_dim,
                    &lat.hk,
                    &lat.hv,
                    &lat.k[l],
                    &lat.v[l],
                    m,
                    n_past,
                )?;
                let (bk, bv) = match &lw.bias {
                    Some([_, bk, bv]) => (Some(bk), Some(bv)),
                    None => (None, None),
                };
                let kshape = RebuildShape {
                    latent: kc,
                    ty: kc.k_type,
                    full: lat.full,
                    rope: Some(model.rope(1)),
                };
                let vshape = RebuildShape {
                    latent: vc,
                    ty: vc.v_type,
                    rope: None,
                    ..kshape
                };
                let n = n_past + m;
                let (sk, sv) = (&lat.scratch_k, &lat.scratch_v);
                lowrank_rebuild::record(
                    ctx, &mut enc, &kshape, &lat.k[l], &f.k_up, bk, &lat.pos, sk, n,
                )?;
                lowrank_rebuild::record(
                    ctx, &mut enc, &vshape, &lat.v[l], &f.v_up, bv, &lat.pos, sv, n,
                )?;
                LayerView {
                    cfg: lat.full,
                    k: sk,
                    v: sv,
                    score: None,
                    k_pending: None,
                    v_pending: None,
                }
            } else {
                let missing = || Error::InvalidArgument("K/V projections not uploaded".into());
                self.proj(
                    &mut enc,
                    lw.wk.as_ref().ok_or_else(missing)?,
                    &s.xn,
                    &s.k,
                    m,
                )?;
                self.proj(
                    &mut enc,
                    lw.wv.as_ref().ok_or_else(missing)?,
                    &s.xn,
                    &s.v,
                    m,
                )?;
                if let Some([_, bk, bv]) = &lw.bias {
                    add::record(ctx, &mut enc, &s.k, bk, m * kvd, kvd)?;
                    add::record(ctx, &mut enc, &s.v, bv, m * kvd, kvd)?;
                }
                rope::record(ctx, &mut enc, &s.k, &s.pos, m, &rope_k)?;
                if rotate {
                    hadamard::record(ctx, &mut enc, &s.q, m * hp.n_heads, hp.head_dim)?;
                    hadamard::record(ctx, &mut enc, &s.k, m * hp.n_kv_heads, hp.head_dim)?;
                    hadamard::record(ctx, &mut enc, &s.v, m * hp.n_kv_heads, hp.head_dim)?;
                }
                let view = if oneshot {
                    self.kv.stage_layer(&mut enc, l, m)?
                } else {
                    self.kv.layer(l)
                };
                kv_store::record(
                    ctx, &mut enc, &view.cfg, &s.k, &s.v, view.k, view.v, m, n_past,
                )?;
                view.store_blocks(ctx, &mut enc, &s.k, &s.v, m, n_past)?;
                if let (Some(g), Some(score)) = (&self.gates, view.score) {
                    let bufs = GateBuffers {
                        weights: &g.weights[l],
                        ring: &g.rings[l],
                        qkv: &g.qkv,
                    };
                    let cap = view.cfg.capacity;
                    kv_gate::record(
                        ctx, &mut enc, &g.shape, &s.xn, &bufs, score, cap, m, pos0, n_past,
                    )?;
                }
                view
            };
            let cfg = &view.cfg;
            let role = tidal.map_or(TidalRole::Dense, |(t, _)| t.role(l));
            let selection = match (role, tidal) {
                (TidalRole::Sparse, Some((t, b))) => Some(Selection {
                    slots: &b.sel,
                    n_sel: t.k,
                }),
                _ => None,
            };
            attention::record(
                ctx,
                &mut enc,
                cfg,
                hp.n_heads,
                &s.q,
                view.k,
                view.v,
                &s.att,
                &s.lse,
                m,
                n_past,
                model.attn_scale(),
                selection.as_ref(),
            )?;
            if let (TidalRole::DenseAndSelect, Some((t, b))) = (role, tidal) {
                let r = ScoreRange {
                    n_heads: hp.n_heads,
                    n_tokens: 1,
                    n_past,
                    q0: 0,
                    accumulate: false,
                };
                attn_score::record(
                    ctx,
                    &mut enc,
                    cfg,
                    &r,
                    &s.q,
                    view.k,
                    &s.lse,
                    &b.score,
                    model.attn_scale(),
                )?;
                let plan = t.select(n_past + 1);
                kv_select::record(
                    ctx,
                    &mut enc,
                    cfg.n_kv_heads,
                    cfg.capacity,
                    &plan,
                    &b.score,
                    &b.mark,
                    &b.sel,
                )?;
            }
            let scored_here = role != TidalRole::Sparse;
            if let (Some((q0, accumulate)), Some(scores), true) =
                (score_range, view.score, scored_here)
            {
                let r = ScoreRange {
                    n_heads: hp.n_heads,
                    n_tokens: m,
                    n_past,
                    q0,
                    accumulate,
                };
                attn_score::record(
                    ctx,
                    &mut enc,
                    cfg,
                    &r,
                    &s.q,
                    view.k,
                    &s.lse,
                    scores,
                    model.attn_scale(),
                )?;
            }
            if oneshot {
                self.kv.unstage_layer(ctx, &mut enc, l, m)?;
            }
            if rotate {
                hadamard::record(ctx, &mut enc, &s.att, m * hp.n_heads, hp.head_dim)?;
            }
            self.proj(&mut enc, &lw.wo, &s.att, &s.proj, m)?;
            add::record(ctx, &mut enc, &s.x, &s.proj, m * e, m * e)?;
            rmsnorm::record(ctx, &mut enc, &s.x, &lw.ffn_norm, &s.xn, e, m, hp.rms_eps)?;
            self.proj(&mut enc, &lw.gate, &s.xn, &s.gate, m)?;
            self.proj(&mut enc, &lw.up, &s.xn, &s.up, m)?;
            silu_mul::record(ctx, &mut enc, &s.gate, &s.up, &s.act, m * hp.n_ff)?;
            self.proj(&mut enc, &lw.down, &s.act, &s.proj, m)?;
            add::record(ctx, &mut enc, &s.x, &s.proj, m * e, m * e)?;
        }
        let output = w.output.as_ref().unwrap_or(&w.embd);
        if let (Logits::All, Some((all, _))) = (logits, &self.logits_all) {
            rmsnorm::record(ctx, &mut enc, &s.x, &w.output_norm, &s.xn, e, m, hp.rms_eps)?;
            self.proj(&mut enc, output, &s.xn, all, m)?;
        }
        if logits == Logits::Last {
            let row = ((m - 1) * e * 4) as u64;
            enc.copy_buffer_to_buffer(&s.x, row, &s.xn, 0, (e * 4) as u64);
            rmsnorm::record(
                ctx,
                &mut enc,
                &s.xn,
                &w.output_norm,
                &s.xlast,
                e,
                1,
                hp.rms_eps,
            )?;
            matvec::record(
                ctx,
                &mut enc,
                w.output.as_ref().unwrap_or(&w.embd),
                &s.xlast,
                &s.logits,
            )?;
        }
        ctx.queue.submit([enc.finish()]);
        if oneshot {
            self.kv.finish_oneshot(m);
        } else {
            self.kv.advance(m)?;
        }
        Ok(())
    }
}
