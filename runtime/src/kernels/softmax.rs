//! Row-wise softmax in place with an input scale, `x = softmax(scale·x)`
//! (`shaders/softmax.wgsl`); the row max is subtracted before exp so nothing overflows.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, reduce_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::Result;

const WGSL: &str = include_str!("../../../shaders/softmax.wgsl");

/// Mirrors `Params` in softmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SoftmaxParams {
    pub ncols: u32,
    pub nrows: u32,
    pub scale: f32,
    pub grid_x: u32,
}
const _: () = assert!(std::mem::size_of::<SoftmaxParams>() == 16);

/// Record the in-place softmax of `nrows` rows of `ncols` in `x`.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    ncols: usize,
    nrows: usize,
    scale: f32,
) -> Result<()> {
    need_f32("softmax x", x, ncols * nrows)?;
    let pipeline = reduce_pipeline(ctx, "softmax", WGSL)?;
    let groups = grid(to_u32("softmax rows", nrows)?, ctx.max_groups());
    let params = SoftmaxParams {
        ncols: to_u32("softmax cols", ncols)?,
        nrows: nrows as u32,
        scale,
        grid_x: groups.0,
    };
    let ub = ctx.uniform("softmax.params", &params);
    let bg = ctx.bind("softmax", &pipeline, &[x, &ub]);
    ctx.dispatch(encoder, "softmax", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference.
pub fn reference(x: &mut [f32], ncols: usize, scale: f32) {
    for row in x.chunks_mut(ncols) {
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 * scale as f64));
        let e: Vec<f64> = row
            .iter()
            .map(|&v| (v as f64 * scale as f64 - m).exp())
            .collect();
        let s: f64 = e.iter().sum();
        for (o, v) in row.iter_mut().zip(e) {
            *o = (v / s) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn softmax_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for &(ncols, nrows, scale) in &[
            (1usize, 2usize, 1.0f32),
            (37, 9, 0.125),
            (1000, 3, 1.0),
            (4099, 2, 0.5),
        ] {
            let mut rng = SplitMix64::new(test_seed(ncols as u64 * 31));
            // Large logits: a naive exp would overflow.
            let x = rng.vec_f32(ncols * nrows, -100.0, 100.0);
            let mut want = x.clone();
            reference(&mut want, ncols, scale);
            let gx = ctx.upload("x", &x).unwrap();
            let mut enc = ctx.encoder("test");
            record(ctx, &mut enc, &gx, ncols, nrows, scale).unwrap();
            ctx.submit_wait(enc).unwrap();
            let got = ctx.read_f32(&gx, x.len()).unwrap();
            assert_close(&format!("softmax {nrows}x{ncols}"), &got, &want, 1e-5);
            for row in got.chunks(ncols) {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-4, "softmax row sums to {s}");
            }
        }
    }
}
