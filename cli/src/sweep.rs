//! `kvedge eval sweep`: quality against KV memory for every KV method on one model, the
//! table that judges a compressed cache. Each method is one KV configuration (full f16,
//! q8, q4; window, h2o and nacl at each budget; TidalDecode at each k) run through the
//! same evaluation as `kvedge eval needle` (retrieval accuracy over a grid of depths) or
//! `kvedge eval ppl --stream` (perplexity of one long stream fed in chunks, the cache
//! compressed to its budget between chunks). Budgets are shares of the prompt (needle)
//! or of the stream (ppl). The results go to PREFIX.md (a markdown table, each row with
//! the single command that reproduces it and the device it ran on), PREFIX.json and
//! PREFIX.svg (quality against KV MiB, one line per eviction policy). The plot is SVG
//! because a PNG needs a font rasterizer, which plotters only offers through the
//! system's fontconfig; `tools/plot_kv_sweep.py` turns the table into a PNG.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use kvedge_models::{Model, SessionConfig};
use kvedge_runtime::kv::{KvBudget, KvOptions, KvPolicy, KvType, TidalOptions};
use kvedge_runtime::perplexity::stream_perplexity;

use crate::generate::{load_model, KvArgs, ModelArgs};
use crate::needle::{haystack_tokens, run_trials};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SweepTask {
    /// Needle-in-a-haystack accuracy (as `kvedge eval needle`)
    Needle,
    /// Streaming perplexity (as `kvedge eval ppl --stream`)
    Ppl,
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to measure
    #[arg(long, value_enum)]
    pub task: SweepTask,
    /// Methods: full, q8, q4, q4c, window, h2o, nacl, gate (one row per budget; gate needs
    /// --kv-gates) and tidal:K (needle only)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,q8,q4,window,h2o,nacl,tidal:128,tidal:256"
    )]
    pub methods: Vec<String>,
    /// Budgets of the eviction policies, percent of the prompt or stream
    #[arg(long, value_delimiter = ',', default_values_t = [50u32, 20, 10])]
    pub budgets: Vec<u32>,
    /// Needle: prompt lengths in tokens
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize])]
    pub lengths: Vec<usize>,
    /// Needle: depths, percent of the haystack
    #[arg(long, value_delimiter = ',', default_values_t = [0u32, 25, 50, 75, 100])]
    pub depths: Vec<u32>,
    /// Needle: directory of haystack .txt files (default: the fetched essays)
    #[arg(long)]
    pub haystack: Option<PathBuf>,
    /// Needle: seed of the magic numbers
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Ppl: UTF-8 text file, or a folder of .txt files joined in name order
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Ppl: tokens of the stream
    #[arg(long, default_value_t = 1024)]
    pub stream: usize,
    /// Prefill chunk in tokens (needle: default the whole prompt, so that NACL evicts
    /// once, by the question; ppl: the stream's chunk, default 256)
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Output prefix: writes PREFIX.md, PREFIX.json and PREFIX.svg
    #[arg(short, long)]
    pub out: PathBuf,
}

/// One KV configuration of the sweep.
struct Method {
    label: String,
    /// The policy's name, for the plot's lines (None for the full cache and Tidal).
    line: Option<&'static str>,
    /// The flags that select it on the command line.
    flags: String,
    kv: KvOptions,
}

struct Row {
    method: String,
    line: Option<&'static str>,
    length: usize,
    quality: f64,
    kv_mib: f64,
    plan: String,
    device: String,
    command: String,
    seconds: f64,
}

/// The methods of `names` for a prompt or stream of `n` tokens, over the user's flags.
fn methods(
    names: &[String],
    budgets: &[u32],
    n: usize,
    base: &KvOptions,
    tidal_layers: Option<(usize, usize)>,
    decodes: bool,
) -> Result<Vec<Method>, String> {
    let mut out = Vec::new();
    for name in names {
        let full = KvOptions {
            budget: None,
            policy: KvPolicy::Full,
            ..base.clone()
        };
        let typed = |ty: KvType| KvOptions {
            k_type: ty,
            v_type: ty,
            ..full.clone()
        };
        match name.as_str() {
            "full" => out.push(Method {
                label: "full f16".into(),
                line: None,
                flags: String::new(),
                kv: typed(KvType::F16),
            }),
            "q8" | "q4" => {
                let ty: KvType = name.parse()?;
                out.push(Method {
                    label: format!("full {name}"),
                    line: None,
                    flags: format!("--kv-type {name}"),
                    kv: typed(ty),
                });
            }
            // As `--kv-type q4c`: keys per channel, values per token (KIVI).
            "q4c" => out.push(Method {
                label: "full q4c".into(),
                line: None,
                flags: "--kv-type q4c".into(),
                kv: KvOptions {
                    k_type: KvType::Q4C,
                    v_type: KvType::Q4,
                    ..full.clone()
                },
            }),
            "window" | "h2o" | "nacl" | "gate" => {
                let policy: KvPolicy = name.parse()?;
                for &pct in budgets {
                    let slots = n * pct as usize / 100;
                    out.push(Method {
                        label: format!("{name} {pct} %"),
                        line: Some(policy.name()),
                        flags: format!("--kv-policy {name} --kv-budget {slots}"),
                        kv: KvOptions {
                            policy,
                            budget: Some(KvBudget::Tokens(slots)),
                            k_type: KvType::F16,
                            v_type: KvType::F16,
                            ..base.clone()
                        },
                    });
                }
            }
            t if t.starts_with("tidal:") && !decodes => {
                return Err(format!(
                    "method '{t}': TidalDecode changes decode steps only, and a perplexity \
                     stream is prefilled in chunks, so it would equal the full cache \
                     (use it with --task needle)"
                ))
            }
            t if t.starts_with("tidal:") => {
                let k: usize = t["tidal:".len()..]
                    .parse()
                    .map_err(|_| format!("method '{t}': expected tidal:K, e.g. tidal:256"))?;
                out.push(Method {
                    label: format!("tidal k {k}"),
                    line: None,
                    flags: format!("--sparse-decode tidal --tidal-k {k}"),
                    kv: KvOptions {
                        tidal: Some(TidalOptions {
                            k,
                            layers: tidal_layers,
                        }),
                        ..typed(KvType::F16)
                    },
                });
            }
            other => {
                return Err(format!(
                    "unknown method '{other}': expected full, q8, q4, q4c, window, h2o, nacl, gate or tidal:K"
                ))
            }
        }
    }
    Ok(out)
}

/// The user's KV flags that every method of the sweep inherits, as command-line text.
fn inherited_flags(a: &KvArgs) -> String {
    let mut f = Vec::new();
    if a.kv_sinks != 4 {
        f.push(format!("--kv-sinks {}", a.kv_sinks));
    }
    if a.kv_seed != 0 {
        f.push(format!("--kv-seed {}", a.kv_seed));
    }
    if let Some(p) = a.kv_pool {
        f.push(format!("--kv-pool {p}"));
    }
    if let Some(r) = a.kv_recent {
        f.push(format!("--kv-recent {r}"));
    }
    if let Some(on) = a.kv_rotate.0 {
        f.push(format!("--kv-rotate {}", if on { "on" } else { "off" }));
    }
    if let Some((s, r)) = a.tidal_layers {
        f.push(format!("--tidal-layers {s},{r}"));
    }
    f.join(" ")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub fn run(args: &SweepArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (path, model) = load_model(&args.model)?;
    let file = path
        .file_name()
        .map_or(path.display().to_string(), |f| f.to_string_lossy().into());
    let base = args.model.kv.options();
    let inherited = inherited_flags(&args.model.kv);
    // The gate file goes with the gate rows' commands only.
    let gates = |kv: &KvOptions| match (&args.model.kv_gates, kv.policy) {
        (Some(g), KvPolicy::Gate) => format!(" --kv-gates {}", g.display()),
        _ => String::new(),
    };
    let device = format!("{:?}", args.model.device).to_lowercase();
    let mut rows = Vec::new();
    match args.task {
        SweepTask::Needle => {
            let longest = *args.lengths.iter().max().unwrap_or(&0);
            let hay = haystack_tokens(&model, args.haystack.as_ref(), longest)?;
            let depths: Vec<String> = args.depths.iter().map(|d| d.to_string()).collect();
            let chunk = args.chunk.map_or(String::new(), |c| format!("--chunk {c}"));
            for &length in &args.lengths {
                for m in methods(
                    &args.methods,
                    &args.budgets,
                    length,
                    &base,
                    args.model.kv.tidal_layers,
                    true,
                )? {
                    eprintln!("== {} at {length} tokens", m.label);
                    let t0 = Instant::now();
                    let run = run_trials(
                        &model,
                        &hay,
                        &m.kv,
                        &[length],
                        &args.depths,
                        args.seed,
                        args.chunk,
                    )?;
                    rows.push(Row {
                        method: m.label,
                        line: m.line,
                        length,
                        quality: run.accuracy(),
                        kv_mib: mib(run.kv_bytes),
                        plan: run.plan,
                        device: run.device,
                        command: format!(
                            "kvedge eval needle -m {file} --device {device} --lengths {length} --depths {} --seed {} {chunk} {} {inherited}",
                            depths.join(","),
                            args.seed,
                            m.flags + &gates(&m.kv)
                        ),
                        seconds: t0.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        SweepTask::Ppl => {
            let text_path = args.text.as_ref().ok_or("--task ppl needs --text FILE")?;
            let text = crate::needle::read_text(text_path)?;
            let tokens = model.tokenizer().encode(&text, true, false)?;
            let n = args.stream;
            if tokens.len() < n || n < 2 {
                return Err(format!(
                    "{}: {} tokens; --stream {n} needs at least 2 and at most that many",
                    text_path.display(),
                    tokens.len()
                )
                .into());
            }
            let text_name = text_path
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into());
            for m in methods(
                &args.methods,
                &args.budgets,
                n,
                &base,
                args.model.kv.tidal_layers,
                false,
            )? {
                eprintln!("== {} over {n} tokens", m.label);
                let t0 = Instant::now();
                let chunk = args.chunk.unwrap_or(256);
                let (ppl, plan, bytes, dev) = stream_ppl(&model, &tokens[..n], chunk, &m.kv)?;
                rows.push(Row {
                    method: m.label,
                    line: m.line,
                    length: n,
                    quality: ppl,
                    kv_mib: mib(bytes),
                    plan,
                    device: dev,
                    command: format!(
                        "kvedge eval ppl -m {file} --device {device} --text {text_name} --stream {n} --ctx {chunk} {} {inherited}",
                        m.flags + &gates(&m.kv)
                    ),
                    seconds: t0.elapsed().as_secs_f64(),
                });
            }
        }
    }
    write_outputs(args, &file, &rows)
}

/// Streaming perplexity of `tokens` in chunks of `chunk` under `kv`: (PPL, KV plan, KV
/// bytes, device).
fn stream_ppl(
    model: &Model,
    tokens: &[u32],
    chunk: usize,
    kv: &KvOptions,
) -> Result<(f64, String, u64, String), Box<dyn std::error::Error>> {
    let mut session = model.session(&SessionConfig {
        context: tokens.len(),
        chunk,
        kv: kv.clone(),
        ..Default::default()
    })?;
    let p = stream_perplexity(
        session.forward_mut(),
        tokens,
        chunk,
        model.hparams().n_vocab,
        &mut |_, _, _| {},
    )?;
    let st = session.stats();
    Ok((p.ppl, st.kv.plan, st.kv.kv_bytes, session.device()))
}

fn write_outputs(
    args: &SweepArgs,
    file: &str,
    rows: &[Row],
) -> Result<(), Box<dyn std::error::Error>> {
    let (quality, what) = match args.task {
        SweepTask::Needle => ("accuracy", "needle accuracy"),
        SweepTask::Ppl => ("PPL", "streaming perplexity"),
    };
    let length = match args.task {
        SweepTask::Needle => "length",
        SweepTask::Ppl => "tokens",
    };
    let mut md = format!(
        "| method | {length} | {quality} | KV MiB | device | command |\n|---|---:|---:|---:|---|---|\n"
    );
    let mut json = Vec::new();
    for r in rows {
        md += &format!(
            "| {} | {} | {:.4} | {:.2} | {} | `{}` |\n",
            r.method,
            r.length,
            r.quality,
            r.kv_mib,
            r.device,
            r.command.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        json.push(format!(
            "{{\"method\":{:?},\"{length}\":{},\"{quality}\":{},\"kv_mib\":{:.4},\"plan\":{:?},\"device\":{:?},\"command\":{:?},\"seconds\":{:.1}}}",
            r.method,
            r.length,
            r.quality,
            r.kv_mib,
            r.plan,
            r.device,
            r.command.split_whitespace().collect::<Vec<_>>().join(" "),
            r.seconds
        ));
    }
    let with = |ext: &str| {
        let mut p = args.out.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let write = |p: PathBuf, s: &str| -> Result<(), String> {
        std::fs::write(&p, s).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(with(".md"), &md)?;
    write(
        with(".json"),
        &format!(
            "{{\"model\":{file:?},\"task\":{:?},\"rows\":[\n{}\n]}}\n",
            what,
            json.join(",\n")
        ),
    )?;
    plot(&with(".svg"), &format!("{file}: {what}"), quality, rows)?;
    print!("{md}");
    eprintln!(
        "wrote {}, {} and {}",
        with(".md").display(),
        with(".json").display(),
        with(".svg").display()
    );
    Ok(())
}

/// Quality against KV MiB: a line per eviction policy over its budgets, a labelled point
/// for each other method.
fn plot(path: &PathBuf, title: &str, quality: &str, rows: &[Row]) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let x_max = rows.iter().map(|r| r.kv_mib).fold(0.0, f64::max) * 1.1 + 1e-9;
    let y_max = rows
        .iter()
        .map(|r| r.quality)
        .filter(|q| q.is_finite())
        .fold(0.0, f64::max)
        * 1.1
        + 1e-9;
    let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("KV MiB")
        .y_desc(quality)
        .draw()
        .map_err(|e| err(&e))?;
    let colours = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN];
    let mut lines: Vec<&str> = rows.iter().filter_map(|r| r.line).collect();
    lines.dedup();
    for (i, name) in lines.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.line == Some(name))
            .map(|r| (r.kv_mib, r.quality))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), colour))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| err(&e))?;
    }
    for r in rows.iter().filter(|r| r.line.is_none()) {
        let p = (r.kv_mib, r.quality);
        chart
            .draw_series([Cross::new(p, 5, BLACK)])
            .map_err(|e| err(&e))?;
        chart
            .draw_series([Text::new(
                r.method.clone(),
                (p.0, p.1),
                ("sans-serif", 12).into_font(),
            )])
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
