//! `kvedge bench -m FILE --profile`: where a model's GPU time goes, per kernel, from the
//! adapter's timestamp queries (`gpu::GpuContext::profile_start`). After the timed
//! repetitions of a depth, one more untimed run fills a fresh session to that depth, then
//! profiles the prompt's prefill and the decode steps separately (collecting after every
//! forward call, which reads its logits back), and reports each kernel's GPU time: total
//! for the prefill, per token for decode, with its share and dispatch count. Timestamps
//! cost a little per pass, so these runs are kept out of the tokens/s figures.

use kvedge_models::{Model, SessionConfig};
use kvedge_runtime::gpu::ProfileReport;
use kvedge_runtime::rng::SplitMix64;
use kvedge_runtime::sample::argmax;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One depth's profile: the prefill of the prompt and the decode steps after it.
pub struct DepthProfile {
    pub depth: usize,
    pub prefill: ProfileReport,
    pub decode: ProfileReport,
    pub n_gen: usize,
}

/// Profile one run at `depth`: `n_prompt` random prompt tokens, then `n_gen` decode steps.
pub fn run(
    model: &Model,
    cfg: &SessionConfig,
    depth: usize,
    n_prompt: usize,
    n_gen: usize,
) -> Res<DepthProfile> {
    let ctx = model.gpu_context().ok_or(
        "--profile needs the GPU device (it reads the adapter's timestamp queries); drop --device cpu",
    )?;
    let vocab = model.hparams().n_vocab as u64;
    let mut session = model.session(cfg)?;
    let mut rng = SplitMix64::new(7);
    let mut random = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vocab) as u32).collect() };
    let (fill, prompt) = (random(depth), random(n_prompt));
    let fwd = session.forward_mut();
    if depth > 0 {
        fwd.forward(&fill)?;
    }
    ctx.profile_start()?;
    let logits = fwd.forward(&prompt);
    let prefill = ctx.profile_finish()?;
    let mut logits = logits?;
    ctx.profile_start()?;
    for _ in 0..n_gen {
        match fwd.forward(&[argmax(&logits)]) {
            Ok(l) => logits = l,
            Err(e) => {
                ctx.profile_finish()?;
                return Err(e.into());
            }
        }
        ctx.profile_collect()?;
    }
    let decode = ctx.profile_finish()?;
    Ok(DepthProfile {
        depth,
        prefill,
        decode,
        n_gen,
    })
}

/// Kernels by decode time, then prefill time, largest first.
fn kernel_order(p: &DepthProfile) -> Vec<String> {
    let mut names: Vec<String> = p
        .prefill
        .kernels
        .keys()
        .chain(p.decode.kernels.keys())
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    let time = |r: &ProfileReport, k: &str| r.kernels.get(k).map_or(0.0, |t| t.nanos);
    names.sort_by(|a, b| {
        (time(&p.decode, b), time(&p.prefill, b))
            .partial_cmp(&(time(&p.decode, a), time(&p.prefill, a)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    names
}

/// The markdown table of one depth's profile.
pub fn print(p: &DepthProfile, n_prompt: usize) {
    let (pre_total, dec_total) = (p.prefill.total_nanos(), p.decode.total_nanos());
    let steps = p.n_gen.max(1) as f64;
    println!(
        "\nGPU time per kernel at depth {} (timestamp queries): prefill of {n_prompt} tokens {:.2} ms, decode {:.3} ms per token",
        p.depth,
        pre_total / 1e6,
        dec_total / 1e6 / steps
    );
    println!("| kernel | prefill ms | prefill % | decode ms/token | decode % | dispatches/token |");
    println!("|---|---:|---:|---:|---:|---:|");
    for k in kernel_order(p) {
        let pre = p.prefill.kernels.get(&k).cloned().unwrap_or_default();
        let dec = p.decode.kernels.get(&k).cloned().unwrap_or_default();
        println!(
            "| {k} | {:.2} | {:.1} | {:.3} | {:.1} | {:.0} |",
            pre.nanos / 1e6,
            100.0 * pre.nanos / pre_total.max(1.0),
            dec.nanos / 1e6 / steps,
            100.0 * dec.nanos / dec_total.max(1.0),
            dec.dispatches as f64 / steps
        );
    }
    let untimed = p.prefill.untimed + p.decode.untimed;
    if untimed > 0 {
        println!("({untimed} dispatches ran untimed: more passes than the query set holds between collections)");
    }
}

/// The JSON object of one depth's profile.
pub fn json(p: &DepthProfile) -> String {
    let kernels = |r: &ProfileReport| -> String {
        r.kernels
            .iter()
            .map(|(k, t)| {
                format!(
                    "{{\"kernel\":{k:?},\"dispatches\":{},\"ns\":{:.0}}}",
                    t.dispatches, t.nanos
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{{\"depth\":{},\"n_gen\":{},\"untimed\":{},\"prefill\":[{}],\"decode\":[{}]}}",
        p.depth,
        p.n_gen,
        p.prefill.untimed + p.decode.untimed,
        kernels(&p.prefill),
        kernels(&p.decode)
    )
}
