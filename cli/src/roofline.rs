//! `kvedge bench --roofline`: how close a model's measured speed comes to what the device
//! allows. Decode reads every weight once per token plus the KV cache, so its limit is
//! memory bandwidth: measured here with a large copy (the `copy` kernel on a GPU, a
//! threaded `copy_from_slice` on the CPU device), counted as bytes read + bytes written.
//! Prefill is bounded by arithmetic: its limit is the rate of the runtime's own prefill
//! matmul (the `matmul` kernel; `matmul_rows` on the CPU device) on a weight of the
//! model's type and shape, in FLOP/s. Each is the median of 5 timed repetitions after a
//! warm-up.

use std::time::Instant;

use kvedge_models::Model;
use kvedge_runtime::gguf::{GgufFile, TensorInfo};
use kvedge_runtime::gpu::GpuMatrix;
use kvedge_runtime::kernels::{copy, matmul};
use kvedge_runtime::quant::{random_blocks, GgmlType};
use kvedge_runtime::rng::SplitMix64;
use kvedge_runtime::wgpu;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What the device does at best, measured.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    /// Bytes read + written per second by a large copy.
    pub bandwidth: f64,
    /// FLOP/s of the prefill matmul on the model's main weight type and shape.
    pub matmul_flops: f64,
    /// The copy's size in bytes (each way), and the matmul's type and shape, for the report.
    pub copy_bytes: u64,
    pub matmul_desc: (GgmlType, usize, usize, usize),
}

/// What one token costs a model: bytes that decode must read, FLOPs of prefill.
#[derive(Clone, Copy, Debug)]
pub struct TokenCost {
    /// Weight bytes read per decoded token (the embedding only when it is also the output).
    pub weight_bytes: u64,
    /// Matrix FLOPs per token (2 per weight element multiplied).
    pub matrix_flops: f64,
    /// Attention FLOPs per token per cached position (q·k and p·v, every layer and head).
    pub attention_flops_per_pos: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The model's per-token costs from its tensors and shapes.
pub fn token_cost(model: &Model, file: &GgufFile) -> TokenCost {
    let tensors = file.tensors();
    let has_output = tensors.iter().any(|t| t.name == "output.weight");
    let mut weight_bytes = 0u64;
    let mut matrix_elems = 0u64;
    for t in tensors {
        let is_embd = t.name == "token_embd.weight";
        if is_embd && has_output {
            continue; // a lookup reads one row
        }
        weight_bytes += t.n_bytes;
        if t.dims.len() == 2 {
            matrix_elems += t.n_elements;
        }
    }
    let hp = model.hparams();
    TokenCost {
        weight_bytes,
        matrix_flops: 2.0 * matrix_elems as f64,
        attention_flops_per_pos: 4.0 * (hp.n_layers * hp.n_heads * hp.head_dim) as f64,
    }
}

/// The weight type most of a model's matrix bytes are in (among those kvedge computes
/// with; Q8_0 when none).
pub fn main_type(file: &GgufFile) -> GgmlType {
    let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
    for t in file.tensors().iter().filter(|t| t.dims.len() == 2) {
        match by_type.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, b)) => *b += t.n_bytes,
            None => by_type.push((t.ty, t.n_bytes)),
        }
    }
    by_type
        .into_iter()
        .filter(|(t, _)| t.can_dequantize())
        .max_by_key(|&(_, b)| b)
        .map_or(GgmlType::Q8_0, |(t, _)| t)
}

/// Measure the limits of the device `model` runs on, with a matmul of `m` tokens.
pub fn measure(model: &Model, file: &GgufFile, m: usize) -> Res<DeviceLimits> {
    let hp = model.hparams();
    let ty = main_type(file);
    // The FFN's up projection: the model's widest common matrix shape.
    let (k, n) = (hp.n_embd, hp.n_ff);
    let mut rng = SplitMix64::new(7);
    let w = random_blocks(ty, k * n, &mut rng)?;
    let x = rng.vec_f32(m * k, -1.0, 1.0);
    let flops = 2.0 * (m * k * n) as f64;
    match model.gpu_context() {
        Some(ctx) => {
            let copy_bytes = (256u64 << 20).min(ctx.max_binding()) & !15;
            let words = (copy_bytes / 16) as usize;
            let src = ctx.storage_f32("roofline.src", words * 4)?;
            let dst = ctx.storage_f32("roofline.dst", words * 4)?;
            let time =
                |iters: usize, f: &dyn Fn(&mut wgpu::CommandEncoder) -> Res<()>| -> Res<f64> {
                    let mut enc = ctx.encoder("roofline");
                    for _ in 0..iters {
                        f(&mut enc)?;
                    }
                    ctx.wait()?;
                    let t = Instant::now();
                    ctx.submit_wait(enc)?;
                    Ok(t.elapsed().as_secs_f64() / iters as f64)
                };
            let copy_once = |e: &mut wgpu::CommandEncoder| -> Res<()> {
                Ok(copy::record(ctx, e, &src, &dst, words)?)
            };
            time(2, &copy_once)?;
            let t_copy = median((0..5).map(|_| time(10, &copy_once)).collect::<Res<_>>()?);
            let gw = GpuMatrix::upload(ctx, "roofline.w", ty, k, n, &w)?;
            let gx = ctx.upload("roofline.x", &x)?;
            let gy = ctx.storage_f32("roofline.y", m * n)?;
            let mm_once = |e: &mut wgpu::CommandEncoder| -> Res<()> {
                Ok(matmul::record(ctx, e, &gw, &gx, m, &gy)?)
            };
            time(1, &mm_once)?;
            let t_mm = median((0..5).map(|_| time(3, &mm_once)).collect::<Res<_>>()?);
            Ok(DeviceLimits {
                bandwidth: 2.0 * copy_bytes as f64 / t_copy,
                matmul_flops: flops / t_mm,
                copy_bytes,
                matmul_desc: (ty, m, k, n),
            })
        }
        None => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let copy_bytes = 256usize << 20;
            let src = vec![1u8; copy_bytes];
            let mut dst = vec![0u8; copy_bytes];
            let per = copy_bytes.div_ceil(threads);
            let mut copy_once = || {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
                        s.spawn(move || d.copy_from_slice(c));
                    }
                });
                t.elapsed().as_secs_f64()
            };
            copy_once();
            let t_copy = median((0..5).map(|_| copy_once()).collect());
            let info = TensorInfo::in_memory("roofline.w", ty, k, n, w.len());
            let mm_once = || -> Res<f64> {
                let t = Instant::now();
                kvedge_models::llama::cpu_matmul::matmul_rows(&info, &w, &x, m, threads)?;
                Ok(t.elapsed().as_secs_f64())
            };
            mm_once()?;
            let t_mm = median((0..5).map(|_| mm_once()).collect::<Res<_>>()?);
            Ok(DeviceLimits {
                bandwidth: 2.0 * copy_bytes as f64 / t_copy,
                matmul_flops: flops / t_mm,
                copy_bytes: copy_bytes as u64,
                matmul_desc: (ty, m, k, n),
            })
        }
    }
}
