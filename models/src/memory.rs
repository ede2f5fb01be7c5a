//! A GPU memory cap for a model and its sessions (phones share a few GiB between the app,
//! the system and the GPU). Usage is measured, not predicted: the bytes of the storage
//! buffers the GPU context creates while the weights are uploaded and while each session
//! is built (weights, KV cache, eviction scratch, activations). A session that would pass
//! the cap is refused; with `fit_memory` the session's KV budget is chosen to fill what is
//! left. Logits read-back buffers, uniforms and the buffers `forward_all` creates on first
//! use (evaluation only) are small and not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The GPU memory of a model and its live sessions, in bytes of storage buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// The cap given at load (`LoadOptions::max_gpu_bytes`).
    pub cap: Option<u64>,
    /// The weights on the device.
    pub weights: u64,
    /// All live sessions together.
    pub sessions: u64,
}

impl MemoryReport {
    /// What the cap leaves for new sessions; None without a cap.
    pub fn available(&self) -> Option<u64> {
        self.cap
            .map(|c| c.saturating_sub(self.weights + self.sessions))
    }
}

/// The model's account: weights, live sessions, and a lock that keeps two sessions from
/// being measured at the same time.
#[derive(Debug)]
pub(crate) struct MemoryLedger {
    pub cap: Option<u64>,
    pub weights: u64,
    sessions: AtomicU64,
    pub building: Mutex<()>,
}

impl MemoryLedger {
    pub fn new(cap: Option<u64>, weights: u64) -> Self {
        Self {
            cap,
            weights,
            sessions: AtomicU64::new(0),
            building: Mutex::new(()),
        }
    }

    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            cap: self.cap,
            weights: self.weights,
            sessions: self.sessions.load(Ordering::Relaxed),
        }
    }

    /// Book `bytes` for a session until the returned reservation is dropped.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> MemoryReservation {
        self.sessions.fetch_add(bytes, Ordering::Relaxed);
        MemoryReservation {
            ledger: self.clone(),
            bytes,
        }
    }
}

/// A session's share of the ledger, released when the session is dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    ledger: Arc<MemoryLedger>,
    bytes: u64,
}

impl MemoryReservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.ledger
            .sessions
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
