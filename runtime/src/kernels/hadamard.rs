//! In-place Walsh-Hadamard rotation of rows (`shaders/hadamard.wgsl`). Rotating K before
//! it enters a quantized cache spreads the few large channels of K (RoPE's low
//! frequencies) over many values, so per-block absmax scales waste less of their range
//! (QuaRot, Ashkboos et al., 2024, arXiv 2404.00456; Palu rotates its latents the same
//! way). Q gets the same rotation, and because the rotation is orthonormal, q·k is
//! unchanged: attention needs no other change. The segment is the largest power of two
//! that divides the head dim (64 or 128 for the models at hand).

use bytemuck::{Pod, Zeroable};

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/hadamard.wgsl");
const MAX_DIM: usize = 256;

/// Mirrors `Params` in hadamard.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct HadamardParams {
    n_rows: u32,
    dim: u32,
    seg: u32,
    grid_x: u32,
}
const _: () = assert!(std::mem::size_of::<HadamardParams>() == 16);

/// The rotation's segment for rows of `dim` values: the largest power of two dividing it.
pub fn segment(dim: usize) -> usize {
    1 << dim.trailing_zeros()
}

fn validate(dim: usize) -> Result<()> {
    if dim == 0 || dim > MAX_DIM || segment(dim) < 2 {
        return Err(Error::InvalidArgument(format!(
            "hadamard: rows of {dim} values; expected an even length of at most {MAX_DIM}"
        )));
    }
    Ok(())
}

/// Record the rotation of `n_rows` rows of `dim` values of `x`, in place.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    n_rows: usize,
    dim: usize,
) -> Result<()> {
    validate(dim)?;
    need_f32("hadamard x", x, n_rows * dim)?;
    let pipeline = plain_pipeline(ctx, "hadamard", WGSL)?;
    let groups = grid(to_u32("hadamard", n_rows)?.div_ceil(64), ctx.max_groups());
    let params = HadamardParams {
        n_rows: n_rows as u32,
        dim: dim as u32,
        seg: segment(dim) as u32,
        grid_x: groups.0,
    };
    let ub = ctx.uniform("hadamard.params", &params);
    let bg = ctx.bind("hadamard", &pipeline, &[x, &ub]);
    ctx.dispatch(encoder, "hadamard", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference, in place: the same butterflies in the same order.
pub fn reference(x: &mut [f32], dim: usize) -> Result<()> {
    validate(dim)?;
    let seg = segment(dim);
    let norm = 1.0 / (seg as f32).sqrt();
    for row in x.chunks_mut(dim) {
        for s in row.chunks_mut(seg) {
            let mut h = 1;
            while h < seg {
                for i in (0..seg).step_by(2 * h) {
                    for j in i..i + h {
                        let (a, b) = (s[j], s[j + h]);
                        s[j] = a + b;
                        s[j + h] = a - b;
                    }
                }
                h *= 2;
            }
        }
        for v in row.iter_mut() {
            *v *= norm;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn rotation_is_orthonormal_and_keeps_dot_products() {
        let mut rng = SplitMix64::new(test_seed(41));
        for dim in [64, 96, 128] {
            let (mut a, mut b) = (rng.vec_f32(dim, -1.0, 1.0), rng.vec_f32(dim, -1.0, 1.0));
            let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
            let before = dot(&a, &b);
            let norm = dot(&a, &a);
            let a0 = a.clone();
            reference(&mut a, dim).unwrap();
            reference(&mut b, dim).unwrap();
            assert!((dot(&a, &b) - before).abs() < 1e-4, "dim {dim}: q·k kept");
            assert!((dot(&a, &a) - norm).abs() < 1e-4, "dim {dim}: norm kept");
            reference(&mut a, dim).unwrap();
            assert_close("H·H = I", &a, &a0, 1e-6);
        }
        // One outlier channel is spread over its segment.
        let mut x = vec![0.0f32; 64];
        x[3] = 8.0;
        reference(&mut x, 64).unwrap();
        assert!(x.iter().all(|v| (v.abs() - 1.0).abs() < 1e-6));
        assert!(reference(&mut [0.0; 3], 3).is_err());
    }

    #[test]
    fn hadamard_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(42));
        for (rows, dim) in [(37, 64), (5, 96), (130, 128), (1, 256)] {
            let x = rng.vec_f32(rows * dim, -2.0, 2.0);
            let g = ctx.upload("x", &x).unwrap();
            let mut enc = ctx.encoder("test");
            record(ctx, &mut enc, &g, rows, dim).unwrap();
            ctx.submit_wait(enc).unwrap();
            let mut want = x.clone();
            reference(&mut want, dim).unwrap();
            let got = ctx.read_f32(&g, x.len()).unwrap();
            assert_close(&format!("hadamard {rows}x{dim}"), &got, &want, 1e-6);
        }
    }
}
