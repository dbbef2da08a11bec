//! Shared pieces of the `tasker` operator CLI and the `tasker-demo` binary: aligned
//! text tables and the small formatting helpers both print with.

pub mod format;
pub mod table;
