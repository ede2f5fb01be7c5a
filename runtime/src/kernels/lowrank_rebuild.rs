//! Rebuild keys or values from Palu low-rank latents (Chang et al., arXiv 2407.21118) into
//! an f16 KV cache layout (`shaders/lowrank_rebuild.wgsl`). The latent cache holds, per
//! group of g KV heads and slot, the latent h = D·x (r values in a KV storage type, laid
//! out like a cache of `n_groups` heads of width r); the rebuilt row of head hh of group G
//! is A_G·h + b_G (A the [n_kv_heads·head_dim][r] up-projection, group G's rows), and
//! keys are rotated by RoPE at the slot's original position. Attention then runs over the
//! rebuilt layer as over any f16 cache, so eviction, budgets and TidalDecode act on latent
//! slots unchanged.

use bytemuck::{Pod, Zeroable};

use super::rope::{RopeConfig, RopeLayout};
use super::{kv_pipeline, need_f32, to_u32, KvAccess};
use crate::gpu::{grid, GpuContext};
use crate::kv::{decode_row, encode_row, KvCacheConfig, KvType};
use crate::quant::dot::dot_f32;
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/lowrank_rebuild.wgsl");

/// Largest latent rank and group width (g·head_dim) the kernel holds in workgroup memory.
pub const MAX_RANK: usize = 1024;
pub const MAX_WIDTH: usize = 1024;

/// Mirrors `Params` in lowrank_rebuild.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RebuildParams {
    pub rank: u32,
    pub head_dim: u32,
    pub group: u32,
    pub n_groups: u32,
    pub capacity: u32,
    pub n_slots: u32,
    pub has_bias: u32,
    pub rope: u32,
    pub n_rot: u32,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub neox: u32,
    pub grid_x: u32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<RebuildParams>() == 64);

/// The shape of a rebuild: the latent cache (groups as heads of width r, its type) and the
/// f16 cache it fills (`full`: all KV heads, the same capacity).
#[derive(Clone, Copy, Debug)]
pub struct RebuildShape {
    pub latent: KvCacheConfig,
    pub ty: KvType,
    pub full: KvCacheConfig,
    /// RoPE of one head's keys; None for values.
    pub rope: Option<RopeConfig>,
}

impl RebuildShape {
    fn group(&self) -> usize {
        self.full.n_kv_heads / self.latent.n_kv_heads.max(1)
    }

    fn validate(&self, n_slots: usize) -> Result<()> {
        let (lat, full) = (&self.latent, &self.full);
        let g = self.group();
        let bad = |what: String| Err(Error::InvalidArgument(format!("lowrank_rebuild: {what}")));
        if lat.n_kv_heads == 0 || g == 0 || g * lat.n_kv_heads != full.n_kv_heads {
            return bad(format!(
                "{} KV heads do not split into {} groups",
                full.n_kv_heads, lat.n_kv_heads
            ));
        }
        if lat.capacity != full.capacity || n_slots > full.capacity {
            return bad(format!(
                "{n_slots} slots of latent capacity {} into capacity {}",
                lat.capacity, full.capacity
            ));
        }
        if lat.head_dim == 0 || lat.head_dim > MAX_RANK || !self.ty.supports(lat.head_dim) {
            return bad(format!(
                "rank {} (at most {MAX_RANK}, and storable as {})",
                lat.head_dim,
                self.ty.name()
            ));
        }
        if g * full.head_dim > MAX_WIDTH || !full.head_dim.is_multiple_of(2) {
            return bad(format!(
                "group width {} (at most {MAX_WIDTH}, head dim even)",
                g * full.head_dim
            ));
        }
        if let Some(r) = &self.rope {
            if r.head_dim != full.head_dim || r.n_rot > r.head_dim || !r.n_rot.is_multiple_of(2) {
                return bad(format!("RoPE {r:?} for head dim {}", full.head_dim));
            }
        }
        Ok(())
    }
}

/// Record the rebuild of slots `0..n_slots` of every head: `latents` (u32 words),
/// `up` ([n_kv_heads·head_dim][r] f32), `bias` ([n_kv_heads·head_dim] f32, or None),
/// `pos` ([n_groups][capacity] u32; read only with RoPE) into `out` (f16 words).
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    shape: &RebuildShape,
    latents: &wgpu::Buffer,
    up: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    pos: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n_slots: usize,
) -> Result<()> {
    shape.validate(n_slots)?;
    let (lat, full) = (&shape.latent, &shape.full);
    if n_slots == 0 {
        return Ok(());
    }
    let width = full.n_kv_heads * full.head_dim;
    need_f32(
        "lowrank_rebuild latents",
        latents,
        lat.n_kv_heads * lat.capacity * shape.ty.row_words(lat.head_dim),
    )?;
    need_f32("lowrank_rebuild up", up, width * lat.head_dim)?;
    if let Some(b) = bias {
        need_f32("lowrank_rebuild bias", b, width)?;
    }
    need_f32(
        "lowrank_rebuild out",
        out,
        full.n_kv_heads * full.capacity * full.head_dim / 2,
    )?;
    if shape.rope.is_some() {
        need_f32(
            "lowrank_rebuild positions",
            pos,
            lat.n_kv_heads * lat.capacity,
        )?;
    }
    let access = KvAccess {
        k: shape.ty,
        v: None,
        encode: false,
    };
    let pipeline = kv_pipeline(ctx, "lowrank_rebuild", WGSL, &access)?;
    let groups = grid(
        to_u32("lowrank_rebuild", n_slots * lat.n_kv_heads)?,
        ctx.max_groups(),
    );
    let rope = shape.rope.unwrap_or(RopeConfig {
        head_dim: full.head_dim,
        n_heads: 1,
        n_rot: 2,
        freq_base: 10000.0,
        freq_scale: 1.0,
        layout: RopeLayout::Adjacent,
    });
    let params = RebuildParams {
        rank: lat.head_dim as u32,
        head_dim: full.head_dim as u32,
        group: shape.group() as u32,
        n_groups: lat.n_kv_heads as u32,
        capacity: full.capacity as u32,
        n_slots: n_slots as u32,
        has_bias: bias.is_some() as u32,
        rope: shape.rope.is_some() as u32,
        n_rot: rope.n_rot as u32,
        freq_base: rope.freq_base,
        freq_scale: rope.freq_scale,
        neox: (rope.layout == RopeLayout::Halves) as u32,
        grid_x: groups.0,
        _pad: [0; 3],
    };
    let ub = ctx.uniform("lowrank_rebuild.params", &params);
    // Without a bias any buffer stands in (the shader does not read it).
    let bg = ctx.bind(
        "lowrank_rebuild",
        &pipeline,
        &[latents, up, bias.unwrap_or(up), pos, out, &ub],
    );
    ctx.dispatch(encoder, "lowrank_rebuild", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference of [`record`], with `out` as u32 words; slots split over `threads`.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    shape: &RebuildShape,
    latents: &[u32],
    up: &[f32],
    bias: Option<&[f32]>,
    pos: &[u32],
    out: &mut [u32],
    n_slots: usize,
    threads: usize,
) -> Result<()> {
    shape.validate(n_slots)?;
    let (lat, full) = (&shape.latent, &shape.full);
    let (r, hd, g) = (lat.head_dim, full.head_dim, shape.group());
    let width = g * hd;
    let (lrow, orow) = (shape.ty.row_words(r), hd / 2);
    for grp in 0..lat.n_kv_heads {
        let up = &up[grp * width * r..(grp + 1) * width * r];
        let bias = bias.map(|b| &b[grp * width..(grp + 1) * width]);
        // Rows [n_slots][g·head_dim] of this group, split over threads by slots.
        let mut rows = vec![0.0f32; n_slots * width];
        let per = n_slots.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            for (c, rows) in rows.chunks_mut(per * width).enumerate() {
                s.spawn(move || {
                    let mut h = vec![0.0f32; r];
                    for (jj, y) in rows.chunks_exact_mut(width).enumerate() {
                        let at = (grp * lat.capacity + c * per + jj) * lrow;
                        decode_row(shape.ty, &latents[at..at + lrow], &mut h);
                        for (o, y) in y.iter_mut().enumerate() {
                            let a = &up[o * r..(o + 1) * r];
                            *y = dot_f32(a, &h) + bias.map_or(0.0, |b| b[o]);
                        }
                    }
                });
            }
        });
        if let Some(rope) = &shape.rope {
            let cfg = RopeConfig {
                n_heads: g,
                ..*rope
            };
            let p = &pos[grp * lat.capacity..grp * lat.capacity + n_slots];
            super::rope::reference(&mut rows, p, &cfg)?;
        }
        for (j, y) in rows.chunks_exact(width).enumerate() {
            for hh in 0..g {
                let at = ((grp * g + hh) * full.capacity + j) * orow;
                encode_row(
                    KvType::F16,
                    &y[hh * hd..(hh + 1) * hd],
                    &mut out[at..at + orow],
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::decode_head_into;
    use crate::kernels::check::{test_context, test_seed};
    use crate::kernels::kv_store;
    use crate::rng::SplitMix64;

    fn case(
        rng: &mut SplitMix64,
        n_kv: usize,
        g: usize,
        hd: usize,
        r: usize,
        ty: KvType,
        layout: RopeLayout,
    ) -> (RebuildShape, Vec<u32>, Vec<f32>, Vec<f32>, Vec<u32>) {
        let cap = 13;
        let full = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: n_kv,
            head_dim: hd,
            capacity: cap,
            k_type: KvType::F16,
            v_type: KvType::F16,
        };
        let latent = KvCacheConfig {
            n_kv_heads: n_kv / g,
            head_dim: r,
            k_type: ty,
            v_type: ty,
            ..full
        };
        let h = rng.vec_f32(cap * latent.n_kv_heads * r, -1.0, 1.0);
        let mut lat = vec![0u32; latent.n_kv_heads * cap * ty.row_words(r)];
        kv_store::reference(&latent, ty, &h, &mut lat, cap, 0);
        let up = rng.vec_f32(n_kv * hd * r, -0.3, 0.3);
        let bias = rng.vec_f32(n_kv * hd, -1.0, 1.0);
        let pos: Vec<u32> = (0..latent.n_kv_heads * cap)
            .map(|_| rng.next_u32() % 9000)
            .collect();
        let rope = RopeConfig {
            head_dim: hd,
            n_heads: 1,
            n_rot: hd - 2 * (hd / 8),
            freq_base: 10000.0,
            freq_scale: 0.5,
            layout,
        };
        let shape = RebuildShape {
            latent,
            ty,
            full,
            rope: Some(rope),
        };
        (shape, lat, up, bias, pos)
    }

    /// The reference equals the definition written out one slot at a time in f64:
    /// decode, multiply, add, rotate.
    #[test]
    fn reference_matches_the_definition() {
        let mut rng = SplitMix64::new(test_seed(77));
        for (n_kv, g, hd, r, ty) in [(2, 1, 8, 4, KvType::F16), (4, 2, 16, 32, KvType::Q4)] {
            let (shape, lat, up, bias, pos) =
                case(&mut rng, n_kv, g, hd, r, ty, RopeLayout::Halves);
            let cap = shape.full.capacity;
            let mut out = vec![0u32; n_kv * cap * hd / 2];
            reference(&shape, &lat, &up, Some(&bias), &pos, &mut out, 11, 3).unwrap();
            let rope = shape.rope.unwrap();
            let mut h = vec![0.0f32; cap * r];
            let mut got = vec![0.0f32; cap * hd];
            for kvh in 0..n_kv {
                let grp = kvh / g;
                decode_head_into(&shape.latent, ty, &lat, grp, cap, &mut h);
                decode_head_into(&shape.full, KvType::F16, &out, kvh, 11, &mut got);
                for j in 0..11 {
                    let y: Vec<f64> = (0..hd)
                        .map(|d| {
                            let row = kvh * hd + d;
                            (0..r)
                                .map(|i| up[row * r + i] as f64 * h[j * r + i] as f64)
                                .sum::<f64>()
                                + bias[row] as f64
                        })
                        .collect();
                    let p = pos[grp * cap + j] as f64 * rope.freq_scale as f64;
                    let half = rope.n_rot / 2;
                    let mut want = y.clone();
                    for i in 0..half {
                        let th =
                            p * (rope.freq_base as f64).powf(-2.0 * i as f64 / rope.n_rot as f64);
                        let (a, b) = (i, i + half);
                        want[a] = y[a] * th.cos() - y[b] * th.sin();
                        want[b] = y[a] * th.sin() + y[b] * th.cos();
                    }
                    for d in 0..hd {
                        let (a, b) = (got[j * hd + d] as f64, want[d]);
                        assert!(
                            (a - b).abs() <= 2e-3 * (1.0 + b.abs()),
                            "{kvh} {j} {d}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// The kernel equals the reference on random latents of every type, groups of 1, 2
    /// and all heads, both RoPE layouts, partial rotation, with and without bias.
    #[test]
    fn lowrank_rebuild_matches_reference() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(78));
        for (n_kv, g, hd, r, ty, layout, with_bias, rope) in [
            (2, 1, 16, 8, KvType::F16, RopeLayout::Adjacent, true, true),
            (4, 2, 32, 32, KvType::Q8, RopeLayout::Halves, false, true),
            (3, 3, 64, 96, KvType::Q4, RopeLayout::Adjacent, true, true),
            (2, 2, 64, 72, KvType::F16, RopeLayout::Halves, true, false),
        ] {
            let (mut shape, lat, up, bias, pos) = case(&mut rng, n_kv, g, hd, r, ty, layout);
            if !rope {
                shape.rope = None;
            }
            let n = 11;
            let words = n_kv * shape.full.capacity * hd / 2;
            let mut want = vec![0u32; words];
            let b = with_bias.then_some(&bias[..]);
            reference(&shape, &lat, &up, b, &pos, &mut want, n, 2).unwrap();
            let lat_b = ctx.upload("lat", &lat).unwrap();
            let up_b = ctx.upload("up", &up).unwrap();
            let bias_b = ctx.upload("bias", &bias).unwrap();
            let pos_b = ctx.upload("pos", &pos).unwrap();
            let out_b = ctx.storage_f32("out", words).unwrap();
            let mut enc = ctx.encoder("test");
            let bb = with_bias.then_some(&bias_b);
            record(ctx, &mut enc, &shape, &lat_b, &up_b, bb, &pos_b, &out_b, n).unwrap();
            ctx.queue.submit([enc.finish()]);
            let got: Vec<u32> = ctx
                .read_f32(&out_b, words)
                .unwrap()
                .iter()
                .map(|w| w.to_bits())
                .collect();
            let (mut a, mut b) = (vec![0.0f32; n * hd], vec![0.0f32; n * hd]);
            for kvh in 0..n_kv {
                decode_head_into(&shape.full, KvType::F16, &got, kvh, n, &mut a);
                decode_head_into(&shape.full, KvType::F16, &want, kvh, n, &mut b);
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 3e-3 * (1.0 + y.abs()),
                        "{n_kv} heads, g {g}, r {r}, {ty:?}: head {kvh} value {i}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
