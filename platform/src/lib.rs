//! kvedge-ffi: the C ABI of kvedge for desktop apps and Android/iOS (Kotlin through JNI,
//! Swift through a module map), built as `cdylib` and `staticlib`. It mirrors the Rust
//! API: load a model, make sessions with a KV configuration, tokenize, apply the chat
//! template, generate with a per-token callback, cancel, read stats. Every export is
//! declared in `include/kvedge.h`, whose comments are the reference; a test keeps the
//! header and the exports in step.
//!
//! Rules that hold for every function:
//! - Fallible functions return a status (`KVEDGE_OK` = 0, errors negative);
//!   `kvedge_last_error()` gives the message of this thread's last call.
//! - No panic crosses the boundary: a panic inside kvedge becomes `KVEDGE_ERR_PANIC`.
//!   (The libraries must be built with `panic = "unwind"`, Cargo's default.)
//! - NULL where a pointer is required, invalid UTF-8, a freed handle: an error status,
//!   never a crash (`handles`).
//! - Strings kvedge returns through `char **` are the caller's, freed with
//!   `kvedge_string_free`; `kvedge_version` and `kvedge_last_error` are not.
//! - Threads: a model handle may be used by any number of threads at once; a session by
//!   one call at a time (`session`), except cancel, stats and free.

mod handles;
pub mod model;
pub mod session;
mod status;

use std::ffi::c_char;

pub use status::Status;

/// The library version as a NUL-terminated UTF-8 string with static lifetime (the caller
/// must not free it). Safe to call from any thread.
#[no_mangle]
pub extern "C" fn kvedge_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last kvedge call on this thread that failed, "" when that call
/// succeeded. Owned by kvedge: valid until the next kvedge call on this thread.
#[no_mangle]
pub extern "C" fn kvedge_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// The name of a status code ("KVEDGE_ERR_NULL_POINTER"), static; "unknown" for others.
#[no_mangle]
pub extern "C" fn kvedge_status_name(status: i32) -> *const c_char {
    let name = Status::from_code(status).map_or("unknown\0", Status::c_name);
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    #[test]
    fn version_is_the_crate_version() {
        let v = unsafe { CStr::from_ptr(super::kvedge_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
