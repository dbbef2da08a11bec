//! `index.node`: the native half of the Node.js package `tasker`. It links
//! `tasker-core` directly (not the C ABI). Every engine call returns a Promise and runs
//! off the JavaScript thread, so the event loop never blocks: the libuv pool runs the
//! blocking `Tasker::call` for quick operations, and operations that may wait
//! (`worker_next`, `events` with `wait_ms`) are awaited on Tasker's own runtime
//! (`Tasker::call_async`) so a long wait holds no pool thread. `ping`, which core
//! answers without touching the database, runs on the calling thread (`Handle.ping`). Requests and responses
//! cross as JSON text; the JavaScript half (`lib/`) parses them, adds the documented
//! API, the error classes and the worker.

pub mod convert;
pub mod errors;
pub mod handle;
pub mod worker;

use napi_derive::napi;

/// The version of tasker-core this addon was built with.
#[napi]
pub fn version() -> &'static str {
    tasker_core::VERSION
}
