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
