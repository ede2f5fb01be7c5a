//! `kvedge compress`: factor a model's K and V projections into Palu low-rank pairs
//! (arXiv 2407.21118) and write a new GGUF with the factors beside the original tensors;
//! the format is documented in `kvedge_models::lowrank`, the mathematics in
//! `lowrank_factor`. Optionally whitened by calibration activations gathered by running
//! the model itself (the CPU reference forward pass) over calibration text.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use faer::{Accum, Mat, Par};
use kvedge_models::llama::cpu::CpuForward;
use kvedge_models::llama::LlamaModel;
use kvedge_models::lowrank::{factor_names, LOWRANK_ARCH, PREFIX};
use kvedge_runtime::gguf::{GgufWriter, MetaArray, MetaValue};
use kvedge_runtime::kernels::hadamard;
use kvedge_runtime::kv::{KvOptions, KvType};
use kvedge_runtime::quant::{dequantize, GgmlType};
use kvedge_runtime::tokenizer::Tokenizer;

use crate::lowrank_factor::{self, Factors, Spectrum};

#[derive(Args)]
pub struct CompressArgs {
    /// The GGUF model to compress
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Where to write the compressed GGUF
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Latent width over the full K (and V) width of a group, averaged over layers
    #[arg(long, default_value_t = 0.5)]
    pub kv_rank_ratio: f64,
    /// KV heads factored together: a number dividing the KV head count, or "all"
    #[arg(long, default_value = "all")]
    pub group_size: String,
    /// Calibration text (a file, or a folder of .txt files) for whitening; without it the
    /// plain SVD of the weights is used
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration tokens taken from the start of the text
    #[arg(long, default_value_t = 2048)]
    pub calib_tokens: usize,
    /// uniform (every layer the same rank) or energy (retained spectral energy)
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "energy"])]
    pub rank_alloc: String,
    /// The latent storage type the ranks are rounded for: f16 (multiples of 8) or q8/q4
    /// (multiples of 32, the quantization block); the session's --kv-type picks the
    /// type actually stored
    #[arg(long, default_value = "f16")]
    pub latent_type: KvType,
    /// Fold a Walsh-Hadamard rotation into the factors, so that the latents are rotated
    /// before they are quantized (spreads outliers over the block, as Palu does)
    #[arg(long)]
    pub hadamard: bool,
}

/// One layer's K or V projection, dequantized, with its groups' spectra.
struct Matrix {
    layer: usize,
    v: bool,
    spectra: Vec<Spectrum>,
}

pub fn run(args: &CompressArgs) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    if !(args.kv_rank_ratio > 0.0 && args.kv_rank_ratio <= 1.0) {
        return Err(format!(
            "--kv-rank-ratio: expected a value in (0, 1], got {}",
            args.kv_rank_ratio
        )
        .into());
    }
    let model = Arc::new(LlamaModel::open(&args.model)?);
    if model.lowrank.is_some() {
        return Err(format!(
            "{}: already has low-rank factors (architecture {LOWRANK_ARCH}); compress the original",
            args.model.display()
        )
        .into());
    }
    let hp = model.hp.clone();
    let group_size = match args.group_size.as_str() {
        "all" => hp.n_kv_heads,
        s => s
            .parse::<usize>()
            .ok()
            .filter(|&g| g > 0 && hp.n_kv_heads.is_multiple_of(g))
            .ok_or_else(|| {
                format!(
                    "--group-size: expected \"all\" or a divisor of the model's {} KV heads, got '{s}'",
                    hp.n_kv_heads
                )
            })?,
    };
    let n_groups = hp.n_kv_heads / group_size;
    let (d, hd) = (hp.n_embd, hp.head_dim);
    let width = group_size * hd;
    let multiple = match args.latent_type {
        KvType::F16 => 8,
        _ => 32,
    };

    let (whiteners, calib_used) = match &args.calib {
        Some(path) => {
            let c = calibrate(&model, path, args.calib_tokens)?;
            (Some(c.whiteners), c.tokens)
        }
        None => (None, 0),
    };

    // Spectra of every group of every layer's K and V.
    let bar = progress(2 * hp.n_layers as u64, "factoring");
    let mut matrices = Vec::new();
    for layer in 0..hp.n_layers {
        for v in [false, true] {
            let name = format!("blk.{layer}.attn_{}.weight", if v { "v" } else { "k" });
            let t = model.file.tensor(&name)?;
            let mut w = vec![0.0f32; t.n_elements as usize];
            dequantize(t.ty, model.file.tensor_data(t), &mut w)?;
            let l = whiteners.as_ref().map(|w| &w[layer]);
            let spectra = (0..n_groups)
                .map(|g| {
                    lowrank_factor::spectrum(&w[g * width * d..(g + 1) * width * d], width, d, l)
                })
                .collect::<Result<Vec<_>, _>>()?;
            matrices.push(Matrix { layer, v, spectra });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let max_rank = width.min(d);
    let target = args.kv_rank_ratio * width as f64;
    let ranks: Vec<usize> = match args.rank_alloc.as_str() {
        "energy" => {
            let budget = (target * (matrices.len() * n_groups) as f64).round() as usize;
            let spectra: Vec<Vec<&Spectrum>> = matrices
                .iter()
                .map(|m| m.spectra.iter().collect())
                .collect();
            lowrank_factor::allocate_energy(&spectra, multiple, budget)
        }
        _ => vec![lowrank_factor::round_rank(target, multiple, max_rank); matrices.len()],
    };

    let mut w = GgufWriter::new();
    for (key, value) in model.file.metadata() {
        if key == "general.architecture" {
            w.set(key.clone(), MetaValue::String(LOWRANK_ARCH.into()));
        } else {
            w.set(key.clone(), value.clone());
        }
    }
    let meta = |k: &str| format!("{PREFIX}.{k}");
    let ranks_of = |v: bool| -> Vec<u32> {
        matrices
            .iter()
            .zip(&ranks)
            .filter(|(m, _)| m.v == v)
            .map(|(_, &r)| r as u32)
            .collect()
    };
    let (k_ranks, v_ranks) = (ranks_of(false), ranks_of(true));
    w.set(
        meta("base_architecture"),
        MetaValue::String(hp.arch.name().into()),
    )
    .set(meta("group_size"), MetaValue::U32(group_size as u32))
    .set(
        meta("k_ranks"),
        MetaValue::Array(MetaArray::U32(k_ranks.clone())),
    )
    .set(
        meta("v_ranks"),
        MetaValue::Array(MetaArray::U32(v_ranks.clone())),
    )
    .set(
        meta("rank_ratio"),
        MetaValue::F32(args.kv_rank_ratio as f32),
    )
    .set(meta("whitened"), MetaValue::Bool(whiteners.is_some()))
    .set(
        meta("rank_alloc"),
        MetaValue::String(args.rank_alloc.clone()),
    )
    .set(meta("rank_multiple"), MetaValue::U32(multiple as u32))
    .set(meta("hadamard"), MetaValue::Bool(args.hadamard))
    .set(meta("calib_tokens"), MetaValue::U32(calib_used as u32));
    for t in model.file.tensors() {
        w.add_tensor(
            t.name.clone(),
            t.ty,
            &t.dims,
            model.file.tensor_data(t).to_vec(),
        )?;
    }

    println!(
        "{:>5} {:>2} {:>5} {:>8} {:>10}",
        "layer", "kv", "rank", "energy", "rel. error"
    );
    for (m, &r) in matrices.iter().zip(&ranks) {
        let l = whiteners.as_ref().map(|w| &w[m.layer]);
        let (mut down, mut up) = (Vec::new(), Vec::new());
        let (mut err2, mut total2, mut energy) = (0.0, 0.0, 0.0);
        for sp in &m.spectra {
            let Factors {
                down: mut dn,
                up: mut u,
                error,
            } = sp.factors(r, l);
            if args.hadamard {
                rotate_latent(&mut dn, &mut u, r, d)?;
            }
            down.extend(dn);
            up.extend(u);
            err2 += error * error;
            total2 += sp.s.iter().map(|x| x * x).sum::<f64>();
            energy += sp.energy(r) / m.spectra.len() as f64;
        }
        let (dn_name, up_name) = factor_names(m.layer, m.v);
        w.add_tensor(
            dn_name,
            GgmlType::F16,
            &[d as u64, (n_groups * r) as u64],
            f16_bytes(&down),
        )?;
        w.add_tensor(
            up_name,
            GgmlType::F16,
            &[r as u64, (hp.n_kv_heads * hd) as u64],
            f16_bytes(&up),
        )?;
        println!(
            "{:>5} {:>2} {:>5} {:>7.2}% {:>10.4}",
            m.layer,
            if m.v { "V" } else { "K" },
            r,
            100.0 * energy,
            (err2 / total2.max(1e-300)).sqrt()
        );
    }
    w.write_file(&args.output)?;

    let full = 2 * hp.n_layers * hp.n_kv_heads * hd * 2;
    let latent: usize = k_ranks
        .iter()
        .chain(&v_ranks)
        .map(|&r| r as usize * n_groups * 2)
        .sum();
    let positions = 4 * n_groups * hp.n_layers;
    println!(
        "\n{} -> {}: group {} heads ({} groups), {} ranks, {}",
        args.model.display(),
        args.output.display(),
        group_size,
        n_groups,
        args.rank_alloc,
        match (&args.calib, whiteners.is_some()) {
            (Some(p), true) => format!("whitened by {calib_used} tokens of {}", p.display()),
            _ => "plain SVD (no calibration)".into(),
        }
    );
    println!(
        "KV bytes per token (f16): {full} full -> {latent} latent + {positions} position = {} ({:.1}% of full); {:.1}s",
        latent + positions,
        100.0 * (latent + positions) as f64 / full as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fold the runtime's Walsh-Hadamard rotation H (symmetric, orthonormal) into a factor
/// pair: the latent becomes H·h, so D ← H·D and A ← A·H.
fn rotate_latent(down: &mut [f32], up: &mut [f32], r: usize, d: usize) -> Result<(), String> {
    let mut col = vec![0.0f32; r];
    for j in 0..d {
        for i in 0..r {
            col[i] = down[i * d + j];
        }
        hadamard::reference(&mut col, r).map_err(|e| e.to_string())?;
        for i in 0..r {
            down[i * d + j] = col[i];
        }
    }
    hadamard::reference(up, r).map_err(|e| e.to_string())
}

fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

fn progress(n: u64, what: &'static str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(what);
    b
}

/// Per layer, the Cholesky factor of the calibration Gram matrix; the tokens used.
struct Calibration {
    whiteners: Vec<Mat<f64>>,
    tokens: usize,
}

/// Run the model over the first `n_tokens` tokens of `path` and return, per layer, the
/// Cholesky factor of the Gram matrix of the attention's normalized inputs (what the K
/// and V projections see), and the tokens used.
fn calibrate(
    model: &Arc<LlamaModel>,
    path: &PathBuf,
    n_tokens: usize,
) -> Result<Calibration, Box<dyn std::error::Error>> {
    let text = crate::needle::read_text(path)?;
    let tok = Tokenizer::from_gguf(&model.file)?;
    let mut ids = tok.encode(&text, true, false)?;
    if ids.len() < n_tokens.min(64) || n_tokens == 0 {
        return Err(format!(
            "--calib {}: expected at least {} tokens of text, found {}",
            path.display(),
            n_tokens.clamp(1, 64),
            ids.len()
        )
        .into());
    }
    ids.truncate(n_tokens);
    let (layers, d) = (model.hp.n_layers, model.hp.n_embd);
    let grams = Arc::new(Mutex::new(vec![Mat::<f64>::zeros(d, d); layers]));
    // Independent windows: the projections' inputs need no long context, and short
    // windows keep the attention cheap.
    const WINDOW: usize = 512;
    let mut fwd = CpuForward::new(model.clone(), WINDOW, WINDOW, &KvOptions::default())?;
    let g = grams.clone();
    fwd.set_observer(Box::new(move |layer, xn, m| {
        let x = Mat::from_fn(m, d, |i, j| xn[i * d + j] as f64);
        let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
        faer::linalg::matmul::matmul(
            g[layer].as_mut(),
            Accum::Add,
            x.transpose(),
            x.as_ref(),
            1.0,
            Par::Seq,
        );
    }));
    let bar = progress(ids.len() as u64, "calibrating");
    for window in ids.chunks(WINDOW) {
        fwd.reset();
        fwd.prefill(window)?;
        bar.inc(window.len() as u64);
    }
    bar.finish_and_clear();
    drop(fwd);
    let grams = grams.lock().unwrap_or_else(|e| e.into_inner());
    let whiteners = grams
        .iter()
        .map(lowrank_factor::whitener)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Calibration {
        whiteners,
        tokens: ids.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvedge_models::llama::gpu::{GpuForward, GpuWeights};
    use kvedge_models::synth::{synthesize, SynthSpec};
    use kvedge_models::{Arch, Device, LoadOptions, Model};
    use kvedge_runtime::gguf::GgufFile;
    use kvedge_runtime::kernels::check::test_context;
    use kvedge_runtime::kv::{KvBudget, KvPolicy};
    use std::path::Path;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kvedge-compress-{}-{name}", std::process::id()))
    }

    fn synth(name: &str, arch: Arch) -> PathBuf {
        let path = temp(&format!("{name}.gguf"));
        let spec = SynthSpec {
            arch,
            layers: 2,
            dim: 128,
            heads: 4,
            kv_heads: 2,
            ffn: 256,
            context: 512,
            seed: 3,
            ..SynthSpec::default()
        };
        synthesize(&spec).unwrap().write_file(&path).unwrap();
        path
    }

    fn compress(
        model: &Path,
        out: &str,
        ratio: f64,
        group: &str,
        calib: Option<PathBuf>,
    ) -> PathBuf {
        let output = temp(&format!("{out}.gguf"));
        run(&CompressArgs {
            model: model.into(),
            output: output.clone(),
            kv_rank_ratio: ratio,
            group_size: group.into(),
            calib_tokens: 300,
            calib,
            rank_alloc: "uniform".into(),
            latent_type: KvType::F16,
            hadamard: false,
        })
        .unwrap();
        output
    }

    fn calib_text() -> PathBuf {
        let p = temp("calib.txt");
        let text: String = (0..400)
            .map(|i| format!("word{} and {} more; ", i % 37, i * 7 % 101))
            .collect();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tokens(n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| 3 + (i * 37 + i * i) % 250).collect()
    }

    fn logits(
        path: &Path,
        kv: &KvOptions,
        toks: &[u32],
    ) -> (Vec<f32>, kvedge_runtime::kv::KvStats) {
        let model = Arc::new(LlamaModel::open(path).unwrap());
        let mut f = CpuForward::new(model, 512, 32, kv).unwrap();
        let mut out = f.forward(&toks[..toks.len() - 8]).unwrap();
        for &t in &toks[toks.len() - 8..] {
            out.extend(f.forward(&[t]).unwrap());
        }
        (out, f.kv_stats())
    }

    fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// A full-rank "compression" (plain and whitened, joint and per-head groups, llama and
    /// qwen2 with its K/V biases) reproduces the original logits within the f16 rounding
    /// of the stored factors; the latent cache then holds as many bytes as the full one.
    #[test]
    fn full_rank_compression_reproduces_the_original_logits() {
        let calib = calib_text();
        for arch in [Arch::Llama, Arch::Qwen2] {
            let orig = synth(&format!("full-{arch:?}"), arch);
            let toks = tokens(72);
            let kv = KvOptions::default();
            let (want, full_stats) = logits(&orig, &kv, &toks);
            for (group, calib) in [("all", None), ("1", None), ("all", Some(calib.clone()))] {
                let name = format!("full-{arch:?}-{group}-{}", calib.is_some());
                let lr = compress(&orig, &name, 1.0, group, calib);
                let (got, stats) = logits(&lr, &kv, &toks);
                let d = max_rel_diff(&got, &want);
                assert!(d < 2e-3, "{name}: logits differ by {d} of their scale");
                // Latents of full rank take the full cache's bytes (positions aside).
                assert_eq!(stats.kv_bytes, full_stats.kv_bytes, "{name}");
                std::fs::remove_file(lr).ok();
            }
            std::fs::remove_file(orig).ok();
        }
    }

    /// At half rank the session stores half the bytes, exactly what the configuration
    /// predicts, and the latent model still runs every policy and TidalDecode within its
    /// budget; with a full-rank file, policies select as the original model does, so the
    /// logits agree.
    #[test]
    fn latent_cache_composes_with_budgets_policies_and_tidal_decode() {
        let orig = synth("compose", Arch::Llama);
        let half = compress(&orig, "compose-half", 0.5, "all", None);
        let full = compress(&orig, "compose-full", 1.0, "1", None);
        let toks = tokens(200);
        let lr = LlamaModel::open(&half).unwrap().lowrank.unwrap();
        assert_eq!(lr.k_ranks, vec![32, 32]);
        let (_, st) = logits(&half, &KvOptions::default(), &toks);
        assert_eq!(
            st.kv_bytes,
            512 * lr.latent_bytes_per_token(KvType::F16, KvType::F16),
            "kv_bytes of a 512-slot session"
        );
        let policy = |policy, budget: usize| KvOptions {
            policy,
            budget: Some(KvBudget::Tokens(budget)),
            sinks: 4,
            ..KvOptions::default()
        };
        for (name, kv) in [
            ("window", policy(KvPolicy::Window, 64)),
            ("h2o", policy(KvPolicy::H2o, 64)),
            ("nacl", policy(KvPolicy::Nacl, 64)),
            (
                "tidal",
                KvOptions {
                    tidal: Some(kvedge_runtime::kv::TidalOptions {
                        k: 16,
                        layers: Some((0, 1)),
                    }),
                    ..KvOptions::default()
                },
            ),
        ] {
            let (a, sa) = logits(&half, &kv, &toks);
            let (b, _) = logits(&half, &kv, &toks);
            assert_eq!(a, b, "{name}: same seed, same result");
            assert!(a.iter().all(|x| x.is_finite()), "{name}");
            if kv.budget.is_some() {
                assert!(sa.used <= 64 && sa.slots <= 64, "{name}: {sa:?}");
                assert!(sa.evicted > 0, "{name}: {sa:?}");
            }
            // Full rank, one group per head: the same slots are kept as without latents.
            let (want, so) = logits(&orig, &kv, &toks);
            let (got, sf) = logits(&full, &kv, &toks);
            assert_eq!((so.used, so.evicted), (sf.used, sf.evicted), "{name}");
            let d = max_rel_diff(&got, &want);
            assert!(d < 5e-3, "{name}: full-rank latents differ by {d}");
        }
        // A byte budget buys latent slots: twice as many at half rank as at full.
        let bytes = |p: &Path| {
            let kv = KvOptions {
                budget: Some(KvBudget::Bytes(200_000)),
                policy: KvPolicy::Window,
                ..KvOptions::default()
            };
            let model = Arc::new(LlamaModel::open(p).unwrap());
            CpuForward::new(model, 512, 32, &kv).unwrap().kv_stats()
        };
        let (h, o) = (bytes(&half), bytes(&orig));
        assert!(
            h.kv_bytes + h.aux_bytes <= 200_000 && h.slots > o.slots * 19 / 10,
            "{h:?} vs {o:?}"
        );
        for p in [orig, half, full] {
            std::fs::remove_file(p).ok();
        }
    }

    /// Rewrite `src` to `dst` with metadata `drop_key` removed and tensor `shrink` cut to
    /// one row.
    fn corrupt(
        src: &Path,
        dst: &Path,
        drop_key: Option<&str>,
        shrink: Option<&str>,
        drop_tensor: Option<&str>,
    ) {
        let f = GgufFile::open(src).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata() {
            if Some(k.as_str()) != drop_key {
                w.set(k.clone(), v.clone());
            }
        }
        for t in f.tensors() {
            if Some(t.name.as_str()) == drop_tensor {
                continue;
            }
            let data = f.tensor_data(t).to_vec();
            if Some(t.name.as_str()) == shrink {
                let row = data.len() / t.dims[1] as usize;
                w.add_tensor(t.name.clone(), t.ty, &[t.dims[0], 1], data[..row].to_vec())
                    .unwrap();
            } else {
                w.add_tensor(t.name.clone(), t.ty, &t.dims, data).unwrap();
            }
        }
        w.write_file(dst).unwrap();
    }

    /// Broken files fail at load with the key or tensor at fault; a file with factors is
    /// not a llama/qwen2 file (a build without low-rank support refuses it).
    #[test]
    fn broken_or_unsupported_low_rank_files_are_refused_clearly() {
        let orig = synth("broken", Arch::Llama);
        let lr = compress(&orig, "broken-lr", 0.5, "all", None);
        let arch = GgufFile::open(&lr)
            .unwrap()
            .header()
            .get_str("general.architecture")
            .unwrap()
            .to_string();
        assert_eq!(arch, LOWRANK_ARCH);
        assert!(Arch::ALL.iter().all(|a| a.name() != arch));
        let bad = temp("broken-bad.gguf");
        let err = |p: &Path| match LlamaModel::open(p) {
            Ok(_) => panic!("a broken file loaded"),
            Err(e) => e.to_string(),
        };
        corrupt(&lr, &bad, Some("kvedge.lowrank.k_ranks"), None, None);
        let e = err(&bad);
        assert!(
            e.contains("kvedge.lowrank.k_ranks") && e.contains("missing"),
            "{e}"
        );
        corrupt(
            &lr,
            &bad,
            Some("kvedge.lowrank.base_architecture"),
            None,
            None,
        );
        let e = err(&bad);
        assert!(e.contains("kvedge.lowrank.base_architecture"), "{e}");
        corrupt(&lr, &bad, None, Some("blk.1.attn_v_lr_up.weight"), None);
        let e = err(&bad);
        assert!(
            e.contains("blk.1.attn_v_lr_up.weight") && e.contains("expected shape"),
            "{e}"
        );
        corrupt(&lr, &bad, None, None, Some("blk.0.attn_k_lr_down.weight"));
        let e = err(&bad);
        assert!(e.contains("blk.0.attn_k_lr_down.weight"), "{e}");
        // The same file runs its original projections when asked: the original logits.
        let off = LoadOptions {
            device: Device::Cpu,
            ignore_lowrank: true,
            ..LoadOptions::default()
        };
        assert!(Model::load(&lr, &off, &mut |_, _| {}).is_ok());
        let mut plain = LlamaModel::open(&lr).unwrap();
        plain.lowrank = None;
        let mut f = CpuForward::new(Arc::new(plain), 64, 32, &KvOptions::default()).unwrap();
        let toks = tokens(40);
        let model = Arc::new(LlamaModel::open(&orig).unwrap());
        let mut g = CpuForward::new(model, 64, 32, &KvOptions::default()).unwrap();
        assert_eq!(f.forward(&toks).unwrap(), g.forward(&toks).unwrap());
        for p in [orig, lr, bad] {
            std::fs::remove_file(p).ok();
        }
    }

    /// A latent-cache session on the GPU (software Vulkan in CI) matches the CPU device's
    /// session of the same compressed model: prefill and decode, f16 and q8 latents,
    /// qwen2's biases, TidalDecode; an evicting policy over latents is refused on the GPU
    /// with what to do instead. (K and V latents of different widths: kv_store's tests.)
    #[test]
    fn gpu_latent_session_matches_the_cpu_reference() {
        let Some(ctx) = test_context() else { return };
        for arch in [Arch::Llama, Arch::Qwen2] {
            let orig = temp(&format!("gpu-{arch:?}.gguf"));
            let spec = SynthSpec {
                arch,
                layers: 2,
                dim: 256,
                heads: 4,
                kv_heads: 2,
                ffn: 256,
                context: 512,
                seed: 9,
                ..SynthSpec::default()
            };
            synthesize(&spec).unwrap().write_file(&orig).unwrap();
            let out = temp(&format!("gpu-{arch:?}-lr.gguf"));
            run(&CompressArgs {
                model: orig.clone(),
                output: out.clone(),
                kv_rank_ratio: 0.5,
                group_size: "1".into(),
                calib: None,
                calib_tokens: 0,
                rank_alloc: "energy".into(),
                latent_type: KvType::Q8,
                hadamard: true,
            })
            .unwrap();
            let model = Arc::new(LlamaModel::open(&out).unwrap());
            let lr = model.lowrank.clone().unwrap();
            let w = Arc::new(GpuWeights::upload(ctx, &model).unwrap());
            let toks = tokens(90);
            for (ty, tidal) in [
                (KvType::F16, false),
                (KvType::Q8, false),
                (KvType::F16, true),
            ] {
                let kv = KvOptions {
                    k_type: ty,
                    v_type: ty,
                    tidal: tidal.then_some(kvedge_runtime::kv::TidalOptions {
                        k: 16,
                        layers: Some((0, 1)),
                    }),
                    ..KvOptions::default()
                };
                let mut cpu = CpuForward::new(model.clone(), 128, 32, &kv).unwrap();
                let mut gpu =
                    GpuForward::new(ctx.clone(), model.clone(), w.clone(), 128, 32, &kv).unwrap();
                let want = cpu.forward(&toks[..80]).unwrap();
                let got = gpu.forward_all(&toks[..80]).unwrap();
                let d = max_rel_diff(&got, &want);
                assert!(
                    d < 1e-2,
                    "{arch:?} {ty:?} tidal {tidal}: prefill logits differ by {d}"
                );
                for &t in &toks[80..] {
                    let want = cpu.forward(&[t]).unwrap();
                    let got = gpu.forward(&[t]).unwrap();
                    let d = max_rel_diff(&got, &want);
                    assert!(
                        d < 1e-2,
                        "{arch:?} {ty:?} tidal {tidal}: decode logits differ by {d}"
                    );
                }
                let st = gpu.kv().stats();
                assert_eq!(
                    st.kv_bytes,
                    128 * lr.latent_bytes_per_token(ty, ty),
                    "{st:?}"
                );
                assert_eq!(st.kv_bytes, cpu.kv_stats().kv_bytes);
            }
            assert!(lr.k_ranks.iter().all(|&r| r < 64), "compressed: {lr:?}");
            let evicting = KvOptions {
                policy: KvPolicy::Window,
                budget: Some(KvBudget::Tokens(64)),
                ..KvOptions::default()
            };
            match GpuForward::new(ctx.clone(), model.clone(), w.clone(), 128, 32, &evicting) {
                Err(e) => assert!(e.to_string().contains("cpu device"), "{e}"),
                Ok(_) => panic!("an evicting latent session was built on the GPU"),
            }
            for p in [orig, out] {
                std::fs::remove_file(p).ok();
            }
        }
    }

    /// Wrong flags and inputs are errors that say what was expected and what was found.
    #[test]
    fn bad_arguments_are_refused_clearly() {
        let orig = synth("args", Arch::Llama);
        let args = |ratio: f64, group: &str, calib: Option<PathBuf>| CompressArgs {
            model: orig.clone(),
            output: temp("args-out.gguf"),
            kv_rank_ratio: ratio,
            group_size: group.into(),
            calib,
            calib_tokens: 100,
            rank_alloc: "uniform".into(),
            latent_type: KvType::F16,
            hadamard: false,
        };
        let err = |a: CompressArgs| run(&a).err().map(|e| e.to_string()).unwrap_or_default();
        let e = err(args(0.0, "all", None));
        assert!(e.contains("--kv-rank-ratio") && e.contains("(0, 1]"), "{e}");
        let e = err(args(1.5, "all", None));
        assert!(e.contains("got 1.5"), "{e}");
        let e = err(args(0.5, "3", None));
        assert!(
            e.contains("--group-size") && e.contains("2 KV heads") && e.contains("'3'"),
            "{e}"
        );
        let e = err(args(0.5, "all", Some(temp("no-such-text.txt"))));
        assert!(e.contains("no-such-text"), "{e}");
        let lr = compress(&orig, "args-lr", 0.5, "all", None);
        let again = CompressArgs {
            model: lr.clone(),
            ..args(0.5, "all", None)
        };
        let e = err(again);
        assert!(e.contains("already has low-rank factors"), "{e}");
        for p in [orig, lr] {
            std::fs::remove_file(p).ok();
        }
    }
}
