//! Signals: `send_signal`, and moving steps that wait for one (`wait_for`, handler
//! `tasker.signal`) from `ready` to `waiting`; and, by the same path, expanding and
//! collecting fan-out steps (`fan_out`, handler `tasker.fan_out`). The stores' completion paths make such a
//! step `ready` like any other; the engine takes it from there right after the call
//! that released it (when this engine has seen a template with a wait step), and the
//! sweep does it in every process as the backstop (a crash between the two, or a
//! process that never loaded such a template).

use std::sync::atomic::Ordering;

use serde_json::value::RawValue;

use super::Engine;
use crate::error::Result;
use crate::store::signals::SignalSent;

impl Engine {
    /// Sends signal `name` to a task: every step waiting for it completes with
    /// `payload` (JSON; `null` when none) as its result and its children proceed. A step
    /// that is not waiting yet takes it when it gets there. See [`crate::store::Store::send_signal`]
    /// for the errors.
    pub async fn send_signal(
        &self,
        task_id: i64,
        name: &str,
        payload: Option<Box<RawValue>>,
    ) -> Result<SignalSent> {
        self.check_open()?;
        crate::api::validate::check_str("name", name, 1, 128)?;
        let payload = payload
            .map(|p| p.get().to_owned())
            .unwrap_or_else(|| "null".into());
        self.check_payload("payload", payload.len())?;
        crate::api::validate::check_payload(
            "payload",
            &RawValue::from_string(payload.clone()).map_err(|e| {
                crate::api::validate::field_error("payload", format!("not JSON: {e}"))
            })?,
            self.config.max_json_depth,
        )?;
        let out = self
            .store
            .send_signal(task_id, name, &payload, self.now_ms())
            .await?;
        self.changed(true);
        self.waits_seen.store(true, Ordering::Release);
        self.after_release().await;
        Ok(out)
    }

    /// After a call that may have made steps ready: moves ready wait steps to
    /// `waiting`, if this engine has seen a template with one (else the sweep does).
    /// The call itself has committed: a failure here is logged, not returned, and the
    /// sweep moves the steps on later.
    pub(crate) async fn after_release(&self) {
        if self.waits_seen.load(Ordering::Acquire) {
            if let Err(e) = self.advance_waits().await {
                tracing::warn!(error = %e, "could not move ready wait steps to waiting; the sweep will");
            }
        }
        // The same calls can finish a child task, and so a parent's wait.
        self.after_children().await;
    }

    /// Moves every ready wait step to `waiting` (or completes it with a signal sent
    /// earlier); returns how many it moved.
    pub(crate) async fn advance_waits(&self) -> Result<u32> {
        let batch = self.config.sweep_batch;
        let mut total = 0;
        // Each pass can make more such steps ready (a signalled or collected step's
        // children); a DAG ends, and the bound keeps a pathological one from spinning.
        for _ in 0..1_000 {
            let waits = self.store.begin_waits(self.now_ms(), batch).await?;
            let fans = self
                .store
                .advance_fan_outs(self.now_ms(), batch, self.config.max_steps_per_task as i64)
                .await?;
            total += waits + fans;
            if waits == 0 && fans == 0 {
                break;
            }
        }
        if total > 0 {
            self.changed(true);
        }
        Ok(total)
    }

    /// Fails the waits whose deadline passed; returns how many.
    pub(crate) async fn expire_waits(&self) -> Result<u32> {
        let batch = self.config.sweep_batch;
        let mut total = 0;
        loop {
            let n = self.store.expire_waits(self.now_ms(), batch).await?;
            total += n;
            if n < batch {
                break;
            }
        }
        Ok(total)
    }
}
