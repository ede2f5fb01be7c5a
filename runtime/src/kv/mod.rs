//! The KV cache: storage, budgets and memory accounting. This version holds the full
//! cache in f16; eviction policies, quantized storage and low-rank latents slot in here.

mod cache;

pub use cache::{KvCache, KvCacheConfig};
