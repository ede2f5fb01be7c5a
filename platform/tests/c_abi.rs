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
            let gates = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/gate/tiny-llama-gates.gguf");
            let out = run(Command::new(&exe).arg(&model).arg(device).arg(&gates), "");
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

/// The JDK's include folder (JAVA_HOME, else the first JDK under /usr/lib/jvm).
fn jni_include() -> Option<PathBuf> {
    let mut homes: Vec<PathBuf> = std::env::var_os("JAVA_HOME")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/usr/lib/jvm") {
        let mut found: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        found.sort();
        homes.extend(found);
    }
    homes
        .into_iter()
        .map(|h| h.join("include"))
        .find(|i| i.join("jni.h").exists())
}

fn tool(include: &Path, name: &str) -> Option<PathBuf> {
    let bin = include.parent()?.join("bin").join(name);
    bin.exists().then_some(bin)
}

/// The Android JNI glue (`platform/android/jni/kvedge_jni.c`) built for this machine
/// against kvedge.h and a JDK's jni.h, then run on a desktop JVM through
/// `tests/java/dev/kvedge/JniSmoke.java` (the same JNI symbols as the Kotlin wrapper).
/// Without a JDK it skips, saying so, unless KVEDGE_REQUIRE_JNI=1 (set by CI).
#[test]
fn jni_glue_compiles_and_runs_on_a_jvm() {
    let Some(include) = jni_include() else {
        assert!(
            std::env::var("KVEDGE_REQUIRE_JNI").map_or(true, |v| v != "1"),
            "KVEDGE_REQUIRE_JNI=1 but no JDK with include/jni.h (JAVA_HOME or /usr/lib/jvm)"
        );
        eprintln!("skipping: no JDK with include/jni.h (JAVA_HOME or /usr/lib/jvm)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = lib_dir();
    let glue_dir = scratch("jni");
    std::fs::create_dir_all(&glue_dir).unwrap();
    let o = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I",
        ])
        .arg(root.join("include"))
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(include.join("linux"))
        .arg(root.join("android/jni/kvedge_jni.c"))
        .arg(format!("-L{}", libs.display()))
        .arg("-lkvedge_ffi")
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-o")
        .arg(glue_dir.join("libkvedge_jni.so"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "compiling kvedge_jni.c: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (Some(javac), Some(java)) = (tool(&include, "javac"), tool(&include, "java")) else {
        panic!("{} has jni.h but no javac/java", include.display());
    };
    let classes = glue_dir.join("classes");
    let java_dir = root.join("tests/java/dev/kvedge");
    let sources: Vec<PathBuf> = ["Native", "KvedgeException", "PieceCallback", "JniSmoke"]
        .iter()
        .map(|n| java_dir.join(format!("{n}.java")))
        .collect();
    let o = Command::new(javac)
        .arg("-d")
        .arg(&classes)
        .args(&sources)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let model = scratch("jni-synthetic.gguf");
    synthesize(&SynthSpec::default())
        .unwrap()
        .write_file(&model)
        .unwrap();
    let out = run(
        Command::new(java)
            .arg(format!("-Djava.library.path={}", glue_dir.display()))
            .arg("-cp")
            .arg(&classes)
            .arg("dev.kvedge.JniSmoke")
            .arg(&model),
        "",
    );
    assert!(out.contains("JNI glue ok"), "{out}");
}
