//! The wgpu layer: device creation with the adapter's own limits and optional features
//! (`context`), tensors uploaded as raw quantized blocks and split into binding-sized
//! chunks (`buffer`), the pipeline cache keyed by shader, variant and constants
//! (`pipeline`), and per-kernel timing from timestamp queries (`profile`).

mod buffer;
mod context;
mod pipeline;
mod profile;

pub use buffer::{GpuMatrix, MatrixChunk};
pub use context::{list_adapters, AdapterSummary, DeviceOptions, GpuContext, GpuFeatures};
pub use pipeline::PipelineCache;
pub use profile::{KernelTime, ProfileReport, MAX_PASSES};

/// Split `n` workgroups into an (x, y) grid within the per-dimension dispatch limit; the
/// shader recovers the linear index as `id.x + id.y * grid_x`. Covers up to `max²`
/// workgroups (4·10⁹ at the usual limit of 65535).
pub fn grid(n: u32, max_per_dim: u32) -> (u32, u32) {
    let max = max_per_dim.max(1);
    if n <= max {
        (n.max(1), 1)
    } else {
        let y = n.div_ceil(max);
        (n.div_ceil(y), y)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grid_covers_every_workgroup() {
        for &(n, m) in &[
            (1u32, 65535u32),
            (65535, 65535),
            (65536, 65535),
            (151936, 65535),
            (10, 4),
        ] {
            let (x, y) = super::grid(n, m);
            assert!(x <= m && y <= m && x * y >= n, "n={n} m={m} -> {x}x{y}");
        }
    }
}
