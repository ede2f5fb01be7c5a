//! Buffer copy in 16-byte words (`shaders/copy.wgsl`): `dst[i] = src[i]`. Nothing in the
//! forward pass uses it; `kvedge bench --roofline` times it on a large buffer to measure
//! the bandwidth that bounds decode (bytes read + bytes written per second), the way
//! STREAM's copy kernel does for CPUs.

use bytemuck::{Pod, Zeroable};

use super::{plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/copy.wgsl");

/// Mirrors `Params` in copy.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CopyParams {
    pub n: u32,
    pub grid_x: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<CopyParams>() == 16);

/// Record a copy of the first `words` 16-byte words of `src` into `dst`.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    words: usize,
) -> Result<()> {
    let bytes = words as u64 * 16;
    if words == 0 || src.size() < bytes || dst.size() < bytes {
        return Err(Error::InvalidArgument(format!(
            "copy: {words} words of 16 bytes need {bytes} bytes in each buffer; source has {}, destination {}",
            src.size(),
            dst.size()
        )));
    }
    let pipeline = plain_pipeline(ctx, "copy", WGSL)?;
    let groups = grid(to_u32("copy", words)?.div_ceil(256), ctx.max_groups());
    let params = CopyParams {
        n: words as u32,
        grid_x: groups.0,
        _pad: [0; 2],
    };
    let ub = ctx.uniform("copy.params", &params);
    let bg = ctx.bind("copy", &pipeline, &[src, dst, &ub]);
    ctx.dispatch(encoder, "copy", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference: the first `words` 16-byte words (4 u32 each).
pub fn reference(src: &[u32], dst: &mut [u32], words: usize) {
    dst[..4 * words].copy_from_slice(&src[..4 * words]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{test_context, test_seed};
    use crate::rng::SplitMix64;

    #[test]
    fn copy_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for &(len, words) in &[(4usize, 1usize), (260, 63), (260, 65), (16400, 4099)] {
            let mut rng = SplitMix64::new(test_seed(len as u64));
            let src: Vec<u32> = (0..len).map(|_| rng.next_u32()).collect();
            let init: Vec<u32> = (0..len).map(|_| rng.next_u32()).collect();
            let (gs, gd) = (
                ctx.upload("src", &src).unwrap(),
                ctx.upload("dst", &init).unwrap(),
            );
            let mut enc = ctx.encoder("test");
            record(ctx, &mut enc, &gs, &gd, words).unwrap();
            ctx.submit_wait(enc).unwrap();
            let got: Vec<u32> = ctx
                .read_f32(&gd, len)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let mut want = init.clone();
            reference(&src, &mut want, words);
            assert_eq!(got, want, "copy of {words} words in buffers of {len} u32");
        }
    }

    #[test]
    fn copy_rejects_short_buffers() {
        let Some(ctx) = test_context() else { return };
        let a = ctx.storage_f32("a", 8).unwrap();
        let mut enc = ctx.encoder("test");
        assert!(record(ctx, &mut enc, &a, &a, 3).is_err());
        assert!(record(ctx, &mut enc, &a, &a, 0).is_err());
    }
}
