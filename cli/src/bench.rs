//! `kvedge bench --kernels`: the rate each hot kernel reaches on the adapter at hand, the
//! equivalent of a criterion benchmark per kernel (the shaders need the GPU device, so
//! this is a CLI command rather than a `cargo bench` harness). With `--device cpu` the
//! same kernels, shapes and table for the CPU device's own kernels (`bench_cpu`).
//! Without `--kernels`, `kvedge bench` measures a whole model (`bench_model`).
//!
//! - `matvec` (decode projections): for each quant type a weight matrix of about `--mib`
//!   MiB with `--cols` columns; GB/s of weight bytes read (x and y are negligible).
//! - `matmul` (prefill projections): `--tokens` rows of activations times a matrix of
//!   `--cols` columns and `--mm-rows` rows per quant type; GFLOP/s (2 per multiply-add).
//! - `attention` (decode): one query per head (32 heads, 8 KV heads of 128) over
//!   `--slots` cached positions, per KV storage type; GB/s of K and V bytes read.
//! - `copy`: a `--mib` MiB buffer copied; GB/s of bytes read + written (the bandwidth
//!   `bench --roofline` measures).
//!
//! After a warm-up, each repetition records `--iters` dispatches in one command buffer
//! (one for matmul), submits it and waits for the device before the clock is read; the
//! table reports the median and the min..max spread over the repetitions.

use std::time::Instant;

use clap::Args;
use kvedge_models::Device;
use kvedge_runtime::gpu::{DeviceOptions, GpuContext, GpuMatrix};
use kvedge_runtime::kernels::{attention, copy, kv_store, matmul, matvec};
use kvedge_runtime::kv::{encode_row, KvCacheConfig, KvType, Q4C_SLOTS};
use kvedge_runtime::quant::{random_blocks, GgmlType};
use kvedge_runtime::rng::SplitMix64;
use kvedge_runtime::wgpu;

#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark the kernels instead of a model.
    #[arg(long)]
    pub(crate) kernels: bool,
    #[command(flatten)]
    pub(crate) model: crate::bench_model::ModelBenchArgs,
    /// Kernels to measure (comma-separated): matvec, matmul, attention, copy
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "matvec,matmul,attention,copy"
    )]
    pub(crate) kernel: Vec<String>,
    /// Approximate weight-matrix size per type (matvec) and buffer size (copy), in MiB.
    #[arg(long, default_value_t = 64)]
    pub(crate) mib: usize,
    /// Columns of the weight matrix (a multiple of 256).
    #[arg(long, default_value_t = 4096)]
    pub(crate) cols: usize,
    /// Matmul: rows of the weight matrix.
    #[arg(long, default_value_t = 1024)]
    pub(crate) mm_rows: usize,
    /// Matmul: tokens (rows of activations).
    #[arg(long, default_value_t = 128)]
    pub(crate) tokens: usize,
    /// Attention: cached positions per KV head.
    #[arg(long, default_value_t = 4096)]
    pub(crate) slots: usize,
    /// Dispatches per timed submission (matvec, attention, copy).
    #[arg(long, default_value_t = 10)]
    pub(crate) iters: usize,
    /// Timed repetitions.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub(crate) reps: usize,
    /// Comma-separated weight types for matvec and matmul (default: all compute types).
    #[arg(long, value_delimiter = ',')]
    pub(crate) types: Vec<String>,
    /// Print JSON instead of a markdown table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) struct Row {
    pub(crate) kernel: &'static str,
    pub(crate) config: String,
    /// "GB/s" or "GFLOP/s".
    pub(crate) unit: &'static str,
    pub(crate) median_us: f64,
    pub(crate) rate_median: f64,
    pub(crate) rate_min: f64,
    pub(crate) rate_max: f64,
}

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Time `per_submit` recordings of `op` per submission over `reps` repetitions after a
/// warm-up; `work` units (bytes or FLOPs) per op; the row with rates in units of 1e9/s.
#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &GpuContext,
    kernel: &'static str,
    config: String,
    unit: &'static str,
    work: f64,
    per_submit: usize,
    reps: usize,
    op: &dyn Fn(&mut wgpu::CommandEncoder) -> Res<()>,
) -> Res<Row> {
    let submit = |n: usize| -> Res<f64> {
        let mut enc = ctx.encoder("bench");
        for _ in 0..n {
            op(&mut enc)?;
        }
        ctx.wait()?;
        let t = Instant::now();
        ctx.submit_wait(enc)?;
        Ok(t.elapsed().as_secs_f64() / n as f64)
    };
    submit(per_submit.min(2))?; // warm-up: pipeline compile, first touches
    let times: Vec<f64> = (0..reps).map(|_| submit(per_submit)).collect::<Res<_>>()?;
    Ok(Row::from_times(kernel, config, unit, work, times))
}

impl Row {
    /// The row for seconds per op `times` (one per repetition) of `work` units per op,
    /// rates in units of 1e9/s.
    pub(crate) fn from_times(
        kernel: &'static str,
        config: String,
        unit: &'static str,
        work: f64,
        mut times: Vec<f64>,
    ) -> Self {
        times.sort_by(f64::total_cmp);
        let rate = |t: f64| work / t / 1e9;
        let median = times[times.len() / 2];
        Row {
            kernel,
            config,
            unit,
            median_us: median * 1e6,
            rate_median: rate(median),
            rate_min: rate(times[times.len() - 1]),
            rate_max: rate(times[0]),
        }
    }
}

pub(crate) fn weight_types(names: &[String]) -> Res<Vec<GgmlType>> {
    if names.is_empty() {
        return Ok(GgmlType::compute_types().to_vec());
    }
    Ok(names
        .iter()
        .map(|n| {
            GgmlType::from_name(n)
                .filter(|t| t.can_dequantize())
                .ok_or_else(|| format!("unknown or unsupported type '{n}'"))
        })
        .collect::<Result<_, _>>()?)
}

fn bench_matvec(ctx: &GpuContext, a: &BenchArgs, types: &[GgmlType]) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for &ty in types {
        let row_bytes = ty.bytes_for(a.cols as u64).unwrap_or(1) as usize;
        let nrows = ((a.mib << 20) / row_bytes).max(1);
        let mut rng = SplitMix64::new(ty.id() as u64);
        let w = random_blocks(ty, a.cols * nrows, &mut rng)?;
        let gw = GpuMatrix::upload(ctx, "bench.w", ty, a.cols, nrows, &w)?;
        drop(w);
        let x = ctx.upload("bench.x", &rng.vec_f32(a.cols, -1.0, 1.0))?;
        let y = ctx.storage_f32("bench.y", nrows)?;
        let op =
            |e: &mut wgpu::CommandEncoder| -> Res<()> { Ok(matvec::record(ctx, e, &gw, &x, &y)?) };
        let config = format!(
            "{ty} {nrows}x{} ({:.1} MiB)",
            a.cols,
            gw.bytes() as f64 / (1 << 20) as f64
        );
        rows.push(measure(
            ctx,
            "matvec",
            config,
            "GB/s",
            gw.bytes() as f64,
            a.iters,
            a.reps,
            &op,
        )?);
    }
    Ok(rows)
}

fn bench_matmul(ctx: &GpuContext, a: &BenchArgs, types: &[GgmlType]) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    let (m, k, n) = (a.tokens, a.cols, a.mm_rows);
    for &ty in types {
        let mut rng = SplitMix64::new(ty.id() as u64 + 100);
        let w = random_blocks(ty, k * n, &mut rng)?;
        let gw = GpuMatrix::upload(ctx, "bench.w", ty, k, n, &w)?;
        let x = ctx.upload("bench.x", &rng.vec_f32(m * k, -1.0, 1.0))?;
        let y = ctx.storage_f32("bench.y", m * n)?;
        let op = |e: &mut wgpu::CommandEncoder| -> Res<()> {
            Ok(matmul::record(ctx, e, &gw, &x, m, &y)?)
        };
        let flops = 2.0 * (m * k * n) as f64;
        rows.push(measure(
            ctx,
            "matmul",
            format!("{ty} {m}x{k} · {n}x{k}ᵀ"),
            "GFLOP/s",
            flops,
            1,
            a.reps,
            &op,
        )?);
    }
    Ok(rows)
}

/// The decode-attention shape the kernel benchmarks use (a Llama-3-8B layer): query heads,
/// KV heads, head size.
pub(crate) const ATTENTION_SHAPE: (usize, usize, usize) = (32, 8, 128);

/// The K and V storage pairs benchmarked: q4c keys with q4 values, as `--kv-type q4c`
/// stores them.
pub(crate) const KV_PAIRS: [(KvType, KvType); 4] = [
    (KvType::F16, KvType::F16),
    (KvType::Q8, KvType::Q8),
    (KvType::Q4, KvType::Q4),
    (KvType::Q4C, KvType::Q4),
];

/// A one-layer cache of `slots` positions (capacity rounded up to q4c's blocks) with K
/// stored as `k` and V as `v`, filled with encoded random rows: (config, K words, V words).
pub(crate) fn random_cache(
    slots: usize,
    k: KvType,
    v: KvType,
) -> (KvCacheConfig, Vec<u32>, Vec<u32>) {
    let (_, n_kv, hd) = ATTENTION_SHAPE;
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: n_kv,
        head_dim: hd,
        capacity: slots.next_multiple_of(Q4C_SLOTS),
        k_type: k,
        v_type: v,
    };
    let mut rng = SplitMix64::new(k.shader_id() as u64 + 7);
    let mut encoded = |ty: KvType| -> Vec<u32> {
        let row = ty.row_words(hd);
        let mut words = vec![0u32; n_kv * cfg.capacity * row];
        if ty.blocks_slots() {
            let x = rng.vec_f32(cfg.capacity * n_kv * hd, -1.0, 1.0);
            let mut pending = vec![0.0f32; cfg.k_pending_words()];
            kv_store::reference_q4c(&cfg, hd, &x, &mut words, &mut pending, cfg.capacity, 0);
        } else {
            let mut x = vec![0.0f32; hd];
            for r in words.chunks_exact_mut(row) {
                x.iter_mut().for_each(|v| *v = rng.uniform(-1.0, 1.0));
                encode_row(ty, &x, r);
            }
        }
        words
    };
    let (kw, vw) = (encoded(k), encoded(v));
    (cfg, kw, vw)
}

/// The label of a K/V storage pair.
pub(crate) fn kv_label(k: KvType, v: KvType) -> String {
    if k == v {
        k.name().to_string()
    } else {
        format!("K {} V {}", k.name(), v.name())
    }
}

fn bench_attention(ctx: &GpuContext, a: &BenchArgs) -> Res<Vec<Row>> {
    let (n_heads, n_kv, hd) = ATTENTION_SHAPE;
    let mut rows = Vec::new();
    for (ty, vty) in KV_PAIRS {
        let (cfg, kw, vw) = random_cache(a.slots, ty, vty);
        let mut rng = SplitMix64::new(ty.shader_id() as u64 + 8);
        let kc = ctx.upload("bench.k", &kw)?;
        let vc = ctx.upload("bench.v", &vw)?;
        let q = ctx.upload("bench.q", &rng.vec_f32(n_heads * hd, -1.0, 1.0))?;
        let out = ctx.storage_f32("bench.out", n_heads * hd)?;
        let lse = ctx.storage_f32("bench.lse", n_heads)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let op = |e: &mut wgpu::CommandEncoder| -> Res<()> {
            Ok(attention::record(
                ctx,
                e,
                &cfg,
                n_heads,
                &q,
                &kc,
                &vc,
                &out,
                &lse,
                1,
                a.slots - 1,
                scale,
                None,
            )?)
        };
        let bytes = (4 * n_kv * a.slots * (cfg.k_row_words() + cfg.v_row_words())) as f64;
        let types = kv_label(ty, vty);
        let config = format!(
            "decode, {types} KV, {} slots x {n_kv} KV heads of {hd}, {n_heads} heads",
            a.slots
        );
        rows.push(measure(
            ctx,
            "attention",
            config,
            "GB/s",
            bytes,
            a.iters,
            a.reps,
            &op,
        )?);
    }
    Ok(rows)
}

fn bench_copy(ctx: &GpuContext, a: &BenchArgs) -> Res<Vec<Row>> {
    let bytes = ((a.mib as u64) << 20).min(ctx.max_binding()) & !15;
    let words = (bytes / 16) as usize;
    let src = ctx.storage_f32("bench.src", words * 4)?;
    let dst = ctx.storage_f32("bench.dst", words * 4)?;
    let op =
        |e: &mut wgpu::CommandEncoder| -> Res<()> { Ok(copy::record(ctx, e, &src, &dst, words)?) };
    let config = format!("{:.0} MiB, read + write", bytes as f64 / (1 << 20) as f64);
    Ok(vec![measure(
        ctx,
        "copy",
        config,
        "GB/s",
        2.0 * bytes as f64,
        a.iters,
        a.reps,
        &op,
    )?])
}

pub fn run(args: &BenchArgs) -> Res<()> {
    if !args.kernels {
        return crate::bench_model::run(&args.model, args.reps, args.json);
    }
    if args.cols == 0 || !args.cols.is_multiple_of(256) {
        return Err(format!(
            "--cols must be a positive multiple of 256, got {}",
            args.cols
        )
        .into());
    }
    if args.iters == 0
        || args.reps == 0
        || args.mib == 0
        || args.tokens == 0
        || args.mm_rows == 0
        || args.slots < 2
    {
        return Err("--iters, --reps, --mib, --tokens and --mm-rows must be positive and --slots at least 2".into());
    }
    for k in &args.kernel {
        if !["matvec", "matmul", "attention", "copy"].contains(&k.as_str()) {
            return Err(format!(
                "unknown kernel '{k}': expected matvec, matmul, attention or copy"
            )
            .into());
        }
    }
    let types = weight_types(&args.types)?;
    let (device, rows) = if args.model.model.device == Device::Cpu {
        crate::bench_cpu::run(args, &types)?
    } else {
        gpu_rows(args, &types)?
    };
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"kernel\":\"{}\",\"config\":{:?},\"unit\":\"{}\",\"median_us\":{:.1},\"rate\":{:.3},\"rate_min\":{:.3},\"rate_max\":{:.3}}}",
                    r.kernel, r.config, r.unit, r.median_us, r.rate_median, r.rate_min, r.rate_max
                )
            })
            .collect();
        println!(
            "{{\"device\":{device:?},\"results\":[{}]}}",
            items.join(",")
        );
    } else {
        println!("kernels on {device}\n");
        println!("| kernel | configuration | median µs | rate (median) | min .. max |");
        println!("|---|---|---:|---:|---|");
        for r in &rows {
            println!(
                "| {} | {} | {:.0} | {:.2} {} | {:.2} .. {:.2} |",
                r.kernel, r.config, r.median_us, r.rate_median, r.unit, r.rate_min, r.rate_max
            );
        }
    }
    Ok(())
}

/// The GPU kernels' rows on the adapter wgpu picks, and its name.
fn gpu_rows(args: &BenchArgs, types: &[GgmlType]) -> Res<(String, Vec<Row>)> {
    let ctx = GpuContext::new(&DeviceOptions::default())?;
    eprintln!(
        "adapter: {} ({:?}, {:?}); {} reps after a warm-up",
        ctx.info.name, ctx.info.backend, ctx.info.device_type, args.reps
    );
    let mut rows = Vec::new();
    for k in &args.kernel {
        rows.extend(match k.as_str() {
            "matvec" => bench_matvec(&ctx, args, types)?,
            "matmul" => bench_matmul(&ctx, args, types)?,
            "attention" => bench_attention(&ctx, args)?,
            _ => bench_copy(&ctx, args)?,
        });
    }
    Ok((format!("{} ({:?})", ctx.info.name, ctx.info.backend), rows))
}
