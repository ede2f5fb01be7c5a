//! Scalar CPU dequantization of whole tensors and rows: the reference the GPU kernels and
//! every later CPU path are held against. Plain loops, no SIMD, no cleverness.

use half::{bf16, f16};

use super::blocks::*;
use super::GgmlType;
use crate::{Error, Result};

fn blocks<B: QuantBlock>(bytes: &[u8], out: &mut [f32]) {
    let bsz = std::mem::size_of::<B>();
    for (chunk, o) in bytes.chunks_exact(bsz).zip(out.chunks_exact_mut(B::ELEMS)) {
        // Read unaligned: tensor data is only guaranteed byte alignment in general.
        let b: B = bytemuck::pod_read_unaligned(chunk);
        b.dequant(o);
    }
}

/// Dequantize `bytes` of type `ty` into `out`; `out.len()` is the element count, and
/// `bytes.len()` must be exactly what that many elements take.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let need = ty
        .bytes_for(out.len() as u64)
        .ok_or_else(|| Error::ShapeMismatch {
            what: format!(
                "{ty} dequantize: element count must be a multiple of {}",
                ty.block_elems()
            ),
            expected: out.len().div_ceil(ty.block_elems()) * ty.block_elems(),
            got: out.len(),
        })?;
    if bytes.len() as u64 != need {
        return Err(Error::ShapeMismatch {
            what: format!("{ty} dequantize of {} elements: input bytes", out.len()),
            expected: need as usize,
            got: bytes.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(bytes, out),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(bytes, out),
        GgmlType::Q5_0 => blocks::<BlockQ5_0>(bytes, out),
        GgmlType::Q5_1 => blocks::<BlockQ5_1>(bytes, out),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(bytes, out),
        GgmlType::Q2_K => blocks::<BlockQ2K>(bytes, out),
        GgmlType::Q3_K => blocks::<BlockQ3K>(bytes, out),
        GgmlType::Q4_K => blocks::<BlockQ4K>(bytes, out),
        GgmlType::Q5_K => blocks::<BlockQ5K>(bytes, out),
        GgmlType::Q6_K => blocks::<BlockQ6K>(bytes, out),
        other => {
            return Err(Error::UnsupportedType {
                what: "dequantize".into(),
                ty: other,
                supported: GgmlType::compute_type_names(),
            })
        }
    }
    Ok(())
}

/// Dequantize row `row` of a 2-D tensor with `ncols` columns stored row-major in `bytes`.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], ncols: usize, row: usize) -> Result<Vec<f32>> {
    let row_bytes = ty
        .bytes_for(ncols as u64)
        .ok_or_else(|| Error::ShapeMismatch {
            what: format!("{ty} row length must be a multiple of {}", ty.block_elems()),
            expected: ncols.div_ceil(ty.block_elems()) * ty.block_elems(),
            got: ncols,
        })? as usize;
    let start = row * row_bytes;
    let slice = bytes
        .get(start..start + row_bytes)
        .ok_or_else(|| Error::ShapeMismatch {
            what: format!("{ty} row {row}: tensor bytes"),
            expected: start + row_bytes,
            got: bytes.len(),
        })?;
    let mut out = vec![0.0; ncols];
    dequantize(ty, slice, &mut out)?;
    Ok(out)
}
