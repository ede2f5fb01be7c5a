//! Status codes, the thread-local error message, and the guard every export runs its body
//! in: a Rust panic is caught there and becomes `KVEDGE_ERR_PANIC` (unwinding across an
//! `extern "C"` boundary aborts the process), and every error's message is kept for
//! `kvedge_last_error`.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use kvedge_models::ModelError;
use kvedge_runtime::Error;

/// Result of every fallible export (`kvedge_status` in kvedge.h, returned as `int32_t`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = -1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = -2,
    /// An argument is out of range or inconsistent (the message says which).
    InvalidArgument = -3,
    /// A handle that was freed, or never came from kvedge.
    InvalidHandle = -4,
    /// The session is running a call on another thread.
    Busy = -5,
    /// The file is not a model kvedge can run (I/O, GGUF, architecture, tensors).
    Model = -6,
    /// No usable GPU adapter, or the GPU failed.
    Device = -7,
    /// The memory cap given at load does not hold what was asked for.
    OutOfMemory = -8,
    /// The caller's buffer is too small; the needed size was written.
    BufferTooSmall = -9,
    /// Any other runtime failure (tokenizer, template, sampling).
    Runtime = -10,
    /// A bug inside kvedge (a caught panic); the handle involved should be freed.
    Panic = -11,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::NullPointer,
        Status::InvalidUtf8,
        Status::InvalidArgument,
        Status::InvalidHandle,
        Status::Busy,
        Status::Model,
        Status::Device,
        Status::OutOfMemory,
        Status::BufferTooSmall,
        Status::Runtime,
        Status::Panic,
    ];

    pub fn from_code(code: i32) -> Option<Status> {
        Self::ALL.into_iter().find(|s| *s as i32 == code)
    }

    /// The name kvedge.h gives it, NUL-terminated.
    pub fn c_name(self) -> &'static str {
        match self {
            Status::Ok => "KVEDGE_OK\0",
            Status::NullPointer => "KVEDGE_ERR_NULL_POINTER\0",
            Status::InvalidUtf8 => "KVEDGE_ERR_INVALID_UTF8\0",
            Status::InvalidArgument => "KVEDGE_ERR_INVALID_ARGUMENT\0",
            Status::InvalidHandle => "KVEDGE_ERR_INVALID_HANDLE\0",
            Status::Busy => "KVEDGE_ERR_BUSY\0",
            Status::Model => "KVEDGE_ERR_MODEL\0",
            Status::Device => "KVEDGE_ERR_DEVICE\0",
            Status::OutOfMemory => "KVEDGE_ERR_OUT_OF_MEMORY\0",
            Status::BufferTooSmall => "KVEDGE_ERR_BUFFER_TOO_SMALL\0",
            Status::Runtime => "KVEDGE_ERR_RUNTIME\0",
            Status::Panic => "KVEDGE_ERR_PANIC\0",
        }
    }
}

/// An error on its way to C: its status and message.
#[derive(Debug)]
pub struct FfiError {
    pub status: Status,
    pub message: String,
}

pub type FfiResult<T> = Result<T, FfiError>;

impl FfiError {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArgument, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. }
            | Error::Gguf { .. }
            | Error::MissingTensor { .. }
            | Error::UnsupportedType { .. }
            | Error::Model(_) => Status::Model,
            Error::NoAdapter { .. }
            | Error::AdapterIndex { .. }
            | Error::RequestDevice { .. }
            | Error::Gpu { .. }
            | Error::TooLarge { .. } => Status::Device,
            Error::InvalidArgument(_) => Status::InvalidArgument,
            Error::ShapeMismatch { .. } | Error::Tokenizer(_) => Status::Runtime,
        };
        FfiError::new(status, e.to_string())
    }
}

impl From<ModelError> for FfiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Runtime(e) => e.into(),
            ModelError::OutOfMemory { .. } => FfiError::new(Status::OutOfMemory, e.to_string()),
            other => FfiError::new(Status::Model, other.to_string()),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // An interior NUL cannot be carried by a C string: cut there.
    let cut = message.split('\0').next().unwrap_or("");
    let c = CString::new(cut).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last call on this thread, "" when it succeeded.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Run an export's body: its status code, its message kept for `kvedge_last_error`, and
/// no panic across the boundary.
pub fn guard(body: impl FnOnce() -> FfiResult<()>) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        Err(FfiError::new(
            Status::Panic,
            format!(
                "internal error (please report it): {}",
                panic_message(&*payload)
            ),
        ))
    });
    match result {
        Ok(()) => {
            set_last_error("");
            Status::Ok as i32
        }
        Err(e) => {
            set_last_error(&e.message);
            e.status as i32
        }
    }
}

/// A string argument: NULL and invalid UTF-8 are errors naming the argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::new(
            Status::NullPointer,
            format!("{what} is NULL"),
        ));
    }
    let bytes = CStr::from_ptr(p).to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            Status::InvalidUtf8,
            format!(
                "{what} is not valid UTF-8 (byte {} of {})",
                e.valid_up_to(),
                bytes.len()
            ),
        )
    })
}

/// An output argument: NULL is an error naming it.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T` for the call.
pub unsafe fn out_arg<'a, T>(p: *mut T, what: &str) -> FfiResult<&'a mut T> {
    p.as_mut()
        .ok_or_else(|| FfiError::new(Status::NullPointer, format!("{what} is NULL")))
}

/// A string handed to C, freed with `kvedge_string_free`.
pub fn owned_c_string(s: &str) -> *mut c_char {
    let cut = s.split('\0').next().unwrap_or("");
    CString::new(cut).unwrap_or_default().into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let code = guard(|| panic!("boom {}", 7));
        assert_eq!(code, Status::Panic as i32);
        assert!(last_error().contains("boom 7"), "{}", last_error());
        // The next successful call clears the message.
        assert_eq!(guard(|| Ok(())), 0);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn errors_keep_their_status_and_message_per_thread() {
        let code = guard(|| Err(FfiError::invalid("kv_policy 9: expected ...")));
        assert_eq!(code, Status::InvalidArgument as i32);
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        assert_eq!(last_error(), "kv_policy 9: expected ...");
        let nul = guard(|| Err(FfiError::invalid("cut\0here")));
        assert_eq!(nul, Status::InvalidArgument as i32);
        assert_eq!(last_error(), "cut");
    }

    #[test]
    fn string_arguments_are_checked() {
        let e = unsafe { str_arg(std::ptr::null(), "prompt") }.unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (Status::NullPointer, "prompt is NULL")
        );
        let bad = b"ab\xffcd\0";
        let e = unsafe { str_arg(bad.as_ptr().cast(), "text") }.unwrap_err();
        assert_eq!(e.status, Status::InvalidUtf8);
        assert!(e.message.contains("byte 2 of 5"), "{}", e.message);
    }
}
