//! `kvedge bench -m FILE`: prompt-processing and generation speed of a whole model with
//! the KV flags given (a first cut of llama-bench's two numbers). Each repetition starts
//! a fresh session, runs a prompt of `-p` seeded random token ids in one call (chunked
//! inside the forward pass), then `-n` single-token decode steps, each of which ends in
//! the logits' readback, so the clock is read only after the device finished. One
//! warm-up repetition is not counted; the table gives the median and the min..max spread.

use std::time::Instant;

use clap::Args;
use kvedge_models::SessionConfig;
use kvedge_runtime::rng::SplitMix64;

use crate::generate::{load_model, ModelArgs};

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
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn run(
    args: &ModelBenchArgs,
    reps: usize,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    if args.n_prompt == 0 || args.n_gen == 0 || reps == 0 {
        return Err("-p, -n and -r must be positive".into());
    }
    let (path, model) = load_model(&args.model)?;
    let vocab = model.hparams().n_vocab as u64;
    let context = match args.model.ctx_size {
        0 => args.n_prompt + args.n_gen + 8,
        c => c,
    };
    let synthetic = kvedge_runtime::gguf::GgufFile::open(&path)?
        .header()
        .get("kvedge.synthetic")
        .and_then(|v| v.as_bool())
        == Some(true);
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    let mut kv = String::new();
    let mut device = String::new();
    for rep in 0..=reps {
        let mut session = model.session(&SessionConfig {
            context,
            kv: args.model.kv.options(),
            ..Default::default()
        })?;
        let mut rng = SplitMix64::new(42 + rep as u64);
        let prompt: Vec<u32> = (0..args.n_prompt)
            .map(|_| rng.below(vocab) as u32)
            .collect();
        let fwd = session.forward_mut();
        let t = Instant::now();
        let mut logits = fwd.forward(&prompt)?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..args.n_gen {
            let next = logits
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0 as u32;
            logits = fwd.forward(&[next])?;
        }
        let decode = t.elapsed().as_secs_f64();
        if rep > 0 {
            pp.push(args.n_prompt as f64 / prefill);
            tg.push(args.n_gen as f64 / decode);
        }
        let s = session.stats();
        kv = format!(
            "{}, {:.2} MiB",
            s.kv.plan,
            s.kv.kv_bytes as f64 / (1 << 20) as f64
        );
        device = session.device();
    }
    let ((pm, plo, phi), (gm, glo, ghi)) = (stats(&mut pp), stats(&mut tg));
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mark = if synthetic { " (SYNTHETIC)" } else { "" };
    if json {
        println!(
            "{{\"model\":{:?},\"synthetic\":{synthetic},\"device\":{device:?},\"kv\":{kv:?},\"n_prompt\":{},\"n_gen\":{},\"reps\":{reps},\"pp_tok_s\":{pm:.3},\"pp_min\":{plo:.3},\"pp_max\":{phi:.3},\"tg_tok_s\":{gm:.3},\"tg_min\":{glo:.3},\"tg_max\":{ghi:.3}}}",
            name, args.n_prompt, args.n_gen
        );
        return Ok(());
    }
    println!("{name}{mark} on {device}; KV {kv}; {reps} repetitions after one warm-up");
    println!("| test | tokens/s (median) | min .. max |");
    println!("|---|---:|---:|");
    println!("| pp{} | {pm:.2} | {plo:.2} .. {phi:.2} |", args.n_prompt);
    println!(
        "| tg{} (after pp{}) | {gm:.2} | {glo:.2} .. {ghi:.2} |",
        args.n_gen, args.n_prompt
    );
    Ok(())
}
