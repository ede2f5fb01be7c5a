//! `kvedge bench -m FILE`: prompt-processing and generation speed of a whole model with
//! the KV flags given, modelled on llama-bench. For each KV depth d (`-d 0,4096`: tokens
//! already in the cache), each repetition starts a fresh session, fills it with d seeded
//! random tokens (not timed), then times a prompt of `-p` tokens in one call (chunked
//! inside the forward pass) and `-n` single-token decode steps, each of which ends in the
//! logits' readback, so the clock is read only after the device finished. One warm-up
//! repetition is not counted; the table gives the median and the min..max spread, the KV
//! bytes, the GPU memory the session created and the peak host RSS. `--roofline` adds the
//! fraction of the device's limits each speed reaches (`roofline`); `--profile` each
//! kernel's GPU time (`bench_profile`).

use std::time::Instant;

use clap::Args;
use kvedge_models::SessionConfig;
use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::rng::SplitMix64;
use kvedge_runtime::sample::argmax;

use crate::generate::{load_model, ModelArgs};
use crate::{bench_profile, roofline};

#[derive(Args)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens
    #[arg(short = 'n', long = "n-gen", default_value_t = 32)]
    pub n_gen: usize,
    /// KV depths: tokens in the cache before the measured prompt (comma-separated)
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depths: Vec<usize>,
    /// Also measure the device's bandwidth and matmul rate, and print the fraction of
    /// them each speed reaches
    #[arg(long)]
    pub roofline: bool,
    /// Also print each kernel's GPU time from timestamp queries (one extra, untimed run
    /// per depth; GPU device only)
    #[arg(long)]
    pub profile: bool,
}

fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Peak resident set of this process (VmHWM), in bytes; 0 where /proc is absent.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// One depth's measurements.
struct DepthRow {
    depth: usize,
    pp: (f64, f64, f64),
    tg: (f64, f64, f64),
    kv_bytes: u64,
    /// Slots allocated per layer and KV head (what `kv_bytes` holds).
    kv_slots: usize,
    session_gpu_bytes: Option<u64>,
}

pub fn run(
    args: &ModelBenchArgs,
    reps: usize,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    if args.n_prompt == 0 || args.n_gen == 0 || reps == 0 || args.depths.is_empty() {
        return Err("-p, -n and -r must be positive and -d must list a depth".into());
    }
    if args.profile && args.model.device == kvedge_models::Device::Cpu {
        return Err(
            "--profile needs the GPU device (it reads the adapter's timestamp queries); drop --device cpu"
                .into(),
        );
    }
    let (path, model) = load_model(&args.model)?;
    let file = GgufFile::open(&path)?;
    let vocab = model.hparams().n_vocab as u64;
    let synthetic = file
        .header()
        .get("kvedge.synthetic")
        .and_then(|v| v.as_bool())
        == Some(true);
    let mut rows = Vec::new();
    let mut kv_plan = String::new();
    let mut device = String::new();
    let mut profiles = Vec::new();
    for &depth in &args.depths {
        let context = match args.model.ctx_size {
            0 => depth + args.n_prompt + args.n_gen + 8,
            c => c,
        };
        let (mut pp, mut tg) = (Vec::new(), Vec::new());
        let (mut kv_bytes, mut kv_slots, mut session_gpu_bytes) = (0, 0, None);
        for rep in 0..=reps {
            let before = model.gpu_context().map(|c| c.storage_bytes_created());
            let mut session = model.session(&SessionConfig {
                context,
                kv: args.model.kv.options(),
                ..Default::default()
            })?;
            session_gpu_bytes = model
                .gpu_context()
                .zip(before)
                .map(|(c, b)| c.storage_bytes_created() - b);
            let mut rng = SplitMix64::new(42 + rep as u64);
            let mut random =
                |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vocab) as u32).collect() };
            let (fill, prompt) = (random(depth), random(args.n_prompt));
            let fwd = session.forward_mut();
            if depth > 0 {
                fwd.forward(&fill)?;
            }
            let t = Instant::now();
            let mut logits = fwd.forward(&prompt)?;
            let prefill = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..args.n_gen {
                logits = fwd.forward(&[argmax(&logits)])?;
            }
            let decode = t.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(args.n_prompt as f64 / prefill);
                tg.push(args.n_gen as f64 / decode);
            }
            let s = session.stats();
            kv_plan = s.kv.plan.clone();
            (kv_bytes, kv_slots) = (s.kv.kv_bytes, s.kv.slots);
            device = session.device();
        }
        if args.profile {
            let cfg = SessionConfig {
                context,
                kv: args.model.kv.options(),
                ..Default::default()
            };
            profiles.push(bench_profile::run(
                &model,
                &cfg,
                depth,
                args.n_prompt,
                args.n_gen,
            )?);
        }
        rows.push(DepthRow {
            depth,
            pp: spread(&mut pp),
            tg: spread(&mut tg),
            kv_bytes,
            kv_slots,
            session_gpu_bytes,
        });
    }
    let rss = peak_rss();
    let limits = if args.roofline {
        Some((
            roofline::measure(&model, &file, args.n_prompt)?,
            roofline::token_cost(&model, &file),
        ))
    } else {
        None
    };
    // The fraction of the limit each median reaches: decode by bytes, prefill by FLOPs.
    let fractions = |r: &DepthRow| {
        limits.map(|(lim, cost)| {
            let slot_bytes = r.kv_bytes as f64 / r.kv_slots.max(1) as f64;
            // Positions attended: prefill at its middle, decode at its middle.
            let pp_pos = (r.depth + args.n_prompt / 2) as f64;
            let tg_pos = (r.depth + args.n_prompt + args.n_gen / 2).min(r.kv_slots) as f64;
            let tg_bytes = cost.weight_bytes as f64 + slot_bytes * tg_pos;
            let pp_flops = cost.matrix_flops + cost.attention_flops_per_pos * pp_pos;
            (
                r.pp.0 * pp_flops / lim.matmul_flops,
                r.tg.0 * tg_bytes / lim.bandwidth,
                pp_flops,
                tg_bytes,
            )
        })
    };
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                let roof = fractions(r).map_or(String::new(), |(fp, ft, flops, bytes)| {
                    format!(",\"pp_flop_per_token\":{flops:.0},\"pp_of_matmul_limit\":{fp:.4},\"tg_bytes_per_token\":{bytes:.0},\"tg_of_bandwidth_limit\":{ft:.4}")
                });
                format!(
                    "{{\"depth\":{},\"pp_tok_s\":{:.3},\"pp_min\":{:.3},\"pp_max\":{:.3},\"tg_tok_s\":{:.3},\"tg_min\":{:.3},\"tg_max\":{:.3},\"kv_bytes\":{},\"session_gpu_bytes\":{}{roof}}}",
                    r.depth, r.pp.0, r.pp.1, r.pp.2, r.tg.0, r.tg.1, r.tg.2, r.kv_bytes,
                    r.session_gpu_bytes.map_or("null".into(), |b| b.to_string())
                )
            })
            .collect();
        let lim = limits.map_or(String::new(), |(l, _)| {
            format!(
                ",\"bandwidth_gb_s\":{:.3},\"matmul_gflop_s\":{:.3}",
                l.bandwidth / 1e9,
                l.matmul_flops / 1e9
            )
        });
        let prof = if args.profile {
            let p: Vec<String> = profiles.iter().map(bench_profile::json).collect();
            format!(",\"profile\":[{}]", p.join(","))
        } else {
            String::new()
        };
        println!(
            "{{\"model\":{name:?},\"synthetic\":{synthetic},\"device\":{device:?},\"kv\":{kv_plan:?},\"n_prompt\":{},\"n_gen\":{},\"reps\":{reps},\"peak_rss_bytes\":{rss}{lim},\"rows\":[{}]{prof}}}",
            args.n_prompt,
            args.n_gen,
            items.join(",")
        );
        return Ok(());
    }
    let mark = if synthetic {
        " (SYNTHETIC weights)"
    } else {
        ""
    };
    println!("{name}{mark} on {device}; KV {kv_plan}; {reps} repetitions after one warm-up");
    let roof_head = if limits.is_some() {
        " % of limit |"
    } else {
        ""
    };
    let roof_rule = if limits.is_some() { "---:|" } else { "" };
    println!("| test | tokens/s (median) | min .. max | KV MiB |{roof_head}");
    println!("|---|---:|---:|---:|{roof_rule}");
    for r in &rows {
        let f = fractions(r);
        let cell = |x: Option<f64>| x.map_or(String::new(), |x| format!(" {:.1} |", 100.0 * x));
        let at = if r.depth > 0 {
            format!(" @ d{}", r.depth)
        } else {
            String::new()
        };
        println!(
            "| pp{}{at} | {:.2} | {:.2} .. {:.2} | {:.2} |{}",
            args.n_prompt,
            r.pp.0,
            r.pp.1,
            r.pp.2,
            mib(r.kv_bytes),
            cell(f.map(|x| x.0))
        );
        println!(
            "| tg{}{at} | {:.2} | {:.2} .. {:.2} | {:.2} |{}",
            args.n_gen,
            r.tg.0,
            r.tg.1,
            r.tg.2,
            mib(r.kv_bytes),
            cell(f.map(|x| x.1))
        );
    }
    let gpu: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.session_gpu_bytes
                .map(|b| format!("d{} {:.1} MiB", r.depth, mib(b)))
        })
        .collect();
    if !gpu.is_empty() {
        println!(
            "\nGPU memory: weights {:.1} MiB; the session created {}",
            mib(model.memory().weights),
            gpu.join(", ")
        );
    }
    println!("Peak host RSS: {:.1} MiB", mib(rss));
    if let Some((l, c)) = limits {
        let (ty, m, k, n) = l.matmul_desc;
        println!(
            "Limits measured on this device: copy {:.2} GB/s (read + write, {} MiB each way); \
             prefill matmul {:.2} GFLOP/s ({ty}, {m} tokens x {k} x {n}).",
            l.bandwidth / 1e9,
            l.copy_bytes >> 20,
            l.matmul_flops / 1e9
        );
        println!(
            "Per token: decode reads {:.1} MiB of weights + the KV cache at its depth; \
             prefill does {:.1} MFLOP of matmuls + {:.0} FLOP of attention per cached position.",
            mib(c.weight_bytes),
            c.matrix_flops / 1e6,
            c.attention_flops_per_pos
        );
    }
    for p in &profiles {
        bench_profile::print(p, args.n_prompt);
    }
    Ok(())
}
