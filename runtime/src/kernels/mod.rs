//! GPU kernels: one module per WGSL file in `shaders/`. Each module owns its params struct
//! (`#[repr(C)]`, Pod, size asserted, mirrored field by field in the WGSL `Params`), the
//! bindings (in the order of its `dispatch` arguments), a recording function that appends
//! the dispatch to a command encoder, and a scalar CPU reference that its tests hold it
//! against on random inputs and odd shapes.
//!
//! Kernels that read weights dequantize them in registers: the shared pieces
//! `shaders/common/bytes.wgsl` (byte loads from the raw GGUF blocks) and
//! `shaders/common/dequant.wgsl` (one `decode_unit_<type>` per type) are prepended, and a
//! generated `decode_unit` forwards to the tensor type's function.

pub mod add;
pub mod attention;
pub mod attn_score;
pub mod check;
pub mod copy;
pub mod embed;
pub mod hadamard;
pub mod kv_compact;
pub mod kv_gate;
pub mod kv_q4c;
pub mod kv_select;
pub mod kv_store;
pub mod lowrank_rebuild;
pub mod matmul;
pub mod matvec;
pub mod rmsnorm;
pub mod rope;
pub mod silu_mul;
pub mod softmax;

use crate::gpu::GpuContext;
use crate::quant::GgmlType;
use crate::{Error, Result};

pub(crate) const BYTES_WGSL: &str = include_str!("../../../shaders/common/bytes.wgsl");
pub(crate) const DEQUANT_WGSL: &str = include_str!("../../../shaders/common/dequant.wgsl");
pub(crate) const REDUCE_WGSL: &str = include_str!("../../../shaders/common/reduce.wgsl");
const KV_FORMAT_WGSL: &str = include_str!("../../../shaders/common/kv_format.wgsl");
const KV_ENCODE_WGSL: &str = include_str!("../../../shaders/common/kv_encode.wgsl");

/// Which KV row functions a kernel needs (see `shaders/common/kv_format.wgsl`).
pub(crate) struct KvAccess {
    pub k: crate::kv::KvType,
    /// V's type when the kernel reads V.
    pub v: Option<crate::kv::KvType>,
    /// Also the encoders (`k_store`, `v_store`), reading f32 bindings `k` and `v`.
    pub encode: bool,
}

/// The pipeline of a kernel over KV rows, specialized for the storage types.
pub(crate) fn kv_pipeline(
    ctx: &GpuContext,
    kernel: &str,
    wgsl: &'static str,
    access: &KvAccess,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    let v = access.v.unwrap_or_default();
    let key = format!("{kernel}.k{}.v{}", access.k.name(), v.name());
    ctx.pipeline(&key, &[], || {
        let piece = |template: &str, name: &str, buf: &str, ty: &str, src: &str| {
            template
                .replace("KVNAME", name)
                .replace("KVBUF", buf)
                .replace("KVTY", ty)
                .replace("KVSRC", src)
        };
        let mut code = format!(
            "const K_TYPE: u32 = {}u;\nconst V_TYPE: u32 = {}u;\n",
            access.k.shader_id(),
            v.shader_id()
        );
        code += &piece(KV_FORMAT_WGSL, "k", "kc", "K_TYPE", "k");
        if access.v.is_some() {
            code += &piece(KV_FORMAT_WGSL, "v", "vc", "V_TYPE", "v");
        }
        if access.encode {
            code += &piece(KV_ENCODE_WGSL, "k", "kc", "K_TYPE", "k");
            code += &piece(KV_ENCODE_WGSL, "v", "vc", "V_TYPE", "v");
        }
        code + wgsl
    })
}

/// The dequantizer suffix of a type in `dequant.wgsl`.
fn dequant_fn(ty: GgmlType) -> Result<&'static str> {
    Ok(match ty {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q2_K => "q2_k",
        GgmlType::Q3_K => "q3_k",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        other => {
            return Err(Error::UnsupportedType {
                what: "GPU dequantizing kernel".into(),
                ty: other,
                supported: GgmlType::compute_type_names(),
            })
        }
    })
}

/// The pipeline of a weight-reading kernel specialized for `ty`.
pub(crate) fn quant_pipeline(
    ctx: &GpuContext,
    kernel: &str,
    wgsl: &'static str,
    ty: GgmlType,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    quant_pipeline_with(ctx, kernel, &[], wgsl, ty)
}

/// As [`quant_pipeline`], with shared `pieces` (e.g. [`REDUCE_WGSL`]) before the kernel.
pub(crate) fn quant_pipeline_with(
    ctx: &GpuContext,
    kernel: &str,
    pieces: &[&str],
    wgsl: &'static str,
    ty: GgmlType,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    let suffix = dequant_fn(ty)?;
    let key = format!("{kernel}.{ty}");
    ctx.pipeline(&key, &[], || {
        format!(
            "{BYTES_WGSL}\n{DEQUANT_WGSL}\n{}\n{wgsl}\n\
             fn decode_unit(rb: u32, u: u32, ncols: u32) {{ decode_unit_{suffix}(rb, u, ncols); }}\n",
            pieces.join("\n")
        )
    })
}

/// The pipeline of a kernel with no type variants.
pub(crate) fn plain_pipeline(
    ctx: &GpuContext,
    kernel: &str,
    wgsl: &'static str,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    ctx.pipeline(kernel, &[], || wgsl.to_string())
}

/// A kernel with no type variants that uses the workgroup reductions.
pub(crate) fn reduce_pipeline(
    ctx: &GpuContext,
    kernel: &str,
    wgsl: &'static str,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    ctx.pipeline(kernel, &[], || format!("{REDUCE_WGSL}\n{wgsl}"))
}

/// Check that a buffer holds at least `len` f32 values.
pub(crate) fn need_f32(what: &str, buffer: &wgpu::Buffer, len: usize) -> Result<()> {
    let need = (len * 4) as u64;
    if buffer.size() < need {
        return Err(Error::ShapeMismatch {
            what: format!("{what}: buffer bytes"),
            expected: need as usize,
            got: buffer.size() as usize,
        });
    }
    Ok(())
}

/// Check that a u32 argument fits in the u32 the shader uses.
pub(crate) fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} = {v} exceeds u32")))
}

/// Mirrors `Params` of silu_mul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ElementwiseParams {
    pub n: u32,
    pub grid_x: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<ElementwiseParams>() == 16);

/// Record a kernel of the form `out[i] = f(a[i], b[i])` over `n` elements (silu_mul).
pub(crate) fn record_binary(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    kernel: &str,
    wgsl: &'static str,
    [a, b, out]: [&wgpu::Buffer; 3],
    n: usize,
) -> Result<()> {
    for (name, buf) in [("a", a), ("b", b), ("out", out)] {
        need_f32(&format!("{kernel} {name}"), buf, n)?;
    }
    let pipeline = plain_pipeline(ctx, kernel, wgsl)?;
    let groups = crate::gpu::grid(to_u32(kernel, n)?.div_ceil(64), ctx.max_groups());
    let params = ElementwiseParams {
        n: n as u32,
        grid_x: groups.0,
        _pad: [0; 2],
    };
    let ub = ctx.uniform(kernel, &params);
    let bg = ctx.bind(kernel, &pipeline, &[a, b, out, &ub]);
    ctx.dispatch(encoder, kernel, &pipeline, &bg, groups);
    Ok(())
}
