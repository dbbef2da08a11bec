//! In-process event subscriptions: a thread that follows the durable event log from a
//! cursor and hands each event to a callback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::Tasker;
use crate::error::Result;

/// A running subscription; dropping it (or [`Subscription::stop`]) ends it.
pub struct Subscription {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscription {
    pub(super) fn start<F>(
        tasker: Tasker,
        since: i64,
        types: Option<Vec<String>>,
        mut callback: F,
    ) -> Result<Subscription>
    where
        F: FnMut(&Value) + Send + 'static,
    {
        tasker.host()?;
        // The request every read makes is checked once here: a bad cursor or event name
        // is the caller's error now, not a read failing forever in the background.
        if !(0..=super::validate::MAX_ID).contains(&since) {
            return Err(super::validate::field_error(
                "since",
                format!(
                    "expected an integer between 0 and {}, got {since}",
                    super::validate::MAX_ID
                ),
            ));
        }
        if let Some(bad) = types
            .iter()
            .flatten()
            .find(|t| !crate::model::events::ALL.contains(&t.as_str()))
        {
            return Err(super::ops::unknown_event_type(bad));
        }
        // One read waits this long for new events before re-checking the stop flag.
        let wait_ms = tasker.config().claim_poll_ms;
        let page = tasker.config().event_page_max;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tasker-events".into())
            .spawn(move || {
                let mut cursor = since;
                while !flag.load(Ordering::Acquire) {
                    let req = json!({ "since": cursor, "limit": page, "wait_ms": wait_ms, "types": types }).to_string();
                    let page = match tasker.call("events", &req) {
                        Ok(p) => p,
                        Err(e) if e.code == crate::ErrorCode::Closed => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "event subscription read failed; retrying");
                            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
                            continue;
                        }
                    };
                    let Ok(page) = serde_json::from_str::<Value>(&page) else { continue };
                    if let Some(events) = page["events"].as_array() {
                        for e in events {
                            if flag.load(Ordering::Acquire) {
                                return;
                            }
                            callback(e);
                        }
                    }
                    if let Some(next) = page["next_cursor"].as_i64() {
                        cursor = next;
                    }
                }
            })
            .map_err(|e| crate::Error::internal(format!("cannot start the subscription thread: {e}")))?;
        Ok(Subscription {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops delivery and waits for the subscription thread to end.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.halt();
    }
}
