//! `kvedge inspect FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use kvedge_models::{check_tensors, HParams, LowRank, RopeScaling};
use kvedge_runtime::gguf::{GgufFile, MetaValue};
use kvedge_runtime::kv::KvType;

fn mib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    }
}

pub fn run(path: &Path, list_tensors: bool) -> Result<(), Box<dyn std::error::Error>> {
    let file = GgufFile::open(path)?;
    let h = file.header();
    println!("file:          {}", path.display());
    println!(
        "size:          {} ({} bytes), GGUF v{}, alignment {}",
        mib(file.file_size() as f64),
        file.file_size(),
        h.version,
        h.alignment
    );
    if let Some(name) = h.get("general.name").and_then(|v| v.as_str()) {
        println!("name:          {name}");
    }
    if h.get("kvedge.synthetic").and_then(|v| v.as_bool()) == Some(true) {
        println!(
            "SYNTHETIC:     yes (kvedge synth: random weights, stub tokenizer; not a real model)"
        );
    }
    let arch = h
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("(none)");
    println!("architecture:  {arch}");
    println!("metadata keys: {}", h.metadata.len());

    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = by_type.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        e.2 += t.n_elements;
    }
    let total_bytes: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let total_elems: u64 = file.tensors().iter().map(|t| t.n_elements).sum();
    println!(
        "tensors:       {} ({} parameters, {}, {:.2} bits/weight)",
        file.tensors().len(),
        total_elems,
        mib(total_bytes as f64),
        total_bytes as f64 * 8.0 / total_elems.max(1) as f64
    );
    for (ty, (n, bytes, elems)) in &by_type {
        println!(
            "  {ty:8} {n:5} tensors  {:>12}  {:>14} weights",
            mib(*bytes as f64),
            elems
        );
    }

    match HParams::from_gguf(&file) {
        Ok(hp) => {
            println!("hyperparameters:");
            println!("  blocks:            {}", hp.n_layers);
            println!("  embedding:         {}", hp.n_embd);
            println!(
                "  heads:             {} (head dim {})",
                hp.n_heads, hp.head_dim
            );
            println!(
                "  KV heads:          {} (GQA group {})",
                hp.n_kv_heads,
                hp.n_heads / hp.n_kv_heads
            );
            println!("  feed-forward:      {}", hp.n_ff);
            println!("  vocabulary:        {}", hp.n_vocab);
            println!("  training context:  {}", hp.n_ctx_train);
            println!("  RMSNorm eps:       {:e}", hp.rms_eps);
            println!(
                "  RoPE:              base {}, {} of {} dims, {:?} pairs, scaling {}",
                hp.rope_freq_base,
                hp.rope_dims,
                hp.head_dim,
                hp.arch.rope_layout(),
                match &hp.rope_scaling {
                    RopeScaling::None => "none".to_string(),
                    RopeScaling::Linear { factor } => format!("linear x{factor}"),
                    RopeScaling::Other { kind, factor } =>
                        format!("{kind} x{factor} (not supported)"),
                }
            );
            let tk = &hp.tokenizer;
            println!(
                "tokenizer:       {}, {} tokens, {} merges, bos {:?}, eos {:?}, chat template {}",
                tk.kind(),
                tk.n_tokens,
                tk.n_merges,
                tk.bos,
                tk.eos,
                if tk.has_chat_template { "yes" } else { "no" }
            );
            match check_tensors(&file, &hp) {
                Ok(tied) => println!(
                    "tensor check:    ok ({} output matrix)",
                    if tied { "tied" } else { "separate" }
                ),
                Err(e) => println!("tensor check:    FAILED: {e}"),
            }
            let per_tok = hp.kv_bytes_per_token(2.0);
            println!("KV cache (f16):");
            println!(
                "  per token:         {} bytes ({:.1} KiB)",
                per_tok,
                per_tok / 1024.0
            );
            println!(
                "  at full context:   {} tokens -> {}",
                hp.n_ctx_train,
                mib(per_tok * hp.n_ctx_train as f64)
            );
            match LowRank::from_gguf(&file, &hp) {
                Ok(Some(lr)) => {
                    let pos = lr.position_bytes_per_token();
                    println!("low-rank KV (Palu latents, kvedge compress):");
                    println!("  {}", lr.describe());
                    println!("  K ranks per layer: {:?}", lr.k_ranks);
                    println!("  V ranks per layer: {:?}", lr.v_ranks);
                    for ty in [KvType::F16, KvType::Q8, KvType::Q4] {
                        if lr
                            .k_ranks
                            .iter()
                            .chain(&lr.v_ranks)
                            .all(|&r| ty.supports(r))
                        {
                            let l = lr.latent_bytes_per_token(ty, ty);
                            println!(
                                "  per token ({:3}):   {} bytes latents + {pos} positions ({:.1}% of the f16 cache)",
                                ty.name(),
                                l,
                                100.0 * (l + pos) as f64 / per_tok
                            );
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => println!("low-rank KV:     FAILED: {e}"),
            }
        }
        Err(_)
            if h.get_str("general.architecture").ok() == Some(kvedge_models::gate::GATE_ARCH) =>
        {
            println!("Attention-Gate file (--kv-policy gate --kv-gates FILE):");
            let prefix = format!("{}.", kvedge_models::gate::PREFIX);
            for (k, v) in file.metadata() {
                if let Some(name) = k.strip_prefix(&prefix) {
                    let text = match v {
                        MetaValue::String(s) => s.clone(),
                        MetaValue::F32(x) => x.to_string(),
                        other => other
                            .as_f64()
                            .map_or_else(|| other.type_desc(), |x| format!("{x}")),
                    };
                    println!("  {name:28} {text}");
                }
            }
        }
        Err(e) => println!("hyperparameters: not available: {e}"),
    }

    if list_tensors {
        println!("tensor list:");
        for t in file.tensors() {
            println!(
                "  {:40} {:6} {:?} @{} ({} bytes)",
                t.name,
                t.ty.name(),
                t.dims,
                t.offset,
                t.n_bytes
            );
        }
    }
    Ok(())
}
