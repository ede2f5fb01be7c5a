//! In-place accumulate with broadcast, `a[i] += b[i mod b_len]` (`shaders/add.wgsl`): the
//! residual connection (`b_len = n`) and bias addition over rows (`b_len` = row length).

use bytemuck::{Pod, Zeroable};

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/add.wgsl");

/// Mirrors `Params` in add.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AddParams {
    pub n: u32,
    pub b_len: u32,
    pub grid_x: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<AddParams>() == 16);

/// Record `a[i] += b[i % b_len]` for i < n; `n` must be a multiple of `b_len`.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    n: usize,
    b_len: usize,
) -> Result<()> {
    if b_len == 0 || !n.is_multiple_of(b_len) {
        return Err(Error::InvalidArgument(format!(
            "add: {n} elements is not a whole number of rows of {b_len}"
        )));
    }
    need_f32("add a", a, n)?;
    need_f32("add b", b, b_len)?;
    let pipeline = plain_pipeline(ctx, "add", WGSL)?;
    let groups = grid(to_u32("add", n)?.div_ceil(64), ctx.max_groups());
    let params = AddParams {
        n: n as u32,
        b_len: b_len as u32,
        grid_x: groups.0,
        _pad: 0,
    };
    let ub = ctx.uniform("add.params", &params);
    let bg = ctx.bind("add", &pipeline, &[a, b, &ub]);
    ctx.dispatch(encoder, "add", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference.
pub fn reference(a: &mut [f32], b: &[f32]) {
    for (i, v) in a.iter_mut().enumerate() {
        *v += b[i % b.len()];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn add_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for &(n, b_len) in &[
            (1usize, 1usize),
            (63, 63),
            (65, 13),
            (4099, 4099),
            (896 * 7, 896),
        ] {
            let mut rng = SplitMix64::new(test_seed(n as u64));
            let (a, b) = (rng.vec_f32(n, -2.0, 2.0), rng.vec_f32(b_len, -2.0, 2.0));
            let ga = ctx.upload("a", &a).unwrap();
            let gb = ctx.upload("b", &b).unwrap();
            let mut enc = ctx.encoder("test");
            record(ctx, &mut enc, &ga, &gb, n, b_len).unwrap();
            ctx.submit_wait(enc).unwrap();
            let mut want = a.clone();
            reference(&mut want, &b);
            assert_close(
                &format!("add {n} (b {b_len})"),
                &ctx.read_f32(&ga, n).unwrap(),
                &want,
                1e-6,
            );
        }
    }

    #[test]
    fn add_rejects_partial_rows() {
        let Some(ctx) = test_context() else { return };
        let a = ctx.storage_f32("a", 10).unwrap();
        let mut enc = ctx.encoder("test");
        assert!(record(ctx, &mut enc, &a, &a, 10, 3).is_err());
    }
}
