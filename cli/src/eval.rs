//! `kvedge eval ppl`: perplexity of a model over a text file, by llama-perplexity's
//! protocol (see kvedge_runtime::perplexity), so the two can be compared directly.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use kvedge_models::SessionConfig;
use kvedge_runtime::perplexity::{perplexity, stream_perplexity};

use crate::generate::{load_model, ModelArgs};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity over a text file in windows of --ctx tokens (second half of each scored).
    Ppl(PplArgs),
    /// Needle-in-a-haystack retrieval over a grid of prompt lengths and needle depths.
    Needle(crate::needle::NeedleArgs),
    /// Quality against KV memory for every KV method (needle or streaming perplexity):
    /// a markdown table with commands, JSON and an SVG plot.
    Sweep(crate::sweep::SweepArgs),
}

#[derive(Args)]
pub struct PplArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// UTF-8 text file, or a folder of .txt files joined in name order
    #[arg(long)]
    pub text: PathBuf,
    /// Window length in tokens
    #[arg(long = "ctx", default_value_t = 512)]
    pub window: usize,
    /// Evaluate at most this many windows (0: all)
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    /// Streaming instead of windows: the first N tokens of the text as one stream, fed in
    /// chunks of --ctx through one session (the KV policy compresses between chunks),
    /// every token after the first scored
    #[arg(long, value_name = "N")]
    pub stream: Option<usize>,
}

pub fn run(cmd: &EvalCommand) -> Result<(), Box<dyn std::error::Error>> {
    let args = match cmd {
        EvalCommand::Ppl(args) => args,
        EvalCommand::Needle(args) => return crate::needle::run(args),
        EvalCommand::Sweep(args) => return crate::sweep::run(args),
    };
    let text = crate::needle::read_text(&args.text)?;
    let (_, model) = load_model(&args.model)?;
    let tok = model.tokenizer().clone();
    let tokens = tok.encode(&text, true, false)?;
    let kv = args.model.kv.options();
    let context = match (args.stream, args.model.ctx_size) {
        (Some(n), 0) => n,
        (None, 0) => args.window,
        (_, c) => c,
    };
    let mut session = model.session(&SessionConfig {
        context,
        chunk: args.window,
        kv,
        ..Default::default()
    })?;
    if let Some(n) = args.stream {
        if tokens.len() < n {
            return Err(format!(
                "{}: {} tokens, fewer than the {n} asked for by --stream",
                args.text.display(),
                tokens.len()
            )
            .into());
        }
        eprintln!(
            "{}: streaming {n} of {} tokens in chunks of {}, device {}",
            args.text.display(),
            tokens.len(),
            args.window,
            session.device()
        );
        let t = Instant::now();
        let p = stream_perplexity(
            session.forward_mut(),
            &tokens[..n],
            args.window,
            model.hparams().n_vocab,
            &mut |i, n, ppl| eprint!("[{i}/{n}]{ppl:.4} "),
        )?;
        eprintln!();
        let s = session.stats();
        println!(
            "PPL = {:.4} +/- {:.5} (stream of {n} tokens, {} scored, {:.1} s); KV {}: {:.2} MiB, {} of {} slots used, {} evicted per head",
            p.ppl,
            p.ppl_err,
            p.scored_tokens,
            t.elapsed().as_secs_f64(),
            s.kv.plan,
            s.kv.kv_bytes as f64 / (1 << 20) as f64,
            s.kv.used,
            s.kv.slots,
            s.kv.evicted
        );
        return Ok(());
    }
    let bos = if tok.add_bos { tok.bos } else { None };
    eprintln!(
        "{}: {} tokens, windows of {} ({} available), device {}",
        args.text.display(),
        tokens.len(),
        args.window,
        tokens.len() / args.window.max(1),
        session.device()
    );
    let t = Instant::now();
    let n_vocab = model.hparams().n_vocab;
    let p = perplexity(
        session.forward_mut(),
        &tokens,
        args.window,
        bos,
        n_vocab,
        args.chunks,
        &mut |i, n, ppl| {
            eprint!("[{i}/{n}]{ppl:.4} ");
        },
    )?;
    eprintln!();
    println!(
        "PPL = {:.4} +/- {:.5} ({} windows of {}, {} scored tokens, {:.1} s)",
        p.ppl,
        p.ppl_err,
        p.windows,
        args.window,
        p.scored_tokens,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
