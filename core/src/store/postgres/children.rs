//! Child tasks on PostgreSQL: the same rules as the SQLite module, with the waiting
//! steps taken `FOR UPDATE SKIP LOCKED` (a step another process finishes is left to
//! it) and locks taken steps first, then tasks, as every other write does. New
//! statements only: no existing function changes.

use serde_json::json;
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{claims, write, Ctx};
use crate::error::Result;
use crate::model::events::reason;
use crate::store::children::{self, Child, ParentRef, TaskLinks, WaitStarted};
use crate::store::shared::{bump, Deltas, Tr};

fn is_final(state: &str) -> bool {
    matches!(state, "complete" | "error" | "cancelled")
}

/// See the SQLite `held_step`.
pub async fn held_step(conn: &mut PgConnection, step_id: i64, token: i64) -> Result<(i64, String)> {
    let row = sqlx::query(
        "SELECT task_id, name FROM tasker_steps
         WHERE id = $1 AND claim_token = $2 AND state = 'running'",
    )
    .bind(step_id)
    .bind(token)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(r) => Ok((r.try_get(0)?, r.try_get(1)?)),
        None => Err(claims::fence_error(conn, step_id).await?),
    }
}

/// See the SQLite `link_child`: the step row is locked while the link is written, so
/// it cannot leave `running` under the token in between.
pub async fn link_child(
    conn: &mut PgConnection,
    step_id: i64,
    token: i64,
    child: i64,
    key: &str,
    now: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "SELECT task_id FROM tasker_steps
         WHERE id = $1 AND claim_token = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(step_id)
    .bind(token)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(claims::fence_error(conn, step_id).await?);
    };
    let task_id: i64 = row.try_get(0)?;
    sqlx::query(
        "INSERT INTO tasker_children (parent_step_id, parent_task_id, child_task_id, key, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(step_id)
    .bind(task_id)
    .bind(child)
    .bind(key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "SELECT child_task_id FROM tasker_children WHERE parent_step_id = $1 AND key = $2",
    )
    .bind(step_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get(0)?)
}

/// A step's children in start order, with their tasks' states; with `lock`, the
/// children's task rows are share-locked until commit.
async fn list(conn: &mut PgConnection, step_id: i64, lock: bool) -> Result<Vec<Child>> {
    let sql = format!(
        "SELECT c.child_task_id, c.key, t.state FROM tasker_children c
         JOIN tasker_tasks t ON t.id = c.child_task_id
         WHERE c.parent_step_id = $1 ORDER BY c.id{}",
        if lock { " FOR SHARE OF t" } else { "" }
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(step_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Child {
            task_id: r.try_get(0)?,
            key: r.try_get(1)?,
            state: r.try_get(2)?,
        });
    }
    Ok(out)
}

/// The unfinished children of a step (for the timeout's error).
pub async fn unfinished_of(conn: &mut PgConnection, step_id: i64) -> Result<Vec<i64>> {
    Ok(list(conn, step_id, false)
        .await?
        .into_iter()
        .filter(|c| !is_final(&c.state))
        .map(|c| c.task_id)
        .collect())
}

/// See the SQLite `wait_for_children`.
pub async fn wait_for_children(
    conn: &mut PgConnection,
    ctx: &Ctx,
    step_id: i64,
    token: i64,
    wait_until: i64,
    now: i64,
) -> Result<WaitStarted> {
    let row = sqlx::query(
        "UPDATE tasker_steps SET state = 'waiting', claim_token = NULL, lease_expires_at = NULL,
             wait_until = $3, updated_at = $4
         WHERE id = $1 AND claim_token = $2 AND state = 'running'
         RETURNING task_id, name, attempts, worker",
    )
    .bind(step_id)
    .bind(token)
    .bind(wait_until)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(claims::fence_error(conn, step_id).await?);
    };
    let task_id: i64 = row.try_get(0)?;
    let name: String = row.try_get(1)?;
    let attempt: i64 = row.try_get(2)?;
    let worker: Option<String> = row.try_get(3)?;
    // Share-locked: a child finishing at this moment either commits first (and the
    // locking read sees it final) or waits for this commit, so that its process's
    // follow-up (`advance_children`, after its own commit) sees this step waiting.
    // Without the lock, under READ COMMITTED both could miss each other and the step
    // would wait for the sweep.
    let all = list(conn, step_id, true).await?;
    let started = WaitStarted {
        children: all.len() as i64,
        unfinished: all.iter().filter(|c| !is_final(&c.state)).count() as i64,
    };
    let tr = Tr::step(
        task_id,
        step_id,
        &name,
        Some("running"),
        "waiting",
        reason::WAITING_FOR_CHILDREN,
    )
    .attempt(attempt, worker)
    .details(Some(
        json!({
            "children": started.children,
            "unfinished": started.unfinished,
            "wait_until": crate::time::rfc3339(wait_until),
        })
        .to_string(),
    ));
    write::insert_transitions(conn, ctx, &[tr], now).await?;
    Ok(started)
}

/// See the SQLite `advance_children`.
pub async fn advance_children(
    conn: &mut PgConnection,
    ctx: &Ctx,
    now: i64,
    limit: u32,
    max_result_bytes: usize,
) -> Result<u32> {
    let rows = sqlx::query(
        "SELECT s.id, s.task_id, s.name, s.attempts FROM tasker_steps s
         WHERE s.state = 'waiting' AND s.handler NOT LIKE 'tasker.%'
           AND NOT EXISTS (SELECT 1 FROM tasker_children c
                           JOIN tasker_tasks t ON t.id = c.child_task_id
                           WHERE c.parent_step_id = s.id
                             AND t.state NOT IN ('complete', 'error', 'cancelled'))
         ORDER BY s.id LIMIT $1 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut steps: Vec<(i64, i64, String, i64)> = Vec::with_capacity(rows.len());
    for r in rows {
        steps.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(steps.len() * 2);
    let mut completed = Vec::new();
    for (step_id, task_id, name, attempt) in &steps {
        let kids = list(conn, *step_id, false).await?;
        // The children's results are read first (the decision itself is synchronous).
        let mut results = Vec::with_capacity(kids.len());
        if children::failed_child(&kids).is_none() {
            for k in &kids {
                let rows = sqlx::query(
                    "SELECT name, result FROM tasker_steps WHERE task_id = $1 ORDER BY id",
                )
                .bind(k.task_id)
                .fetch_all(&mut *conn)
                .await?;
                let mut steps = Vec::with_capacity(rows.len());
                for r in rows {
                    steps.push((
                        r.try_get::<String, _>(0)?,
                        r.try_get::<Option<String>, _>(1)?,
                    ));
                }
                results.push(steps);
            }
        }
        let result = match children::finish(&kids, || Ok(results), max_result_bytes)? {
            children::Finish::Complete(result) => result,
            children::Finish::Fail(f) => {
                sqlx::query(
                    "UPDATE tasker_steps SET state = 'error', last_error = $2, wait_until = NULL,
                         finished_at = $3, updated_at = $3
                     WHERE id = $1",
                )
                .bind(step_id)
                .bind(&f.error)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                bump(&mut deltas, *task_id, |d| {
                    d.active -= 1;
                    d.error += 1;
                });
                trs.push(
                    Tr::step(*task_id, *step_id, name, Some("waiting"), "error", f.reason)
                        .attempt(*attempt, None)
                        .details(Some(f.details.to_string())),
                );
                continue;
            }
        };
        sqlx::query(
            "UPDATE tasker_steps SET state = 'complete', result = $2, wait_until = NULL,
                 finished_at = $3, updated_at = $3
             WHERE id = $1",
        )
        .bind(step_id)
        .bind(&result)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        bump(&mut deltas, *task_id, |d| {
            d.active -= 1;
            d.done += 1;
        });
        trs.push(
            Tr::step(
                *task_id,
                *step_id,
                name,
                Some("waiting"),
                "complete",
                reason::CHILDREN_DONE,
            )
            .attempt(*attempt, None)
            .details(Some(json!({ "children": kids.len() }).to_string())),
        );
        completed.push(*step_id);
    }
    write::release_children(conn, &completed, now, &mut deltas, &mut trs).await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(steps.len() as u32)
}

/// See the SQLite `task_links`.
pub async fn task_links(conn: &mut PgConnection, task_id: i64) -> Result<TaskLinks> {
    let parent = sqlx::query(
        "SELECT c.parent_task_id, c.parent_step_id, s.name FROM tasker_children c
         JOIN tasker_steps s ON s.id = c.parent_step_id
         WHERE c.child_task_id = $1",
    )
    .bind(task_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| -> Result<ParentRef> {
        Ok(ParentRef {
            task_id: r.try_get(0)?,
            step_id: r.try_get(1)?,
            step_name: r.try_get(2)?,
        })
    })
    .transpose()?;
    let rows = sqlx::query(
        "SELECT parent_step_id, child_task_id FROM tasker_children
         WHERE parent_task_id = $1 ORDER BY id",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut children = Vec::with_capacity(rows.len());
    for r in rows {
        children.push((r.try_get(0)?, r.try_get(1)?));
    }
    Ok(TaskLinks { parent, children })
}

/// See the SQLite `unfinished_children`.
pub async fn unfinished_children(conn: &mut PgConnection, task_id: i64) -> Result<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT c.child_task_id FROM tasker_children c
         JOIN tasker_tasks t ON t.id = c.child_task_id
         WHERE c.parent_task_id = $1 AND t.state NOT IN ('complete', 'error', 'cancelled')
         ORDER BY c.id",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(r.try_get(0)?);
    }
    Ok(out)
}
