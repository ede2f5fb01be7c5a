//! The KV cache: storage, budgets, eviction and memory accounting. [`KvPlan`] resolves a
//! session's [`KvOptions`] (budget, policy) into slots; [`KvCache`] holds the f16 K and V
//! of every layer on the GPU, with the per-slot scores the score-based policies keep.

mod cache;
mod config;

pub use cache::{KvCache, KvCacheConfig, KvStats};
pub use config::{KvBudget, KvGeometry, KvOptions, KvPlan, KvPolicy};
