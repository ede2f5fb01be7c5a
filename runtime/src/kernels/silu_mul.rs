//! SwiGLU's gating product (Shazeer, 2020) `out = silu(gate) * up` with
//! `silu(g) = g / (1 + e^-g)` (`shaders/silu_mul.wgsl`).

use super::record_binary;
use crate::gpu::GpuContext;
use crate::Result;

const WGSL: &str = include_str!("../../../shaders/silu_mul.wgsl");

/// Record `out[i] = silu(gate[i]) * up[i]` for i < n.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    record_binary(ctx, encoder, "silu_mul", WGSL, [gate, up, out], n)
}

/// CPU reference.
pub fn reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| ((g as f64 / (1.0 + (-g as f64).exp())) * u as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn silu_mul_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for &n in &[1usize, 100, 1537] {
            let mut rng = SplitMix64::new(test_seed(n as u64 + 9));
            // Include large-magnitude gates where exp(-g) overflows f32.
            let mut g = rng.vec_f32(n, -8.0, 8.0);
            if n > 1 {
                g[0] = -120.0;
            }
            let u = rng.vec_f32(n, -2.0, 2.0);
            let out = ctx.storage_f32("out", n).unwrap();
            let mut enc = ctx.encoder("test");
            let (gg, gu) = (ctx.upload("g", &g).unwrap(), ctx.upload("u", &u).unwrap());
            record(ctx, &mut enc, &gg, &gu, &out, n).unwrap();
            ctx.submit_wait(enc).unwrap();
            let want = reference(&g, &u);
            let got = ctx.read_f32(&out, n).unwrap();
            assert_close(&format!("silu_mul {n}"), &got, &want, 1e-5);
        }
    }
}
