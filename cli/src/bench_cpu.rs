//! `kvedge bench --kernels --device cpu`: the rates the CPU device's hot kernels reach on
//! this machine, with the same shapes and table as the GPU kernels (`bench`), so the two
//! devices can be read side by side. Each runs on the CPU device's own thread count (every
//! core, as a session does) through the kept thread pool.
//!
//! - `matvec` (decode projections): `cpu_matmul::matmul_rows` with one token, each
//!   quantized row dotted with it directly (AVX2 where the CPU has it); GB/s of weight
//!   bytes read.
//! - `matmul` (prefill projections): `matmul_rows` with `--tokens` tokens, panels of W
//!   dequantized and multiplied through `gemm`; GFLOP/s (2 per multiply-add).
//! - `attention` (decode): `cpu_attention::attend` for one query per head over `--slots`
//!   positions, rows decoded once per step and slot ranges merged flash-decoding style;
//!   GB/s of K and V bytes read.
//! - `copy`: a `--mib` MiB buffer copied by every thread's share (`copy_from_slice`); GB/s
//!   of bytes read + written, the bandwidth `bench --roofline` measures on this device.
//!
//! After a warm-up call, each repetition times `--iters` calls (one for matmul) and the
//! row reports the median and min..max over repetitions, as for the GPU.

use std::time::Instant;

use kvedge_models::llama::cpu_attention;
use kvedge_models::llama::cpu_matmul::matmul_rows;
use kvedge_runtime::gguf::TensorInfo;
use kvedge_runtime::quant::{random_blocks, GgmlType};
use kvedge_runtime::rng::SplitMix64;

use crate::bench::{kv_label, random_cache, BenchArgs, Res, Row, ATTENTION_SHAPE, KV_PAIRS};

/// Seconds per call of `op`: a warm-up call, then `reps` repetitions of `iters` calls.
fn time_calls(iters: usize, reps: usize, op: &mut dyn FnMut() -> Res<()>) -> Res<Vec<f64>> {
    op()?;
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                op()?;
            }
            Ok(t.elapsed().as_secs_f64() / iters as f64)
        })
        .collect()
}

fn weight(ty: GgmlType, k: usize, n: usize, seed: u64) -> Res<(TensorInfo, Vec<u8>)> {
    let bytes = random_blocks(ty, k * n, &mut SplitMix64::new(seed))?;
    let info = TensorInfo::in_memory("bench.w", ty, k, n, bytes.len());
    Ok((info, bytes))
}

fn bench_matvec(a: &BenchArgs, types: &[GgmlType], threads: usize) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for &ty in types {
        let row_bytes = ty.bytes_for(a.cols as u64).unwrap_or(1) as usize;
        let nrows = ((a.mib << 20) / row_bytes).max(1);
        let (info, w) = weight(ty, a.cols, nrows, ty.id() as u64)?;
        let x = SplitMix64::new(1).vec_f32(a.cols, -1.0, 1.0);
        let mut op = || -> Res<()> {
            matmul_rows(&info, &w, &x, 1, threads)?;
            Ok(())
        };
        let times = time_calls(a.iters, a.reps, &mut op)?;
        let config = format!(
            "{ty} {nrows}x{} ({:.1} MiB)",
            a.cols,
            w.len() as f64 / (1 << 20) as f64
        );
        rows.push(Row::from_times(
            "matvec",
            config,
            "GB/s",
            w.len() as f64,
            times,
        ));
    }
    Ok(rows)
}

fn bench_matmul(a: &BenchArgs, types: &[GgmlType], threads: usize) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    let (m, k, n) = (a.tokens, a.cols, a.mm_rows);
    for &ty in types {
        let (info, w) = weight(ty, k, n, ty.id() as u64 + 100)?;
        let x = SplitMix64::new(2).vec_f32(m * k, -1.0, 1.0);
        let mut op = || -> Res<()> {
            matmul_rows(&info, &w, &x, m, threads)?;
            Ok(())
        };
        let times = time_calls(1, a.reps, &mut op)?;
        rows.push(Row::from_times(
            "matmul",
            format!("{ty} {m}x{k} · {n}x{k}ᵀ"),
            "GFLOP/s",
            2.0 * (m * k * n) as f64,
            times,
        ));
    }
    Ok(rows)
}

fn bench_attention(a: &BenchArgs, threads: usize) -> Res<Vec<Row>> {
    let (n_heads, n_kv, hd) = ATTENTION_SHAPE;
    let mut rows = Vec::new();
    for (ty, vty) in KV_PAIRS {
        let (cfg, kc, vc) = random_cache(a.slots, ty, vty);
        let q = SplitMix64::new(3).vec_f32(n_heads * hd, -1.0, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut op = || -> Res<()> {
            cpu_attention::attend(
                &cfg,
                n_heads,
                &q,
                &kc,
                &vc,
                1,
                a.slots - 1,
                scale,
                None,
                threads,
            )?;
            Ok(())
        };
        let times = time_calls(a.iters, a.reps, &mut op)?;
        let bytes = (4 * n_kv * a.slots * (cfg.k_row_words() + cfg.v_row_words())) as f64;
        let config = format!(
            "decode, {} KV, {} slots x {n_kv} KV heads of {hd}, {n_heads} heads",
            kv_label(ty, vty),
            a.slots
        );
        rows.push(Row::from_times("attention", config, "GB/s", bytes, times));
    }
    Ok(rows)
}

fn bench_copy(a: &BenchArgs, threads: usize) -> Res<Vec<Row>> {
    let bytes = a.mib << 20;
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let per = bytes.div_ceil(threads);
    let mut op = || -> Res<()> {
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        Ok(())
    };
    let times = time_calls(a.iters, a.reps, &mut op)?;
    let config = format!("{} MiB, read + write, {threads} threads", a.mib);
    Ok(vec![Row::from_times(
        "copy",
        config,
        "GB/s",
        2.0 * bytes as f64,
        times,
    )])
}

/// Every kernel asked for, on the CPU device's thread count; the device's name and the rows.
pub fn run(a: &BenchArgs, types: &[GgmlType]) -> Res<(String, Vec<Row>)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    eprintln!(
        "CPU device: {cpu}, {threads} threads; {} reps after a warm-up",
        a.reps
    );
    let mut rows = Vec::new();
    for k in &a.kernel {
        rows.extend(match k.as_str() {
            "matvec" => bench_matvec(a, types, threads)?,
            "matmul" => bench_matmul(a, types, threads)?,
            "attention" => bench_attention(a, threads)?,
            _ => bench_copy(a, threads)?,
        });
    }
    Ok((format!("CPU ({cpu}, {threads} threads)"), rows))
}
