//! Attention-Gate (issue: compressed KV cache III): the runtime side of the trainer
//! parity test, the gate file checks, and the `gate` policy's eviction order.
//!
//! `tests/data/gate/` holds two tiny synthetic models, a gate file for each and what the
//! PyTorch trainer's forward gives with those gates (`tools/train-gates/parity.py`, which
//! also regenerates and compares them where PyTorch is installed). kvedge's CPU forward
//! with the same gates must give the same logits and gate scores.

use std::path::PathBuf;
use std::sync::Arc;

use kvedge_models::llama::cpu::CpuForward;
use kvedge_models::llama::LlamaModel;
use kvedge_runtime::kv::{KvBudget, KvOptions, KvPolicy};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/gate")
        .join(name)
}

struct Expected {
    tokens: Vec<u32>,
    n_vocab: usize,
    n_layers: usize,
    n_kv: usize,
    logits: Vec<f32>,
    /// [layer][token][kv head]
    scores: Vec<f32>,
}

fn read_expected(arch: &str) -> Expected {
    let b = std::fs::read(data(&format!("tiny-{arch}-expected.bin"))).unwrap();
    let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
    let (t, v, l, kv) = (
        word(0) as usize,
        word(1) as usize,
        word(2) as usize,
        word(3) as usize,
    );
    let tokens: Vec<u32> = (0..t).map(|i| word(4 + i)).collect();
    let floats = |at: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| f32::from_le_bytes(b[4 * (at + i)..4 * (at + i) + 4].try_into().unwrap()))
            .collect()
    };
    let logits = floats(4 + t, t * v);
    let scores = floats(4 + t + t * v, l * t * kv);
    assert_eq!(b.len(), 4 * (4 + t + t * v + l * t * kv));
    Expected {
        tokens,
        n_vocab: v,
        n_layers: l,
        n_kv: kv,
        logits,
        scores,
    }
}

fn gated(arch: &str) -> Arc<LlamaModel> {
    let mut m = LlamaModel::open(data(&format!("tiny-{arch}.gguf"))).unwrap();
    m.attach_gates(data(&format!("tiny-{arch}-gates.gguf")))
        .unwrap();
    Arc::new(m)
}

fn gate_opts(budget: usize) -> KvOptions {
    KvOptions {
        budget: Some(KvBudget::Tokens(budget)),
        policy: KvPolicy::Gate,
        sinks: 4,
        ..KvOptions::default()
    }
}

#[test]
fn cpu_forward_with_gates_matches_the_trainer() {
    for arch in ["llama", "qwen2"] {
        let want = read_expected(arch);
        let model = gated(arch);
        let g = model.gates.clone().unwrap();
        assert_eq!(
            (g.layers.len(), g.shape.n_kv_heads),
            (want.n_layers, want.n_kv)
        );
        let t = want.tokens.len();
        // Chunks of 16 cross the gate's window of 8 and the ring's wrap.
        let mut fwd = CpuForward::new(model, 64, 16, &gate_opts(64)).unwrap();
        let logits = fwd.forward(&want.tokens).unwrap();
        assert_eq!(logits.len(), t * want.n_vocab);
        let scale = want.logits.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let lerr = logits
            .iter()
            .zip(&want.logits)
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            lerr <= 1e-3 * scale.max(1.0),
            "{arch}: logits differ from the trainer's by {lerr} (scale {scale})"
        );
        let cap = 64;
        let (mut serr, mut flips, mut kept) = (0.0f32, 0, 0);
        for l in 0..want.n_layers {
            let s = fwd.slot_scores(l).unwrap();
            for i in 0..t {
                for h in 0..want.n_kv {
                    let (got, exp) = (s[h * cap + i], want.scores[(l * t + i) * want.n_kv + h]);
                    serr = serr.max((got - exp).abs());
                    kept += (exp > g.threshold) as usize;
                    if (exp - g.threshold).abs() > 1e-3
                        && (got > g.threshold) != (exp > g.threshold)
                    {
                        flips += 1;
                    }
                }
            }
        }
        eprintln!("{arch}: logits max diff {lerr} (scale {scale}), gate scores max diff {serr}");
        assert!(serr < 1e-4, "{arch}: gate scores differ by {serr}");
        assert_eq!(flips, 0, "{arch}: keep flags differ");
        // The fixture must exercise both flags.
        let all = want.n_layers * t * want.n_kv;
        assert!(
            kept > all / 10 && kept < all * 9 / 10,
            "{arch}: {kept} of {all} kept"
        );
    }
}

#[test]
fn gates_for_another_model_are_refused() {
    let mut m = LlamaModel::open(data("tiny-qwen2.gguf")).unwrap();
    let e = m
        .attach_gates(data("tiny-llama-gates.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model_fingerprint") && e.contains("trained for") && e.contains("tiny-qwen2"),
        "{e}"
    );
    // A model file is not a gate file.
    let e = m
        .attach_gates(data("tiny-llama.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("kvedge-gate"), "{e}");
    // Without gates the policy says what it needs.
    let plain = Arc::new(LlamaModel::open(data("tiny-llama.gguf")).unwrap());
    let e = CpuForward::new(plain, 64, 16, &gate_opts(64))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--kv-gates"), "{e}");
}

#[test]
fn gate_policy_evicts_lowest_scores_first() {
    let model = gated("llama");
    let mut rng = kvedge_runtime::rng::SplitMix64::new(3);
    let tokens: Vec<u32> = (0..49).map(|_| (rng.next_u64() % 260) as u32).collect();
    // Every token's scores with no eviction.
    let mut full = CpuForward::new(model.clone(), 64, 16, &gate_opts(64)).unwrap();
    full.forward(&tokens[..48]).unwrap();
    // Budget 48: the 49th token evicts every layer down to 32 kept slots.
    let budget = 48;
    let mut fwd = CpuForward::new(model.clone(), 64, 16, &gate_opts(budget)).unwrap();
    fwd.forward(&tokens[..48]).unwrap();
    fwd.forward(&tokens[48..]).unwrap();
    let stats = fwd.kv_stats();
    assert_eq!((stats.slots, stats.used, stats.evictions), (48, 33, 1));
    let n_kv = model.hp.n_kv_heads;
    for l in 0..model.hp.n_layers {
        let all = full.slot_scores(l).unwrap();
        let got = fwd.slot_scores(l).unwrap();
        for h in 0..n_kv {
            let s = &all[h * 64..h * 64 + 48];
            // sinks 4, recent 28 * 75 % = 21, 7 by score from slots 4..27.
            let mut middle: Vec<usize> = (4..27).collect();
            middle.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            let mut kept: Vec<usize> = (0..4).chain(27..48).chain(middle[..7].to_vec()).collect();
            kept.sort();
            let want: Vec<f32> = kept.iter().map(|&j| s[j]).collect();
            assert_eq!(
                &got[h * budget..h * budget + 32],
                &want[..],
                "layer {l} head {h}: kept slots are not sinks + recent + the highest gate scores"
            );
        }
    }
}

#[test]
fn gpu_gate_policy_matches_cpu() {
    use kvedge_models::llama::gpu::{GpuForward, GpuWeights};
    use kvedge_runtime::kernels::check::{compare, test_context};
    let Some(ctx) = test_context() else { return };
    for arch in ["llama", "qwen2"] {
        let model = gated(arch);
        let weights = Arc::new(GpuWeights::upload(ctx, &model).unwrap());
        let kv = gate_opts(48);
        let mut gpu = GpuForward::new(ctx.clone(), model.clone(), weights, 256, 16, &kv).unwrap();
        let mut cpu = CpuForward::new(model.clone(), 256, 16, &kv).unwrap();
        let prompt: Vec<u32> = (0..100).map(|i| (i * 37 + 5) % 260).collect();
        let vocab = model.hp.n_vocab;
        let mut g = gpu.forward(&prompt).unwrap();
        let c = cpu.forward(&prompt).unwrap();
        let mut c = c[(prompt.len() - 1) * vocab..].to_vec();
        let mut worst = 0.0f64;
        for step in 0..=12 {
            let cmp = compare(&g, &c);
            worst = worst.max(cmp.max_err);
            let (gs, cs) = (gpu.kv().stats(), cpu.kv_stats());
            assert_eq!(
                (gs.used, gs.evicted, gs.evictions),
                (cs.used, cs.evicted, cs.evictions),
                "{arch} step {step}: both devices evict alike"
            );
            assert!(gs.used <= gs.slots && gs.evictions > 0, "{gs:?}");
            if step == 12 {
                break;
            }
            let next = (step * 61 + 7) as u32 % 260;
            g = gpu.forward(&[next]).unwrap();
            c = cpu.forward(&[next]).unwrap();
        }
        eprintln!("{arch}: gate policy, GPU vs CPU worst normalized logit error {worst:.2e}");
        assert!(
            worst < 2e-2,
            "{arch}: GPU vs CPU logits differ by {worst:.2e}"
        );
    }
}

/// The trained gates committed for SmolLM2 load against it (fingerprint and shapes) and
/// rank eviction on a real stream; the gates' scores must not be all alike.
#[test]
fn committed_smollm2_gates_run() {
    let Some(path) = kvedge_tests::model(kvedge_tests::SMOLLM2) else {
        return;
    };
    let gates = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/gates/SmolLM2-135M-Instruct.gates.gguf");
    let mut m = LlamaModel::open(&path).unwrap();
    m.attach_gates(&gates).unwrap();
    let g = m.gates.clone().unwrap();
    assert!(
        g.kept_fraction > 0.0 && g.kept_fraction < 1.0,
        "{}",
        g.describe()
    );
    let model = Arc::new(m);
    let text = "The most important thing to understand about startups is that growth is \
                what makes them different from other small businesses. ";
    let tokens: Vec<u32> = text
        .bytes()
        .cycle()
        .take(300)
        .map(|b| b as u32 + 200)
        .collect();
    let mut fwd = CpuForward::new(model.clone(), 512, 64, &gate_opts(128)).unwrap();
    let logits = fwd.forward(&tokens).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
    let s = fwd.kv_stats();
    assert!(s.evictions > 0 && s.used <= 128, "{s:?}");
    let scores = fwd.slot_scores(5).unwrap();
    let (lo, hi) = scores[..s.used]
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(
        hi - lo > 0.05,
        "gate scores of layer 5 all within {lo}..{hi}"
    );
}
