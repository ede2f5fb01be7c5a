//! Per-kernel GPU time from timestamp queries (`kvedge bench --profile`). Every kernel
//! dispatch is its own compute pass (`GpuContext::dispatch`), so while a profile runs each
//! pass gets the pass-level timestamp writes of WebGPU (a tick at its start and one at its
//! end, in a query set of [`MAX_PASSES`] pairs), labelled with the dispatch's kernel name.
//! [`GpuContext::profile_collect`] resolves the ticks of the passes recorded since the last
//! collection, converts them to nanoseconds with the queue's timestamp period and adds
//! them to per-kernel totals; call it after the profiled work was submitted and waited for
//! (e.g. after each forward call, which reads its logits back). A profile counts every
//! dispatch on its context, whoever records it. Passes recorded when the
//! set is full are run untimed and counted as such. Needs the adapter's TIMESTAMP_QUERY
//! feature, which `GpuContext::new` asks for where the adapter has it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::GpuContext;
use crate::{Error, Result};

/// Pass pairs one query set holds between collections (wgpu caps a set at 4096 queries).
pub const MAX_PASSES: u32 = 2048;

/// The profiler's query set and what was recorded since the last collection.
pub(crate) struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// The kernel label of each pass with a timestamp pair, in query order.
    pending: Vec<String>,
    totals: BTreeMap<String, KernelTime>,
    untimed: u64,
}

/// The time one kernel took over the profiled work.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelTime {
    pub dispatches: u64,
    pub nanos: f64,
}

/// Per-kernel totals of a profile, and the dispatches that ran untimed (query set full).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileReport {
    pub kernels: BTreeMap<String, KernelTime>,
    pub untimed: u64,
}

impl ProfileReport {
    /// GPU nanoseconds over every timed dispatch.
    pub fn total_nanos(&self) -> f64 {
        self.kernels.values().map(|k| k.nanos).sum()
    }
}

impl Profiler {
    /// The timestamp writes for the next pass labelled `label`, or None when the set is
    /// full (the pass then runs untimed).
    pub(crate) fn next_pass(&mut self, label: &str) -> Option<(&wgpu::QuerySet, u32)> {
        if self.pending.len() as u32 >= MAX_PASSES {
            self.untimed += 1;
            return None;
        }
        self.pending.push(label.to_string());
        Some((&self.set, 2 * (self.pending.len() as u32 - 1)))
    }
}

impl GpuContext {
    /// Start timing every dispatch (clearing an earlier profile). An error where the
    /// adapter has no timestamp queries.
    pub fn profile_start(&self) -> Result<()> {
        if !self.features.timestamp_query {
            return Err(Error::Gpu {
                what: "profile".into(),
                message: format!(
                    "the adapter {} has no timestamp queries (TIMESTAMP_QUERY), so per-kernel GPU time cannot be measured",
                    self.info.name
                ),
            });
        }
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * MAX_PASSES,
        });
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.resolve"),
            size: 16 * MAX_PASSES as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        *self.profiler_lock()? = Some(Profiler {
            set,
            resolve,
            pending: Vec::new(),
            totals: BTreeMap::new(),
            untimed: 0,
        });
        self.profiling.store(true, Ordering::Release);
        Ok(())
    }

    /// Add the passes recorded since the last collection to the totals. Every encoder
    /// they were recorded into must have been submitted; this waits for the device.
    pub fn profile_collect(&self) -> Result<()> {
        let mut guard = self.profiler_lock()?;
        let Some(p) = guard.as_mut() else {
            return Err(Error::InvalidArgument(
                "profile_collect without profile_start".into(),
            ));
        };
        let n = p.pending.len() as u32;
        if n == 0 {
            return Ok(());
        }
        let mut enc = self.encoder("profile.resolve");
        enc.resolve_query_set(&p.set, 0..2 * n, &p.resolve, 0);
        self.queue.submit([enc.finish()]);
        let ticks: Vec<u64> = self.read_pod(&p.resolve, 2 * n as usize)?;
        let period = self.queue.get_timestamp_period() as f64;
        for (label, t) in p.pending.drain(..).zip(ticks.chunks_exact(2)) {
            let k = p.totals.entry(label).or_default();
            k.dispatches += 1;
            k.nanos += t[1].saturating_sub(t[0]) as f64 * period;
        }
        Ok(())
    }

    /// Collect what is pending, stop profiling and return the totals.
    pub fn profile_finish(&self) -> Result<ProfileReport> {
        self.profile_collect()?;
        self.profiling.store(false, Ordering::Release);
        let p = self.profiler_lock()?.take();
        Ok(p.map(|p| ProfileReport {
            kernels: p.totals,
            untimed: p.untimed,
        })
        .unwrap_or_default())
    }

    pub(crate) fn profiler_lock(&self) -> Result<std::sync::MutexGuard<'_, Option<Profiler>>> {
        self.profiler.lock().map_err(|_| Error::Gpu {
            what: "profiler".into(),
            message: "poisoned lock".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::check::test_context;

    /// Two kinds of dispatch, timed: each label counts its own dispatches with a positive
    /// time, a collection clears what was pending, and profiling stops at finish.
    #[test]
    fn dispatches_are_timed_per_label() {
        // A context of its own: a profile counts every dispatch on its context, and the
        // shared test context serves tests running at the same time.
        if test_context().is_none() {
            return;
        }
        let ctx = &crate::gpu::GpuContext::new(&crate::gpu::DeviceOptions::default()).unwrap();
        if !ctx.features.timestamp_query {
            assert!(ctx.profile_start().is_err());
            return;
        }
        let n = 1 << 16;
        let src = ctx.storage_f32("src", n).unwrap();
        let dst = ctx.storage_f32("dst", n).unwrap();
        ctx.profile_start().unwrap();
        for round in 0..2 {
            let mut enc = ctx.encoder("test");
            for _ in 0..3 {
                crate::kernels::copy::record(ctx, &mut enc, &src, &dst, n / 4).unwrap();
            }
            crate::kernels::add::record(ctx, &mut enc, &dst, &src, n, n).unwrap();
            ctx.submit_wait(enc).unwrap();
            if round == 0 {
                ctx.profile_collect().unwrap();
            }
        }
        let report = ctx.profile_finish().unwrap();
        let (copy, add) = (&report.kernels["copy"], &report.kernels["add"]);
        assert_eq!((copy.dispatches, add.dispatches), (6, 2), "{report:?}");
        assert!(copy.nanos > 0.0 && add.nanos > 0.0, "{report:?}");
        assert_eq!(report.kernels.len(), 2, "{report:?}");
        assert_eq!(report.untimed, 0);
        // Profiling is off again: a dispatch now records nothing.
        let mut enc = ctx.encoder("test");
        crate::kernels::copy::record(ctx, &mut enc, &src, &dst, n / 4).unwrap();
        ctx.submit_wait(enc).unwrap();
        assert!(ctx.profiler_lock().unwrap().is_none());
    }
}
