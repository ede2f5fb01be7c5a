//! Synthetic models (kvedge_models::synth) exercise what the fetched models may not:
//! qwen2's biases and rotate-halves RoPE and an untied output matrix on CI (where only
//! SmolLM2 is fetched), k-quant and legacy matrices, and malformed models.

use std::path::PathBuf;
use std::sync::Arc;

use kvedge_models::llama::cpu::CpuForward;
use kvedge_models::llama::gpu::{GpuForward, GpuWeights};
use kvedge_models::llama::LlamaModel;
use kvedge_models::synth::{synthesize, SynthSpec};
use kvedge_models::{Arch, LoadOptions, Model, SessionConfig};
use kvedge_runtime::gguf::{MetaArray, MetaValue};
use kvedge_runtime::kernels::check::{compare, test_context};
use kvedge_runtime::kv::KvOptions;
use kvedge_runtime::quant::GgmlType;
use kvedge_runtime::session::GenerateOptions;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kvedge-test-{}-{name}.gguf", std::process::id()))
}

fn write(
    spec: &SynthSpec,
    name: &str,
    edit: impl FnOnce(&mut kvedge_runtime::gguf::GgufWriter),
) -> PathBuf {
    let mut w = synthesize(spec).unwrap();
    edit(&mut w);
    let path = temp_path(name);
    w.write_file(&path).unwrap();
    path
}

fn gpu_matches_cpu(spec: &SynthSpec, name: &str) {
    let Some(ctx) = test_context() else { return };
    let path = write(spec, name, |_| {});
    let model = Arc::new(LlamaModel::open(&path).unwrap());
    assert_eq!(model.tied_output, spec.tied_output);
    let weights = Arc::new(GpuWeights::upload(ctx, &model).unwrap());
    let mut gpu = GpuForward::new(
        ctx.clone(),
        model.clone(),
        weights,
        32,
        5,
        &KvOptions::default(),
    )
    .unwrap();
    let mut cpu = CpuForward::new(model.clone(), 32, 512, &KvOptions::default()).unwrap();
    let prompt: Vec<u32> = (0..13).map(|i| (i * 37 + 5) % spec.vocab as u32).collect();
    let mut worst = 0.0f64;
    let g = gpu.forward(&prompt).unwrap();
    let c = cpu.forward(&prompt).unwrap();
    let v = spec.vocab;
    // The comparison means something only if the logits spread (random weights could
    // saturate): their standard deviation must be a fair part of their magnitude.
    let mean = g.iter().sum::<f32>() / v as f32;
    let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v as f32).sqrt();
    eprintln!("{name}: logits mean {mean:.3}, sd {sd:.3}");
    assert!(
        sd > 0.05 * mean.abs().max(1.0),
        "{name}: degenerate logits (mean {mean}, sd {sd})"
    );
    worst = worst.max(compare(&g, &c[(prompt.len() - 1) * v..]).max_err);
    for t in [7u32, 250] {
        let g = gpu.forward(&[t]).unwrap();
        let c = cpu.forward(&[t]).unwrap();
        worst = worst.max(compare(&g, &c).max_err);
    }
    eprintln!("{name}: worst normalized logit error GPU vs CPU {worst:.2e}");
    assert!(worst < 3e-3, "{name}: {worst:.2e}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn synthetic_qwen2_untied_q4_k_gpu_matches_cpu() {
    let spec = SynthSpec {
        arch: Arch::Qwen2,
        ty: GgmlType::Q4_K,
        tied_output: false,
        heads: 8,
        kv_heads: 2,
        ..Default::default()
    };
    gpu_matches_cpu(&spec, "qwen2-q4k");
}

#[test]
fn synthetic_llama_tied_q5_0_gpu_matches_cpu() {
    let spec = SynthSpec {
        ty: GgmlType::Q5_0,
        heads: 2,
        kv_heads: 1,
        dim: 96,
        ffn: 160,
        ..Default::default()
    };
    gpu_matches_cpu(&spec, "llama-q50");
}

fn load_err(path: &PathBuf) -> String {
    let opts = LoadOptions {
        device: kvedge_models::Device::Cpu,
        ..Default::default()
    };
    match Model::load(path, &opts, &mut |_, _| {}) {
        Ok(_) => panic!("{} loaded, but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_models_give_clear_errors() {
    let spec = SynthSpec::default();
    let p = write(&spec, "arch", |w| {
        w.set("general.architecture", MetaValue::String("gptneox".into()));
    });
    let e = load_err(&p);
    assert!(e.contains("architecture 'gptneox' is not supported"), "{e}");

    let p2 = write(&spec, "merges", |w| {
        w.set(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::String(vec![])),
        );
    });
    let e = load_err(&p2);
    assert!(e.contains("needs tokenizer.ggml.merges"), "{e}");

    let p3 = write(&spec, "iq", |w| {
        w.add_tensor("blk.0.extra.weight", GgmlType::IQ2_XXS, &[256], vec![0; 66])
            .unwrap();
    });
    let e = load_err(&p3);
    assert!(
        e.contains("blk.0.extra.weight") && e.contains("IQ2_XXS"),
        "{e}"
    );

    let p4 = write(&spec, "scaling", |w| {
        w.set("llama.rope.scaling.type", MetaValue::String("yarn".into()));
    });
    let e = load_err(&p4);
    assert!(e.contains("rope.scaling.type") && e.contains("yarn"), "{e}");

    let p5 = temp_path("text");
    std::fs::write(
        &p5,
        "this is not a model, just some text that is long enough",
    )
    .unwrap();
    let e = load_err(&p5);
    assert!(e.contains("bad magic"), "{e}");
    for p in [p, p2, p3, p4, p5] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn synthetic_model_chats_through_the_public_api() {
    let spec = SynthSpec::default();
    let p = write(&spec, "api", |_| {});
    let opts = LoadOptions {
        device: kvedge_models::Device::Cpu,
        ..Default::default()
    };
    let m = Model::load(&p, &opts, &mut |_, _| {}).unwrap();
    let mut s = m
        .session(&SessionConfig {
            context: 64,
            chunk: 8,
            ..SessionConfig::default()
        })
        .unwrap();
    let n = s
        .chat(
            "hi",
            &GenerateOptions {
                max_tokens: 4,
                ..Default::default()
            },
        )
        .unwrap()
        .count();
    assert!(n <= 4);
    assert!(s.stats().context_used > 5);
    let _ = std::fs::remove_file(p);
}

#[test]
fn chat_adds_no_second_bos_when_the_template_writes_one() {
    let spec = SynthSpec {
        spm: true,
        vocab: 512,
        ..Default::default()
    };
    let p = write(&spec, "bos", |w| {
        w.set(
            "tokenizer.chat_template",
            MetaValue::String(
                "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"
                    .into(),
            ),
        );
    });
    let opts = LoadOptions {
        device: kvedge_models::Device::Cpu,
        ..Default::default()
    };
    let m = Model::load(&p, &opts, &mut |_, _| {}).unwrap();
    let bos = m.tokenizer().bos.unwrap();
    let mut s = m
        .session(&SessionConfig {
            context: 64,
            chunk: 8,
            ..SessionConfig::default()
        })
        .unwrap();
    let _ = s
        .chat(
            "hi",
            &GenerateOptions {
                max_tokens: 1,
                ..Default::default()
            },
        )
        .unwrap()
        .count();
    let h = s.history();
    assert_eq!(h[0], bos);
    assert_ne!(h[1], bos, "second BOS in {h:?}");
    let _ = std::fs::remove_file(p);
}
