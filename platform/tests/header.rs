//! `include/kvedge.h` is written by hand; this test fails when it drifts from the Rust
//! exports: every `extern "C"` function must be declared there with the same number of
//! parameters and every declaration must be exported; every `#[repr(C)]` struct must
//! have the fields of its C twin in the same order with matching types; every status and
//! every `KVEDGE_*` constant must have the same value on both sides.

use std::collections::BTreeMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_sources() -> String {
    let mut all = String::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for f in files {
        all.push_str(&std::fs::read_to_string(f).unwrap());
        all.push('\n');
    }
    all
}

/// The header without comments.
fn header() -> String {
    let raw = std::fs::read_to_string(root().join("include/kvedge.h")).unwrap();
    let mut out = String::new();
    let mut rest = raw.as_str();
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("unterminated comment") + i + 2;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Number of parameters in a parenthesized list (`void` or empty is 0).
fn arity(list: &str) -> usize {
    let l = list.trim();
    if l.is_empty() || l == "void" {
        0
    } else {
        l.split(',').count()
    }
}

/// The text between the `(` at `open` and its matching `)`.
fn parens(s: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses");
}

/// Exported functions and their parameter counts.
fn rust_exports(src: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for marker in ["pub extern \"C\" fn ", "pub unsafe extern \"C\" fn "] {
        let mut from = 0;
        while let Some(i) = src[from..].find(marker) {
            let start = from + i + marker.len();
            let open = start + src[start..].find('(').unwrap();
            let name = src[start..open].trim().to_string();
            out.insert(name, arity(parens(src, open).trim().trim_end_matches(',')));
            from = open;
        }
    }
    out
}

/// Declared functions (not function-pointer typedefs) and their parameter counts.
fn header_functions(h: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut from = 0;
    while let Some(i) = h[from..].find("kvedge_") {
        let start = from + i;
        let end = start
            + h[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap();
        // `(*kvedge_token_callback)(` is a typedef: its name is followed by `)`.
        if h[end..].starts_with('(') {
            out.insert(h[start..end].to_string(), arity(parens(h, end)));
        }
        from = end;
    }
    out
}

#[test]
fn every_export_is_declared_and_every_declaration_exported() {
    let exports = rust_exports(&rust_sources());
    let declared = header_functions(&header());
    assert!(exports.len() >= 20, "found only {exports:?}");
    for (name, n) in &exports {
        match declared.get(name) {
            None => panic!("kvedge.h lacks {name} (exported by the Rust code)"),
            Some(d) => assert_eq!(d, n, "{name}: {d} parameters in kvedge.h, {n} in Rust"),
        }
    }
    for name in declared.keys() {
        assert!(
            exports.contains_key(name),
            "kvedge.h declares {name}, which the library does not export"
        );
    }
}

/// C type of a Rust field type, where the mapping is plain.
fn c_type(rust: &str) -> Option<&'static str> {
    Some(match rust {
        "u32" => "uint32_t",
        "i32" => "int32_t",
        "u64" => "uint64_t",
        "f32" => "float",
        "f64" => "double",
        "bool" => "bool",
        "usize" => "size_t",
        _ => return None,
    })
}

#[test]
fn structs_match_field_by_field() {
    let src = rust_sources();
    let h = header();
    let mut checked = 0;
    let mut from = 0;
    while let Some(i) = src[from..].find("#[repr(C)]") {
        let at = from + i;
        from = at + 1;
        // The doc line above names the C struct: /// `kvedge_model_params`.
        let doc = src[..at].lines().last().unwrap_or("");
        let c_name = doc
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("#[repr(C)] struct without its C name: {doc}"));
        let body_start = at + src[at..].find('{').unwrap() + 1;
        let body_end = body_start + src[body_start..].find('}').unwrap();
        let rust_fields: Vec<(String, String)> = src[body_start..body_end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .map(|l| {
                let (n, t) = l.split_once(':').unwrap();
                (
                    n.trim().to_string(),
                    t.trim().trim_end_matches(',').to_string(),
                )
            })
            .collect();
        let c_start = h
            .find(&format!("typedef struct {c_name} {{"))
            .unwrap_or_else(|| panic!("kvedge.h lacks struct {c_name}"));
        let c_body_start = c_start + h[c_start..].find('{').unwrap() + 1;
        let c_body_end = c_body_start + h[c_body_start..].find('}').unwrap();
        let c_fields: Vec<(String, String)> = h[c_body_start..c_body_end]
            .split(';')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (t, n) = f.rsplit_once([' ', '*']).unwrap();
                (n.trim().to_string(), t.trim().to_string())
            })
            .collect();
        let names = |v: &[(String, String)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&rust_fields),
            names(&c_fields),
            "{c_name}: field names or order differ (Rust, then C)"
        );
        for ((n, rt), (_, ct)) in rust_fields.iter().zip(&c_fields) {
            if let Some(want) = c_type(rt) {
                assert_eq!(ct, want, "{c_name}.{n}: Rust {rt}, C {ct}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 6, "checked only {checked} structs");
}

/// `NAME = value` pairs of the header's enums.
fn header_constants(h: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for part in h.split([',', '{', '}', ';']) {
        if let Some((name, value)) = part.split_once('=') {
            let name = name.trim();
            if name.starts_with("KVEDGE_") {
                out.insert(name.to_string(), value.trim().parse().unwrap());
            }
        }
    }
    out
}

#[test]
fn constants_and_status_codes_agree() {
    let src = rust_sources();
    let c = header_constants(&header());
    let mut rust = BTreeMap::new();
    for line in src.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub const KVEDGE_") {
            let (name, value) = rest.split_once(": i32 =").unwrap();
            let v: i64 = value.trim().trim_end_matches(';').parse().unwrap();
            rust.insert(format!("KVEDGE_{name}"), v);
        }
    }
    // Status codes: the names kvedge_status_name gives, against the header's enum.
    for code in -20..=0 {
        let p = kvedge_ffi::kvedge_status_name(code);
        let name = unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap();
        if name != "unknown" {
            rust.insert(name.to_string(), code as i64);
            assert_eq!(
                kvedge_ffi::Status::from_code(code).map(|s| s as i32),
                Some(code),
                "{name}"
            );
        }
    }
    assert_eq!(rust, c, "KVEDGE_* constants (Rust, then C)");
}
