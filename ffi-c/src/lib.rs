//! `libtasker`: the C ABI over `tasker_core::api`.
//!
//! Every export checks its pointer arguments and the UTF-8 of its strings, catches
//! panics, and returns a status code (`TASKER_OK` or one `TASKER_ERR_*` per error
//! code). Outputs are written only on success; `out_error` only on failure. The
//! header `include/tasker.h` is generated from this file by cbindgen (see
//! `tests/header.rs` and `scripts/gen-header`), so the doc comments here are the
//! C documentation.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tasker_core::api::{handles, Tasker};
use tasker_core::{Error, ErrorCode};

/// Success. Outputs were written; `*out_error` was not touched.
pub const TASKER_OK: i32 = 0;
/// The request (or config) is not syntactically valid JSON. Code `invalid_json`.
pub const TASKER_ERR_INVALID_JSON: i32 = 1;
/// A string argument is not valid UTF-8. Code `invalid_utf8`.
pub const TASKER_ERR_INVALID_UTF8: i32 = 2;
/// A pointer argument is NULL, or the request is JSON of the wrong shape (a field
/// missing, mistyped or out of range). Code `invalid_argument`.
pub const TASKER_ERR_INVALID_ARGUMENT: i32 = 3;
/// The operation name is not one the engine knows. Code `unknown_operation`.
pub const TASKER_ERR_UNKNOWN_OPERATION: i32 = 4;
/// A template was rejected. Code `invalid_template`.
pub const TASKER_ERR_INVALID_TEMPLATE: i32 = 5;
/// A task context does not satisfy the template's input schema. Code `schema_violation`.
pub const TASKER_ERR_SCHEMA_VIOLATION: i32 = 6;
/// The task, step, template or handle does not exist. Code `not_found`.
pub const TASKER_ERR_NOT_FOUND: i32 = 7;
/// The request conflicts with stored data. Code `conflict`.
pub const TASKER_ERR_CONFLICT: i32 = 8;
/// The claim token is stale: the step is no longer held by this claim. Code `lease_lost`.
pub const TASKER_ERR_LEASE_LOST: i32 = 9;
/// The operation is not allowed in the current state. Code `invalid_state`.
pub const TASKER_ERR_INVALID_STATE: i32 = 10;
/// A payload exceeds the configured size limit. Code `too_large`.
pub const TASKER_ERR_TOO_LARGE: i32 = 11;
/// The database could not be reached in time. Code `unavailable`.
pub const TASKER_ERR_UNAVAILABLE: i32 = 12;
/// The database reported an error. Code `database`.
pub const TASKER_ERR_DATABASE: i32 = 13;
/// The handle was closed. Code `closed`.
pub const TASKER_ERR_CLOSED: i32 = 14;
/// A bug in Tasker (including a caught panic): please report it. Code `internal`.
pub const TASKER_ERR_INTERNAL: i32 = 15;

/// The version of the C ABI described by this header. Bumped on any incompatible change.
pub const TASKER_ABI_VERSION: u32 = 1;

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("version contains a NUL byte"),
    };

/// The status code for an error code: its 1-based position in `ErrorCode::ALL`.
pub fn status_of(code: ErrorCode) -> i32 {
    ErrorCode::ALL
        .iter()
        .position(|c| *c == code)
        .map_or(TASKER_ERR_INTERNAL, |i| i as i32 + 1)
}

/// Hands a Rust string to C. An interior NUL (impossible for JSON, which escapes it)
/// is reported as an internal error rather than truncating silently.
fn to_c(s: String, what: &str) -> Result<*mut c_char, Error> {
    CString::new(s).map(CString::into_raw).map_err(|e| {
        Error::internal(format!(
            "{what} contains a NUL byte at offset {}",
            e.nul_position()
        ))
    })
}

/// Reads a required C string argument.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for the call.
unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::invalid_argument(format!("`{name}` is NULL")));
    }
    opt_str(p, name).map(|s| s.unwrap_or(""))
}

/// Reads an optional C string argument (NULL gives `None`).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for the call.
unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller guarantees `p` is a valid NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes.to_str().map(Some).map_err(|e| {
        Error::new(
            ErrorCode::InvalidUtf8,
            format!(
                "`{name}` is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

fn null_out(name: &str) -> Error {
    Error::invalid_argument(format!("`{name}` is NULL (an output pointer is required)"))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

/// Runs `body` with panics caught. On failure writes the error JSON to `out_error`
/// (when non-NULL) and returns its status; on success returns `TASKER_OK`.
///
/// # Safety
/// `out_error` must be NULL or valid for one pointer write.
unsafe fn guard(out_error: *mut *mut c_char, body: impl FnOnce() -> Result<(), Error>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        Err(Error::internal(format!(
            "panic inside libtasker: {}",
            panic_message(payload.as_ref())
        )))
    });
    match outcome {
        Ok(()) => TASKER_OK,
        Err(e) => {
            let status = status_of(e.code);
            if !out_error.is_null() {
                let json = catch_unwind(AssertUnwindSafe(|| e.to_json())).unwrap_or_else(|_| {
                    r#"{"code":"internal","message":"error could not be serialized"}"#.to_owned()
                });
                let raw = to_c(json, "error").unwrap_or_else(|_| {
                    CString::from(
                        c"{\"code\":\"internal\",\"message\":\"error contains a NUL byte\"}",
                    )
                    .into_raw()
                });
                // SAFETY: non-NULL and, by the caller's contract, writable.
                unsafe { *out_error = raw };
            }
            status
        }
    }
}

/// Opens a Tasker handle.
///
/// `config_json` is a JSON object of settings laid over `tasker.yaml` and the
/// `TASKER_*` environment variables (for example `{"database_url":"sqlite://app.db"}`);
/// NULL, `""` or `"null"` means the defaults. Opening the same database twice in one
/// process shares one engine, pool and runtime; the last close releases them.
///
/// On success returns `TASKER_OK` and writes the new handle (never 0) to
/// `*out_handle`. On failure returns a `TASKER_ERR_*` status, leaves `*out_handle`
/// untouched and, when `out_error` is not NULL, writes to `*out_error` a JSON error
/// `{"code","message","details"}` that the caller must free with `tasker_free_string`.
///
/// Thread-safety: may be called from any thread; blocks while the database opens.
///
/// # Safety
/// `config_json` must be NULL or a NUL-terminated string; `out_handle` must be valid
/// for one `uint64_t` write; `out_error` must be NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn tasker_open(
    config_json: *const c_char,
    out_handle: *mut u64,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: forwarded caller contract.
    unsafe {
        guard(out_error, || {
            if out_handle.is_null() {
                return Err(null_out("out_handle"));
            }
            let config = opt_str(config_json, "config_json")?.unwrap_or("");
            let tasker = Tasker::open(config)?;
            let id = handles::insert(tasker);
            *out_handle = id;
            Ok(())
        })
    }
}

/// Runs one operation on a handle and returns its JSON response.
///
/// `op` is an operation name (`"create_task"`, `"claim"`, ...; see `docs/api.md`) and
/// `request_json` its JSON request; NULL means `"{}"`.
///
/// On success returns `TASKER_OK` and writes to `*out_response` a NUL-terminated JSON
/// string owned by the caller (free it with `tasker_free_string`); `*out_error` is not
/// touched. On failure returns a `TASKER_ERR_*` status, leaves `*out_response`
/// untouched and, when `out_error` is not NULL, writes an error JSON
/// `{"code","message","details"}` owned by the caller (free it with
/// `tasker_free_string`). A failed call changes nothing in the database.
///
/// A closed handle gives `TASKER_ERR_CLOSED`; a number never returned by
/// `tasker_open` gives `TASKER_ERR_NOT_FOUND`. Neither ever crashes.
///
/// Thread-safety: handles are thread-safe; any thread may call, concurrently, on the
/// same or different handles. The call blocks the calling thread until the operation
/// finishes (long polls such as `claim` with `wait_ms` block for up to that long).
///
/// # Safety
/// `op` and `request_json` must be NULL or NUL-terminated strings; `out_response` must
/// be valid for one pointer write; `out_error` must be NULL or valid for one pointer
/// write.
#[no_mangle]
pub unsafe extern "C" fn tasker_call(
    handle: u64,
    op: *const c_char,
    request_json: *const c_char,
    out_response: *mut *mut c_char,
    out_error: *mut *mut c_char,
) -> i32 {
    // SAFETY: forwarded caller contract.
    unsafe {
        guard(out_error, || {
            if out_response.is_null() {
                return Err(null_out("out_response"));
            }
            let op = arg_str(op, "op")?;
            let request = opt_str(request_json, "request_json")?.unwrap_or("{}");
            let tasker = handles::get(handle)?;
            let response = tasker.call(op, request)?;
            let raw = to_c(response, "response")?;
            *out_response = raw;
            Ok(())
        })
    }
}

/// Frees a string returned by libtasker (`*out_response` or `*out_error`).
///
/// NULL is accepted and ignored. Each string must be freed exactly once, and only
/// with this function (never with `free`).
///
/// Thread-safety: may be called from any thread.
///
/// # Safety
/// `s` must be NULL or a pointer written by `tasker_open`, `tasker_call` or
/// `tasker_close` and not freed before.
#[no_mangle]
pub unsafe extern "C" fn tasker_free_string(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: by contract `s` came from `CString::into_raw` in this library.
        drop(unsafe { CString::from_raw(s) });
    }));
}

/// Closes a handle. The engine, pool and runtime are released when the last handle on
/// the same database in this process closes. Calls already running on the handle
/// finish; later calls give `TASKER_ERR_CLOSED`.
///
/// Returns `TASKER_OK`, or `TASKER_ERR_CLOSED` when the handle was already closed,
/// or `TASKER_ERR_NOT_FOUND` when it was never issued; on failure an error JSON is
/// written to `*out_error` when it is not NULL (free it with `tasker_free_string`).
///
/// Thread-safety: may be called from any thread.
///
/// # Safety
/// `out_error` must be NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn tasker_close(handle: u64, out_error: *mut *mut c_char) -> i32 {
    // SAFETY: forwarded caller contract.
    unsafe { guard(out_error, || handles::remove(handle)) }
}

/// The library version (for example `"0.1.0"`): a static string, never freed.
#[no_mangle]
pub extern "C" fn tasker_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The C ABI version this library implements (`TASKER_ABI_VERSION`, currently 1).
/// Compare it with the header's `TASKER_ABI_VERSION` to detect a mismatched library.
#[no_mangle]
pub extern "C" fn tasker_abi_version() -> u32 {
    TASKER_ABI_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    #[test]
    fn status_codes_follow_error_code_order() {
        let consts = [
            TASKER_ERR_INVALID_JSON,
            TASKER_ERR_INVALID_UTF8,
            TASKER_ERR_INVALID_ARGUMENT,
            TASKER_ERR_UNKNOWN_OPERATION,
            TASKER_ERR_INVALID_TEMPLATE,
            TASKER_ERR_SCHEMA_VIOLATION,
            TASKER_ERR_NOT_FOUND,
            TASKER_ERR_CONFLICT,
            TASKER_ERR_LEASE_LOST,
            TASKER_ERR_INVALID_STATE,
            TASKER_ERR_TOO_LARGE,
            TASKER_ERR_UNAVAILABLE,
            TASKER_ERR_DATABASE,
            TASKER_ERR_CLOSED,
            TASKER_ERR_INTERNAL,
        ];
        assert_eq!(consts.len(), ErrorCode::ALL.len());
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(status_of(*code), consts[i], "{code}");
            assert_eq!(consts[i], i as i32 + 1);
        }
    }

    #[test]
    fn version_matches_core() {
        // SAFETY: static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(tasker_version()) };
        assert_eq!(v.to_str().unwrap(), tasker_core::VERSION);
        assert_eq!(tasker_abi_version(), 1);
    }

    #[test]
    fn panics_become_internal_errors() {
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: `err` is a valid out pointer.
        let status = unsafe { guard(&mut err, || panic!("boom")) };
        assert_eq!(status, TASKER_ERR_INTERNAL);
        // SAFETY: written by `guard`.
        let json = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_owned();
        assert!(
            json.contains("\"internal\"") && json.contains("boom"),
            "{json}"
        );
        // SAFETY: allocated by this library.
        unsafe { tasker_free_string(err) };
    }

    #[test]
    fn interior_nul_is_an_internal_error() {
        let e = to_c("a\0b".into(), "response").unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
    }

    #[test]
    fn bogus_handles_are_errors() {
        let mut out: *mut c_char = ptr::null_mut();
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: valid pointers.
        let status =
            unsafe { tasker_call(u64::MAX, c"ping".as_ptr(), ptr::null(), &mut out, &mut err) };
        assert_eq!(status, TASKER_ERR_NOT_FOUND);
        assert!(out.is_null());
        // SAFETY: allocated by this library.
        unsafe { tasker_free_string(err) };
    }
}
