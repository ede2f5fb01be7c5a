//! Random well-formed tensor bytes of any compute type: every quant bit pattern is drawn
//! uniformly, while the f16 scales are drawn in a range that keeps dequantized weights
//! near the magnitude of real model weights (and always finite). Used by kernel tests,
//! benchmarks and synthetic models.

use half::{bf16, f16};

use super::blocks::*;
use super::GgmlType;
use crate::rng::SplitMix64;
use crate::{Error, Result};

fn scale(rng: &mut SplitMix64, lo: f32, hi: f32) -> f16 {
    f16::from_f32(rng.uniform(lo, hi))
}

fn push<B: bytemuck::Pod>(out: &mut Vec<u8>, b: B) {
    out.extend_from_slice(bytemuck::bytes_of(&b));
}

/// `n_elems` elements of type `ty` (a whole number of blocks) as raw GGUF bytes.
pub fn random_blocks(ty: GgmlType, n_elems: usize, rng: &mut SplitMix64) -> Result<Vec<u8>> {
    let bytes = ty
        .bytes_for(n_elems as u64)
        .ok_or_else(|| Error::ShapeMismatch {
            what: format!(
                "random {ty} tensor: element count must be a multiple of {}",
                ty.block_elems()
            ),
            expected: n_elems.div_ceil(ty.block_elems()) * ty.block_elems(),
            got: n_elems,
        })? as usize;
    let mut out = Vec::with_capacity(bytes);
    let nb = n_elems / ty.block_elems();
    let mut raw = [0u8; 256];
    for _ in 0..nb {
        rng.fill_bytes(&mut raw);
        match ty {
            GgmlType::F32 => out.extend_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes()),
            GgmlType::F16 => {
                out.extend_from_slice(&f16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes())
            }
            GgmlType::BF16 => {
                out.extend_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes())
            }
            GgmlType::Q4_0 => push(
                &mut out,
                BlockQ4_0 {
                    d: scale(rng, -0.02, 0.02),
                    qs: arr(&raw[..16]),
                },
            ),
            GgmlType::Q4_1 => push(
                &mut out,
                BlockQ4_1 {
                    d: scale(rng, 0.0, 0.02),
                    m: scale(rng, -0.15, 0.0),
                    qs: arr(&raw[..16]),
                },
            ),
            GgmlType::Q5_0 => push(
                &mut out,
                BlockQ5_0 {
                    d: scale(rng, -0.01, 0.01),
                    qh: arr(&raw[..4]),
                    qs: arr(&raw[4..20]),
                },
            ),
            GgmlType::Q5_1 => push(
                &mut out,
                BlockQ5_1 {
                    d: scale(rng, 0.0, 0.01),
                    m: scale(rng, -0.15, 0.0),
                    qh: arr(&raw[..4]),
                    qs: arr(&raw[4..20]),
                },
            ),
            GgmlType::Q8_0 => push(
                &mut out,
                BlockQ8_0 {
                    d: scale(rng, -0.002, 0.002),
                    qs: bytemuck::cast(arr::<32>(&raw[..32])),
                },
            ),
            GgmlType::Q2_K => push(
                &mut out,
                BlockQ2K {
                    scales: arr(&raw[..16]),
                    qs: arr(&raw[16..80]),
                    d: scale(rng, 0.0, 0.01),
                    dmin: scale(rng, 0.0, 0.01),
                },
            ),
            GgmlType::Q3_K => push(
                &mut out,
                BlockQ3K {
                    hmask: arr(&raw[..32]),
                    qs: arr(&raw[32..96]),
                    scales: arr(&raw[96..108]),
                    d: scale(rng, -0.002, 0.002),
                },
            ),
            GgmlType::Q4_K => push(
                &mut out,
                BlockQ4K {
                    d: scale(rng, 0.0, 0.002),
                    dmin: scale(rng, 0.0, 0.002),
                    scales: arr(&raw[..12]),
                    qs: arr(&raw[12..140]),
                },
            ),
            GgmlType::Q5_K => {
                let mut qs = [0u8; 128];
                rng.fill_bytes(&mut qs);
                push(
                    &mut out,
                    BlockQ5K {
                        d: scale(rng, 0.0, 0.001),
                        dmin: scale(rng, 0.0, 0.002),
                        scales: arr(&raw[..12]),
                        qh: arr(&raw[12..44]),
                        qs,
                    },
                )
            }
            GgmlType::Q6_K => {
                let sc: [u8; 16] = arr(&raw[192..208]);
                push(
                    &mut out,
                    BlockQ6K {
                        ql: arr(&raw[..128]),
                        qh: arr(&raw[128..192]),
                        scales: bytemuck::cast(sc),
                        d: scale(rng, -0.0002, 0.0002),
                    },
                )
            }
            other => {
                return Err(Error::UnsupportedType {
                    what: "random tensor".into(),
                    ty: other,
                    supported: GgmlType::compute_type_names(),
                })
            }
        }
    }
    Ok(out)
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}
