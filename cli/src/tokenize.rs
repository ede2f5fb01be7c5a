//! `kvedge tokenize`: a text file (or a folder of .txt files joined in name order, as the
//! evaluations read them) as the model's token ids, little-endian u32, one after another.
//! The gate trainer (`tools/train-gates/`) reads its training text this way, so it sees
//! exactly the tokens kvedge's evaluations see.

use std::path::PathBuf;

use clap::Args;
use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::tokenizer::Tokenizer;

#[derive(Args)]
pub struct TokenizeArgs {
    /// GGUF model whose tokenizer to use
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// UTF-8 text file, or a folder of .txt files joined in name order
    #[arg(long)]
    pub text: PathBuf,
    /// Output file of little-endian u32 token ids (the first is BOS when the model adds one)
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run(args: &TokenizeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let text = crate::needle::read_text(&args.text)?;
    let tokens = tokenizer.encode(&text, true, false)?;
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("{}: {} tokens", args.out.display(), tokens.len());
    Ok(())
}
