//! Weight matrices on the GPU. A 2-D tensor is uploaded as its raw GGUF bytes (quantized
//! blocks stay quantized; kernels dequantize in registers). A tensor larger than one
//! storage binding is split by rows into chunks, each its own buffer of at most
//! `GpuContext::max_binding()` bytes; kernels are dispatched once per chunk with the
//! chunk's first row.

use super::GpuContext;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// One chunk of rows of a [`GpuMatrix`].
#[derive(Debug)]
pub struct MatrixChunk {
    pub buffer: wgpu::Buffer,
    pub first_row: u32,
    pub n_rows: u32,
}

/// A row-major matrix of `nrows` rows of `ncols` elements of type `ty`.
#[derive(Debug)]
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub ncols: u32,
    pub nrows: u32,
    /// Bytes of one row.
    pub row_bytes: u32,
    pub chunks: Vec<MatrixChunk>,
}

impl GpuMatrix {
    /// Upload `bytes` (exactly `nrows` rows of `ncols` elements of `ty`).
    pub fn upload(
        ctx: &GpuContext,
        label: &str,
        ty: GgmlType,
        ncols: usize,
        nrows: usize,
        bytes: &[u8],
    ) -> Result<Self> {
        if !ty.can_dequantize() {
            return Err(Error::UnsupportedType {
                what: format!("GPU matrix '{label}'"),
                ty,
                supported: GgmlType::compute_type_names(),
            });
        }
        let row_bytes = ty
            .bytes_for(ncols as u64)
            .ok_or_else(|| Error::ShapeMismatch {
                what: format!("'{label}': columns must be a multiple of the {ty} block"),
                expected: ncols.div_ceil(ty.block_elems()) * ty.block_elems(),
                got: ncols,
            })?;
        let total = row_bytes
            .checked_mul(nrows as u64)
            .filter(|&t| t == bytes.len() as u64)
            .ok_or_else(|| Error::ShapeMismatch {
                what: format!("'{label}' ({ty}, {nrows}x{ncols}) bytes"),
                expected: (row_bytes as usize).saturating_mul(nrows),
                got: bytes.len(),
            })?;
        let max = ctx.max_binding();
        let rows_per_chunk = (max / row_bytes.max(1)).min(u32::MAX as u64);
        if rows_per_chunk == 0 || nrows > u32::MAX as usize {
            return Err(Error::TooLarge {
                what: format!("one row of '{label}'"),
                bytes: row_bytes,
                limit: max,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let mut chunks = Vec::new();
        let mut first = 0u64;
        while first < nrows as u64 || (nrows == 0 && chunks.is_empty()) {
            let n = rows_per_chunk.min(nrows as u64 - first);
            let start = (first * row_bytes) as usize;
            let end = start + (n * row_bytes) as usize;
            let buffer = ctx.upload_bytes(label, &bytes[start..end])?;
            chunks.push(MatrixChunk {
                buffer,
                first_row: first as u32,
                n_rows: n as u32,
            });
            first += n;
            if nrows == 0 {
                break;
            }
        }
        log::debug!(
            "uploaded '{label}': {ty} {nrows}x{ncols}, {total} bytes in {} chunk(s)",
            chunks.len()
        );
        Ok(Self {
            ty,
            ncols: ncols as u32,
            nrows: nrows as u32,
            row_bytes: row_bytes as u32,
            chunks,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.row_bytes as u64 * self.nrows as u64
    }
}
