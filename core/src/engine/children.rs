//! Child tasks: a handler starts tasks with `create_task {parent: {step_id,
//! claim_token}}`, and its step may wait for them (`wait_for_children`): it moves from
//! `running` to `waiting` and completes with their results when the last one is final
//! (or fails with kind `child_failed`). The follow-up runs right after the calls that
//! can finalize a task, once this engine has seen a child task (a cheap flag: processes
//! that never use them pay nothing), and in the sweep of every process as the crash
//! backstop.

use std::sync::atomic::Ordering;

use super::{check_key, CreateTask, Engine};
use crate::error::{Error, Result};
use crate::store::children::{WaitStarted, WAIT_TIMEOUT_MS};
use crate::store::CreatedTask;

/// The step that starts a child task, by its claim.
#[derive(Debug, Clone, Copy)]
pub struct ParentLink {
    pub step_id: i64,
    pub claim_token: i64,
}

impl Engine {
    /// Creates (or finds again) the child task `req` of step `parent`: the step must be
    /// `running` under the given token (else `lease_lost`, nothing stored); the key is
    /// required and scoped by the step (the task's idempotency key is
    /// `child:<step_id>:<key>`), so a retried handler gets the same child back.
    pub(crate) async fn create_child(
        &self,
        mut req: CreateTask,
        parent: ParentLink,
    ) -> Result<CreatedTask> {
        let Some(key) = req.idempotency_key.take() else {
            return Err(crate::api::validate::field_error(
                "idempotency_key",
                "missing: a child task (`parent` given) needs a key, unique among the children of its step",
            ));
        };
        check_key(&key)?;
        self.store
            .held_step(parent.step_id, parent.claim_token)
            .await?;
        req.idempotency_key = Some(format!("child:{}:{key}", parent.step_id));
        self.children_seen.store(true, Ordering::Release);
        let created = self.create_keyed(req).await?;
        // Linked after the task exists: a crash in between leaves a task the step's
        // next attempt finds again by its key and links then.
        let linked = self
            .store
            .link_child(
                parent.step_id,
                parent.claim_token,
                created.task_id,
                &key,
                self.now_ms(),
            )
            .await?;
        if linked != created.task_id {
            return Err(Error::internal(format!(
                "key `{key}` of step {} links task {linked}, not {}",
                parent.step_id, created.task_id
            )));
        }
        Ok(created)
    }

    /// Moves a running step (held by `token`) to `waiting` until its child tasks are
    /// all final; it completes (or fails) at once when they already are. The deadline
    /// is 7 days (kind `children_timeout` after).
    pub async fn wait_for_children(&self, step_id: i64, token: i64) -> Result<WaitStarted> {
        self.check_open()?;
        let now = self.now_ms();
        let out = self
            .store
            .wait_for_children(step_id, token, now + WAIT_TIMEOUT_MS, now)
            .await?;
        self.children_seen.store(true, Ordering::Release);
        self.changed(false);
        if out.unfinished == 0 {
            self.advance_children().await?;
        }
        Ok(out)
    }

    /// After a call that may have finalized a task: finishes the steps waiting for
    /// children that are now all final, if this engine has seen child tasks (else the
    /// sweep does). The call itself has committed: a failure is logged, not returned.
    pub(crate) async fn after_children(&self) {
        if self.children_seen.load(Ordering::Acquire) {
            if let Err(e) = self.advance_children().await {
                tracing::warn!(error = %e, "could not finish steps waiting for child tasks; the sweep will");
            }
        }
    }

    /// Finishes every waiting step whose children are all final; returns how many.
    /// A finished step can finish its own task, and so its parent's wait: the loop goes
    /// on until nothing moves.
    pub(crate) async fn advance_children(&self) -> Result<u32> {
        let batch = self.config.sweep_batch;
        let mut total = 0;
        for _ in 0..1_000 {
            let n = self
                .store
                .advance_children(self.now_ms(), batch, self.config.max_payload_bytes)
                .await?;
            total += n;
            if n == 0 {
                break;
            }
            self.changed(true);
            // The finished steps' own children may be steps the engine runs.
            if self.waits_seen.load(Ordering::Acquire) {
                self.advance_waits().await?;
            }
        }
        Ok(total)
    }

    /// Cancels the unfinished child tasks of a cancelled task (and theirs, in turn).
    pub(crate) async fn cancel_children(&self, task_id: i64) -> Result<()> {
        for child in self.store.unfinished_children(task_id).await? {
            let why = Some(format!("its parent task {task_id} was cancelled"));
            Box::pin(self.cancel_task(child, why)).await?;
        }
        Ok(())
    }
}
