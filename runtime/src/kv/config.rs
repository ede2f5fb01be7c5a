//! What a session's KV cache may hold: the budget (tokens or bytes), the eviction policy
//! and its split of the budget, resolved against the model's geometry into a [`KvPlan`].
//!
//! The budget is the allocation: a cache with a budget of B slots never allocates more
//! and never holds more. It evicts in amortized batches: when the next chunk (or decoded
//! token) does not fit, every layer and KV head is cut down to B minus a headroom of
//! max(16, B/8) slots (at most the prefill chunk), so one eviction pass serves many
//! tokens. Prefill then runs in chunks of at most the headroom (NACL excepted: below).
//!
//! Splits of the kept slots (`keep` = B - headroom):
//! - `window` (StreamingLLM): `sinks` first slots + the most recent slots.
//! - `h2o` (Zhang et al., 2023): sinks, the most recent half (`recent_pct`), the rest by
//!   accumulated attention (every query seen so far, prefill and decode).
//! - `nacl` (Chen et al., 2024): of the kept slots 5% protected (sinks, then recent),
//!   60% by proxy-query attention, 35% sampled at random with probability proportional to
//!   softmax(score) — the paper's 1% / 12% / 7% split of a 20% budget. NACL evicts
//!   one-shot during prefill, as the paper does: a prompt chunk that overflows the budget
//!   is not split to the headroom; each layer stores the chunk's K/V into a staging
//!   buffer holding the cache plus the chunk (one layer's worth, `slots + chunk` slots
//!   per head, shared by all layers), attends over all of it densely, scores every key
//!   by the chunk's proxy queries (its last max(32, 1%) tokens, which usually hold the
//!   question), selects, and gathers the kept slots into the cache before the next layer
//!   runs. So a prompt of up to `chunk` tokens is evicted once, by its own question, and
//!   the logits of its tokens are those of the full cache; longer prompts are taken
//!   chunk by chunk, never allocating more than the budget plus one layer's staging.
//!   During decode the attention of each generated token is added to the proxy scores
//!   (as H2O does), so when generation fills the budget it evicts in batches like the
//!   other policies, with the same split and scores that include what was generated.
//!   Scores are max-pooled over `pool` slots each side before ranking (default
//!   [`NACL_POOL`] = 8; SnapKV, Li et al., 2024, pools its observation-window scores the
//!   same way): the question attends to where a span starts, and the answer needs the
//!   whole span. This is our addition to the paper's method; `--kv-pool 0` turns it off.
//!
//! - `gate` (Attention-Gate, Zeng et al., 2024, arXiv 2410.12876): sinks, the most recent
//!   three quarters ([`GATE_RECENT_PCT`]), the rest by the learned gates' score (`kernels::kv_gate`),
//!   written once per token and layer when the token is stored: a gate scores a token
//!   once, so recency, which matters to every later query, is the budget's to keep. The gates' threshold flags what they would
//!   evict; kvedge keeps the budget as the allocation and evicts lowest score first, so a
//!   flagged-out token goes before any kept one and is held only while the budget has room
//!   (more than the gates asked for, never less).
//!
//! Sparse decode (TidalDecode, Yang et al., 2024, arXiv 2410.05076) saves reads, not
//! memory: for each decoded token the layers before the token-selection layer attend
//! densely; the selection layer attends densely and then picks, per KV head, the `k`
//! slots with the highest attention (the softmax probabilities summed over the KV head's
//! query heads, which for one query head ranks as the pre-softmax scores do); the
//! following layers attend only to those slots, until the re-selection layer (default
//! the middle of the stack) attends densely and picks again for the rest. The current
//! token is always selected. Prefill stays dense. The selection scores are max-pooled
//! over [`TIDAL_POOL`] = 8 slots each side first (our addition, as for NACL): the
//! reference implementation ranks single tokens, which on SmolLM2 lost the continuation of
//! the number being copied (docs/EVAL.md). Under H2O or NACL, the running scores
//! are updated by the dense layers only during sparse decode.

use std::str::FromStr;

use crate::kernels::kv_select::SelectPlan;
use crate::kv::{KvCacheConfig, KvType, Q4C_SLOTS};
use crate::{Error, Result};

/// How much KV cache a session may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    /// Slots per layer and KV head.
    Tokens(usize),
    /// Bytes of the whole cache (K and V of every layer).
    Bytes(u64),
}

impl FromStr for KvBudget {
    type Err = String;
    /// `2048` (tokens) or a size with a unit: `64MiB`, `512KiB`, `1GiB`, `100MB`, `4096B`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("KV budget '{s}': expected a token count (2048) or a size (64MiB)")
        })?;
        let mult: u64 = match unit.trim() {
            "" => {
                return usize::try_from(n)
                    .map(KvBudget::Tokens)
                    .map_err(|_| format!("KV budget '{s}' is too large"))
            }
            "B" => 1,
            "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                "KV budget '{s}': unknown unit '{other}' (expected B, KB, MB, GB, KiB, MiB or GiB)"
            ))
            }
        };
        n.checked_mul(mult)
            .map(KvBudget::Bytes)
            .ok_or_else(|| format!("KV budget '{s}' is too large"))
    }
}

/// Which tokens an over-budget cache drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvPolicy {
    /// Keep everything (the context length bounds the session).
    #[default]
    Full,
    Window,
    H2o,
    Nacl,
    /// Attention-Gate: learned per-token scores (`kernels::kv_gate`; needs gates).
    Gate,
}

impl KvPolicy {
    pub const NAMES: &'static str = "full, window, h2o, nacl, gate";

    /// Whether the policy ranks slots by a per-slot score (attention for H2O and NACL,
    /// the gates' output for `gate`).
    pub fn scores(self) -> bool {
        matches!(self, KvPolicy::H2o | KvPolicy::Nacl | KvPolicy::Gate)
    }

    pub fn name(self) -> &'static str {
        match self {
            KvPolicy::Full => "full",
            KvPolicy::Window => "window",
            KvPolicy::H2o => "h2o",
            KvPolicy::Nacl => "nacl",
            KvPolicy::Gate => "gate",
        }
    }
}

impl FromStr for KvPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(KvPolicy::Full),
            "window" => Ok(KvPolicy::Window),
            "h2o" => Ok(KvPolicy::H2o),
            "nacl" => Ok(KvPolicy::Nacl),
            "gate" => Ok(KvPolicy::Gate),
            other => Err(format!(
                "unknown KV policy '{other}': expected one of {}",
                Self::NAMES
            )),
        }
    }
}

/// The KV settings of a session, as a user gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvOptions {
    pub budget: Option<KvBudget>,
    pub policy: KvPolicy,
    /// Attention-sink slots every policy protects.
    pub sinks: usize,
    /// Seed of NACL's random sample.
    pub seed: u64,
    /// Storage types of K and V.
    pub k_type: KvType,
    pub v_type: KvType,
    /// Rotate Q, K and V by a Walsh-Hadamard transform before K and V are stored, and the
    /// attention output back (`kernels::hadamard`): attention is unchanged, outlier
    /// channels are spread before quantization. None: on when K or V is quantized (as
    /// llama.cpp does since its PR 21038).
    pub hadamard: Option<bool>,
    /// TidalDecode sparse decode.
    pub tidal: Option<TidalOptions>,
    /// Radius of the max-pooling of scores before the score-based policies and
    /// TidalDecode rank slots (`kernels::kv_select`). None: [`NACL_POOL`] under NACL,
    /// [`TIDAL_POOL`] for TidalDecode's selection, 0 (none) under H2O.
    pub pool: Option<usize>,
    /// Percent of the kept slots (after the sinks) that `h2o` and `gate` keep by recency,
    /// the rest by score. None: 50 for h2o, [`GATE_RECENT_PCT`] for gate.
    pub recent_pct: Option<u32>,
}

/// The share of the kept slots (after the sinks) that the `gate` policy keeps by recency,
/// in percent. A gate scores a token once, when it is stored, from a window of 64
/// tokens; recency, which every later query values, is the budget's to keep. Measured on
/// SmolLM2-135M, 8 192-token essay stream, budget 23 %, first-stage gates: recent 10 / 25 /
/// 50 / 75 / 90 % give perplexity 23.07 / 23.09 / 23.10 / 22.94 / 22.92 (window 22.96);
/// the committed gates at 75 %: 22.70 (docs/GATES.md).
pub const GATE_RECENT_PCT: u32 = 75;

/// NACL's default pooling radius. Proxy queries (the question) attend to the start of a
/// span they ask about (e.g. the first digits of a number), not to its continuation,
/// which the answer then needs token by token: without pooling NACL keeps the first
/// digits and drops the rest. Measured on SmolLM2-135M, needle at 1k tokens, 20% budget,
/// 5 depths: radius 0 and 5 retrieve 0/5, radius 8 4/5 (docs/EVAL.md).
pub const NACL_POOL: usize = 8;

/// TidalDecode settings as given: `k` slots per KV head, and optionally the selection and
/// re-selection layers (default 2 and n_layers / 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TidalOptions {
    pub k: usize,
    pub layers: Option<(usize, usize)>,
}

/// TidalDecode resolved for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tidal {
    pub k: usize,
    pub select_layer: usize,
    pub reselect_layer: usize,
    /// Max-pooling radius of the selection scores (`KvOptions::pool`, default
    /// [`TIDAL_POOL`]).
    pub pool: usize,
}

/// TidalDecode's default pooling radius: as for NACL ([`NACL_POOL`]), the current token's
/// query finds the start of the span it copies from, and the selection must hold the
/// span's continuation for the next tokens. Measured on SmolLM2-135M, needle at 1k
/// tokens, k = 256, 5 depths: radius 0 retrieves 0/5, radius 8 3/5 (docs/EVAL.md).
pub const TIDAL_POOL: usize = 8;

/// How one layer attends during a decode step under TidalDecode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TidalRole {
    /// Every slot.
    Dense,
    /// Every slot, then choose the slots the next layers read.
    DenseAndSelect,
    /// Only the chosen slots.
    Sparse,
}

impl Tidal {
    pub fn role(&self, layer: usize) -> TidalRole {
        if layer < self.select_layer {
            TidalRole::Dense
        } else if layer == self.select_layer || layer == self.reselect_layer {
            TidalRole::DenseAndSelect
        } else {
            TidalRole::Sparse
        }
    }

    /// The selection of the `k` slots of highest score out of `n_slots` (the last one, the
    /// current token, always kept).
    pub fn select(&self, n_slots: usize) -> SelectPlan {
        SelectPlan {
            n: n_slots,
            keep: self.k,
            sinks: 0,
            recent: 1,
            n_score: self.k - 1,
            n_random: 0,
            seed: 0,
            salt: 0,
            pool: self.pool,
        }
    }
}

impl Default for KvOptions {
    fn default() -> Self {
        Self {
            budget: None,
            policy: KvPolicy::Full,
            sinks: 4,
            seed: 0,
            k_type: KvType::F16,
            v_type: KvType::F16,
            hadamard: None,
            tidal: None,
            pool: None,
            recent_pct: None,
        }
    }
}

impl KvOptions {
    /// Whether Q, K and V are rotated: as asked, else when K or V is quantized.
    pub fn rotates(&self) -> bool {
        self.hadamard
            .unwrap_or(self.k_type != KvType::F16 || self.v_type != KvType::F16)
    }

    /// TidalDecode's layers for a model of `geom.n_layers` layers, checked.
    pub fn tidal_for(&self, geom: KvGeometry) -> Result<Option<Tidal>> {
        let Some(t) = self.tidal else { return Ok(None) };
        let n = geom.n_layers;
        let (select_layer, reselect_layer) = t.layers.unwrap_or((2, n / 2));
        if t.k < 2 || select_layer >= reselect_layer || reselect_layer >= n {
            return Err(Error::InvalidArgument(format!(
                "TidalDecode needs k >= 2 and layers select < reselect < {n} (the model's layers), \
                 got k {} and layers {select_layer},{reselect_layer}",
                t.k
            )));
        }
        Ok(Some(Tidal {
            k: t.k,
            select_layer,
            reselect_layer,
            pool: self.pool.unwrap_or(TIDAL_POOL),
        }))
    }
}

/// The shape of a cache, for turning byte budgets into slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// Bytes one slot takes across all layers, K and V, in their storage types.
    pub fn bytes_per_slot(&self, k: KvType, v: KvType) -> u64 {
        let words = k.row_words(self.head_dim) + v.row_words(self.head_dim);
        (4 * words * self.n_layers * self.n_kv_heads) as u64
    }

    /// Bytes a cache takes whatever its slots: `q4c`'s pending values (f32, one block of
    /// 32 slots per layer and KV head, for each of K and V stored so).
    pub fn fixed_bytes(&self, k: KvType, v: KvType) -> u64 {
        let blocks = [k, v].iter().filter(|t| t.blocks_slots()).count();
        (4 * blocks * Q4C_SLOTS * self.head_dim * self.n_layers * self.n_kv_heads) as u64
    }
}

/// A resolved configuration: how many slots to allocate and how evictions split them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPlan {
    pub policy: KvPolicy,
    /// Slots allocated per layer and KV head (the budget, or the context when full).
    pub slots: usize,
    /// Slots kept by an eviction (slots - headroom); equals `slots` for the full cache.
    pub keep: usize,
    pub sinks: usize,
    pub seed: u64,
    pub k_type: KvType,
    pub v_type: KvType,
    pub hadamard: bool,
    pub tidal: Option<Tidal>,
    /// Most prompt tokens one one-shot eviction takes (NACL: the prefill chunk; else 0):
    /// the extra slots per head of the staging buffer.
    pub oneshot: usize,
    /// Max-pooling radius of the scores before ranking (score-based policies).
    pub pool: usize,
    /// Percent of the kept slots after the sinks that `h2o` and `gate` keep by recency.
    pub recent_pct: u32,
}

impl KvPlan {
    /// Resolve `opts` for a session of `context` positions prefilled in chunks of `chunk`.
    pub fn new(opts: &KvOptions, geom: KvGeometry, context: usize, chunk: usize) -> Result<Self> {
        let slots = match (opts.policy, opts.budget) {
            (KvPolicy::Full, None) => {
                return Ok(Self {
                    policy: KvPolicy::Full,
                    slots: context,
                    keep: context,
                    sinks: 0,
                    seed: opts.seed,
                    k_type: opts.k_type,
                    v_type: opts.v_type,
                    hadamard: opts.rotates(),
                    tidal: opts.tidal_for(geom)?,
                    oneshot: 0,
                    pool: 0,
                    recent_pct: 0,
                })
            }
            (KvPolicy::Full, Some(b)) => {
                return Err(Error::InvalidArgument(format!(
                    "a KV budget ({b:?}) needs an eviction policy ({}) to stay within it",
                    "window, h2o, nacl or gate"
                )))
            }
            (p, None) => {
                return Err(Error::InvalidArgument(format!(
                    "KV policy '{}' needs a budget (--kv-budget 2048 or --kv-budget 64MiB)",
                    p.name()
                )))
            }
            (_, Some(KvBudget::Tokens(n))) => n,
            (_, Some(KvBudget::Bytes(b))) => {
                let fixed = geom.fixed_bytes(opts.k_type, opts.v_type);
                (b.saturating_sub(fixed) / geom.bytes_per_slot(opts.k_type, opts.v_type)) as usize
            }
        };
        // A per-channel cache quantizes blocks of 32 slots: a budget buys whole blocks.
        let slots = if opts.k_type.blocks_slots() || opts.v_type.blocks_slots() {
            slots - slots % Q4C_SLOTS
        } else {
            slots
        };
        let min = opts.sinks + 32;
        if slots < min {
            return Err(Error::InvalidArgument(format!(
                "KV budget of {slots} slots is too small: the policy needs at least {min} \
                 ({} sinks + 32), at {} bytes per slot",
                opts.sinks,
                geom.bytes_per_slot(opts.k_type, opts.v_type)
            )));
        }
        let recent_pct = opts.recent_pct.unwrap_or(match opts.policy {
            KvPolicy::Gate => GATE_RECENT_PCT,
            _ => 50,
        });
        if recent_pct > 100 {
            return Err(Error::InvalidArgument(format!(
                "recent share of the kept slots: {recent_pct} %, expected 0 to 100"
            )));
        }
        let headroom = (slots / 8).max(16).min(chunk.max(1));
        Ok(Self {
            policy: opts.policy,
            slots,
            keep: slots - headroom,
            sinks: opts.sinks,
            seed: opts.seed,
            k_type: opts.k_type,
            v_type: opts.v_type,
            hadamard: opts.rotates(),
            tidal: opts.tidal_for(geom)?,
            oneshot: if opts.policy == KvPolicy::Nacl {
                chunk.max(1)
            } else {
                0
            },
            pool: match opts.policy {
                KvPolicy::Nacl => opts.pool.unwrap_or(NACL_POOL),
                KvPolicy::H2o | KvPolicy::Gate => opts.pool.unwrap_or(0),
                _ => 0,
            },
            recent_pct,
        })
    }

    /// Whether a storage type quantizes blocks of slots (`q4c`), whose caches hold whole
    /// blocks.
    pub fn blocks_slots(&self) -> bool {
        self.k_type.blocks_slots() || self.v_type.blocks_slots()
    }

    /// Slots a buffer of at least `slots` allocates: rounded up to whole blocks of 32
    /// for `q4c` (a full cache's context; budgets are already whole blocks).
    pub fn alloc_slots(&self, slots: usize) -> usize {
        if self.blocks_slots() {
            slots.next_multiple_of(Q4C_SLOTS)
        } else {
            slots
        }
    }

    /// Slots per head of NACL's one-shot staging area for a cache of `capacity`.
    pub fn staging_capacity(&self, capacity: usize) -> usize {
        self.alloc_slots(capacity + self.oneshot)
    }

    /// The cache this plan allocates for a model of shape `geom`.
    pub fn cache_config(&self, geom: KvGeometry) -> KvCacheConfig {
        KvCacheConfig {
            n_layers: geom.n_layers,
            n_kv_heads: geom.n_kv_heads,
            head_dim: geom.head_dim,
            capacity: self.alloc_slots(self.slots),
            k_type: self.k_type,
            v_type: self.v_type,
        }
    }

    /// Whether the cache ever evicts.
    pub fn evicts(&self) -> bool {
        self.policy != KvPolicy::Full
    }

    /// Most tokens one prefill chunk may have: the one-shot chunk under NACL, else what
    /// fits after an eviction.
    pub fn max_chunk(&self) -> usize {
        if self.oneshot > 0 {
            self.oneshot
        } else if self.evicts() {
            self.slots - self.keep
        } else {
            self.slots
        }
    }

    /// Whether a chunk of `m` tokens arriving with `used` slots in use is evicted one-shot
    /// (after its attention, from the staging buffer) instead of before it.
    pub fn evicts_oneshot(&self, used: usize, m: usize) -> bool {
        self.oneshot > 0 && m > 1 && used + m > self.slots
    }

    /// The selection for an eviction of `n` slots in use down to `keep`, in `layer`, the
    /// `epoch`-th eviction of the session.
    pub fn select(&self, n: usize, layer: usize, epoch: u64) -> SelectPlan {
        let keep = self.keep.min(n);
        let sinks = self.sinks.min(keep);
        let rest = keep - sinks;
        let (recent, n_score, n_random) = match self.policy {
            KvPolicy::Full | KvPolicy::Window => (rest, 0, 0),
            KvPolicy::H2o | KvPolicy::Gate => {
                let recent = rest * self.recent_pct as usize / 100;
                (recent, rest - recent, 0)
            }
            KvPolicy::Nacl => {
                let recent = (keep / 20).saturating_sub(sinks).min(rest);
                let n_score = ((rest - recent) * 12).div_ceil(19);
                (recent, n_score, rest - recent - n_score)
            }
        };
        SelectPlan {
            n,
            keep,
            sinks,
            recent,
            n_score,
            n_random,
            seed: (self.seed ^ (self.seed >> 32)) as u32,
            salt: (layer as u32).wrapping_mul(0x85eb_ca6b) ^ (epoch as u32),
            pool: self.pool,
        }
    }

    /// How many of a chunk's queries score the keys for NACL (the proxy queries).
    pub fn proxy_queries(n_tokens: usize) -> usize {
        n_tokens.min((n_tokens / 100).max(32))
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        let mut types = if self.k_type == self.v_type {
            self.k_type.name().to_string()
        } else {
            format!("K {} V {}", self.k_type.name(), self.v_type.name())
        };
        if self.hadamard {
            types += " rotated";
        }
        let tidal = self.tidal.map_or(String::new(), |t| {
            format!(
                ", tidal k {} at layers {},{} pooled ±{}",
                t.k, t.select_layer, t.reselect_layer, t.pool
            )
        });
        let pool = if self.pool > 0 {
            format!(", pooled ±{}", self.pool)
        } else {
            String::new()
        };
        let recent = match self.policy {
            KvPolicy::H2o | KvPolicy::Gate => format!(", {} % recent", self.recent_pct),
            _ => String::new(),
        };
        if self.evicts() {
            format!(
                "{types} {} budget {} slots (evicts to {}), {} sinks{recent}{pool}{tidal}",
                self.policy.name(),
                self.slots,
                self.keep,
                self.sinks
            )
        } else {
            format!("{types} full {} slots{tidal}", self.slots)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: KvGeometry = KvGeometry {
        n_layers: 30,
        n_kv_heads: 3,
        head_dim: 64,
    };

    #[test]
    fn budgets_parse_with_units_and_reject_nonsense() {
        assert_eq!("2048".parse::<KvBudget>(), Ok(KvBudget::Tokens(2048)));
        assert_eq!("64MiB".parse::<KvBudget>(), Ok(KvBudget::Bytes(64 << 20)));
        assert_eq!(
            "100MB".parse::<KvBudget>(),
            Ok(KvBudget::Bytes(100_000_000))
        );
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-5",
            "1.5GiB",
            "99999999999999999999GiB",
        ] {
            let e = bad.parse::<KvBudget>().unwrap_err();
            assert!(e.contains("KV budget"), "{bad}: {e}");
        }
        assert!("lru"
            .parse::<KvPolicy>()
            .unwrap_err()
            .contains("window, h2o, nacl"));
    }

    #[test]
    fn plans_split_the_budget_and_bytes_become_slots() {
        let opts = |policy, budget| KvOptions {
            budget,
            policy,
            ..KvOptions::default()
        };
        let full = KvPlan::new(&opts(KvPolicy::Full, None), G, 8192, 512).unwrap();
        assert_eq!((full.slots, full.keep, full.evicts()), (8192, 8192, false));
        assert!(KvPlan::new(
            &opts(KvPolicy::Full, Some(KvBudget::Tokens(100))),
            G,
            8192,
            512
        )
        .is_err());
        assert!(KvPlan::new(&opts(KvPolicy::H2o, None), G, 8192, 512).is_err());
        assert!(KvPlan::new(
            &opts(KvPolicy::H2o, Some(KvBudget::Tokens(20))),
            G,
            8192,
            512
        )
        .is_err());
        // SmolLM2: 23040 bytes per slot, so 64 MiB is 2912 slots.
        let p = KvPlan::new(
            &opts(KvPolicy::Window, Some(KvBudget::Bytes(64 << 20))),
            G,
            8192,
            512,
        )
        .unwrap();
        assert_eq!(G.bytes_per_slot(KvType::F16, KvType::F16), 23040);
        assert_eq!(G.bytes_per_slot(KvType::Q8, KvType::Q4), 30 * 3 * (68 + 36));
        assert_eq!(p.slots, (64 << 20) / 23040);
        assert_eq!(p.keep, p.slots - 364);
        // q4c keys buy whole blocks of 32 slots, and a byte budget pays for the pending
        // values first; the full cache rounds its context up to whole blocks.
        let q4c = |budget| KvOptions {
            k_type: KvType::Q4C,
            v_type: KvType::Q4,
            ..opts(KvPolicy::Window, budget)
        };
        let p = KvPlan::new(&q4c(Some(KvBudget::Bytes(16 << 20))), G, 8192, 512).unwrap();
        let cfg = p.cache_config(G);
        assert_eq!(p.slots % 32, 0);
        assert_eq!(cfg.capacity, p.slots);
        assert!(cfg.total_bytes() <= 16 << 20, "{}", cfg.total_bytes());
        assert!(cfg.total_bytes() + 32 * G.bytes_per_slot(KvType::Q4C, KvType::Q4) > 16 << 20);
        assert_eq!(G.fixed_bytes(KvType::Q4C, KvType::Q4), 4 * 32 * 64 * 30 * 3);
        let p = KvPlan::new(&q4c(Some(KvBudget::Tokens(1000))), G, 8192, 512).unwrap();
        assert_eq!((p.slots, p.cache_config(G).capacity), (992, 992));
        let full = KvOptions {
            policy: KvPolicy::Full,
            ..q4c(None)
        };
        let p = KvPlan::new(&full, G, 1000, 512).unwrap();
        assert_eq!((p.slots, p.cache_config(G).capacity), (1000, 1024));
        assert_eq!(p.staging_capacity(1024), 1024);
        for policy in [KvPolicy::Window, KvPolicy::H2o, KvPolicy::Nacl] {
            let p = KvPlan::new(&opts(policy, Some(KvBudget::Tokens(1638))), G, 8192, 512).unwrap();
            if policy == KvPolicy::Nacl {
                assert_eq!((p.max_chunk(), p.oneshot), (512, 512));
                assert!(p.evicts_oneshot(p.slots - 10, 11) && !p.evicts_oneshot(p.slots - 1, 1));
            } else {
                assert!(p.max_chunk() <= 512 && p.keep + p.max_chunk() == p.slots);
                assert!(!p.evicts_oneshot(p.slots, 100));
            }
            for n in [p.keep, p.slots, p.slots - 1] {
                let s = p.select(n, 3, 7);
                s.validate(p.slots).unwrap();
                assert_eq!(s.keep, p.keep.min(n));
                assert_eq!(s.sinks, 4);
            }
        }
        let s = KvPlan::new(
            &opts(KvPolicy::Nacl, Some(KvBudget::Tokens(1000))),
            G,
            8192,
            512,
        )
        .unwrap()
        .select(1000, 0, 0);
        // Pooling: NACL and TidalDecode by default, H2O only when asked.
        let pool = |policy, pool: Option<usize>| {
            let o = KvOptions {
                pool,
                tidal: Some(TidalOptions {
                    k: 64,
                    layers: None,
                }),
                ..opts(policy, Some(KvBudget::Tokens(500)))
            };
            let p = KvPlan::new(&o, G, 8192, 512).unwrap();
            (p.select(500, 0, 0).pool, p.tidal.unwrap().select(100).pool)
        };
        assert_eq!(pool(KvPolicy::Nacl, None), (NACL_POOL, TIDAL_POOL));
        assert_eq!(pool(KvPolicy::H2o, None), (0, TIDAL_POOL));
        assert_eq!(pool(KvPolicy::Window, Some(3)), (0, 3));
        assert_eq!(pool(KvPolicy::H2o, Some(2)), (2, 2));
        // keep 875: 43 protected (4 sinks + 39 recent), then 12:7 of the rest by score and at random.
        assert_eq!(
            (s.keep, s.sinks, s.recent, s.n_score, s.n_random),
            (875, 4, 39, 526, 306)
        );
    }
}
