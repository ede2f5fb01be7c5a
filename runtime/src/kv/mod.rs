//! The KV cache: storage, budgets, eviction and memory accounting. [`KvPlan`] resolves a
//! session's [`KvOptions`] (budget, policy, storage types) into slots; [`KvCache`] holds
//! the K and V of every layer on the GPU in their [`KvType`] (f16, q8, q4, q4c), with the
//! per-slot scores the score-based policies keep.

mod cache;
mod config;
mod format;

pub use cache::{KvCache, KvCacheConfig, KvStats, LayerView};
pub use config::{
    KvBudget, KvGeometry, KvOptions, KvPlan, KvPolicy, Tidal, TidalOptions, TidalRole,
    GATE_RECENT_PCT, NACL_POOL, TIDAL_POOL,
};
pub use format::{
    decode_block_row_q4c, decode_row, decode_slot_q4c, encode_block_q4c, encode_row, KvType,
    KV_BLOCK, Q4C_SLOTS,
};
