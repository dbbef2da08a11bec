//! Child tasks on SQLite: checking and linking a child to the step that starts it,
//! moving that step to `waiting`, finishing waiting steps whose children are all final,
//! and the links `get_task` and `cancel_task` read. Each write runs inside the
//! caller's write transaction.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::{claims, write};
use crate::error::Result;
use crate::model::events::reason;
use crate::store::children::{self, Child, ParentRef, TaskLinks, WaitStarted};
use crate::store::shared::{bump, Deltas, Tr};

const FINAL: &str = "('complete', 'error', 'cancelled')";

/// The task and name of step `step_id` if it is `running` under `token`; else the
/// error any stale token gets (`lease_lost`, or `not_found`).
pub fn held_step(conn: &Connection, step_id: i64, token: i64) -> Result<(i64, String)> {
    let row: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT task_id, name FROM tasker_steps
             WHERE id = ?1 AND claim_token = ?2 AND state = 'running'",
        )?
        .query_row(params![step_id, token], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some(r) => Ok(r),
        None => Err(claims::fence_error(conn, step_id)?),
    }
}

/// Links `child` to the step that started it under `key` (the step still held by
/// `token`); a link of that key made earlier stands. Returns the linked child's id.
pub fn link_child(
    conn: &Connection,
    step_id: i64,
    token: i64,
    child: i64,
    key: &str,
    now: i64,
) -> Result<i64> {
    let (task_id, _) = held_step(conn, step_id, token)?;
    conn.prepare_cached(
        "INSERT INTO tasker_children (parent_step_id, parent_task_id, child_task_id, key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )?
    .execute(params![step_id, task_id, child, key, now])?;
    Ok(conn
        .prepare_cached(
            "SELECT child_task_id FROM tasker_children WHERE parent_step_id = ?1 AND key = ?2",
        )?
        .query_row(params![step_id, key], |r| r.get(0))?)
}

/// Moves a step held by `token` from `running` to `waiting` (lease released, deadline
/// `wait_until`). The caller finishes it at once when no child is unfinished.
pub fn wait_for_children(
    conn: &Connection,
    step_id: i64,
    token: i64,
    wait_until: i64,
    now: i64,
) -> Result<WaitStarted> {
    let row: Option<(i64, String, i64, Option<String>)> = conn
        .prepare_cached(
            "UPDATE tasker_steps SET state = 'waiting', claim_token = NULL, lease_expires_at = NULL,
                 wait_until = ?3, updated_at = ?4
             WHERE id = ?1 AND claim_token = ?2 AND state = 'running'
             RETURNING task_id, name, attempts, worker",
        )?
        .query_row(params![step_id, token, wait_until, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((task_id, name, attempt, worker)) = row else {
        return Err(claims::fence_error(conn, step_id)?);
    };
    let all = list(conn, step_id)?;
    let unfinished = all
        .iter()
        .filter(|c| !matches!(c.state.as_str(), "complete" | "error" | "cancelled"))
        .count() as i64;
    let started = WaitStarted {
        children: all.len() as i64,
        unfinished,
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
    write::insert_transitions(conn, &[tr], now)?;
    Ok(started)
}

/// A step's children in start order, with their tasks' states.
fn list(conn: &Connection, step_id: i64) -> Result<Vec<Child>> {
    Ok(conn
        .prepare_cached(
            "SELECT c.child_task_id, c.key, t.state FROM tasker_children AS c
             JOIN tasker_tasks AS t ON t.id = c.child_task_id
             WHERE c.parent_step_id = ?1 ORDER BY c.id",
        )?
        .query_map([step_id], |r| {
            Ok(Child {
                task_id: r.get(0)?,
                key: r.get(1)?,
                state: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// The unfinished children of a step (for the timeout's error).
pub fn unfinished_of(conn: &Connection, step_id: i64) -> Result<Vec<i64>> {
    Ok(list(conn, step_id)?
        .into_iter()
        .filter(|c| !matches!(c.state.as_str(), "complete" | "error" | "cancelled"))
        .map(|c| c.task_id)
        .collect())
}

/// Finishes up to `limit` steps waiting for children that are all final: complete with
/// their results when all completed (their own children proceed), else failed
/// permanently with kind `child_failed`. Returns how many.
pub fn advance_children(
    conn: &Connection,
    now: i64,
    limit: u32,
    max_result_bytes: usize,
) -> Result<u32> {
    let sql = format!(
        "SELECT s.id, s.task_id, s.name, s.attempts FROM tasker_steps AS s
         WHERE s.state = 'waiting' AND s.handler NOT LIKE 'tasker.%'
           AND NOT EXISTS (SELECT 1 FROM tasker_children AS c
                           JOIN tasker_tasks AS t ON t.id = c.child_task_id
                           WHERE c.parent_step_id = s.id AND t.state NOT IN {FINAL})
         ORDER BY s.id LIMIT ?1"
    );
    let rows: Vec<(i64, i64, String, i64)> = conn
        .prepare_cached(&sql)?
        .query_map([i64::from(limit)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(rows.len() * 2);
    let mut completed = Vec::new();
    for (step_id, task_id, name, attempt) in &rows {
        let kids = list(conn, *step_id)?;
        let finish = children::finish(
            &kids,
            || {
                let mut results = Vec::with_capacity(kids.len());
                for k in &kids {
                    let steps: Vec<(String, Option<String>)> = conn
                        .prepare_cached(
                            "SELECT name, result FROM tasker_steps WHERE task_id = ?1 ORDER BY id",
                        )?
                        .query_map([k.task_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    results.push(steps);
                }
                Ok(results)
            },
            max_result_bytes,
        )?;
        let result = match finish {
            children::Finish::Complete(result) => result,
            children::Finish::Fail(f) => {
                conn.prepare_cached(
                    "UPDATE tasker_steps SET state = 'error', last_error = ?2, wait_until = NULL,
                         finished_at = ?3, updated_at = ?3
                     WHERE id = ?1",
                )?
                .execute(params![step_id, f.error, now])?;
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
        conn.prepare_cached(
            "UPDATE tasker_steps SET state = 'complete', result = ?2, wait_until = NULL,
                 finished_at = ?3, updated_at = ?3
             WHERE id = ?1",
        )?
        .execute(params![step_id, result, now])?;
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
    write::release_children(conn, &completed, now, &mut deltas, &mut trs)?;
    write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    Ok(rows.len() as u32)
}

/// A task's parent and the children its steps started.
pub fn task_links(conn: &Connection, task_id: i64) -> Result<TaskLinks> {
    let parent = conn
        .prepare_cached(
            "SELECT c.parent_task_id, c.parent_step_id, s.name FROM tasker_children AS c
             JOIN tasker_steps AS s ON s.id = c.parent_step_id
             WHERE c.child_task_id = ?1",
        )?
        .query_row([task_id], |r| {
            Ok(ParentRef {
                task_id: r.get(0)?,
                step_id: r.get(1)?,
                step_name: r.get(2)?,
            })
        })
        .optional()?;
    let children = conn
        .prepare_cached(
            "SELECT parent_step_id, child_task_id FROM tasker_children
             WHERE parent_task_id = ?1 ORDER BY id",
        )?
        .query_map([task_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(TaskLinks { parent, children })
}

/// The child tasks of a task's steps that are not final.
pub fn unfinished_children(conn: &Connection, task_id: i64) -> Result<Vec<i64>> {
    let sql = format!(
        "SELECT c.child_task_id FROM tasker_children AS c
         JOIN tasker_tasks AS t ON t.id = c.child_task_id
         WHERE c.parent_task_id = ?1 AND t.state NOT IN {FINAL} ORDER BY c.id"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_map([task_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}
