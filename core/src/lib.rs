//! Tasker's engine: templates, tasks and steps in a database, dependency resolution by
//! parent counters, claims with fenced leases, retries with backoff, recovery of crashed
//! work, durable events, and one handle + JSON API shared by every language.
//!
//! Where to look:
//! - [`model`]: templates, state machines, retry policies, event names (pure rules);
//! - [`store`]: the storage trait and the SQLite backend (every SQL statement);
//! - [`engine`]: operations over a store (validation, waiting, sweeping, notifications);
//! - [`api`]: handles, the JSON operations and their dispatch;
//! - [`worker`]: a Rust worker loop over the API;
//! - [`config`]: settings and their sources.

pub mod api;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod logs;
pub mod model;
pub mod store;
pub mod time;
pub mod worker;

pub use error::{Error, ErrorCode, Result};

/// The crate version, shared by every package of the workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
