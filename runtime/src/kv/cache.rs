//! A preallocated f16 KV cache on the GPU. Per layer, one K and one V buffer laid out
//! [kv_head][slot][head_dim], `capacity` slots per head, written in place by
//! `kernels::kv_store`; nothing grows by concatenation. For the full cache slot = position;
//! the per-slot position array that eviction will need arrives with the eviction policies.

use crate::gpu::GpuContext;
use crate::{Error, Result};

/// Geometry of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Slots per layer and KV head (the context length the cache can hold).
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
}

/// The cache: K and V buffers per layer and the number of positions filled.
#[derive(Debug)]
pub struct KvCache {
    pub config: KvCacheConfig,
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    len: usize,
}

impl KvCache {
    pub fn new(ctx: &GpuContext, config: KvCacheConfig) -> Result<Self> {
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
        let make = |name: &str| {
            (0..config.n_layers)
                .map(|i| ctx.storage_f32(&format!("kv.{name}.{i}"), (bytes / 4) as usize))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            k: make("k")?,
            v: make("v")?,
            config,
            len: 0,
        })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots left.
    pub fn free(&self) -> usize {
        self.config.capacity - self.len
    }

    /// Record that `n` more positions were written (after every layer stored them).
    pub fn advance(&mut self, n: usize) -> Result<()> {
        if n > self.free() {
            return Err(Error::InvalidArgument(format!(
                "KV cache full: {} of {} positions used, {n} more requested",
                self.len, self.config.capacity
            )));
        }
        self.len += n;
        Ok(())
    }

    /// Forget everything (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Exact bytes the cache occupies on the device.
    pub fn kv_bytes(&self) -> u64 {
        self.config.total_bytes()
    }
}
