//! The data model: templates, the step and task state machines, retry policies and the
//! names of lifecycle events. Pure code: no I/O, so every rule here is tested as a table.

pub mod events;
pub mod fan_out;
pub mod limits;
pub mod retry;
pub mod schedule;
pub mod state;
pub mod suggest;
pub mod template;
pub mod template_diff;
