//! `send_signal`'s JSON: `{task_id, name, payload?}` completes the steps of the task that
//! wait for signal `name` (`wait_for` in the template) with `payload` as their result.

use std::sync::Arc;

use super::validate::{field_error, Fields};
use crate::engine::Engine;
use crate::error::Result;

/// Longest signal name (as step names).
const SIGNAL_NAME_MAX: usize = 128;

pub async fn send_signal(engine: &Arc<Engine>, mut f: Fields) -> Result<String> {
    let task_id = f.req_id("task_id")?;
    let name = f.req_string("name", 1, SIGNAL_NAME_MAX)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(field_error(
            "name",
            format!("`{name}` is not a signal name: expected letters, digits, `_`, `-` or `.`"),
        ));
    }
    let payload = f.payload_or_null("payload")?;
    f.finish(&["task_id", "name", "payload"])?;
    let out = engine.send_signal(task_id, &name, payload).await?;
    super::ops::to_string(&out)
}
