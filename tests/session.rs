//! The public API end to end: Model::load, sessions, streaming generation, chat turns that
//! extend the KV cache, and bad input. Session logic is device-independent, so most of it
//! runs on the CPU device (fast on machines without a GPU); one test drives the GPU.

use kvedge_models::{Device, LoadOptions, Model, SessionConfig};
use kvedge_runtime::kernels::check::test_context;
use kvedge_runtime::sample::SamplingOptions;
use kvedge_runtime::session::{FinishReason, GenerateOptions};
use kvedge_tests::{model, SMOLLM2};

fn load(device: Device) -> Option<Model> {
    let path = model(SMOLLM2)?;
    let opts = LoadOptions {
        device,
        ..Default::default()
    };
    Some(Model::load(path, &opts, &mut |_, _| {}).unwrap())
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        sampling: SamplingOptions::greedy(),
        stop: vec![],
    }
}

#[test]
fn chat_turns_extend_the_cache_without_re_prefill() {
    let Some(m) = load(Device::Cpu) else { return };
    let mut s = m
        .session(&SessionConfig {
            context: 512,
            chunk: 64,
            ..SessionConfig::default()
        })
        .unwrap();
    let reply1: String = s
        .chat("What is the capital of France?", &greedy(12))
        .unwrap()
        .map(|p| p.unwrap())
        .collect();
    assert!(!reply1.is_empty());
    let after1 = s.stats();
    assert_eq!(
        after1.context_used,
        s.history().len(),
        "cache and history agree"
    );

    let reply2: String = s
        .chat("And of Italy?", &greedy(12))
        .unwrap()
        .map(|p| p.unwrap())
        .collect();
    assert!(!reply2.is_empty());
    let after2 = s.stats();
    let turn2_prompt = after2.prompt_tokens - after1.prompt_tokens;
    // Turn 2 ran only "<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n".
    assert!(
        turn2_prompt < 20,
        "turn 2 re-ran {turn2_prompt} prompt tokens"
    );
    assert!(after2.context_used > after1.context_used + turn2_prompt);
    assert_eq!(after2.context_used, s.history().len());
    eprintln!("turn 1: {reply1:?}\nturn 2 ({turn2_prompt} new prompt tokens): {reply2:?}");
}

#[test]
fn same_seed_same_text_and_greedy_is_deterministic() {
    let Some(m) = load(Device::Cpu) else { return };
    let opts = GenerateOptions {
        max_tokens: 16,
        sampling: SamplingOptions {
            temperature: 0.9,
            seed: 42,
            ..Default::default()
        },
        stop: vec![],
    };
    let run = |o: &GenerateOptions| -> String {
        let mut s = m
            .session(&SessionConfig {
                context: 128,
                chunk: 64,
                ..SessionConfig::default()
            })
            .unwrap();
        let out: String = s
            .generate("Once upon a time", o)
            .unwrap()
            .map(|p| p.unwrap())
            .collect();
        out
    };
    assert_eq!(run(&opts), run(&opts));
    assert_eq!(run(&greedy(16)), run(&greedy(16)));
}

#[test]
fn generation_stops_at_max_tokens_stop_strings_and_a_full_context() {
    let Some(m) = load(Device::Cpu) else { return };
    let mut s = m
        .session(&SessionConfig {
            context: 128,
            chunk: 64,
            ..SessionConfig::default()
        })
        .unwrap();
    let n = s.generate("1, 2, 3, 4,", &greedy(5)).unwrap().count();
    assert_eq!(n, 5);
    assert_eq!(s.stats().last_finish, Some(FinishReason::MaxTokens));

    let mut s = m
        .session(&SessionConfig {
            context: 128,
            chunk: 64,
            ..SessionConfig::default()
        })
        .unwrap();
    let stop = GenerateOptions {
        stop: vec!["6".into()],
        ..greedy(40)
    };
    let mut g = s.generate("1, 2, 3, 4,", &stop).unwrap();
    for p in g.by_ref() {
        p.unwrap();
    }
    assert!(!g.text().contains('6'), "{:?}", g.text());
    drop(g);
    assert_eq!(s.stats().last_finish, Some(FinishReason::StopString));

    let mut s = m
        .session(&SessionConfig {
            context: 12,
            chunk: 64,
            ..SessionConfig::default()
        })
        .unwrap();
    let n = s.generate("1, 2, 3, 4,", &greedy(100)).unwrap().count();
    assert!(n < 12);
    assert_eq!(s.stats().last_finish, Some(FinishReason::ContextFull));
}

#[test]
fn bad_input_gives_clear_errors() {
    let Some(m) = load(Device::Cpu) else { return };
    let mut s = m
        .session(&SessionConfig {
            context: 16,
            chunk: 64,
            ..SessionConfig::default()
        })
        .unwrap();
    let e = s.generate("", &greedy(4)).err().expect("empty prompt");
    assert!(e.to_string().contains("empty prompt"), "{e}");
    let long = "word ".repeat(100);
    let e = s
        .generate(&long, &greedy(4))
        .err()
        .expect("prompt over the context");
    assert!(e.to_string().contains("does not fit"), "{e}");
    let bad = GenerateOptions {
        sampling: SamplingOptions {
            top_p: 2.0,
            ..Default::default()
        },
        ..greedy(4)
    };
    assert!(s.generate("hi", &bad).is_err());
    let e = Model::load("/nonexistent.gguf", &LoadOptions::default(), &mut |_, _| {})
        .err()
        .expect("missing file");
    assert!(e.to_string().contains("No such file"), "{e}");
}

#[test]
fn gpu_session_generates_the_cpu_greedy_text() {
    if test_context().is_none() {
        return;
    }
    let (Some(gpu), Some(cpu)) = (load(Device::Gpu), load(Device::Cpu)) else {
        return;
    };
    let prompt = "The capital of France is";
    let text = |m: &Model| -> String {
        let mut s = m
            .session(&SessionConfig {
                context: 64,
                chunk: 512,
                ..SessionConfig::default()
            })
            .unwrap();
        let out: String = s
            .generate(prompt, &greedy(8))
            .unwrap()
            .map(|p| p.unwrap())
            .collect();
        out
    };
    let (g, c) = (text(&gpu), text(&cpu));
    eprintln!("GPU: {g:?}\nCPU: {c:?}");
    assert_eq!(g, c);
}
