//! Support for kernel tests and benchmarks: the shared test device and the comparison of a
//! kernel's output with its CPU reference by normalized error.
//!
//! The error of element i is |got_i - want_i| / rms(want): normalizing by the reference's
//! scale makes one bound per op meaningful across shapes and magnitudes. A failure reports
//! the worst index with both values.

use std::sync::{Arc, OnceLock};

use crate::gpu::{DeviceOptions, GpuContext};

/// The device GPU tests share. `None` (the test then skips, saying so) when no adapter
/// exists, unless `KVEDGE_REQUIRE_GPU=1`, in which case a missing adapter fails the test:
/// CI sets it so that kernel tests can never pass by skipping.
pub fn test_context() -> Option<&'static Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new(&DeviceOptions::default()) {
        Ok(ctx) => {
            eprintln!(
                "GPU tests on adapter '{}' ({:?}, {:?})",
                ctx.info.name, ctx.info.backend, ctx.info.device_type
            );
            Some(Arc::new(ctx))
        }
        Err(e) => {
            if require_gpu() {
                panic!("KVEDGE_REQUIRE_GPU=1 but no GPU device: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    })
    .as_ref()
}

/// A fresh seed for random test inputs: `base` mixed with a per-process seed taken from
/// `KVEDGE_TEST_SEED` when set, else from the clock. The process seed is printed once, so a
/// failure can be replayed with `KVEDGE_TEST_SEED=<seed>`.
pub fn test_seed(base: u64) -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let s = *SEED.get_or_init(|| {
        let s = std::env::var("KVEDGE_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
        eprintln!("random test inputs: KVEDGE_TEST_SEED={s}");
        s
    });
    crate::rng::SplitMix64::new(s ^ base.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// Whether `KVEDGE_REQUIRE_GPU=1` is set.
pub fn require_gpu() -> bool {
    std::env::var("KVEDGE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The outcome of comparing a kernel's output with its reference.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Largest |got - want| / rms(want).
    pub max_err: f64,
    pub worst_index: usize,
    pub got: f32,
    pub want: f32,
}

pub fn compare(got: &[f32], want: &[f32]) -> Comparison {
    let rms = (want.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64)
        .sqrt()
        .max(1e-30);
    let mut c = Comparison {
        max_err: 0.0,
        worst_index: 0,
        got: got.first().copied().unwrap_or(0.0),
        want: want.first().copied().unwrap_or(0.0),
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_finite() {
            (g as f64 - w as f64).abs() / rms
        } else {
            f64::INFINITY
        };
        if e > c.max_err || (e.is_nan() && !c.max_err.is_nan()) {
            c = Comparison {
                max_err: e,
                worst_index: i,
                got: g,
                want: w,
            };
        }
    }
    c
}

/// Assert that `got` matches `want` within normalized error `tol`; lengths must agree and
/// the reference must not be all zeros (a test on zeros proves nothing).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        want.iter().any(|&v| v != 0.0),
        "{what}: reference is all zeros, the test would prove nothing"
    );
    let c = compare(got, want);
    eprintln!(
        "{what}: max normalized error {:.2e} (bound {tol:.0e})",
        c.max_err
    );
    assert!(
        c.max_err <= tol,
        "{what}: normalized error {:.3e} > bound {tol:.1e} at index {} (got {}, want {})",
        c.max_err,
        c.worst_index,
        c.got,
        c.want
    );
}
