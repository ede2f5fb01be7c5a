//! RMSNorm (Zhang & Sennrich, 2019) as used by llama: `y = x / sqrt(mean(x²) + eps) * w`
//! per row (`shaders/rmsnorm.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::{need_f32, reduce_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::Result;

const WGSL: &str = include_str!("../../../shaders/rmsnorm.wgsl");

/// Mirrors `Params` in rmsnorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RmsNormParams {
    pub ncols: u32,
    pub nrows: u32,
    pub eps: f32,
    pub grid_x: u32,
}
const _: () = assert!(std::mem::size_of::<RmsNormParams>() == 16);

/// Record `y = rmsnorm(x) * weight` over `nrows` rows of `ncols`.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    y: &wgpu::Buffer,
    ncols: usize,
    nrows: usize,
    eps: f32,
) -> Result<()> {
    need_f32("rmsnorm x", x, ncols * nrows)?;
    need_f32("rmsnorm weight", weight, ncols)?;
    need_f32("rmsnorm y", y, ncols * nrows)?;
    let pipeline = reduce_pipeline(ctx, "rmsnorm", WGSL)?;
    let groups = grid(to_u32("rmsnorm rows", nrows)?, ctx.max_groups());
    let params = RmsNormParams {
        ncols: to_u32("rmsnorm cols", ncols)?,
        nrows: nrows as u32,
        eps,
        grid_x: groups.0,
    };
    let ub = ctx.uniform("rmsnorm.params", &params);
    let bg = ctx.bind("rmsnorm", &pipeline, &[x, weight, y, &ub]);
    ctx.dispatch(encoder, "rmsnorm", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference.
pub fn reference(x: &[f32], weight: &[f32], ncols: usize, eps: f32) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(ncols) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / ncols as f64;
        let scale = 1.0 / (ms + eps as f64).sqrt();
        y.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| (v as f64 * scale * w as f64) as f32),
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn rmsnorm_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for &(ncols, nrows) in &[(1usize, 3usize), (67, 1), (576, 7), (1001, 5)] {
            let mut rng = SplitMix64::new(test_seed(ncols as u64));
            let x = rng.vec_f32(ncols * nrows, -3.0, 3.0);
            let w = rng.vec_f32(ncols, 0.5, 1.5);
            let want = reference(&x, &w, ncols, 1e-5);
            let (gx, gw) = (ctx.upload("x", &x).unwrap(), ctx.upload("w", &w).unwrap());
            let gy = ctx.storage_f32("y", x.len()).unwrap();
            let mut enc = ctx.encoder("test");
            record(ctx, &mut enc, &gx, &gw, &gy, ncols, nrows, 1e-5).unwrap();
            ctx.submit_wait(enc).unwrap();
            let got = ctx.read_f32(&gy, x.len()).unwrap();
            assert_close(&format!("rmsnorm {nrows}x{ncols}"), &got, &want, 1e-5);
        }
    }
}
