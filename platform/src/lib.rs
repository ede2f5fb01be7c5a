//! kvedge-ffi: the C ABI of kvedge for desktop apps and Android/iOS (through JNI and a
//! Swift module map), built as `cdylib` and `staticlib`. This version exports only the
//! version query; the model, session and generation API arrives with the platform issue.
//! Every export is declared in `include/kvedge.h`; a test keeps the two in step.

use std::ffi::c_char;

/// The library version as a NUL-terminated UTF-8 string with static lifetime (the caller
/// must not free it). Safe to call from any thread.
#[no_mangle]
pub extern "C" fn kvedge_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    #[test]
    fn version_is_the_crate_version() {
        let v = unsafe { CStr::from_ptr(super::kvedge_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn header_declares_every_export() {
        let src = include_str!("lib.rs");
        let header = include_str!("../include/kvedge.h");
        let exports: Vec<&str> = src
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub extern \"C\" fn "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(!exports.is_empty());
        for name in exports {
            // A declaration: the name directly after the return type (`*` or a space).
            let declared = [" ", "*"]
                .iter()
                .any(|pre| header.contains(&format!("{pre}{name}(")));
            assert!(declared, "kvedge.h lacks {name}");
        }
    }
}
