//! Rotary position embedding (RoFormer, Su et al., 2021), in place on [token][head][dim]
//! (`shaders/rope.wgsl`). Two GGUF layouts: llama-arch models rotate adjacent pairs
//! (2i, 2i+1) (their Q/K weights were permuted at conversion); qwen2 and other
//! neox-style models rotate dim i with dim i + n_rot/2. Only the first `n_rot` dims rotate
//! (`rope.dimension_count`); pair i turns by `pos * freq_base^(-2i/n_rot)`.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/rope.wgsl");

/// Which dims form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// (2i, 2i+1): llama-arch GGUFs.
    Adjacent,
    /// (i, i + n_rot/2): qwen2, neox.
    Halves,
}

/// Geometry and frequency of a RoPE application.
#[derive(Clone, Copy, Debug)]
pub struct RopeConfig {
    pub head_dim: usize,
    pub n_heads: usize,
    pub n_rot: usize,
    pub freq_base: f32,
    /// Linear context scaling (1 / `rope.scaling.factor`); 1 for none.
    pub freq_scale: f32,
    pub layout: RopeLayout,
}

/// Mirrors `Params` in rope.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RopeParams {
    pub head_dim: u32,
    pub n_heads: u32,
    pub n_tokens: u32,
    pub n_rot: u32,
    pub freq_base: f32,
    pub neox: u32,
    pub grid_x: u32,
    pub freq_scale: f32,
}
const _: () = assert!(std::mem::size_of::<RopeParams>() == 32);

fn validate(cfg: &RopeConfig) -> Result<()> {
    if cfg.n_rot == 0 || !cfg.n_rot.is_multiple_of(2) || cfg.n_rot > cfg.head_dim {
        return Err(Error::InvalidArgument(format!(
            "rope: rotated dims must be even and in 2..={}, got {}",
            cfg.head_dim, cfg.n_rot
        )));
    }
    Ok(())
}

/// Record the rotation of `x` ([positions.len()][n_heads][head_dim]) at `positions`
/// (a u32 buffer of `n_tokens` positions).
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    positions: &wgpu::Buffer,
    n_tokens: usize,
    cfg: &RopeConfig,
) -> Result<()> {
    validate(cfg)?;
    need_f32("rope x", x, n_tokens * cfg.n_heads * cfg.head_dim)?;
    need_f32("rope positions", positions, n_tokens)?;
    let pipeline = plain_pipeline(ctx, "rope", WGSL)?;
    let threads = to_u32("rope threads", n_tokens * cfg.n_heads * cfg.n_rot / 2)?;
    let groups = grid(threads.div_ceil(64), ctx.max_groups());
    let params = RopeParams {
        head_dim: cfg.head_dim as u32,
        n_heads: cfg.n_heads as u32,
        n_tokens: n_tokens as u32,
        n_rot: cfg.n_rot as u32,
        freq_base: cfg.freq_base,
        neox: (cfg.layout == RopeLayout::Halves) as u32,
        grid_x: groups.0,
        freq_scale: cfg.freq_scale,
    };
    let ub = ctx.uniform("rope.params", &params);
    let bg = ctx.bind("rope", &pipeline, &[x, positions, &ub]);
    ctx.dispatch(encoder, "rope", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference (angles in f64).
pub fn reference(x: &mut [f32], positions: &[u32], cfg: &RopeConfig) -> Result<()> {
    validate(cfg)?;
    let half = cfg.n_rot / 2;
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..cfg.n_heads {
            let base = (t * cfg.n_heads + h) * cfg.head_dim;
            for i in 0..half {
                let theta = pos as f64
                    * cfg.freq_scale as f64
                    * (cfg.freq_base as f64).powf(-2.0 * i as f64 / cfg.n_rot as f64);
                let (s, c) = theta.sin_cos();
                let (a, b) = match cfg.layout {
                    RopeLayout::Adjacent => (base + 2 * i, base + 2 * i + 1),
                    RopeLayout::Halves => (base + i, base + i + half),
                };
                let (x0, x1) = (x[a] as f64, x[b] as f64);
                x[a] = (x0 * c - x1 * s) as f32;
                x[b] = (x0 * s + x1 * c) as f32;
            }
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
    fn rope_matches_reference_in_both_layouts() {
        let Some(ctx) = test_context() else { return };
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            // head_dim 64 fully rotated; head_dim 46 with a partial rotation of 30 dims.
            for &(head_dim, n_rot, n_heads, n_tokens) in
                &[(64usize, 64usize, 3usize, 5usize), (46, 30, 7, 3)]
            {
                let cfg = RopeConfig {
                    head_dim,
                    n_heads,
                    n_rot,
                    freq_base: 10000.0,
                    // The partial rotation also exercises linear scaling.
                    freq_scale: if n_rot < head_dim { 0.25 } else { 1.0 },
                    layout,
                };
                let mut rng = SplitMix64::new(test_seed(head_dim as u64));
                let x = rng.vec_f32(n_tokens * n_heads * head_dim, -1.0, 1.0);
                let pos: Vec<u32> = (0..n_tokens).map(|_| rng.below(2000) as u32).collect();
                let mut want = x.clone();
                reference(&mut want, &pos, &cfg).unwrap();
                let gx = ctx.upload("x", &x).unwrap();
                let gp = ctx.upload("pos", &pos).unwrap();
                let mut enc = ctx.encoder("test");
                record(ctx, &mut enc, &gx, &gp, n_tokens, &cfg).unwrap();
                ctx.submit_wait(enc).unwrap();
                let got = ctx.read_f32(&gx, x.len()).unwrap();
                // Angles reach ~2000 rad, where f32 carries ~1e-4 rad of error.
                assert_close(
                    &format!("rope {layout:?} d{head_dim} r{n_rot}"),
                    &got,
                    &want,
                    2e-3,
                );
                if n_rot < head_dim {
                    let tail = (n_tokens * n_heads - 1) * head_dim + head_dim - 1;
                    assert_eq!(got[tail], x[tail], "dims past n_rot must not move");
                }
            }
        }
    }

    #[test]
    fn rope_rejects_odd_rotation() {
        let cfg = RopeConfig {
            head_dim: 8,
            n_heads: 1,
            n_rot: 7,
            freq_base: 1e4,
            freq_scale: 1.0,
            layout: RopeLayout::Adjacent,
        };
        assert!(reference(&mut [0.0; 8], &[0], &cfg).is_err());
    }
}
