//! Element-wise sum `out = a + b` (`shaders/add.wgsl`): the residual connection.

use super::record_binary;
use crate::gpu::GpuContext;
use crate::Result;

const WGSL: &str = include_str!("../../../shaders/add.wgsl");

/// Record `out[i] = a[i] + b[i]` for i < n.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    record_binary(ctx, encoder, "add", WGSL, [a, b, out], n)
}

/// CPU reference.
pub fn reference(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn add_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for &n in &[1usize, 63, 65, 4099] {
            let mut rng = SplitMix64::new(test_seed(n as u64));
            let (a, b) = (rng.vec_f32(n, -2.0, 2.0), rng.vec_f32(n, -2.0, 2.0));
            let out = ctx.storage_f32("out", n).unwrap();
            let mut enc = ctx.encoder("test");
            let (ga, gb) = (ctx.upload("a", &a).unwrap(), ctx.upload("b", &b).unwrap());
            record(ctx, &mut enc, &ga, &gb, &out, n).unwrap();
            ctx.submit_wait(enc).unwrap();
            assert_close(
                &format!("add {n}"),
                &ctx.read_f32(&out, n).unwrap(),
                &reference(&a, &b),
                1e-6,
            );
        }
    }
}
