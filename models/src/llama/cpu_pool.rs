//! The CPU device's worker threads: one `rayon` pool per thread count, built on first use
//! and kept for the life of the process, so a decode step's ~200 matrix-vector products
//! and its attention hand work to threads that already exist instead of spawning new ones
//! (spawning cost about a fifth of a SmolLM2 decode step). `rayon` rather than a pool
//! written here: it is the ecosystem's well-kept pool, already in the build through
//! `faer`, and a hand-written one would need its own parking, wake-up and panic handling.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use kvedge_runtime::{Error, Result};

/// The pools built so far, by thread count.
type Pools = Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>;

fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == threads) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kvedge-cpu-{i}"))
        .build()
        .map_err(|e| runtime_error(format!("CPU thread pool of {threads}: {e}")))?;
    let p = Arc::new(p);
    pools.push((threads, p.clone()));
    Ok(p)
}

fn runtime_error(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// `f(0), .., f(parts - 1)` on `threads` workers (at least one), results in order; a
/// panicking part is an error naming `what`, not a panic of the caller.
pub fn run_parts<T: Send>(
    threads: usize,
    parts: usize,
    what: &str,
    f: impl Fn(usize) -> T + Sync,
) -> Result<Vec<T>> {
    let threads = threads.max(1);
    let one = |i: usize| catch_unwind(AssertUnwindSafe(|| f(i)));
    let results: Vec<_> = if threads == 1 || parts <= 1 {
        (0..parts).map(one).collect()
    } else {
        pool(threads)?.install(|| (0..parts).into_par_iter().map(one).collect())
    };
    results
        .into_iter()
        .map(|r| r.map_err(|_| runtime_error(format!("CPU worker panicked in {what}"))))
        .collect()
}

/// `f(i, chunk)` for each `chunk_len` chunk of `out` on `threads` workers.
pub fn for_chunks<T: Send>(
    threads: usize,
    out: &mut [T],
    chunk_len: usize,
    what: &str,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Result<()> {
    let threads = threads.max(1);
    let chunk_len = chunk_len.max(1);
    let run = || {
        catch_unwind(AssertUnwindSafe(|| {
            out.par_chunks_mut(chunk_len)
                .enumerate()
                .for_each(|(i, c)| f(i, c))
        }))
    };
    let r = if threads == 1 {
        catch_unwind(AssertUnwindSafe(|| {
            out.chunks_mut(chunk_len)
                .enumerate()
                .for_each(|(i, c)| f(i, c))
        }))
    } else {
        pool(threads)?.install(run)
    };
    r.map_err(|_| runtime_error(format!("CPU worker panicked in {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_in_order_and_a_panic_is_an_error() {
        for threads in 1..=3 {
            let v = run_parts(threads, 10, "test", |i| i * i).unwrap();
            assert_eq!(v, (0..10).map(|i| i * i).collect::<Vec<_>>());
            let mut out = vec![0usize; 23];
            for_chunks(threads, &mut out, 5, "test", |c, xs| {
                for (j, x) in xs.iter_mut().enumerate() {
                    *x = c * 5 + j;
                }
            })
            .unwrap();
            assert_eq!(out, (0..23).collect::<Vec<_>>());
            let err = run_parts(threads, 4, "the test", |i| {
                assert!(i != 2, "part 2 fails");
                i
            });
            assert!(format!("{}", err.unwrap_err()).contains("the test"));
        }
    }
}
