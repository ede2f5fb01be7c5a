//! Handles: what C holds are tokens, not addresses. Each live model and session sits in a
//! registry under a number that is never reused; a handle is that number cast to an
//! opaque pointer type. Every export looks its handle up, so a freed (or made-up) handle
//! is `KVEDGE_ERR_INVALID_HANDLE`, never a use-after-free, and freeing a handle while
//! another thread is inside a call on it is safe: the registry hands out `Arc`s, and the
//! object goes when the last call using it returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::status::{FfiError, FfiResult, Status};

/// Handle numbers, shared by every registry so a model handle is never a session's.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Live objects of one kind by handle number.
pub struct Registry<T> {
    kind: &'static str,
    live: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            live: Mutex::new(BTreeMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Arc<T>>> {
        // The map holds no invariant a panic elsewhere could break.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register `value`; its handle number.
    pub fn insert(&self, value: T) -> usize {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.map().insert(id, Arc::new(value));
        id
    }

    /// The object behind handle number `id`.
    pub fn get(&self, id: usize) -> FfiResult<Arc<T>> {
        if id == 0 {
            return Err(FfiError::new(
                Status::NullPointer,
                format!("{} handle is NULL", self.kind),
            ));
        }
        self.map().get(&id).cloned().ok_or_else(|| self.invalid(id))
    }

    /// Take handle number `id` out of the registry (it is invalid from now on).
    pub fn remove(&self, id: usize) -> FfiResult<Arc<T>> {
        self.map().remove(&id).ok_or_else(|| self.invalid(id))
    }

    fn invalid(&self, id: usize) -> FfiError {
        FfiError::new(
            Status::InvalidHandle,
            format!(
                "{} handle {id:#x} is not live (freed already, or not made by kvedge)",
                self.kind
            ),
        )
    }
}

/// The handle C sees for handle number `id`.
pub fn to_handle<H>(id: usize) -> *mut H {
    std::ptr::without_provenance_mut(id)
}

/// The handle number of a handle C gave back.
pub fn from_handle<H>(h: *const H) -> usize {
    h.addr()
}
