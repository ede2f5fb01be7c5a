//! `kvedge`: the command line of the kvedge runtime.
//!
//! - `kvedge inspect FILE`: architecture, hyperparameters, tokenizer, tensors by type and
//!   the KV-cache bytes per token of a GGUF model.
//! - `kvedge devices`: the GPU adapters wgpu sees, with the features and limits that matter.
//! - `kvedge bench --kernels`: GB/s of the dequantizing matvec kernels per quant type on
//!   the adapter at hand.
//! - `kvedge run -p PROMPT`: stream a completion; `kvedge chat`: multi-turn chat.
//! - `kvedge tokenize`: a text's token ids, for the gate trainer.

mod bench;
mod bench_cpu;
mod bench_model;
mod bench_profile;
mod compress;
mod devices;
mod eval;
mod generate;
mod inspect;
mod lowrank_factor;
mod needle;
mod roofline;
mod sweep;
mod synth;
mod tokenize;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kvedge",
    version,
    about = "Quantized GGUF models on laptop and phone GPUs, with a compressed KV cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF model's architecture, hyperparameters, tokenizer, tensors and KV bytes.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Also list every tensor.
        #[arg(long)]
        tensors: bool,
    },
    /// List the GPU adapters (choose a backend with WGPU_BACKEND, an adapter with KVEDGE_ADAPTER).
    Devices,
    /// Benchmarks.
    Bench(bench::BenchArgs),
    /// Complete a prompt and stream the text.
    Run(generate::RunArgs),
    /// Interactive multi-turn chat (default model: SmolLM2 from models/fetch.sh).
    Chat(generate::ChatArgs),
    /// Evaluations.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Write a synthetic model (random weights, stub tokenizer) of given shapes.
    Synth(synth::SynthArgs),
    /// Factor a model's K/V projections into Palu low-rank latents (a new GGUF).
    Compress(compress::CompressArgs),
    /// Write a text's token ids (little-endian u32), for the gate trainer.
    Tokenize(tokenize::TokenizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file, tensors } => inspect::run(&file, tensors),
        Command::Devices => devices::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Run(args) => generate::run(&args),
        Command::Compress(args) => compress::run(&args),
        Command::Chat(args) => generate::chat(&args),
        Command::Eval(cmd) => eval::run(&cmd),
        Command::Synth(args) => synth::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvedge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
