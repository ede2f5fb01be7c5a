//! `kvedge synth`: write a synthetic llama/qwen2 GGUF of given shapes with seeded random
//! weights and a stub tokenizer (see kvedge_models::synth). Its name and metadata say it is
//! synthetic; its text output is meaningless. For speed and memory measurements at model
//! sizes that are not on disk, and for tests.

use std::path::PathBuf;

use clap::Args;
use kvedge_models::synth::{synthesize, SynthSpec};
use kvedge_models::Arch;
use kvedge_runtime::quant::GgmlType;

#[derive(Args)]
pub struct SynthArgs {
    /// llama or qwen2
    #[arg(long, default_value = "llama")]
    arch: String,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 256)]
    dim: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    #[arg(long, default_value_t = 512)]
    ffn: usize,
    #[arg(long, default_value_t = 512)]
    vocab: usize,
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Type of the weight matrices (Q4_K, Q8_0, F16, ...)
    #[arg(long = "type", default_value = "Q8_0")]
    ty: String,
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

pub fn run(a: &SynthArgs) -> Result<(), Box<dyn std::error::Error>> {
    let arch = match a.arch.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => return Err(format!("unknown --arch '{other}': expected llama or qwen2").into()),
    };
    let ty = GgmlType::from_name(&a.ty)
        .filter(|t| t.can_dequantize())
        .ok_or_else(|| {
            format!(
                "unknown or unsupported --type '{}': expected one of {}",
                a.ty,
                GgmlType::compute_type_names()
            )
        })?;
    let spm = match a.tokenizer.as_str() {
        "bpe" => false,
        "spm" => true,
        other => return Err(format!("unknown --tokenizer '{other}': expected bpe or spm").into()),
    };
    let spec = SynthSpec {
        arch,
        layers: a.layers,
        dim: a.dim,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn: a.ffn,
        vocab: a.vocab,
        context: a.context,
        ty,
        tied_output: !a.untied,
        spm,
        seed: a.seed,
    };
    synthesize(&spec)?.write_file(&a.output)?;
    eprintln!("wrote synthetic model {} ({spec:?})", a.output.display());
    Ok(())
}
