//! A preallocated KV cache on the GPU. Per layer, one K and one V buffer laid out
//! [kv_head][slot][row], `capacity` slots per head, each row one token's head_dim values
//! in the storage type of K or V (`kv::format`: f16, q8, q4), written in place by
//! `kernels::kv_store`; nothing grows by concatenation.
//!
//! Slots and positions are counted apart: `used` slots hold tokens, `position` tokens have
//! been seen. They differ once an eviction policy has dropped tokens: [`KvCache::evict`]
//! records, per layer, a GPU selection of the slots to keep (`kernels::kv_select`, by the
//! running scores the score-based policies keep here) and a gather of them to the front
//! of a spare buffer (`kernels::kv_compact`), then swaps the spare in. Kept slots stay in
//! order, so attention remains causal by slot, and every KV head keeps the same count.
//!
//! NACL's one-shot eviction (`kv::config`) runs per layer inside the forward pass: the
//! layer's slots are copied into a staging buffer of `slots + oneshot` slots per head
//! ([`KvCache::stage_layer`]), the chunk is stored and attended there, and the kept slots
//! are gathered back into the layer ([`KvCache::unstage_layer`]). One staging buffer
//! serves every layer in turn, so the cache never holds more than the budget.

use crate::gpu::GpuContext;
use crate::kernels::kv_q4c::{self, Q4cBuffers};
use crate::kernels::{kv_compact, kv_select};
use crate::kv::{KvGeometry, KvPlan, KvType, Q4C_SLOTS};
use crate::{Error, Result};

/// Geometry of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Slots per layer and KV head.
    pub capacity: usize,
    pub k_type: KvType,
    pub v_type: KvType,
}

impl KvCacheConfig {
    /// An f16 cache of this shape.
    pub fn f16(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        Self {
            n_layers,
            n_kv_heads,
            head_dim,
            capacity,
            k_type: KvType::F16,
            v_type: KvType::F16,
        }
    }

    /// u32 words of one K row (one token of one head).
    pub fn k_row_words(&self) -> usize {
        self.k_type.row_words(self.head_dim)
    }

    pub fn v_row_words(&self) -> usize {
        self.v_type.row_words(self.head_dim)
    }

    /// Words of one layer's K buffer.
    pub fn k_layer_words(&self) -> usize {
        self.n_kv_heads * self.capacity * self.k_row_words()
    }

    pub fn v_layer_words(&self) -> usize {
        self.n_kv_heads * self.capacity * self.v_row_words()
    }

    /// Words of one layer's pending K values: with `q4c`, the f32 values of each head's
    /// block still filling ([n_kv_heads][32][head_dim]), which the store re-encodes from.
    pub fn k_pending_words(&self) -> usize {
        pending_words(self.k_type, self.n_kv_heads, self.head_dim)
    }

    pub fn v_pending_words(&self) -> usize {
        pending_words(self.v_type, self.n_kv_heads, self.head_dim)
    }

    /// Exact bytes of the whole cache (K and V of every layer, with `q4c`'s pending
    /// values).
    pub fn total_bytes(&self) -> u64 {
        let per_layer = self.k_layer_words()
            + self.v_layer_words()
            + self.k_pending_words()
            + self.v_pending_words();
        4 * self.n_layers as u64 * per_layer as u64
    }

    pub fn geometry(&self) -> KvGeometry {
        KvGeometry {
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

fn pending_words(ty: KvType, n_kv_heads: usize, width: usize) -> usize {
    if ty.blocks_slots() {
        n_kv_heads * Q4C_SLOTS * width
    } else {
        0
    }
}

/// What a cache holds and has dropped, for `Session::stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// "full 4096 slots", "h2o budget 1638 slots (evicts to 1434), 4 sinks".
    pub plan: String,
    /// Slots allocated per layer and KV head.
    pub slots: usize,
    /// Slots holding tokens.
    pub used: usize,
    /// Tokens dropped per layer and KV head since the session began.
    pub evicted: u64,
    /// Eviction passes.
    pub evictions: u64,
    /// Exact bytes of K and V on the device.
    pub kv_bytes: u64,
    /// Bytes of the eviction machinery (spare buffers, scores, selection scratch).
    pub aux_bytes: u64,
}

/// Buffers only a cache that evicts needs.
#[derive(Debug)]
struct Eviction {
    /// Per layer [n_kv_heads][capacity] f32 running scores (score-based policies).
    scores: Vec<wgpu::Buffer>,
    /// Spare K, V (and score) buffers the compaction gathers into.
    spare_k: wgpu::Buffer,
    spare_v: wgpu::Buffer,
    spare_s: Option<wgpu::Buffer>,
    /// Selection scratch and result.
    mark: wgpu::Buffer,
    kept: wgpu::Buffer,
}

/// NACL's one-shot staging area: one layer's K, V and proxy scores at `cfg.capacity` =
/// `slots + oneshot` slots per head (the selection scratch is the eviction's, sized for it).
#[derive(Debug)]
struct Staging {
    cfg: KvCacheConfig,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    score: wgpu::Buffer,
}

/// One layer's buffers as a kernel reads them: the cache's own, or the staging area.
pub struct LayerView<'a> {
    pub cfg: KvCacheConfig,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    /// Running (or proxy) scores, for the score-based policies.
    pub score: Option<&'a wgpu::Buffer>,
    /// `q4c`'s pending values of K and V (the layer's own, also behind the staging area).
    pub k_pending: Option<&'a wgpu::Buffer>,
    pub v_pending: Option<&'a wgpu::Buffer>,
}

impl LayerView<'_> {
    /// Record the block writes of the `q4c` buffers for `n` tokens of `k` and `v`
    /// ([n][n_kv_heads][head_dim] f32) at slot `slot0`, after `kernels::kv_store` has
    /// written the other types' rows (it leaves q4c rows alone).
    pub fn store_blocks(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        n: usize,
        slot0: usize,
    ) -> Result<()> {
        let hd = self.cfg.head_dim;
        for (src, cache, pending) in [(k, self.k, self.k_pending), (v, self.v, self.v_pending)] {
            if let Some(pending) = pending {
                let dst = Q4cBuffers { cache, pending };
                kv_q4c::record_store(ctx, enc, &self.cfg, hd, src, &dst, n, slot0)?;
            }
        }
        Ok(())
    }
}

/// The cache: K and V buffers per layer, slot and position counters.
#[derive(Debug)]
pub struct KvCache {
    pub config: KvCacheConfig,
    pub plan: KvPlan,
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    /// Per layer, `q4c`'s pending values of K and of V (empty for the other types).
    k_pending: Vec<wgpu::Buffer>,
    v_pending: Vec<wgpu::Buffer>,
    ev: Option<Eviction>,
    staging: Option<Staging>,
    used: usize,
    position: usize,
    evicted: u64,
    evictions: u64,
    /// For [`KvCache::counters`]: the (K/V, auxiliary) bytes its owner stores instead.
    external: Option<(u64, u64)>,
}

impl KvCache {
    /// Slot and position counters for `plan` without buffers, for a forward pass that
    /// stores K and V its own way (Palu latents: `kv_bytes` of latents and `aux_bytes`
    /// of positions and scratch, which the stats report). Its `layer` views are empty;
    /// it cannot evict.
    pub fn counters(geom: KvGeometry, plan: KvPlan, kv_bytes: u64, aux_bytes: u64) -> Result<Self> {
        if plan.evicts() || plan.oneshot > 0 {
            return Err(Error::InvalidArgument(
                "a KV cache without buffers cannot evict".into(),
            ));
        }
        Ok(Self {
            config: plan.cache_config(geom),
            plan,
            k: Vec::new(),
            v: Vec::new(),
            k_pending: Vec::new(),
            v_pending: Vec::new(),
            ev: None,
            staging: None,
            used: 0,
            position: 0,
            evicted: 0,
            evictions: 0,
            external: Some((kv_bytes, aux_bytes)),
        })
    }

    /// A cache of `plan.slots` slots per layer and KV head.
    pub fn new(ctx: &GpuContext, geom: KvGeometry, plan: KvPlan) -> Result<Self> {
        let config = plan.cache_config(geom);
        if config.capacity == 0 || config.n_kv_heads == 0 {
            return Err(Error::InvalidArgument(format!(
                "KV cache needs non-zero heads and capacity, got {config:?}"
            )));
        }
        for ty in [config.k_type, config.v_type] {
            if !ty.supports(config.head_dim) {
                return Err(Error::InvalidArgument(format!(
                    "KV type {} cannot store head dim {} (f16 needs it even, q8/q4 a multiple of 32)",
                    ty.name(),
                    config.head_dim
                )));
            }
        }
        let stage_cfg = KvCacheConfig {
            capacity: plan.staging_capacity(config.capacity),
            ..config
        };
        let words = stage_cfg.k_layer_words().max(stage_cfg.v_layer_words());
        let bytes = words as u64 * 4;
        if bytes > ctx.max_binding() {
            let what = if plan.oneshot > 0 {
                format!(
                    "one layer of the KV cache with NACL's one-shot staging ({} slots + a chunk of {})",
                    config.capacity, plan.oneshot
                )
            } else {
                format!("one layer of the KV cache ({} slots)", config.capacity)
            };
            return Err(Error::TooLarge {
                what,
                bytes,
                limit: ctx.max_binding(),
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let make = |name: &str, words: usize| {
            (0..config.n_layers)
                .map(|i| ctx.storage_f32(&format!("kv.{name}.{i}"), words))
                .collect::<Result<Vec<_>>>()
        };
        let per_head = config.n_kv_heads * config.capacity;
        let stage_per_head = stage_cfg.n_kv_heads * stage_cfg.capacity;
        let ev = if plan.evicts() {
            let scored = plan.policy.scores();
            Some(Eviction {
                scores: if scored {
                    (0..config.n_layers)
                        .map(|i| ctx.storage_f32(&format!("kv.score.{i}"), per_head))
                        .collect::<Result<Vec<_>>>()?
                } else {
                    Vec::new()
                },
                spare_k: ctx.storage_f32("kv.spare.k", config.k_layer_words())?,
                spare_v: ctx.storage_f32("kv.spare.v", config.v_layer_words())?,
                spare_s: if scored {
                    Some(ctx.storage_f32("kv.spare.score", per_head)?)
                } else {
                    None
                },
                // Selection scratch, for the cache or for the larger staging area.
                mark: ctx.storage_f32("kv.mark", stage_per_head)?,
                kept: ctx.storage_f32("kv.kept", stage_per_head)?,
            })
        } else {
            None
        };
        let staging = if plan.oneshot > 0 {
            Some(Staging {
                cfg: stage_cfg,
                k: ctx.storage_f32("kv.stage.k", stage_cfg.k_layer_words())?,
                v: ctx.storage_f32("kv.stage.v", stage_cfg.v_layer_words())?,
                score: ctx.storage_f32("kv.stage.score", stage_per_head)?,
            })
        } else {
            None
        };
        let pending = |name: &str, words: usize| {
            if words == 0 {
                Ok(Vec::new())
            } else {
                make(name, words)
            }
        };
        Ok(Self {
            k: make("k", config.k_layer_words())?,
            v: make("v", config.v_layer_words())?,
            k_pending: pending("k.pending", config.k_pending_words())?,
            v_pending: pending("v.pending", config.v_pending_words())?,
            ev,
            staging,
            config,
            plan,
            used: 0,
            position: 0,
            evicted: 0,
            evictions: 0,
            external: None,
        })
    }

    /// Slots holding tokens.
    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Tokens seen (the position of the next one).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Slots left.
    pub fn free(&self) -> usize {
        self.config.capacity - self.used
    }

    /// The running scores of `layer`, for the score-based policies.
    pub fn scores(&self, layer: usize) -> Option<&wgpu::Buffer> {
        self.ev.as_ref().and_then(|e| e.scores.get(layer))
    }

    /// Record that `n` more tokens were written (after every layer stored them).
    pub fn advance(&mut self, n: usize) -> Result<()> {
        if n > self.free() {
            return Err(Error::InvalidArgument(format!(
                "KV cache full: {} of {} slots used, {n} more requested",
                self.used, self.config.capacity
            )));
        }
        self.used += n;
        self.position += n;
        Ok(())
    }

    /// Whether `n` more tokens need an eviction first.
    pub fn needs_eviction(&self, n: usize) -> bool {
        self.ev.is_some() && self.used + n > self.config.capacity && self.used > self.plan.keep
    }

    /// Record an eviction of every layer down to `plan.keep` slots. The caller submits
    /// the encoder before it records anything that reads the cache buffers again.
    pub fn evict(&mut self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder) -> Result<()> {
        let Some(ev) = self.ev.as_mut() else {
            return Err(Error::InvalidArgument(
                "this KV cache has no eviction policy".into(),
            ));
        };
        let (cfg, n) = (self.config, self.used);
        for l in 0..cfg.n_layers {
            let sel = self.plan.select(n, l, self.evictions);
            // Window selects no slot by score, so any buffer large enough stands in.
            let score = ev.scores.get(l).unwrap_or(&ev.spare_v);
            kv_select::record(
                ctx,
                enc,
                cfg.n_kv_heads,
                cfg.capacity,
                &sel,
                score,
                &ev.mark,
                &ev.kept,
            )?;
            let src = kv_compact::LayerBuffers {
                k: &self.k[l],
                v: &self.v[l],
                score: ev.scores.get(l),
            };
            let dst = kv_compact::LayerBuffers {
                k: &ev.spare_k,
                v: &ev.spare_v,
                score: ev.spare_s.as_ref(),
            };
            kv_compact::record(ctx, enc, &cfg, cfg.capacity, sel.keep, &ev.kept, &src, &dst)?;
            let (k_pending, v_pending) = (self.k_pending.get(l), self.v_pending.get(l));
            for (from, to, pending) in [
                (&self.k[l], &ev.spare_k, k_pending),
                (&self.v[l], &ev.spare_v, v_pending),
            ] {
                if let Some(pending) = pending {
                    let dst = Q4cBuffers { cache: to, pending };
                    let (hd, cap, keep) = (cfg.head_dim, cfg.capacity, sel.keep);
                    kv_q4c::record_compact(ctx, enc, &cfg, hd, cap, keep, &ev.kept, from, &dst)?;
                }
            }
            std::mem::swap(&mut self.k[l], &mut ev.spare_k);
            std::mem::swap(&mut self.v[l], &mut ev.spare_v);
            if let (Some(s), Some(spare)) = (ev.scores.get_mut(l), ev.spare_s.as_mut()) {
                std::mem::swap(s, spare);
            }
        }
        self.count_eviction(n);
        Ok(())
    }

    /// Layer `l` as the forward pass reads it.
    pub fn layer(&self, l: usize) -> LayerView<'_> {
        LayerView {
            cfg: self.config,
            k: &self.k[l],
            v: &self.v[l],
            score: self.scores(l),
            k_pending: self.k_pending.get(l),
            v_pending: self.v_pending.get(l),
        }
    }

    /// Record the copy of layer `l`'s slots in use into the staging area, for a one-shot
    /// eviction (`plan.evicts_oneshot`), and return the staging area: the chunk is stored
    /// at slot `len()` there, attended and scored, then [`Self::unstage_layer`] keeps
    /// what the policy selects.
    pub fn stage_layer(
        &self,
        enc: &mut wgpu::CommandEncoder,
        l: usize,
        m: usize,
    ) -> Result<LayerView<'_>> {
        let Some(st) = self.staging.as_ref() else {
            return Err(Error::InvalidArgument(
                "this KV cache has no one-shot eviction (NACL only)".into(),
            ));
        };
        if m > self.plan.oneshot {
            return Err(Error::InvalidArgument(format!(
                "one-shot eviction of {m} tokens: the staging area takes at most {}",
                self.plan.oneshot
            )));
        }
        let (cfg, cap, used) = (self.config, st.cfg.capacity, self.used);
        let pairs = [
            (&self.k[l], &st.k, cfg.k_row_words(), cfg.k_type),
            (&self.v[l], &st.v, cfg.v_row_words(), cfg.v_type),
        ];
        for (src, dst, row, ty) in pairs.into_iter().filter(|_| used > 0) {
            let row = 4 * row as u64;
            // A q4c block's (step, minimum) pairs sit in all of its rows: whole blocks.
            let rows = if ty.blocks_slots() {
                used.next_multiple_of(Q4C_SLOTS)
            } else {
                used
            } as u64;
            for h in 0..cfg.n_kv_heads as u64 {
                let (from, to) = (h * cfg.capacity as u64 * row, h * cap as u64 * row);
                enc.copy_buffer_to_buffer(src, from, dst, to, rows * row);
            }
        }
        Ok(LayerView {
            cfg: st.cfg,
            k: &st.k,
            v: &st.v,
            score: Some(&st.score),
            k_pending: self.k_pending.get(l),
            v_pending: self.v_pending.get(l),
        })
    }

    /// Record the selection of layer `l`'s slots to keep out of the `len() + m` in the
    /// staging area (scored there by the chunk's proxy queries) and their gather into the
    /// layer, with their scores. Call [`Self::finish_oneshot`] after every layer.
    pub fn unstage_layer(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        l: usize,
        m: usize,
    ) -> Result<()> {
        let (Some(st), Some(ev)) = (self.staging.as_ref(), self.ev.as_ref()) else {
            return Err(Error::InvalidArgument(
                "this KV cache has no one-shot eviction (NACL only)".into(),
            ));
        };
        let n = self.used + m;
        let sel = self.plan.select(n, l, self.evictions);
        let cap = st.cfg.capacity;
        let nkv = self.config.n_kv_heads;
        kv_select::record(ctx, enc, nkv, cap, &sel, &st.score, &ev.mark, &ev.kept)?;
        let src = kv_compact::LayerBuffers {
            k: &st.k,
            v: &st.v,
            score: Some(&st.score),
        };
        let dst = kv_compact::LayerBuffers {
            k: &self.k[l],
            v: &self.v[l],
            score: ev.scores.get(l),
        };
        kv_compact::record(ctx, enc, &self.config, cap, sel.keep, &ev.kept, &src, &dst)?;
        let pairs = [
            (&st.k, &self.k[l], self.k_pending.get(l)),
            (&st.v, &self.v[l], self.v_pending.get(l)),
        ];
        for (from, to, pending) in pairs {
            if let Some(pending) = pending {
                let dst = Q4cBuffers { cache: to, pending };
                let (cfg, hd) = (&self.config, self.config.head_dim);
                kv_q4c::record_compact(ctx, enc, cfg, hd, cap, sel.keep, &ev.kept, from, &dst)?;
            }
        }
        Ok(())
    }

    /// Count a one-shot eviction of a chunk of `m` tokens in every layer.
    pub fn finish_oneshot(&mut self, m: usize) {
        self.count_eviction(self.used + m);
        self.position += m;
    }

    /// Count an eviction of every layer from `n` slots in use down to `plan.keep`.
    fn count_eviction(&mut self, n: usize) {
        let keep = self.plan.keep.min(n);
        self.evicted += (n - keep) as u64;
        self.evictions += 1;
        self.used = keep;
    }

    /// Forget everything (the buffers are kept).
    pub fn clear(&mut self) {
        self.used = 0;
        self.position = 0;
    }

    /// Exact bytes of K and V on the device.
    pub fn kv_bytes(&self) -> u64 {
        self.external.map_or(self.config.total_bytes(), |e| e.0)
    }

    pub fn stats(&self) -> KvStats {
        let aux = self.ev.as_ref().map_or(0, |e| {
            e.scores.iter().map(|b| b.size()).sum::<u64>()
                + e.spare_k.size()
                + e.spare_v.size()
                + e.spare_s.as_ref().map_or(0, |b| b.size())
                + e.mark.size()
                + e.kept.size()
        }) + self
            .staging
            .as_ref()
            .map_or(0, |st| st.k.size() + st.v.size() + st.score.size())
            + self.external.map_or(0, |e| e.1);
        KvStats {
            plan: self.plan.describe(),
            slots: self.config.capacity,
            used: self.used,
            evicted: self.evicted,
            evictions: self.evictions,
            kv_bytes: self.kv_bytes(),
            aux_bytes: aux,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::kernels::{attention, kv_store};
    use crate::kv::{KvBudget, KvOptions, KvPolicy};
    use crate::rng::SplitMix64;

    fn read_words(ctx: &GpuContext, b: &wgpu::Buffer, n: usize) -> Vec<u32> {
        ctx.read_f32(b, n)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// Fill a cache past its budget with random K/V, evict on the GPU, and check the
    /// invariants: the budget holds, sinks stay in the first slots, and for `window`
    /// attention over the compacted cache equals dense attention over the original cache
    /// under a sink+window mask.
    fn evict_and_check(policy: KvPolicy, kt: KvType, vt: KvType) {
        let Some(ctx) = test_context() else { return };
        let geom = KvGeometry {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let opts = KvOptions {
            budget: Some(KvBudget::Tokens(80)),
            policy,
            sinks: 4,
            seed: 3,
            k_type: kt,
            v_type: vt,
            hadamard: Some(false),
            tidal: None,
            pool: None,
            recent_pct: None,
        };
        let plan = KvPlan::new(&opts, geom, 1 << 20, 512).unwrap();
        let mut cache = KvCache::new(ctx, geom, plan).unwrap();
        let cfg = cache.config;
        let n = cfg.capacity; // fill every slot
        let mut rng = SplitMix64::new(test_seed(policy as u64 + 500));
        let width = cfg.n_kv_heads * cfg.head_dim;
        let (k, v) = (
            rng.vec_f32(n * width, -1.0, 1.0),
            rng.vec_f32(n * width, -1.0, 1.0),
        );
        // The rows as the CPU encodes them, written straight into every layer.
        let mut full_k = vec![0u32; cfg.k_layer_words()];
        let mut full_v = vec![0u32; cfg.v_layer_words()];
        kv_store::reference(&cfg, kt, &k, &mut full_k, n, 0);
        kv_store::reference(&cfg, vt, &v, &mut full_v, n, 0);
        if let Some(s) = cache.scores(0) {
            let scores = rng.vec_f32(cfg.n_kv_heads * n, 0.0, 1.0);
            ctx.queue.write_buffer(s, 0, bytemuck::cast_slice(&scores));
        }
        for l in 0..cfg.n_layers {
            ctx.queue
                .write_buffer(&cache.k[l], 0, bytemuck::cast_slice(&full_k));
            ctx.queue
                .write_buffer(&cache.v[l], 0, bytemuck::cast_slice(&full_v));
        }
        ctx.wait().unwrap();
        cache.advance(n).unwrap();
        assert!(cache.needs_eviction(1));
        let mut enc = ctx.encoder("evict");
        cache.evict(ctx, &mut enc).unwrap();
        ctx.submit_wait(enc).unwrap();
        let keep = plan.keep;
        assert_eq!(cache.len(), keep);
        assert_eq!(cache.position(), n, "positions are not rewound");
        assert_eq!(cache.stats().evicted, (n - keep) as u64);

        let got_k = read_words(ctx, &cache.k[0], full_k.len());
        let (hd, kr, vr) = (cfg.head_dim, cfg.k_row_words(), cfg.v_row_words());
        for h in 0..cfg.n_kv_heads {
            let base = h * cfg.capacity * kr;
            assert_eq!(
                got_k[base..base + 4 * kr],
                full_k[base..base + 4 * kr],
                "{policy:?}: sinks kept in place"
            );
        }
        if policy != KvPolicy::Window {
            return;
        }
        // Dense attention over the original cache restricted to sinks + the last slots.
        let recent = keep - 4;
        let slots: Vec<usize> = (0..4).chain(n - recent..n).collect();
        let mut mk = vec![0u32; full_k.len()];
        let mut mv = vec![0u32; full_v.len()];
        for h in 0..cfg.n_kv_heads {
            for (i, &j) in slots.iter().enumerate() {
                let (d, s) = (h * cfg.capacity + i, h * cfg.capacity + j);
                mk[d * kr..(d + 1) * kr].copy_from_slice(&full_k[s * kr..(s + 1) * kr]);
                mv[d * vr..(d + 1) * vr].copy_from_slice(&full_v[s * vr..(s + 1) * vr]);
            }
        }
        let n_heads = 6;
        let q = rng.vec_f32(n_heads * hd, -1.0, 1.0);
        let scale = 0.125;
        let want = attention::reference(&cfg, n_heads, &q, &mk, &mv, 1, keep - 1, scale).unwrap();
        // The GPU cache after eviction, attended by the same query at slot keep - 1.
        let gq = ctx.upload("q", &q).unwrap();
        let out = ctx.storage_f32("out", q.len()).unwrap();
        let lse = ctx.storage_f32("lse", n_heads).unwrap();
        let mut enc = ctx.encoder("attend");
        attention::record(
            ctx,
            &mut enc,
            &cfg,
            n_heads,
            &gq,
            &cache.k[0],
            &cache.v[0],
            &out,
            &lse,
            1,
            keep - 1,
            scale,
            None,
        )
        .unwrap();
        ctx.submit_wait(enc).unwrap();
        let got = ctx.read_f32(&out, q.len()).unwrap();
        assert_close("window eviction vs sink+window mask", &got, &want, 1e-5);
    }

    #[test]
    fn window_eviction_equals_a_sink_window_mask() {
        evict_and_check(KvPolicy::Window, KvType::F16, KvType::F16);
        evict_and_check(KvPolicy::Window, KvType::Q8, KvType::Q4);
    }

    #[test]
    fn score_policies_keep_sinks_and_the_budget() {
        evict_and_check(KvPolicy::H2o, KvType::F16, KvType::F16);
        evict_and_check(KvPolicy::Nacl, KvType::Q4, KvType::Q8);
    }
}
