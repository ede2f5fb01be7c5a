//! `kvedge synth`: write a synthetic llama/qwen2 GGUF of given shapes with seeded random
//! weights and a stub tokenizer (see kvedge_models::synth). Its name and metadata say it is
//! synthetic; its text output is meaningless. For speed and memory measurements at model
//! sizes that are not on disk, and for tests.

use std::path::PathBuf;

use clap::Args;
use kvedge_models::synth::{synthesize, SynthSpec};
use kvedge_models::{Arch, HParams};
use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::quant::GgmlType;

#[derive(Args)]
pub struct SynthArgs {
    /// Take every shape (and the main weight type, and whether the output matrix is
    /// tied) from this GGUF; the flags below override single values
    #[arg(long)]
    like: Option<PathBuf>,
    /// llama or qwen2 [default: llama]
    #[arg(long)]
    arch: Option<String>,
    /// [default: 2]
    #[arg(long)]
    layers: Option<usize>,
    /// [default: 256]
    #[arg(long)]
    dim: Option<usize>,
    /// [default: 4]
    #[arg(long)]
    heads: Option<usize>,
    /// [default: 2]
    #[arg(long)]
    kv_heads: Option<usize>,
    /// [default: 512]
    #[arg(long)]
    ffn: Option<usize>,
    /// [default: 512]
    #[arg(long)]
    vocab: Option<usize>,
    /// [default: 2048]
    #[arg(long)]
    context: Option<usize>,
    /// Type of the weight matrices (Q4_K, Q8_0, F16, ...) [default: Q8_0]
    #[arg(long = "type")]
    ty: Option<String>,
    /// bpe (byte-level, gpt2) or spm (SentencePiece, llama)
    #[arg(long, default_value = "bpe")]
    tokenizer: String,
    /// A separate output matrix instead of reusing the embedding
    #[arg(long)]
    untied: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// The shape of an existing model, its main matrix type and output tying.
fn like(path: &PathBuf) -> Result<SynthSpec, Box<dyn std::error::Error>> {
    let file = GgufFile::open(path)?;
    let hp = HParams::from_gguf(&file)?;
    let ty = crate::roofline::main_type(&file);
    Ok(SynthSpec {
        arch: hp.arch,
        layers: hp.n_layers,
        dim: hp.n_embd,
        heads: hp.n_heads,
        kv_heads: hp.n_kv_heads,
        ffn: hp.n_ff,
        vocab: hp.n_vocab,
        context: hp.n_ctx_train,
        ty,
        tied_output: !file.tensors().iter().any(|t| t.name == "output.weight"),
        spm: false,
        seed: 1,
    })
}

pub fn run(a: &SynthArgs) -> Result<(), Box<dyn std::error::Error>> {
    let base = match &a.like {
        Some(p) => like(p)?,
        None => SynthSpec {
            vocab: 512,
            context: 2048,
            ..SynthSpec::default()
        },
    };
    let arch = match a.arch.as_deref() {
        None => base.arch,
        Some("llama") => Arch::Llama,
        Some("qwen2") => Arch::Qwen2,
        Some(other) => {
            return Err(format!("unknown --arch '{other}': expected llama or qwen2").into())
        }
    };
    let ty = match &a.ty {
        None => base.ty,
        Some(name) => GgmlType::from_name(name)
            .filter(|t| t.can_dequantize())
            .ok_or_else(|| {
                format!(
                    "unknown or unsupported --type '{name}': expected one of {}",
                    GgmlType::compute_type_names()
                )
            })?,
    };
    let spm = match a.tokenizer.as_str() {
        "bpe" => false,
        "spm" => true,
        other => return Err(format!("unknown --tokenizer '{other}': expected bpe or spm").into()),
    };
    let spec = SynthSpec {
        arch,
        layers: a.layers.unwrap_or(base.layers),
        dim: a.dim.unwrap_or(base.dim),
        heads: a.heads.unwrap_or(base.heads),
        kv_heads: a.kv_heads.unwrap_or(base.kv_heads),
        ffn: a.ffn.unwrap_or(base.ffn),
        vocab: a.vocab.unwrap_or(base.vocab),
        context: a.context.unwrap_or(base.context),
        ty,
        tied_output: if a.untied { false } else { base.tied_output },
        spm,
        seed: a.seed,
    };
    synthesize(&spec)?.write_file(&a.output)?;
    eprintln!("wrote synthetic model {} ({spec:?})", a.output.display());
    Ok(())
}
