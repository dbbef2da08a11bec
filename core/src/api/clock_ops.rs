//! The clock operations' JSON: `advance_clock` moves a manual clock, `next_ready_at`
//! says when the next step becomes claimable. Together they let a test helper run a
//! workflow with retries and delays to its end without waiting (see the bindings'
//! `testing` modules and `docs/testing.md`).

use std::sync::Arc;

use serde_json::json;

use super::validate::Fields;
use crate::clock::MAX_ADVANCE_MS;
use crate::engine::{Engine, MAX_CLAIM_HANDLERS};
use crate::error::Result;
use crate::time::rfc3339;

/// Longest handler name (as in templates).
const HANDLER_MAX: usize = 256;

/// Runs a clock operation on a request the validator has read (`f`).
pub async fn dispatch(engine: &Arc<Engine>, op: &str, mut f: Fields) -> Result<String> {
    let response = match op {
        "advance_clock" => {
            let ms = f.int("ms", 0, MAX_ADVANCE_MS)?;
            f.finish(&["ms"])?;
            let Some(ms) = ms else {
                return Err(super::validate::field_error(
                    "ms",
                    format!("missing (expected the milliseconds to move the clock by, 0 to {MAX_ADVANCE_MS})"),
                ));
            };
            let now = engine.advance_clock(ms)?;
            // What the move made due happens before the answer: delayed tasks come
            // due, task timeouts fire, schedule ticks create their tasks.
            let scheduled = engine.run_due().await?;
            json!({ "now": rfc3339(now), "now_ms": now, "scheduled": scheduled })
        }
        "next_ready_at" => {
            let handlers = f.strings("handlers", (1, MAX_CLAIM_HANDLERS), (1, HANDLER_MAX))?;
            f.finish(&["handlers"])?;
            let at = engine.next_ready_at(handlers).await?;
            let now = engine.now_ms();
            json!({
                "next_ready_at": at.map(rfc3339),
                "in_ms": at.map(|a| (a - now).max(0)),
                "now": rfc3339(now),
                "clock": engine.clock().name(),
            })
        }
        other => {
            return Err(crate::error::Error::internal(format!(
                "operation `{other}` is not a clock operation"
            )))
        }
    };
    super::ops::to_string(&response)
}
