//! The hot path on PostgreSQL: creating a task, claiming, and completing (optionally with
//! the next claim) are each one call of a function from
//! `migrations/postgres/0004_hot_path.sql`, which runs the set-based statements and writes
//! the transitions inside the server. Outside an explicit transaction such a call is one
//! round trip, commit included (see `PgStore::autocommit` for when that is safe).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use super::claims::not_held;
use super::Ctx;
use crate::error::{Error, Result};
use crate::model::template::Template;
use crate::store::*;

/// The columns of `tasker_hot_row`, in the order [`decode`] reads them.
const HOT_COLUMNS: &str = "kind, id, task_id, name, handler, attempts, retry_base, max_attempts, \
     lease_expires_at, timeout_ms, config, context, parent_names, parent_results, state";

/// `kind` of a hot row: a claimed step, the claim's next `ready_at`, a completion that
/// was not recorded.
const CLAIMED: i32 = 1;
const NEXT_READY: i32 = 2;
const NOT_RECORDED: i32 = 3;

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| Error::internal(format!("stored JSON is invalid: {e}")))
}

/// The step and edge arrays of one or more tasks' steps, as the creation functions
/// take them: every task's steps one task after the other, in template order.
#[derive(Default)]
struct StepArrays<'a> {
    /// The 1-based position of each step's task in the batch.
    task: Vec<i32>,
    names: Vec<&'a str>,
    handlers: Vec<&'a str>,
    pending: Vec<i64>,
    max_attempts: Vec<i64>,
    backoff: Vec<&'a str>,
    base_ms: Vec<i64>,
    max_ms: Vec<i64>,
    jitter: Vec<f64>,
    timeout_ms: Vec<i64>,
    priority: Vec<i64>,
    config: Vec<Option<String>>,
    /// Edges as 1-based positions in the step arrays.
    parents: Vec<i32>,
    children: Vec<i32>,
}

impl<'a> StepArrays<'a> {
    /// Appends the steps of the task at 1-based batch position `task`.
    fn push(&mut self, task: i32, t: &'a Template, task_priority: i32) {
        let base = self.names.len() as i32;
        let position: HashMap<&str, i32> = t
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), base + i as i32 + 1))
            .collect();
        for (i, s) in t.steps.iter().enumerate() {
            self.task.push(task);
            self.names.push(s.name.as_str());
            self.handlers.push(s.handler.as_str());
            self.pending.push(s.depends_on.len() as i64);
            self.max_attempts.push(i64::from(s.retry.max_attempts));
            self.backoff.push(s.retry.backoff.as_str());
            self.base_ms.push(s.retry.base_ms as i64);
            self.max_ms.push(s.retry.max_ms as i64);
            self.jitter.push(s.retry.jitter);
            self.timeout_ms
                .push(s.timeout_s.saturating_mul(1000) as i64);
            self.priority
                .push(i64::from(s.priority) + i64::from(task_priority));
            self.config.push(s.config.as_ref().map(Value::to_string));
            for d in &s.depends_on {
                self.parents.push(position[d.as_str()]);
                self.children.push(base + i as i32 + 1);
            }
        }
    }
}

/// Creates task `task_id` (reserved by the caller), its steps, edges and transitions;
/// `Some(task_id)` also when a repeat of this call finds that the first one committed;
/// `None` when a task with the same idempotency key already exists (the caller reads
/// that one).
pub async fn create(
    conn: &mut PgConnection,
    ctx: &Ctx,
    task_id: i64,
    task: &NewTask,
) -> Result<Option<i64>> {
    let t = &task.template;
    let mut s = StepArrays::default();
    s.push(1, t, task.priority);
    let id: Option<i64> = sqlx::query(
        "SELECT tasker_create_task($1, $2, $3, $4, $5, $6, $7, $8, $24, $24, $25, $26, $9, $10,
                                   $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
    )
    .bind(task_id)
    .bind(&t.namespace)
    .bind(&t.name)
    .bind(&t.version)
    .bind(&task.context)
    .bind(&task.idempotency_key)
    .bind(i64::from(task.priority))
    .bind(task.now)
    .bind(s.names)
    .bind(s.handlers)
    .bind(s.pending)
    .bind(s.max_attempts)
    .bind(s.backoff)
    .bind(s.base_ms)
    .bind(s.max_ms)
    .bind(s.jitter)
    .bind(s.timeout_ms)
    .bind(s.priority)
    .bind(s.config)
    .bind(s.parents)
    .bind(s.children)
    .bind(ctx.lock_key)
    // No NOTIFY inside: the store sends it after the commit (`PgStore::wake_others`).
    .bind(None::<&str>)
    // Migration 0009: the delay (run_at and due_at) and the timeout.
    .bind(task.run_at)
    .bind(task.timeout_ms)
    .bind(task.deadline_at())
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(id)
}

/// Creates `tasks`, task `i` with the reserved id `ids[i]`, in one call of
/// `tasker_create_tasks` (migration 0008): one answer per task, in order, as
/// [`create`] answers (a committed repeat of this call finds its own tasks; a taken
/// idempotency key returns the task that has it).
pub async fn create_many(
    conn: &mut PgConnection,
    ctx: &Ctx,
    ids: &[i64],
    tasks: &[NewTask],
) -> Result<Vec<CreatedTask>> {
    let n = tasks.len();
    let mut s = StepArrays::default();
    let (mut namespaces, mut names, mut versions, mut contexts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut keys, mut priorities, mut totals, mut actives) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut run_ats, mut timeouts, mut deadlines) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, task) in tasks.iter().enumerate() {
        let t = &task.template;
        namespaces.push(t.namespace.as_str());
        names.push(t.name.as_str());
        versions.push(t.version.as_str());
        contexts.push(task.context.as_str());
        keys.push(task.idempotency_key.clone());
        priorities.push(i64::from(task.priority));
        totals.push(t.steps.len() as i64);
        actives.push(t.steps.iter().filter(|s| s.depends_on.is_empty()).count() as i64);
        s.push(i as i32 + 1, t, task.priority);
        run_ats.push(task.run_at);
        timeouts.push(task.timeout_ms);
        deadlines.push(task.deadline_at());
    }
    let now = tasks.first().map_or(0, |t| t.now);
    let rows = sqlx::query(
        "SELECT r_n, r_id, r_created, r_state FROM tasker_create_tasks($1, $2, $3, $4, $5, $6, $7,
             $8, $9, $10, $27, $27, $28, $29, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
             $22, $23, $24, $25, $26)",
    )
    .bind(ids)
    .bind(namespaces)
    .bind(names)
    .bind(versions)
    .bind(contexts)
    .bind(keys)
    .bind(priorities)
    .bind(totals)
    .bind(actives)
    .bind(now)
    .bind(s.task)
    .bind(s.names)
    .bind(s.handlers)
    .bind(s.pending)
    .bind(s.max_attempts)
    .bind(s.backoff)
    .bind(s.base_ms)
    .bind(s.max_ms)
    .bind(s.jitter)
    .bind(s.timeout_ms)
    .bind(s.priority)
    .bind(s.config)
    .bind(s.parents)
    .bind(s.children)
    .bind(ctx.lock_key)
    // No NOTIFY inside: the store sends it after the commit (`PgStore::wake_others`).
    .bind(None::<&str>)
    // Migration 0009: the delays (run_at and due_at) and the timeouts.
    .bind(run_ats)
    .bind(timeouts)
    .bind(deadlines)
    .fetch_all(&mut *conn)
    .await
    .map_err(repeat_on_taken_id)?;
    if rows.len() != n {
        return Err(Error::internal(format!(
            "tasker_create_tasks answered {} of {n} tasks",
            rows.len()
        )));
    }
    rows.into_iter()
        .map(|r| {
            Ok(CreatedTask {
                task_id: r.try_get(1)?,
                created: r.try_get(2)?,
                state: r.try_get(3)?,
            })
        })
        .collect()
}

/// Tasks without an idempotency key are inserted without `ON CONFLICT` (migration 0014):
/// the only call that can hold their ids is a repeat of this one after a lost connection,
/// still running on the server. Its commit makes this call fail with a unique violation
/// on the ids; that is reported as the serialization failure the engine repeats a call
/// after, and the repeat finds those tasks (as `tasker_create_tasks` itself does when a
/// key is taken meanwhile).
fn repeat_on_taken_id(e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(d) = &e {
        if d.code().as_deref() == Some("23505") && d.constraint() == Some("tasker_tasks_pkey") {
            return Error::new(
                crate::error::ErrorCode::Database,
                format!("a task id of the batch was taken meanwhile: {e}"),
            )
            .with_details(serde_json::json!({ "sqlstate": "40001" }));
        }
    }
    Error::from(e)
}

/// A fresh claim token: below 2^53, so it survives every JSON reader as a number.
fn token() -> i64 {
    fastrand::i64(1..(1i64 << 53))
}

/// A claim on its own: the completion function with nothing to complete.
pub async fn claim(conn: &mut PgConnection, ctx: &Ctx, p: &ClaimParams) -> Result<ClaimBatch> {
    Ok(complete(conn, ctx, &[], Some(p), p.now).await?.1)
}

/// Records `items` (each by its claim token) and, with `claim`, claims the next batch in
/// the same transaction. One outcome per item, in order.
pub async fn complete(
    conn: &mut PgConnection,
    ctx: &Ctx,
    items: &[Completion],
    claim: Option<&ClaimParams>,
    now: i64,
) -> Result<(Vec<ItemOutcome>, ClaimBatch)> {
    // A step reported twice counts once, by its first report.
    let mut first: HashSet<i64> = HashSet::with_capacity(items.len());
    let (mut ids, mut tokens, mut results) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        if first.insert(item.step_id) {
            ids.push(item.step_id);
            tokens.push(item.claim_token);
            results.push(item.result.get());
        }
    }
    let token = token();
    let (handlers, limit, worker, lease_ms): (&[String], i64, &str, i64) = match claim {
        Some(p) => (
            &p.handlers,
            i64::from(p.limit),
            &p.worker,
            p.lease_ms as i64,
        ),
        None => (&[], 0, "", 0),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HOT_COLUMNS} FROM tasker_complete_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )))
    .bind(ids)
    .bind(tokens)
    .bind(results)
    .bind(now)
    .bind(handlers)
    .bind(limit)
    .bind(token)
    .bind(worker)
    .bind(lease_ms)
    .bind(ctx.lock_key)
    .bind(&ctx.channel)
    .fetch_all(&mut *conn)
    .await?;
    let (batch, missed) = decode(rows, token)?;
    let mut reported: HashSet<i64> = HashSet::with_capacity(items.len());
    let mut missed: HashMap<i64, Option<String>> = missed.into_iter().collect();
    let timed_out = task_timed_out(conn, &missed).await?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let error = if !reported.insert(item.step_id) {
            Some(Error::invalid_argument(format!(
                "step {} appears more than once in the batch; only its first report was considered",
                item.step_id
            )))
        } else {
            missed.remove(&item.step_id).map(|state| {
                let e = not_held(item.step_id, state);
                if timed_out.contains(&item.step_id) {
                    crate::store::shared::mark_task_timeout(e, "cancelled", "error")
                } else {
                    e
                }
            })
        };
        out.push(ItemOutcome {
            step_id: item.step_id,
            ok: error.is_none(),
            error,
        });
    }
    Ok((out, batch))
}

/// Of the steps whose completion was refused, the cancelled ones whose task ran past
/// its timeout (a second query on this error path only), so their `lease_lost` says so.
async fn task_timed_out(
    conn: &mut PgConnection,
    missed: &HashMap<i64, Option<String>>,
) -> Result<HashSet<i64>> {
    let cancelled: Vec<i64> = missed
        .iter()
        .filter(|(_, s)| s.as_deref() == Some("cancelled"))
        .map(|(id, _)| *id)
        .collect();
    if cancelled.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT s.id FROM tasker_steps s JOIN tasker_tasks t ON t.id = s.task_id
         WHERE s.id = ANY($1) AND t.state = 'error'",
    )
    .bind(&cancelled)
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Completions that were not recorded: the step and its state now (`None`: no such step).
type NotRecorded = Vec<(i64, Option<String>)>;

/// Hot rows into the claimed batch (the task context comes once per task, on its first
/// step's row) and the completions that were not recorded.
fn decode(rows: Vec<PgRow>, token: i64) -> Result<(ClaimBatch, NotRecorded)> {
    let mut batch = ClaimBatch::default();
    let mut missed = Vec::new();
    let mut contexts: HashMap<i64, Box<RawValue>> = HashMap::new();
    let token_text = token.to_string();
    for r in rows {
        match r.try_get::<i32, _>(0)? {
            CLAIMED => {
                let task_id: i64 = r.try_get(2)?;
                if let Some(context) = r.try_get::<Option<String>, _>(11)? {
                    contexts.insert(task_id, raw(context)?);
                }
                let names: Vec<String> = r.try_get::<Option<_>, _>(12)?.unwrap_or_default();
                let results: Vec<String> = r.try_get::<Option<_>, _>(13)?.unwrap_or_default();
                let results = names
                    .into_iter()
                    .zip(results)
                    .map(|(n, v)| Ok((n, raw(v)?)))
                    .collect::<Result<BTreeMap<_, _>>>()?;
                let attempts: i64 = r.try_get(5)?;
                let retry_base: i64 = r.try_get(6)?;
                batch.steps.push(ClaimedStep {
                    step_id: r.try_get(1)?,
                    task_id,
                    step_name: r.try_get(3)?,
                    handler: r.try_get(4)?,
                    claim_token: token_text.clone(),
                    attempt: attempts - retry_base,
                    max_attempts: r.try_get(7)?,
                    lease_expires_at: Ts(r.try_get(8)?),
                    timeout_ms: r.try_get(9)?,
                    // Filled in below, from the task's first row.
                    context: raw("null".into())?,
                    config: r.try_get::<Option<String>, _>(10)?.map(raw).transpose()?,
                    results,
                });
            }
            NEXT_READY => batch.next_ready_at = r.try_get(8)?,
            NOT_RECORDED => missed.push((r.try_get(1)?, r.try_get(14)?)),
            other => return Err(Error::internal(format!("unknown hot row kind {other}"))),
        }
    }
    for step in &mut batch.steps {
        step.context = contexts.get(&step.task_id).cloned().ok_or_else(|| {
            Error::internal(format!(
                "task {} of a claimed step is missing",
                step.task_id
            ))
        })?;
    }
    Ok((batch, missed))
}
