//! The worker runtime, written once for every language (`docs/workers.md`).
//!
//! A host opens a **session** (`worker_open`), asks it for work (`worker_next`), runs
//! the handlers in its own language and reports the outcomes (`worker_report`), then
//! closes it (`worker_close`). Everything else is here:
//! - [`sessions`]: the sessions of one engine and what each operation does;
//! - [`session`]: one session's held steps, stop signals and counters;
//! - [`claimer`]: one claimer per process and database, shared by every session;
//! - [`keeper`]: lease renewal and timeouts from the engine's own runtime;
//! - [`failure`]: the failure documents core writes and the cut to the payload limit;
//! - [`driver`]: the Rust [`Worker`], itself a driver of the sessions.

mod claimer;
pub mod driver;
mod failure;
mod keeper;
pub mod session;
pub mod sessions;

pub use driver::{Handler, HandlerError, RunStats, StepInput, Worker};
pub use keeper::run as keep_leases;
pub use session::{Stop, StopReason};
pub use sessions::Sessions;
