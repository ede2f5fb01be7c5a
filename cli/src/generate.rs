//! `kvedge run` (one completion, streamed) and `kvedge chat` (interactive multi-turn chat
//! that keeps the conversation in the KV cache between turns).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use kvedge_models::{Device, LoadOptions, Model, SessionConfig};
use kvedge_runtime::kv::{KvBudget, KvOptions, KvPolicy, KvType, TidalOptions};
use kvedge_runtime::sample::SamplingOptions;
use kvedge_runtime::session::{GenerateOptions, Session, Stats};

/// The default model, fetched by `models/fetch.sh`.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// GGUF model (default: SmolLM2-135M-Instruct from models/fetch.sh)
    #[arg(short = 'm', long)]
    pub model: Option<PathBuf>,
    /// gpu or cpu (the CPU is never chosen silently)
    #[arg(long, default_value = "gpu")]
    pub device: Device,
    /// Context length in tokens (0: min(training context, 4096)); with a KV policy the
    /// session runs past it, evicting
    #[arg(short = 'c', long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Cap on the GPU memory of the weights and the session together (e.g. 2GiB, 900MB);
    /// loading or a session over it fails with what was needed
    #[arg(long, value_parser = parse_bytes)]
    pub gpu_mem: Option<u64>,
    /// Under --gpu-mem, size the KV cache to what the cap leaves (the budget with a KV
    /// policy, the context with the full cache)
    #[arg(long)]
    pub kv_fit: bool,
    /// With a file from `kvedge compress`: on stores Palu latents in the KV cache, off
    /// runs the original K/V projections from the same file
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub kv_lowrank: String,
    /// Attention-Gate file for --kv-policy gate (from tools/train-gates; refused when
    /// trained for another model)
    #[arg(long)]
    pub kv_gates: Option<PathBuf>,
    #[command(flatten)]
    pub kv: KvArgs,
}

/// A size in bytes with its unit: `2GiB`, `900MB`, `65536B`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    match s.parse::<KvBudget>()? {
        KvBudget::Bytes(b) => Ok(b),
        KvBudget::Tokens(_) => Err(format!(
            "'{s}': expected a size with a unit (B, KB, MB, GB, KiB, MiB, GiB)"
        )),
    }
}

/// auto | on | off.
#[derive(Clone, Copy, Debug)]
pub struct Toggle(pub Option<bool>);

impl std::str::FromStr for Toggle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Toggle(None)),
            "on" => Ok(Toggle(Some(true))),
            "off" => Ok(Toggle(Some(false))),
            other => Err(format!("'{other}': expected auto, on or off")),
        }
    }
}

/// KV cache budget and eviction, shared by run, chat, eval and bench.
#[derive(Args, Clone, Debug)]
pub struct KvArgs {
    /// KV budget: slots per layer and head (2048) or bytes of the whole cache (64MiB);
    /// needs --kv-policy
    #[arg(long)]
    pub kv_budget: Option<KvBudget>,
    /// What an over-budget cache drops: full (nothing), window (sinks + recent),
    /// h2o (heavy hitters), nacl (proxy-query scores + random), gate (learned
    /// Attention-Gate scores; needs --kv-gates or a model with gates)
    #[arg(long, default_value = "full")]
    pub kv_policy: KvPolicy,
    /// Attention-sink tokens every policy keeps
    #[arg(long, default_value_t = 4)]
    pub kv_sinks: usize,
    /// Seed of NACL's random sample
    #[arg(long, default_value_t = 0)]
    pub kv_seed: u64,
    /// Max-pool h2o/nacl/TidalDecode scores over this many neighbouring slots each side
    /// before ranking, so spans around attended tokens are kept whole (default: 8 for nacl
    /// and tidal, 0 for h2o)
    #[arg(long)]
    pub kv_pool: Option<usize>,
    /// Percent of the kept slots (after the sinks) that h2o and gate keep by recency, the
    /// rest by score (default 50 for h2o, 75 for gate)
    #[arg(long)]
    pub kv_recent: Option<u32>,
    /// Storage type of K and V: f16, q8 (as llama.cpp's q8_0), q4 (as q4_0), or q4c (K
    /// quantized per channel over blocks of 32 slots as KIVI does, V as q4)
    #[arg(long, default_value = "f16")]
    pub kv_type: KvType,
    /// Storage type of K alone (overrides --kv-type)
    #[arg(long)]
    pub kv_type_k: Option<KvType>,
    /// Storage type of V alone (overrides --kv-type)
    #[arg(long)]
    pub kv_type_v: Option<KvType>,
    /// Walsh-Hadamard rotation of Q, K, V before they are stored: auto (on when K or V is
    /// quantized, as llama.cpp does), on, off
    #[arg(long, default_value = "auto")]
    pub kv_rotate: Toggle,
    /// Sparse decode: off, or tidal (TidalDecode: dense layers up to a selection layer,
    /// then attention over the top --tidal-k slots per KV head)
    #[arg(long, default_value = "off", value_parser = ["off", "tidal"])]
    pub sparse_decode: String,
    /// Slots per KV head that TidalDecode's sparse layers read
    #[arg(long, default_value_t = 256)]
    pub tidal_k: usize,
    /// TidalDecode's selection and re-selection layers (default: 2 and half the layers)
    #[arg(long, value_parser = parse_layer_pair)]
    pub tidal_layers: Option<(usize, usize)>,
}

fn parse_layer_pair(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}': expected two layer numbers, e.g. 2,14");
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

impl KvArgs {
    pub fn options(&self) -> KvOptions {
        KvOptions {
            budget: self.kv_budget,
            policy: self.kv_policy,
            sinks: self.kv_sinks,
            seed: self.kv_seed,
            k_type: self.kv_type_k.unwrap_or(self.kv_type),
            // KIVI's split: keys per channel, values per token.
            v_type: self.kv_type_v.unwrap_or(match self.kv_type {
                KvType::Q4C => KvType::Q4,
                t => t,
            }),
            hadamard: self.kv_rotate.0,
            pool: self.kv_pool,
            recent_pct: self.kv_recent,
            tidal: (self.sparse_decode == "tidal").then_some(TidalOptions {
                k: self.tidal_k,
                layers: self.tidal_layers,
            }),
        }
    }
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy)
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Most tokens to generate
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n_predict: usize,
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.n_predict,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed: self.seed,
            },
            stop: Vec::new(),
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn default_model() -> Result<PathBuf, String> {
    find_in_cache(DEFAULT_MODEL).ok_or_else(|| format!("no model given and the default {DEFAULT_MODEL} is not fetched: run `bash models/fetch.sh` or pass -m FILE"))
}

/// `name` in the model cache (KVEDGE_MODEL_CACHE, ./models/cache, or the repository's).
pub fn find_in_cache(name: &str) -> Option<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = std::env::var_os("KVEDGE_MODEL_CACHE") {
        places.push(PathBuf::from(dir));
    }
    places.push(PathBuf::from("models/cache"));
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/kvedge -> repository root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            places.push(root.join("models/cache"));
        }
    }
    places.iter().map(|p| p.join(name)).find(|p| p.exists())
}

/// The model file named by `-m`, or the default one.
pub fn resolve_model(args: &ModelArgs) -> Result<PathBuf, String> {
    match &args.model {
        Some(p) => Ok(p.clone()),
        None => default_model(),
    }
}

/// The model named by `args` on its device, without a progress bar (evaluations and
/// benchmarks); returns its path too, for reports.
pub fn load_model(args: &ModelArgs) -> Result<(PathBuf, Model), Box<dyn std::error::Error>> {
    let path = resolve_model(args)?;
    let opts = LoadOptions {
        device: args.device.clone(),
        max_gpu_bytes: args.gpu_mem,
        ignore_lowrank: args.kv_lowrank == "off",
        gates: args.kv_gates.clone(),
        ..Default::default()
    };
    let model = Model::load(&path, &opts, &mut |_, _| {})?;
    Ok((path, model))
}

fn load(args: &ModelArgs, quiet: bool) -> Result<(Model, Session), Box<dyn std::error::Error>> {
    let path = resolve_model(args)?;
    let bar = if quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        b
    };
    let opts = LoadOptions {
        device: args.device.clone(),
        max_gpu_bytes: args.gpu_mem,
        ignore_lowrank: args.kv_lowrank == "off",
        gates: args.kv_gates.clone(),
        ..Default::default()
    };
    let model = Model::load(&path, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let session = model.session(&SessionConfig {
        context: args.ctx_size,
        kv: args.kv.options(),
        fit_memory: args.kv_fit,
        ..Default::default()
    })?;
    let mem = model.memory();
    if let Some(cap) = mem.cap {
        let kv = session.stats().kv;
        eprintln!(
            "GPU memory cap {:.1} MiB: weights {:.1} MiB, session {:.1} MiB ({} KV slots per layer and head)",
            mib(cap),
            mib(mem.weights),
            mib(mem.sessions),
            kv.slots
        );
    }
    Ok((model, session))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (raw text; special tokens such as <|im_start|> are parsed)
    #[arg(short = 'p', long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print statistics to stderr at the end
    #[arg(long)]
    pub stats: bool,
}

pub fn run(args: &RunArgs) -> Res {
    if args.prompt.is_empty() {
        return Err("empty prompt: pass some text with -p".into());
    }
    let (_model, mut session) = load(&args.model, false)?;
    let opts = args.sampling.options();
    let mut out = std::io::stdout().lock();
    for piece in session.generate(&args.prompt, &opts)? {
        out.write_all(piece?.as_bytes())?;
        out.flush()?;
    }
    writeln!(out)?;
    if args.stats {
        print_stats(&session, &Stats::default());
    }
    Ok(())
}

/// Statistics of what ran since `before` (a turn), with the context and KV totals.
fn print_stats(session: &Session, before: &Stats) {
    let s = session.stats();
    let turn = Stats {
        prompt_tokens: s.prompt_tokens - before.prompt_tokens,
        generated_tokens: s.generated_tokens - before.generated_tokens,
        prefill_time: s.prefill_time.saturating_sub(before.prefill_time),
        decode_time: s.decode_time.saturating_sub(before.decode_time),
        ..Stats::default()
    };
    eprintln!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s; {}; KV cache {:.1} MiB, {}/{} slots, {} evicted ({}); {}]",
        turn.prompt_tokens,
        turn.prefill_tokens_per_s(),
        turn.generated_tokens,
        turn.decode_tokens_per_s(),
        if s.kv.evicted > 0 || s.context_size > u32::MAX as usize / 2 {
            format!("{} tokens seen", s.context_used)
        } else {
            format!("context {}/{}", s.context_used, s.context_size)
        },
        mib(s.kv_bytes),
        s.kv.used,
        s.kv.slots,
        s.kv.evicted,
        s.kv.plan,
        session.device()
    );
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn chat(args: &ChatArgs) -> Res {
    let (model, mut session) = load(&args.model, false)?;
    if !model.has_chat_template() {
        return Err(
            "this model has no chat template (tokenizer.chat_template); use `kvedge run`".into(),
        );
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "kvedge chat: {} on {}. Ctrl-D to quit, /reset to start over.",
            model.hparams().arch.name(),
            session.device()
        );
    }
    let opts = args.sampling.options();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else {
            if interactive {
                eprintln!();
            }
            return Ok(());
        };
        let line = line?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        let before = session.stats();
        let mut out = std::io::stdout().lock();
        // A turn that cannot run (e.g. the context is full) is reported and the chat goes on.
        let mut gen = match session.chat(text, &opts) {
            Ok(g) => g,
            Err(e) => {
                drop(out);
                eprintln!("error: {e} (/reset starts a new conversation)");
                continue;
            }
        };
        for piece in gen.by_ref() {
            out.write_all(piece?.as_bytes())?;
            out.flush()?;
        }
        gen.finish_turn();
        writeln!(out)?;
        drop(out);
        print_stats(&session, &before);
    }
}
