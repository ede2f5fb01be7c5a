//! Shared helpers of the workspace integration tests: where the committed data and the
//! fetched models live.

use std::path::PathBuf;

/// `tests/data/<rel>`.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(rel)
}

/// A fetched real model (models/fetch.sh), or `None` with a note when it is absent.
/// `KVEDGE_REQUIRE_MODELS` (comma-separated file names, or `all`) turns absence into a
/// failure, so CI cannot pass by skipping the model it fetched.
pub fn model(file: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("KVEDGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/cache"));
    let path = cache.join(file);
    if path.exists() {
        return Some(path);
    }
    let required = std::env::var("KVEDGE_REQUIRE_MODELS").unwrap_or_default();
    if required == "all" || required.split(',').any(|r| r.trim() == file) {
        panic!(
            "{} is required (KVEDGE_REQUIRE_MODELS) but missing: run models/fetch.sh",
            path.display()
        );
    }
    eprintln!("skipping: {} not fetched (models/fetch.sh)", path.display());
    None
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN25_15B: &str = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf";

#[path = "golden.rs"]
pub mod golden;
