//! `tasker/tasker_native`: the native half of the Ruby gem `tasker`. It links
//! `tasker-core` directly (not the C ABI) and keeps the per-call path lean: requests
//! and responses convert between Ruby objects and JSON text in Rust, and the GVL is
//! released during every engine call. The Ruby half (`lib/tasker`) adds the documented
//! API, the exception classes and the worker.

use magnus::{function, method, prelude::*, Error, Ruby};

mod convert;
mod errors;
mod handle;
mod worker;

use handle::{CancelToken, Handle};

/// The version of tasker-core this extension was built with.
fn version() -> &'static str {
    tasker_core::VERSION
}

#[magnus::init(name = "tasker_native")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    // The engine's log lines are kept for the gem to pass on to Tasker.logger.
    tasker_core::logs::capture();
    let tasker = ruby.define_module("Tasker")?;
    let native = tasker.define_module("Native")?;
    native.define_singleton_method("version", function!(version, 0))?;
    native.define_singleton_method("error_codes", function!(errors::codes, 0))?;
    native.define_singleton_method("to_json", function!(handle::to_json, 2))?;
    native.define_singleton_method("from_json", function!(handle::from_json, 1))?;
    native.define_singleton_method("drain_logs", function!(worker::drain_logs, 1))?;

    let h = native.define_class("Handle", ruby.class_object())?;
    h.undef_default_alloc_func();
    h.define_singleton_method("open", function!(Handle::open, 1))?;
    h.define_method("call", method!(Handle::call, 2))?;
    h.define_method("call_obj", method!(Handle::call_obj, 2))?;
    h.define_method("call_obj_wait", method!(Handle::call_obj_wait, 3))?;
    h.define_method("worker_next", method!(Handle::worker_next, 4))?;
    h.define_method("worker_report", method!(Handle::worker_report, 3))?;
    h.define_method("close", method!(Handle::close, 0))?;
    h.define_method("closed?", method!(Handle::is_closed, 0))?;
    h.define_method("lease_ms", method!(Handle::lease_ms, 0))?;
    h.define_method("poll_ms", method!(Handle::poll_ms, 0))?;

    let c = native.define_class("Cancel", ruby.class_object())?;
    c.define_singleton_method("new", function!(CancelToken::new, 0))?;
    c.define_method("cancel", method!(CancelToken::cancel, 0))?;
    c.define_method("cancelled?", method!(CancelToken::is_cancelled, 0))?;
    Ok(())
}
