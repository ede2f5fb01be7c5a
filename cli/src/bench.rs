//! `kvedge bench --kernels`: memory bandwidth reached by the dequantizing matvec kernel
//! (the decode hot path) for every quant type, on the adapter at hand. Without
//! `--kernels`, `kvedge bench` measures a whole model (`bench_model`).
//!
//! For each type a weight matrix of about `--mib` MiB with `--cols` columns is filled with
//! seeded random blocks and uploaded; after a warm-up, each repetition records `--iters`
//! matvecs in one command buffer, submits it and waits for the device before the clock is
//! read. GB/s counts the weight bytes read (the x and y vectors are negligible); the table
//! reports the median and the min..max spread over the repetitions.

use std::time::Instant;

use clap::Args;
use kvedge_runtime::gpu::{DeviceOptions, GpuContext, GpuMatrix};
use kvedge_runtime::kernels::matvec;
use kvedge_runtime::quant::{random_blocks, GgmlType};
use kvedge_runtime::rng::SplitMix64;

#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark the matvec kernels per quant type instead of a model.
    #[arg(long)]
    kernels: bool,
    #[command(flatten)]
    model: crate::bench_model::ModelBenchArgs,
    /// Approximate weight-matrix size per type, in MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Columns of the weight matrix (a multiple of 256).
    #[arg(long, default_value_t = 4096)]
    cols: usize,
    /// Matvecs per timed submission.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Timed repetitions.
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// Comma-separated types (default: all compute types).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Print JSON instead of a markdown table.
    #[arg(long)]
    json: bool,
}

struct Row {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: u64,
    median_us: f64,
    gbs_median: f64,
    gbs_min: f64,
    gbs_max: f64,
}

pub fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
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
    if args.iters == 0 || args.reps == 0 || args.mib == 0 {
        return Err("--iters, --reps and --mib must be positive".into());
    }
    let types: Vec<GgmlType> = if args.types.is_empty() {
        GgmlType::compute_types().to_vec()
    } else {
        args.types
            .iter()
            .map(|n| {
                GgmlType::from_name(n)
                    .filter(|t| t.can_dequantize())
                    .ok_or_else(|| format!("unknown or unsupported type '{n}'"))
            })
            .collect::<Result<_, _>>()?
    };
    let ctx = GpuContext::new(&DeviceOptions::default())?;
    eprintln!(
        "adapter: {} ({:?}, {:?}); {} MiB per matrix, {} cols, {} matvecs x {} reps",
        ctx.info.name,
        ctx.info.backend,
        ctx.info.device_type,
        args.mib,
        args.cols,
        args.iters,
        args.reps
    );
    let mut rows = Vec::new();
    for ty in types {
        let row_bytes = ty.bytes_for(args.cols as u64).unwrap_or(1) as usize;
        let nrows = ((args.mib << 20) / row_bytes).max(1);
        let mut rng = SplitMix64::new(ty.id() as u64);
        let w = random_blocks(ty, args.cols * nrows, &mut rng)?;
        let gw = GpuMatrix::upload(&ctx, "bench.w", ty, args.cols, nrows, &w)?;
        drop(w);
        let x = ctx.upload("bench.x", &rng.vec_f32(args.cols, -1.0, 1.0))?;
        let y = ctx.storage_f32("bench.y", nrows)?;
        let submit = |n: usize| -> Result<f64, Box<dyn std::error::Error>> {
            let mut enc = ctx.encoder("bench");
            for _ in 0..n {
                matvec::record(&ctx, &mut enc, &gw, &x, &y)?;
            }
            ctx.wait()?;
            let t = Instant::now();
            ctx.submit_wait(enc)?;
            Ok(t.elapsed().as_secs_f64())
        };
        submit(2)?; // warm-up: pipeline compile, first touches
        let mut times: Vec<f64> = (0..args.reps)
            .map(|_| submit(args.iters))
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        let per = |t: f64| t / args.iters as f64;
        let bytes = gw.bytes();
        let gbs = |t: f64| bytes as f64 / per(t) / 1e9;
        let median = times[times.len() / 2];
        rows.push(Row {
            ty,
            rows: nrows,
            cols: args.cols,
            bytes,
            median_us: per(median) * 1e6,
            gbs_median: gbs(median),
            gbs_min: gbs(times[times.len() - 1]),
            gbs_max: gbs(times[0]),
        });
    }
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"type\":\"{}\",\"rows\":{},\"cols\":{},\"bytes\":{},\"median_us\":{:.1},\"gb_s\":{:.3},\"gb_s_min\":{:.3},\"gb_s_max\":{:.3}}}",
                    r.ty, r.rows, r.cols, r.bytes, r.median_us, r.gbs_median, r.gbs_min, r.gbs_max
                )
            })
            .collect();
        println!(
            "{{\"adapter\":\"{}\",\"backend\":\"{:?}\",\"kernel\":\"matvec\",\"results\":[{}]}}",
            ctx.info.name.replace('"', "'"),
            ctx.info.backend,
            items.join(",")
        );
    } else {
        println!("matvec on {} ({:?})\n", ctx.info.name, ctx.info.backend);
        println!("| type | shape | weight MiB | median µs | GB/s (median) | GB/s (min..max) |");
        println!("|------|-------|-----------:|----------:|--------------:|-----------------|");
        for r in &rows {
            println!(
                "| {} | {}x{} | {:.1} | {:.0} | {:.2} | {:.2}..{:.2} |",
                r.ty,
                r.rows,
                r.cols,
                r.bytes as f64 / (1 << 20) as f64,
                r.median_us,
                r.gbs_median,
                r.gbs_min,
                r.gbs_max
            );
        }
    }
    Ok(())
}
