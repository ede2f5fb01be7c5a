//! Coverage-guided fuzzing of the GGUF parser: any byte string must parse or give an
//! error, never panic or read out of bounds; whatever parses must describe tensors that lie
//! inside the input. Seed it with the committed corpus:
//!
//!     cargo fuzz run gguf_parse ../tests/data/gguf_malformed   (from fuzz/; see README)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = kvedge_runtime::gguf::parse(data) {
        for t in &h.tensors {
            assert!(h.data_offset + t.offset + t.n_bytes <= data.len() as u64);
        }
        for (k, _) in &h.metadata {
            assert!(h.get(k).is_some());
        }
    }
});
