//! Invariants of the evicting KV cache through whole forward passes (issue: compressed
//! KV cache I): the GPU and the CPU reference drop the same tokens and agree on the
//! logits; a budget is never exceeded, however long the stream; sinks are never evicted
//! (window equals attention under a sink+window mask); the same seed evicts the same
//! slots; generation under a policy never stops for a full context.

use std::path::PathBuf;
use std::sync::Arc;

use kvedge_models::llama::cpu::CpuForward;
use kvedge_models::llama::gpu::{GpuForward, GpuWeights};
use kvedge_models::llama::LlamaModel;
use kvedge_models::synth::{synthesize, SynthSpec};
use kvedge_models::{Device, LoadOptions, Model, SessionConfig};
use kvedge_runtime::gpu::{DeviceOptions, GpuContext};
use kvedge_runtime::kernels::check::{compare, test_context};
use kvedge_runtime::kv::{KvBudget, KvOptions, KvPolicy, KvType, TidalOptions};
use kvedge_runtime::session::{FinishReason, GenerateOptions};
use kvedge_tests::{model, SMOLLM2};

fn synthetic(name: &str) -> PathBuf {
    synthetic_with(name, &SynthSpec::default())
}

fn synthetic_with(name: &str, spec: &SynthSpec) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("kvedge-evict-{}-{name}.gguf", std::process::id()));
    synthesize(spec).unwrap().write_file(&path).unwrap();
    path
}

fn opts(policy: KvPolicy, budget: usize) -> KvOptions {
    KvOptions {
        budget: Some(KvBudget::Tokens(budget)),
        policy,
        sinks: 4,
        seed: 7,
        ..KvOptions::default()
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// Feed `prompt` in one call (prefill evicts between chunks), then `steps` greedy tokens
/// one at a time on both devices; the logits must agree within `bound` at every step.
fn gpu_matches_cpu_with_eviction(
    path: &std::path::Path,
    kv: &KvOptions,
    prompt: &[u32],
    steps: usize,
    bound: f64,
) {
    let Some(ctx) = test_context() else { return };
    let model = Arc::new(LlamaModel::open(path).unwrap());
    let weights = Arc::new(GpuWeights::upload(ctx, &model).unwrap());
    let mut gpu = GpuForward::new(ctx.clone(), model.clone(), weights, 4096, 64, kv).unwrap();
    let mut cpu = CpuForward::new(model.clone(), 4096, 64, kv).unwrap();
    let vocab = model.hp.n_vocab;
    let mut g = gpu.forward(prompt).unwrap();
    let c = cpu.forward(prompt).unwrap();
    let mut c = c[(prompt.len() - 1) * vocab..].to_vec();
    let mut worst = 0.0f64;
    for step in 0..=steps {
        // TidalDecode picks slots by score: GPU and CPU scores differ by float rounding, so
        // a near-tie can pick another slot on one device, after which the two runs attend
        // to different sets and their logits part. The comparison stops there (at least
        // `steps / 2` steps must have agreed).
        let (gsel, csel) = (gpu.tidal_selection().unwrap(), cpu.tidal_selection());
        let selected = csel.as_ref().is_some_and(|c| !c.is_empty());
        if selected && gsel != csel {
            assert!(
                step > steps / 2,
                "{:?}: selections differ at step {step}",
                kv.policy
            );
            eprintln!(
                "TidalDecode: GPU and CPU selections differ at step {step}; compared up to there"
            );
            break;
        }
        let cmp = compare(&g, &c);
        worst = worst.max(cmp.max_err);
        assert!(
            cmp.max_err <= bound,
            "{:?} step {step}: GPU vs CPU logits differ by {:.2e} (bound {bound:.0e})",
            kv.policy,
            cmp.max_err
        );
        let (gs, cs) = (gpu.kv().stats(), cpu.kv_stats());
        assert_eq!(
            (gs.used, gs.evicted, gs.evictions),
            (cs.used, cs.evicted, cs.evictions),
            "both devices evict alike"
        );
        assert!(gs.used <= gs.slots, "budget exceeded: {gs:?}");
        if step == steps {
            break;
        }
        let next = argmax(&c) as u32;
        g = gpu.forward(&[next]).unwrap();
        c = cpu.forward(&[next]).unwrap();
    }
    let s = gpu.kv().stats();
    assert!(
        s.evicted > 0 || !kv.policy.scores() && kv.policy != KvPolicy::Window,
        "the test must evict: {s:?}"
    );
    eprintln!(
        "{:?} K {:?} V {:?}: GPU vs CPU worst normalized logit error {worst:.2e} over {} steps, {} evictions, {} tokens evicted per head",
        kv.policy, kv.k_type, kv.v_type, steps, s.evictions, s.evicted
    );
}

#[test]
fn synthetic_gpu_matches_cpu_under_every_policy() {
    let path = synthetic("devices");
    let prompt: Vec<u32> = (0..150).map(|i| (i * 37 + 5) % 300).collect();
    for policy in [KvPolicy::Window, KvPolicy::H2o, KvPolicy::Nacl] {
        gpu_matches_cpu_with_eviction(&path, &opts(policy, 64), &prompt, 30, 1e-3);
    }
    let _ = std::fs::remove_file(path);
}

/// Quantized KV (q8, q4; K and V apart, with and without the Hadamard rotation), alone
/// and composed with eviction. The kernels alone agree exactly (kv_store: no code differs;
/// attention: 1e-5), but through a whole model the GPU's and the CPU's K and V differ by
/// float rounding before they are quantized, and a value near a rounding boundary then
/// lands one code apart: a step of 1/127 (q8) of its block's range instead of f16's
/// 1/2048; under h2o the flipped codes also move the scores. On this random model that
/// reaches 3.5e-2 (measured over 20 steps), so the bound is 0.1 (a broken decode is of
/// order 1), against 1e-3 for f16.
#[test]
fn synthetic_gpu_matches_cpu_with_quantized_kv() {
    let path = synthetic("quantized");
    let prompt: Vec<u32> = (0..150).map(|i| (i * 37 + 5) % 300).collect();
    for (policy, k_type, v_type, rotate) in [
        (KvPolicy::Full, KvType::Q8, KvType::Q8, false),
        (KvPolicy::Full, KvType::Q4, KvType::Q4, true),
        (KvPolicy::H2o, KvType::Q8, KvType::Q4, false),
        (KvPolicy::Window, KvType::Q4, KvType::F16, true),
    ] {
        let kv = KvOptions {
            budget: (policy != KvPolicy::Full).then_some(KvBudget::Tokens(64)),
            k_type,
            v_type,
            hadamard: Some(rotate),
            ..opts(policy, 64)
        };
        gpu_matches_cpu_with_eviction(&path, &kv, &prompt, 20, 0.1);
    }
    let _ = std::fs::remove_file(path);
}

/// TidalDecode: sparse decode steps (layer 0 dense, 1 selects, 2 sparse, 3 re-selects, 4
/// sparse) agree between the GPU and the CPU reference, alone and composed with a policy
/// and a quantized cache; with k at least the context it is dense attention exactly.
#[test]
fn synthetic_gpu_matches_cpu_with_tidal_decode() {
    let spec = SynthSpec {
        layers: 5,
        ..SynthSpec::default()
    };
    let path = synthetic_with("tidal", &spec);
    let prompt: Vec<u32> = (0..100).map(|i| (i * 37 + 5) % 300).collect();
    let tidal = |k| {
        Some(TidalOptions {
            k,
            layers: Some((1, 3)),
        })
    };
    let dense = KvOptions::default();
    let sparse = KvOptions {
        tidal: tidal(16),
        ..KvOptions::default()
    };
    gpu_matches_cpu_with_eviction(&path, &sparse, &prompt, 12, 1e-3);
    let composed = KvOptions {
        tidal: tidal(24),
        k_type: KvType::Q8,
        v_type: KvType::Q8,
        ..opts(KvPolicy::H2o, 64)
    };
    gpu_matches_cpu_with_eviction(&path, &composed, &prompt, 12, 5e-2);

    // Sparse decode reads fewer slots, so it must change the logits; k >= the context
    // leaves every step dense.
    let model = Arc::new(LlamaModel::open(&path).unwrap());
    let run = |kv: &KvOptions| {
        let mut cpu = CpuForward::new(model.clone(), 4096, 64, kv).unwrap();
        cpu.forward(&prompt).unwrap();
        cpu.forward(&[7]).unwrap()
    };
    let base = run(&dense);
    assert!(
        compare(&run(&sparse), &base).max_err > 1e-4,
        "k = 16 of 101 slots changes attention"
    );
    let wide = KvOptions {
        tidal: tidal(4096),
        ..KvOptions::default()
    };
    assert_eq!(run(&wide), base, "k above the context is dense decode");
    let _ = std::fs::remove_file(path);
}

#[test]
fn smollm2_gpu_matches_cpu_under_eviction() {
    let Some(path) = model(SMOLLM2) else { return };
    let text = "The GNU General Public License is a free, copyleft license for software and other kinds of works. \
                The licenses for most software and other practical works are designed to take away your freedom \
                to share and change the works. By contrast, the GNU General Public License is intended to guarantee \
                your freedom to share and change all versions of a program.";
    let tok = kvedge_runtime::tokenizer::Tokenizer::from_gguf(
        &kvedge_runtime::gguf::GgufFile::open(&path).unwrap(),
    )
    .unwrap();
    let prompt = tok.encode(text, true, false).unwrap();
    assert!(prompt.len() > 64, "the prompt must overflow the budget");
    for policy in [KvPolicy::Window, KvPolicy::H2o] {
        // Measured (llvmpipe): window 1.89e-3, h2o 3.16e-3 worst over the 5 steps, with
        // the CPU's prefill through `gemm`; each device alone is within 2.8e-3 of the
        // float64 reference on the full cache (tests/forward.rs), f16 KV rounding
        // dominating, so the two devices may differ by the sum of both roundings. The
        // bound is the every-token bound of tests/forward.rs.
        gpu_matches_cpu_with_eviction(&path, &opts(policy, 48), &prompt, 4, 5e-3);
    }
    // q8 K and V (rotated, the default for quantized types) under window. The GPU's and
    // the CPU's K and V differ by float rounding before quantization, so values near a
    // rounding boundary land one code apart (see the synthetic test above); this bound
    // only catches a broken decode (errors of order 1), and q8's quality is judged by
    // perplexity (docs/EVAL.md). Under h2o the flipped codes also move the scores, and
    // a near-tie can then evict another token on one device, so it is not compared here.
    let q8 = KvOptions {
        k_type: KvType::Q8,
        v_type: KvType::Q8,
        ..opts(KvPolicy::Window, 48)
    };
    // Measured 3.6e-2 here; a broken decode is of order 1.
    gpu_matches_cpu_with_eviction(&path, &q8, &prompt, 4, 0.1);
}

/// NACL's one-shot eviction: a prompt longer than the budget, taken as one chunk, is
/// attended densely by every layer before that layer evicts, so every prompt token's
/// logits equal the full cache's; the cache then holds `keep` slots, and the decode that
/// follows still matches between the devices (the GPU against the CPU reference above).
#[test]
fn nacl_oneshot_prefill_equals_the_full_cache_then_evicts() {
    let path = synthetic("oneshot");
    let prompt: Vec<u32> = (0..150).map(|i| (i * 53 + 11) % 300).collect();
    let model = Arc::new(LlamaModel::open(&path).unwrap());
    let nacl = opts(KvPolicy::Nacl, 64);
    let mut full = CpuForward::new(model.clone(), 4096, 256, &KvOptions::default()).unwrap();
    let want = full.forward(&prompt).unwrap();
    let mut cpu = CpuForward::new(model.clone(), 4096, 256, &nacl).unwrap();
    let got = cpu.forward(&prompt).unwrap();
    let cmp = compare(&got, &want);
    assert!(
        cmp.max_err <= 1e-6,
        "CPU one-shot prefill vs full cache: {cmp:?}"
    );
    let st = cpu.kv_stats();
    assert_eq!((st.slots, st.used, st.evictions), (64, 48, 1), "{st:?}");
    assert_eq!(st.evicted, 150 - 48);
    if let Some(ctx) = test_context() {
        let weights = Arc::new(GpuWeights::upload(ctx, &model).unwrap());
        let mut gpu =
            GpuForward::new(ctx.clone(), model.clone(), weights, 4096, 256, &nacl).unwrap();
        let g = gpu.forward(&prompt).unwrap();
        let last = &want[(prompt.len() - 1) * model.hp.n_vocab..];
        let cmp = compare(&g, last);
        assert!(
            cmp.max_err <= 1e-3,
            "GPU one-shot prefill vs full cache: {cmp:?}"
        );
        let gs = gpu.kv().stats();
        assert_eq!((gs.used, gs.evicted, gs.evictions), (48, 150 - 48, 1));
        assert_eq!(gs.kv_bytes, st.kv_bytes, "the cache is the budget's size");
    }
    // A prompt over two one-shot chunks, then decode, GPU against CPU.
    let long: Vec<u32> = (0..300).map(|i| (i * 29 + 3) % 300).collect();
    gpu_matches_cpu_with_eviction(&path, &nacl, &long, 20, 1e-3);
    let _ = std::fs::remove_file(path);
}

/// Allocations, not speed. A Qwen2.5-Coder-1.5B-shaped session (28 layers, 2 KV heads of
/// 128, the real model's KV geometry; tiny elsewhere) for a 32k context with a 20% budget
/// creates a fifth of the full cache: its KV bytes are what the plan predicts, and all it
/// creates (KV, NACL staging, scoring, scratch) stays far below the full cache. A session
/// with SmolLM2's KV heads streams an 8k-token prompt at a 20% budget chunk by chunk and
/// creates no buffer after its first chunk.
#[test]
fn budgeted_sessions_allocate_the_budget_not_the_context() {
    if test_context().is_none() {
        return;
    }
    // A device of its own: the shared test device counts the other tests' buffers too.
    let ctx = &Arc::new(GpuContext::new(&DeviceOptions::default()).unwrap());
    let shaped = |name: &str, layers, dim, heads, kv_heads| {
        let spec = SynthSpec {
            layers,
            dim,
            heads,
            kv_heads,
            ffn: 64,
            context: 32768,
            ..SynthSpec::default()
        };
        let path = synthetic_with(name, &spec);
        let model = Arc::new(LlamaModel::open(&path).unwrap());
        let _ = std::fs::remove_file(path);
        let weights = Arc::new(GpuWeights::upload(ctx, &model).unwrap());
        (model, weights)
    };
    // Qwen2.5-Coder-1.5B's KV geometry at 32k, 20 %.
    let (model, weights) = shaped("qwen-shape", 28, 256, 2, 2);
    let geom = model.kv_geometry();
    assert_eq!(
        (geom.n_layers, geom.n_kv_heads, geom.head_dim),
        (28, 2, 128)
    );
    let full = kvedge_runtime::kv::KvCacheConfig::f16(28, 2, 128, 32768).total_bytes();
    let before = ctx.storage_bytes_created();
    let nacl = opts(KvPolicy::Nacl, 32768 / 5);
    let gpu = GpuForward::new(ctx.clone(), model, weights, 32768, 512, &nacl).unwrap();
    let created = ctx.storage_bytes_created() - before;
    let st = gpu.kv().stats();
    let predicted = kvedge_runtime::kv::KvCacheConfig::f16(28, 2, 128, 32768 / 5).total_bytes();
    assert_eq!(
        st.kv_bytes, predicted,
        "stats report what the plan predicts"
    );
    assert_eq!(predicted, 28 * 2 * 2 * 128 * 2 * 6553);
    eprintln!(
        "32k context, 20 % budget: KV {} of the full cache's {} bytes ({:.3}); everything the session created {} ({:.3}), of which eviction and staging {}",
        st.kv_bytes,
        full,
        st.kv_bytes as f64 / full as f64,
        created,
        created as f64 / full as f64,
        st.aux_bytes
    );
    assert!((st.kv_bytes as f64 / full as f64 - 0.2).abs() < 0.001);
    assert!(
        created < full / 4,
        "the session created {created} bytes, the full cache is {full}"
    );
    drop(gpu);

    // SmolLM2's KV heads (3 of 64) over 2 layers, so that software Vulkan streams the
    // 8k tokens in about a minute: an 8k-token prompt at a 20 % budget, chunk by chunk.
    let (model, weights) = shaped("smollm2-heads", 2, 192, 3, 3);
    let geom = model.kv_geometry();
    assert_eq!((geom.n_kv_heads, geom.head_dim), (3, 64));
    let nacl = opts(KvPolicy::Nacl, 1638);
    let mut gpu = GpuForward::new(ctx.clone(), model, weights, 8192, 512, &nacl).unwrap();
    let prompt: Vec<u32> = (0..8192).map(|i| (i * 31 + 7) % 300).collect();
    let t0 = std::time::Instant::now();
    gpu.forward(&prompt[..512]).unwrap();
    let after_first = ctx.storage_bytes_created();
    gpu.forward(&prompt[512..]).unwrap();
    let st = gpu.kv().stats();
    eprintln!(
        "8192 tokens streamed in {:.1} s: {st:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        ctx.storage_bytes_created(),
        after_first,
        "streaming past the budget creates no buffer"
    );
    assert!(
        st.used <= 1638 && st.evicted == 8192 - st.used as u64 && st.evictions > 1,
        "{st:?}"
    );
    assert_eq!(
        st.kv_bytes,
        kvedge_runtime::kv::KvCacheConfig::f16(2, 3, 64, 1638).total_bytes()
    );
}

/// A long greedy generation on a tiny budget: never "context full", the cache never
/// above its budget, sinks kept (the first tokens keep their slots: checked through the
/// window equivalence in the runtime's cache tests), and the same seed gives the same text.
#[test]
fn generation_under_a_policy_never_fills_and_repeats_with_its_seed() {
    let path = synthetic("generate");
    let m = Model::load(
        &path,
        &LoadOptions {
            device: Device::Cpu,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    let run = |policy: KvPolicy, seed: u64| {
        let mut s = m
            .session(&SessionConfig {
                context: 64,
                chunk: 16,
                kv: KvOptions {
                    seed,
                    ..opts(policy, 48)
                },
                ..SessionConfig::default()
            })
            .unwrap();
        let mut text = String::new();
        let gen_opts = GenerateOptions {
            max_tokens: 150,
            ..Default::default()
        };
        let mut g = s.generate("abc abc abc", &gen_opts).unwrap();
        for piece in g.by_ref() {
            text.push_str(&piece.unwrap());
        }
        drop(g);
        let st = s.stats();
        (text, st)
    };
    for policy in [KvPolicy::Window, KvPolicy::H2o, KvPolicy::Nacl] {
        let (a, st) = run(policy, 3);
        assert_ne!(
            st.last_finish,
            Some(FinishReason::ContextFull),
            "{policy:?}"
        );
        assert!(
            st.context_used > 64,
            "{policy:?}: ran past the context: {st:?}"
        );
        assert!(
            st.kv.used <= 48 && st.kv.slots == 48 && st.kv.evicted > 0,
            "{policy:?}: {:?}",
            st.kv
        );
        let (b, _) = run(policy, 3);
        assert_eq!(a, b, "{policy:?}: same seed, same text");
    }
    let _ = std::fs::remove_file(path);
}

/// The full cache refuses what does not fit, as before.
#[test]
fn full_cache_still_bounds_the_context() {
    let path = synthetic("full");
    let m = Model::load(
        &path,
        &LoadOptions {
            device: Device::Cpu,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    let mut s = m
        .session(&SessionConfig {
            context: 16,
            chunk: 8,
            ..SessionConfig::default()
        })
        .unwrap();
    let e = s.feed(&[1; 20]).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let bad = m.session(&SessionConfig {
        context: 16,
        chunk: 8,
        kv: KvOptions {
            budget: Some(KvBudget::Tokens(8)),
            ..opts(KvPolicy::Window, 8)
        },
        ..SessionConfig::default()
    });
    assert!(bad.is_err(), "a budget below sinks + 32 is refused");
    let _ = std::fs::remove_file(path);
}

/// `q4c` keys (KIVI's per-channel 4 bits, V in q4), under every policy
/// and TidalDecode: budgets buy whole blocks of 32 slots and hold, the
/// cache's bytes are what the configuration predicts, runs repeat exactly; the GPU device
/// agrees with the CPU reference under the same settings.
#[test]
fn q4c_keys_compose_with_every_policy() {
    let spec = SynthSpec {
        layers: 4,
        ..SynthSpec::default()
    };
    let path = synthetic_with("q4c", &spec);
    let model = Arc::new(LlamaModel::open(&path).unwrap());
    let prompt: Vec<u32> = (0..150).map(|i| (i * 37 + 5) % 300).collect();
    let typed = |kv: &KvOptions, k: KvType, v: KvType| KvOptions {
        k_type: k,
        v_type: v,
        ..kv.clone()
    };
    let tidal = KvOptions {
        tidal: Some(TidalOptions {
            k: 40,
            layers: Some((1, 2)),
        }),
        ..KvOptions::default()
    };
    let tidal_h2o = KvOptions {
        tidal: tidal.tidal,
        ..opts(KvPolicy::H2o, 100)
    };
    let run = |kv: &KvOptions| {
        let mut cpu = CpuForward::new(model.clone(), 4096, 64, kv).unwrap();
        let mut logits = cpu.forward(&prompt).unwrap();
        // The same decode tokens for every cache, so the logits compare step by step.
        for i in 0..40u32 {
            logits.extend(cpu.forward(&[(i * 71 + 13) % 300]).unwrap());
        }
        (logits, cpu.kv_stats())
    };
    for (name, kv) in [
        ("full", KvOptions::default()),
        ("window", opts(KvPolicy::Window, 100)),
        ("h2o", opts(KvPolicy::H2o, 100)),
        ("nacl", opts(KvPolicy::Nacl, 100)),
        ("tidal", tidal),
        ("tidal+h2o", tidal_h2o),
    ] {
        let (f16, _) = run(&kv);
        let q4c_kv = typed(&kv, KvType::Q4C, KvType::Q4);
        let (q4c, st) = run(&q4c_kv);
        let (again, _) = run(&q4c_kv);
        assert_eq!(q4c, again, "{name}: same inputs, same logits");
        // Random weights have no per-channel structure for q4c to exploit, and 4-bit keys
        // move their sharp attention (and which slots a policy keeps) a long way; the
        // quality is judged on SmolLM2 below, the encoding by the kernels' tests.
        assert_eq!(q4c.len(), f16.len());
        assert!(q4c.iter().all(|x| x.is_finite()), "{name}");
        assert_eq!(st.slots % 32, 0, "{name}: whole blocks: {st:?}");
        assert!(st.used <= st.slots, "{name}: {st:?}");
        if name != "full" && name != "tidal" {
            assert_eq!(
                st.slots, 96,
                "{name}: a budget of 100 buys 3 blocks: {st:?}"
            );
            assert!(st.evicted > 0, "{name}: {st:?}");
        }
        let plan = kvedge_runtime::kv::KvPlan::new(&q4c_kv, model.kv_geometry(), 4096, 64)
            .unwrap()
            .cache_config(model.kv_geometry());
        assert_eq!(st.kv_bytes, plan.total_bytes(), "{name}: {st:?}");
    }
    // The GPU device against the CPU reference, on the same synthetic model: the prompt
    // overflows the budgets (one eviction; NACL's one-shot compaction), then decode
    // steps. Codes land one step apart at rounding boundaries, as for q4 above, and
    // every compaction quantizes the kept keys again over their new blocks, so those
    // flips compound with each eviction (5 evictions reached 0.29 here, one stays under
    // 0.1); TidalDecode's selections then tie-break apart, so it is compared on the CPU
    // only (above).
    let prompt: Vec<u32> = (0..150).map(|i| (i * 37 + 5) % 300).collect();
    for kv in [
        KvOptions::default(),
        opts(KvPolicy::Window, 160),
        opts(KvPolicy::Nacl, 128),
    ] {
        let q4c = KvOptions {
            k_type: KvType::Q4C,
            v_type: KvType::Q4,
            ..kv
        };
        gpu_matches_cpu_with_eviction(&path, &q4c, &prompt, 20, 0.1);
    }
    let _ = std::fs::remove_file(path);
}

/// What q4c is for: on SmolLM2 over real text (GPL-3's opening, prefilled in chunks of 64
/// so blocks fill across chunks), the text's mean negative log-likelihood with q4c keys
/// stays closer to the f16 cache's than with per-token q4 keys (V q4 and rotation in
/// both), under the full cache and under h2o at a budget below the text.
#[test]
fn smollm2_q4c_keys_lose_less_than_q4_keys() {
    let Some(path) = model(SMOLLM2) else { return };
    let Ok(text) = std::fs::read_to_string("/usr/share/common-licenses/GPL-3") else {
        eprintln!("skipping: /usr/share/common-licenses/GPL-3 (Debian base-files) missing");
        return;
    };
    let gguf = kvedge_runtime::gguf::GgufFile::open(&path).unwrap();
    let tok = kvedge_runtime::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    let mut ids = tok.encode(&text[..3000], true, false).unwrap();
    ids.truncate(512);
    let model = Arc::new(LlamaModel::open(&path).unwrap());
    let nv = model.hp.n_vocab;
    let nll = |kv: &KvOptions| -> f64 {
        let mut cpu = CpuForward::new(model.clone(), 1024, 64, kv).unwrap();
        let mut total = 0.0;
        for (c, chunk) in ids.chunks(64).enumerate() {
            let logits = cpu.forward(chunk).unwrap();
            for (i, row) in logits.chunks_exact(nv).enumerate() {
                let Some(&next) = ids.get(c * 64 + i + 1) else {
                    break;
                };
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                total += m + z.ln() - row[next as usize] as f64;
            }
        }
        total / (ids.len() - 1) as f64
    };
    for base in [KvOptions::default(), opts(KvPolicy::H2o, 320)] {
        let with = |k: KvType| KvOptions {
            k_type: k,
            v_type: KvType::Q4,
            ..base.clone()
        };
        let (f16, q4, q4c) = (nll(&base), nll(&with(KvType::Q4)), nll(&with(KvType::Q4C)));
        eprintln!(
            "{:?}: NLL f16 {f16:.4}, q4 keys {q4:.4} (+{:.4}), q4c keys {q4c:.4} (+{:.4})",
            base.policy,
            q4 - f16,
            q4c - f16
        );
        assert!(q4c - f16 < q4 - f16, "{:?}", base.policy);
    }
}
