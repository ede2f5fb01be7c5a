//! The malformed-GGUF corpus (tests/data/gguf_malformed, made by
//! tools/make_gguf_corpus.py): every file must give a clean error naming what is wrong,
//! and random mutations of the valid file must never panic.

use kvedge_runtime::gguf::{parse, GgufFile};
use kvedge_runtime::rng::SplitMix64;
use kvedge_tests::data;

fn expectations() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data("gguf_malformed/EXPECTED.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (f, e) = l.split_once('\t').unwrap();
            (f.to_string(), e.to_string())
        })
        .collect()
}

#[test]
fn every_malformed_file_gives_a_clean_error() {
    let cases = expectations();
    assert!(cases.len() > 30, "corpus has {} files", cases.len());
    for (file, expect) in cases {
        let path = data(&format!("gguf_malformed/{file}"));
        let result = GgufFile::open(&path);
        match (expect.as_str(), result) {
            ("OK", Ok(f)) => assert_eq!(f.tensors().len(), 2),
            ("OK", Err(e)) => panic!("{file}: should parse, got: {e}"),
            (_, Ok(_)) => panic!("{file}: parsed, but should fail with '{expect}'"),
            (_, Err(e)) => {
                let msg = e.to_string();
                let reason = match &e {
                    kvedge_runtime::Error::Gguf { source, .. } => source.to_string(),
                    other => panic!("{file}: expected a GGUF format error, got: {other}"),
                };
                assert!(
                    reason.contains(&expect),
                    "{file}: error '{reason}' does not contain '{expect}'"
                );
                assert!(
                    msg.contains(&file),
                    "{file}: error '{msg}' does not name the file"
                );
                eprintln!("{file}: {msg}");
            }
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    // A deterministic smoke fuzz in the normal test run (the coverage-guided target lives
    // in fuzz/): flip bytes, overwrite words with extreme values, truncate.
    let valid = std::fs::read(data("gguf_malformed/valid.gguf")).unwrap();
    let mut rng = SplitMix64::new(42);
    let extremes = [
        0u64,
        1,
        31,
        32,
        0xFF,
        0xFFFF_FFFF,
        1 << 32,
        1 << 62,
        u64::MAX,
    ];
    let mut errors = 0;
    for i in 0..20_000 {
        let mut b = valid.clone();
        match i % 3 {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let p = rng.below(b.len() as u64) as usize;
                    b[p] = rng.next_u32() as u8;
                }
            }
            1 => {
                let p = rng.below(b.len() as u64 - 8) as usize;
                let v = extremes[rng.below(extremes.len() as u64) as usize];
                b[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => b.truncate(rng.below(b.len() as u64) as usize),
        }
        if let Ok(h) = parse(&b) {
            // Whatever parsed must describe tensors inside the image.
            for t in &h.tensors {
                assert!(h.data_offset + t.offset + t.n_bytes <= b.len() as u64);
            }
        } else {
            errors += 1;
        }
    }
    assert!(
        errors > 5_000,
        "only {errors} of 20000 mutations were rejected"
    );
}
