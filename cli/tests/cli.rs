//! The `kvedge` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn kvedge(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvedge"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `kvedge` with `input` on its standard input.
fn kvedge_with_input(args: &[&str], input: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvedge"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn inspect_smollm2_prints_hyperparameters_and_kv_bytes() {
    let path = root().join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var("KVEDGE_REQUIRE_MODELS").is_err(),
            "SmolLM2 required but not fetched"
        );
        eprintln!("skipping: {} not fetched", path.display());
        return;
    }
    let (ok, out, err) = kvedge(&["inspect", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    for want in [
        "architecture:  llama",
        "blocks:            30",
        "embedding:         576",
        "heads:             9 (head dim 64)",
        "KV heads:          3",
        "per token:         23040 bytes",
        "tensor check:    ok",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
}

#[test]
fn inspect_of_a_malformed_file_fails_cleanly() {
    let path = root().join("tests/data/gguf_malformed/offset_past_end.gguf");
    let (ok, _, err) = kvedge(&["inspect", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("outside the data section"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flags_are_errors_not_panics() {
    let (ok, _, err) = kvedge(&["bench", "--kernels", "--cols", "100"]);
    assert!(!ok);
    assert!(err.contains("multiple of 256"), "{err}");
    let (ok, _, err) = kvedge(&["inspect", "/nonexistent.gguf"]);
    assert!(!ok && err.contains("No such file"), "{err}");
}

#[test]
fn no_adapter_gives_a_clear_error() {
    // No adapter exists for a backend this platform lacks (Metal on Linux/Windows, DX12
    // elsewhere): the error must say how to get one.
    let backend = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    let out = Command::new(env!("CARGO_BIN_EXE_kvedge"))
        .args(["bench", "--kernels", "--mib", "1"])
        .env("WGPU_BACKEND", backend)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no GPU adapter found"), "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
}

fn smollm2() -> Option<PathBuf> {
    let path = root().join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("KVEDGE_REQUIRE_MODELS").is_err(),
        "SmolLM2 required but not fetched"
    );
    None
}

#[test]
fn chat_answers_two_turns_from_a_pipe_and_exits_at_eof() {
    let Some(path) = smollm2() else { return };
    let args = [
        "chat",
        "--device",
        "cpu",
        "--temp",
        "0",
        "-n",
        "16",
        "-m",
        path.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) =
        kvedge_with_input(&args, b"What is the capital of France?\nAnd of Italy?\n");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Paris") && stdout.contains("Rome"),
        "{stdout}"
    );
    assert_eq!(stderr.matches("KV cache").count(), 2, "{stderr}");
}

#[test]
fn run_streams_a_completion_and_rejects_an_empty_prompt() {
    let Some(path) = smollm2() else { return };
    let m = path.to_str().unwrap();
    let (ok, out, err) = kvedge(&[
        "run",
        "--device",
        "cpu",
        "--temp",
        "0",
        "-n",
        "4",
        "-m",
        m,
        "-p",
        "The capital of France is",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Paris"), "{out}");
    let (ok, _, err) = kvedge(&["run", "--device", "cpu", "-m", m, "-p", ""]);
    assert!(!ok && err.contains("empty prompt"), "{err}");
    let (ok, _, err) = kvedge(&["run", "--device", "tpu", "-m", m, "-p", "x"]);
    assert!(!ok && err.contains("expected gpu or cpu"), "{err}");
}

#[test]
fn eval_ppl_reports_a_perplexity() {
    let Some(path) = smollm2() else { return };
    let text = std::path::Path::new("/usr/share/common-licenses/GPL-3");
    if !text.exists() {
        eprintln!(
            "skipping: {} (Debian base-files) not present",
            text.display()
        );
        return;
    }
    let (ok, out, err) = kvedge(&[
        "eval",
        "ppl",
        "--device",
        "cpu",
        "-m",
        path.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--chunks",
        "2",
    ]);
    assert!(ok, "{err}");
    let ppl: f64 = out
        .split("PPL = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    // A 135M model on license prose at a 64-token window: far better than chance (49152).
    assert!(ppl > 1.0 && ppl < 200.0, "{out}");
    let (ok, _, err) = kvedge(&[
        "eval",
        "ppl",
        "--device",
        "cpu",
        "-m",
        path.to_str().unwrap(),
        "--text",
        "/nonexistent.txt",
    ]);
    assert!(!ok && err.contains("/nonexistent.txt"), "{err}");
}

#[test]
fn synth_writes_a_model_that_inspect_marks_synthetic_and_run_accepts() {
    let out = std::env::temp_dir().join(format!("kvedge-cli-synth-{}.gguf", std::process::id()));
    let o = out.to_str().unwrap();
    let (ok, _, err) = kvedge(&[
        "synth",
        "--arch",
        "qwen2",
        "--type",
        "Q4_K",
        "--tokenizer",
        "spm",
        "--untied",
        "-o",
        o,
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = kvedge(&["inspect", o]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("SYNTHETIC:     yes") && stdout.contains("tensor check:    ok (separate"),
        "{stdout}"
    );
    let (ok, _, err) = kvedge(&[
        "run",
        "--device",
        "cpu",
        "-m",
        o,
        "-p",
        "the quick fox",
        "-n",
        "3",
    ]);
    assert!(ok, "{err}");
    // --like copies the shapes, the main type and the untied output: inspect says the same.
    let like = format!("{o}.like.gguf");
    let (ok, _, err) = kvedge(&["synth", "--like", o, "--tokenizer", "spm", "-o", &like]);
    assert!(ok, "{err}");
    let (_, a, _) = kvedge(&["inspect", o]);
    let (_, b, _) = kvedge(&["inspect", &like]);
    let shape = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains(".gguf") && !l.to_lowercase().contains("file"))
            .map(String::from)
            .collect()
    };
    assert_eq!(shape(&a), shape(&b), "--like differs from its source");
    let (ok, _, err) = kvedge(&["synth", "--like", o, "--layers", "1", "-o", &like]);
    assert!(ok, "{err}");
    let (_, c, _) = kvedge(&["inspect", &like]);
    assert_ne!(shape(&a), shape(&c), "--layers overrides --like");
    let (ok, _, err) = kvedge(&["synth", "--type", "IQ2_XXS", "-o", o]);
    assert!(!ok && err.contains("unsupported --type"), "{err}");
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(like);
}

#[test]
fn chat_reports_a_full_context_and_keeps_going() {
    let Some(path) = smollm2() else { return };
    let args = [
        "chat",
        "--device",
        "cpu",
        "--temp",
        "0",
        "-n",
        "40",
        "-c",
        "48",
        "-m",
        path.to_str().unwrap(),
    ];
    let input = b"Tell me a very long story about the sea and the mountains\nhi\n/reset\nhi\n";
    let (ok, _, stderr) = kvedge_with_input(&args, input);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("does not fit"), "{stderr}");
    assert!(stderr.contains("conversation cleared"), "{stderr}");
    assert_eq!(stderr.matches("KV cache").count(), 2, "{stderr}");
}

/// `eval needle` end to end on a synthetic model (which cannot retrieve anything) and a
/// tiny haystack: it runs the grid under a KV policy and sparse decode, reports every
/// trial in JSON, and a missing haystack or a bad depth is a clear error.
#[test]
fn eval_needle_runs_its_grid_and_rejects_bad_input() {
    let id = std::process::id();
    let model = std::env::temp_dir().join(format!("kvedge-cli-needle-{id}.gguf"));
    let m = model.to_str().unwrap();
    let (ok, _, err) = kvedge(&["synth", "--context", "1024", "-o", m]);
    assert!(ok, "{err}");
    let hay = std::env::temp_dir().join(format!("kvedge-cli-hay-{id}"));
    std::fs::create_dir_all(&hay).unwrap();
    let essay = "The sky was grey over the harbour. Ships came in at dawn. ".repeat(200);
    std::fs::write(hay.join("a.txt"), &essay).unwrap();
    let h = hay.to_str().unwrap();
    let common = [
        "eval",
        "needle",
        "-m",
        m,
        "--device",
        "cpu",
        "--haystack",
        h,
    ];
    let (ok, stdout, err) = kvedge(
        &[
            &common[..],
            &["--lengths", "300", "--depths", "0,100", "--json"],
            &[
                "--kv-policy",
                "h2o",
                "--kv-budget",
                "128",
                "--sparse-decode",
                "tidal",
            ],
            &["--tidal-k", "64", "--tidal-layers", "0,1"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    assert!(
        stdout.contains("\"accuracy\":") && stdout.matches("\"depth\":").count() == 2,
        "{stdout}"
    );
    assert!(stdout.contains("h2o budget 128 slots"), "{stdout}");
    assert!(err.contains("length 300 depth 100%"), "{err}");
    let (ok, _, err) = kvedge(&[&common[..], &["--depths", "150"]].concat());
    assert!(!ok && err.contains("depths are 0..=100"), "{err}");
    let (ok, _, err) = kvedge(&[
        "eval",
        "needle",
        "-m",
        m,
        "--device",
        "cpu",
        "--haystack",
        "/nonexistent",
    ]);
    assert!(!ok && err.contains("models/fetch.sh data"), "{err}");
    let _ = std::fs::remove_file(model);
    let _ = std::fs::remove_dir_all(hay);
}

/// `eval sweep` end to end on a synthetic model: a needle sweep over full, an eviction
/// policy at two budgets and TidalDecode writes the table (a row per method and budget,
/// each with its command), the JSON and the SVG plot; the budgets are shares of the
/// prompt; a perplexity sweep refuses TidalDecode and an unknown method is an error.
#[test]
fn eval_sweep_writes_table_json_and_plot() {
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("kvedge-cli-sweep-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.gguf");
    let m = model.to_str().unwrap();
    let (ok, _, err) = kvedge(&["synth", "--context", "1024", "-o", m]);
    assert!(ok, "{err}");
    let essay = "The sky was grey over the harbour. Ships came in at dawn. ".repeat(200);
    std::fs::write(dir.join("a.txt"), &essay).unwrap();
    let out = dir.join("needle");
    let common = ["eval", "sweep", "-m", m, "--device", "cpu"];
    let (ok, stdout, err) = kvedge(
        &[
            &common[..],
            &["--task", "needle", "--haystack", dir.to_str().unwrap()],
            &["--lengths", "300", "--depths", "50", "--budgets", "50,20"],
            &["--methods", "full,window,tidal:64", "--tidal-layers", "0,1"],
            &["-o", out.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(dir.join("needle.md")).unwrap();
    assert_eq!(md, stdout);
    assert_eq!(md.lines().count(), 2 + 4, "{md}");
    assert!(md.contains("--kv-policy window --kv-budget 150"), "{md}");
    assert!(md.contains("--kv-policy window --kv-budget 60"), "{md}");
    assert!(
        md.contains("--sparse-decode tidal --tidal-k 64 --tidal-layers 0,1`"),
        "{md}"
    );
    let json = std::fs::read_to_string(dir.join("needle.json")).unwrap();
    assert_eq!(json.matches("\"accuracy\":").count(), 4, "{json}");
    let svg = std::fs::read_to_string(dir.join("needle.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("window"), "{svg}");
    let text = dir.join("a.txt");
    let (ok, _, err) = kvedge(
        &[
            &common[..],
            &["--task", "ppl", "--text", text.to_str().unwrap()],
            &["--stream", "100", "--methods", "tidal:64", "-o", m],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("TidalDecode changes decode steps only"),
        "{err}"
    );
    let (ok, _, err) = kvedge(
        &[
            &common[..],
            &["--task", "ppl", "--text", text.to_str().unwrap()],
            &["--methods", "lru", "-o", m],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("unknown method 'lru'"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `bench` on a model: JSON with both speeds, the KV configuration, and the synthetic mark.
#[test]
fn bench_measures_a_model_and_marks_synthetic_ones() {
    let model = std::env::temp_dir().join(format!("kvedge-cli-bench-{}.gguf", std::process::id()));
    let m = model.to_str().unwrap();
    let (ok, _, err) = kvedge(&["synth", "-o", m]);
    assert!(ok, "{err}");
    let args = [
        "bench", "-m", m, "--device", "cpu", "-p", "40", "-n", "4", "-r", "1",
    ];
    let (ok, stdout, err) = kvedge(&[&args[..], &["--json", "--kv-type", "q8"]].concat());
    assert!(ok, "{err}");
    for key in [
        "\"synthetic\":true",
        "\"pp_tok_s\":",
        "\"tg_tok_s\":",
        "q8 rotated full",
    ] {
        assert!(stdout.contains(key), "{key} missing: {stdout}");
    }
    let (ok, stdout, err) = kvedge(&args);
    assert!(
        ok && stdout.contains("(SYNTHETIC weights)") && stdout.contains("| pp40 |"),
        "{stdout}{err}"
    );
    // Depths and the roofline: a row per depth, the limits and the fractions.
    let (ok, stdout, err) = kvedge(&[&args[..], &["-d", "0,24", "--roofline", "--json"]].concat());
    assert!(ok, "{err}");
    for key in [
        "\"depth\":24",
        "\"bandwidth_gb_s\":",
        "\"matmul_gflop_s\":",
        "\"tg_of_bandwidth_limit\":",
        "\"pp_of_matmul_limit\":",
        "\"peak_rss_bytes\":",
    ] {
        assert!(stdout.contains(key), "{key} missing: {stdout}");
    }
    let (ok, stdout, err) = kvedge(&[&args[..], &["-d", "24"]].concat());
    assert!(ok && stdout.contains("| tg4 @ d24 |"), "{stdout}{err}");
    let (ok, _, err) = kvedge(&["bench", "-m", m, "--device", "cpu", "-n", "0"]);
    assert!(!ok && err.contains("must be positive"), "{err}");
    // --profile reads GPU timestamps: refused on the CPU device, per kernel on the GPU
    // (skips without an adapter unless KVEDGE_REQUIRE_GPU=1).
    let (ok, _, err) = kvedge(&[&args[..], &["--profile"]].concat());
    assert!(
        !ok && err.contains("--profile needs the GPU device"),
        "{err}"
    );
    let gpu = [
        "bench",
        "-m",
        m,
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "--profile",
    ];
    let (ok, stdout, err) = kvedge(&[&gpu[..], &["--json"]].concat());
    if ok || std::env::var("KVEDGE_REQUIRE_GPU").is_ok() || !err.contains("no GPU adapter found") {
        assert!(ok, "{err}");
        for key in [
            "\"profile\":[{\"depth\":0",
            "\"kernel\":\"matvec\"",
            "\"kernel\":\"matmul\"",
        ] {
            assert!(stdout.contains(key), "{key} missing: {stdout}");
        }
        let (ok, stdout, err) = kvedge(&gpu);
        assert!(
            ok && stdout.contains("| matvec |") && stdout.contains("decode ms/token"),
            "{stdout}{err}"
        );
    }
    let _ = std::fs::remove_file(model);
}

/// `bench --kernels`: every hot kernel reports a positive rate, on the GPU (skips without
/// an adapter unless KVEDGE_REQUIRE_GPU=1) and on the CPU device.
#[test]
fn kernel_benchmarks_report_a_rate_for_every_kernel() {
    for device in ["gpu", "cpu"] {
        let (ok, stdout, err) = kvedge(&[
            "bench",
            "--kernels",
            "--device",
            device,
            "--types",
            "Q8_0",
            "--mib",
            "1",
            "--tokens",
            "8",
            "--mm-rows",
            "64",
            "--slots",
            "64",
            "--iters",
            "1",
            "-r",
            "1",
            "--json",
        ]);
        if !ok
            && err.contains("no GPU adapter found")
            && std::env::var("KVEDGE_REQUIRE_GPU").is_err()
        {
            eprintln!("skipping the GPU: {err}");
            continue;
        }
        assert!(ok, "{device}: {err}");
        for kernel in ["matvec", "matmul", "attention", "copy"] {
            assert!(
                stdout.contains(&format!("\"kernel\":\"{kernel}\"")),
                "{device}: {kernel} missing: {stdout}"
            );
        }
        // matvec, matmul, attention over f16 / q8 / q4 / q4c keys, copy; every rate a
        // positive number.
        let rates: Vec<f64> = stdout
            .split("\"rate\":")
            .skip(1)
            .map(|r| r.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(rates.len(), 7, "{device}: {stdout}");
        assert!(
            rates.iter().all(|&r| r > 0.0 && r.is_finite()),
            "{device}: {stdout}"
        );
        assert!(stdout.contains("K q4c V q4 KV"), "{device}: {stdout}");
        if device == "cpu" {
            assert!(stdout.contains("\"device\":\"CPU ("), "{stdout}");
        }
    }
    let (ok, _, err) = kvedge(&["bench", "--kernels", "--kernel", "gemm"]);
    assert!(!ok && err.contains("unknown kernel 'gemm'"), "{err}");
}
