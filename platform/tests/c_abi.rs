//! The C ABI used from C: `tests/c/abi_test.c` (every documented error path, cancel from
//! another thread, two threads with separate sessions of one model, the memory cap) and
//! the example `examples/c/chat.c`, each compiled with the system C compiler against the
//! static and the dynamic library that this test run built, then run: the ABI test on a
//! synthetic model (CPU device, and the GPU adapter when there is one), the chat example
//! on SmolLM2-135M when fetched (required in CI through KVEDGE_REQUIRE_MODELS).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kvedge_models::synth::{synthesize, SynthSpec};
use kvedge_runtime::kernels::check::test_context;

/// The folder holding libkvedge_ffi.a and .so of this profile, built here: `cargo test`
/// builds the library only as an rlib for its tests, so the C libraries come from a
/// `cargo build` of the crate into the same target folder (the test binary lives in its
/// `deps/`), which is quick when they are up to date.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "kvedge-ffi", "--lib"]);
        build.arg("--target-dir").arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let o = build.output().expect("running cargo build");
        assert!(
            o.status.success(),
            "cargo build -p kvedge-ffi: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for lib in ["libkvedge_ffi.a", "libkvedge_ffi.so"] {
            assert!(
                profile_dir.join(lib).exists(),
                "{} missing after cargo build",
                profile_dir.join(lib).display()
            );
        }
        profile_dir
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvedge-c-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Compile `source` against the static (`dynamic` false) or dynamic library.
fn compile(source: &Path, out: &Path, dynamic: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = lib_dir();
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
        .arg(root.join("include"))
        .arg(source)
        .arg("-o")
        .arg(out);
    if dynamic {
        cc.arg(format!("-L{}", libs.display()))
            .arg("-lkvedge_ffi")
            .arg(format!("-Wl,-rpath,{}", libs.display()));
    } else {
        // `cargo rustc --crate-type staticlib -- --print native-static-libs` lists these.
        cc.arg(libs.join("libkvedge_ffi.a")).args([
            "-ldl",
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-lc",
        ]);
    }
    let o = cc.output().expect("running the C compiler (cc)");
    assert!(
        o.status.success(),
        "compiling {}: {}{}",
        source.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run(cmd: &mut Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(o.status.success(), "{cmd:?} failed: {stdout}{stderr}");
    stdout
}

#[test]
fn c_abi_test_passes_against_both_libraries() {
    let model = scratch("synthetic.gguf");
    let spec = SynthSpec {
        context: 256,
        ..SynthSpec::default()
    };
    synthesize(&spec).unwrap().write_file(&model).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/abi_test.c");
    let mut devices = vec!["cpu"];
    if test_context().is_some() {
        devices.push("gpu");
    }
    for dynamic in [false, true] {
        let exe = scratch(if dynamic { "abi_dynamic" } else { "abi_static" });
        compile(&source, &exe, dynamic);
        for device in &devices {
            let out = run(Command::new(&exe).arg(&model).arg(device), "");
            assert!(out.contains(" checks, 0 failed"), "{out}");
        }
    }
}

#[test]
fn c_chat_example_answers_with_smollm2() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/c/chat.c");
    let exes: Vec<PathBuf> = [false, true]
        .into_iter()
        .map(|dynamic| {
            let exe = scratch(if dynamic {
                "chat_dynamic"
            } else {
                "chat_static"
            });
            compile(&source, &exe, dynamic);
            exe
        })
        .collect();
    let Some(model) = kvedge_tests::model(kvedge_tests::SMOLLM2) else {
        return;
    };
    // Software Vulkan decodes SmolLM2 at about a token a second: a short reply.
    let device: &[&str] = if test_context().is_some() {
        &[]
    } else {
        &["--cpu"]
    };
    for exe in exes {
        let out = run(
            Command::new(exe).arg(&model).args(["-n", "8"]).args(device),
            "What is the capital of France?\n",
        );
        assert!(out.contains("Paris"), "{out}");
    }
}
