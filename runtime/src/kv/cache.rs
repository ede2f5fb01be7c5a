//! A preallocated f16 KV cache on the GPU. Per layer, one K and one V buffer laid out
//! [kv_head][slot][head_dim], `capacity` slots per head, written in place by
//! `kernels::kv_store`; nothing grows by concatenation.
//!
//! Slots and positions are counted apart: `used` slots hold tokens, `position` tokens have
//! been seen. They differ once an eviction policy has dropped tokens: [`KvCache::evict`]
//! records, per layer, a GPU selection of the slots to keep (`kernels::kv_select`, by the
//! running scores the score-based policies keep here) and a gather of them to the front
//! of a spare buffer (`kernels::kv_compact`), then swaps the spare in. Kept slots stay in
//! order, so attention remains causal by slot, and every KV head keeps the same count.

use crate::gpu::GpuContext;
use crate::kernels::{kv_compact, kv_select};
use crate::kv::{KvGeometry, KvPlan};
use crate::{Error, Result};

/// Geometry of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Slots per layer and KV head.
    pub capacity: usize,
}

impl KvCacheConfig {
    /// Bytes of one layer's K (or V) buffer.
    pub fn layer_bytes(&self) -> u64 {
        (self.n_kv_heads * self.capacity * self.head_dim * 2) as u64
    }

    /// Exact bytes of the whole cache (K and V of every layer).
    pub fn total_bytes(&self) -> u64 {
        2 * self.n_layers as u64 * self.layer_bytes()
    }

    pub fn geometry(&self) -> KvGeometry {
        KvGeometry {
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
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

/// The cache: K and V buffers per layer, slot and position counters.
#[derive(Debug)]
pub struct KvCache {
    pub config: KvCacheConfig,
    pub plan: KvPlan,
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    ev: Option<Eviction>,
    used: usize,
    position: usize,
    evicted: u64,
    evictions: u64,
}

impl KvCache {
    /// A cache of `plan.slots` slots per layer and KV head.
    pub fn new(ctx: &GpuContext, geom: KvGeometry, plan: KvPlan) -> Result<Self> {
        let config = KvCacheConfig {
            n_layers: geom.n_layers,
            n_kv_heads: geom.n_kv_heads,
            head_dim: geom.head_dim,
            capacity: plan.slots,
        };
        if !config.head_dim.is_multiple_of(2) || config.capacity == 0 || config.n_kv_heads == 0 {
            return Err(Error::InvalidArgument(format!(
                "KV cache needs an even head dim and non-zero heads and capacity, got {config:?}"
            )));
        }
        let bytes = config.layer_bytes();
        if bytes > ctx.max_binding() {
            return Err(Error::TooLarge {
                what: format!("one layer of the KV cache ({} slots)", config.capacity),
                bytes,
                limit: ctx.max_binding(),
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let words = (bytes / 4) as usize;
        let make = |name: &str| {
            (0..config.n_layers)
                .map(|i| ctx.storage_f32(&format!("kv.{name}.{i}"), words))
                .collect::<Result<Vec<_>>>()
        };
        let per_head = config.n_kv_heads * config.capacity;
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
                spare_k: ctx.storage_f32("kv.spare.k", words)?,
                spare_v: ctx.storage_f32("kv.spare.v", words)?,
                spare_s: if scored {
                    Some(ctx.storage_f32("kv.spare.score", per_head)?)
                } else {
                    None
                },
                mark: ctx.storage_f32("kv.mark", per_head)?,
                kept: ctx.storage_f32("kv.kept", per_head)?,
            })
        } else {
            None
        };
        Ok(Self {
            k: make("k")?,
            v: make("v")?,
            ev,
            config,
            plan,
            used: 0,
            position: 0,
            evicted: 0,
            evictions: 0,
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
            kv_compact::record(ctx, enc, &cfg, sel.keep, &ev.kept, &src, &dst)?;
            std::mem::swap(&mut self.k[l], &mut ev.spare_k);
            std::mem::swap(&mut self.v[l], &mut ev.spare_v);
            if let (Some(s), Some(spare)) = (ev.scores.get_mut(l), ev.spare_s.as_mut()) {
                std::mem::swap(s, spare);
            }
        }
        let keep = self.plan.keep.min(n);
        self.evicted += (n - keep) as u64;
        self.evictions += 1;
        self.used = keep;
        Ok(())
    }

    /// Forget everything (the buffers are kept).
    pub fn clear(&mut self) {
        self.used = 0;
        self.position = 0;
    }

    /// Exact bytes of K and V on the device.
    pub fn kv_bytes(&self) -> u64 {
        self.config.total_bytes()
    }

    pub fn stats(&self) -> KvStats {
        let aux = self.ev.as_ref().map_or(0, |e| {
            e.scores.iter().map(|b| b.size()).sum::<u64>()
                + e.spare_k.size()
                + e.spare_v.size()
                + e.spare_s.as_ref().map_or(0, |b| b.size())
                + e.mark.size()
                + e.kept.size()
        });
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
