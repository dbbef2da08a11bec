//! Dynamic fan-out on PostgreSQL: the rules of the SQLite module, with the fan-out
//! steps locked (`FOR UPDATE SKIP LOCKED`: another process takes the rest) and the
//! instances' ids drawn from the steps' sequence. New statements only.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{write, Ctx};
use crate::error::{Error, Result};
use crate::model::events::reason;
use crate::model::fan_out::{self, FAN_OUT_HANDLER};
use crate::store::shared::{bump, Deltas, Tr};

struct Ready {
    id: i64,
    task_id: i64,
    name: String,
    config: Value,
    attempt: i64,
    run_attempts: i64,
    context: Value,
    n_total: i64,
}

fn parse(text: Option<String>) -> Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

pub async fn advance_fan_outs(
    conn: &mut PgConnection,
    ctx: &Ctx,
    now: i64,
    limit: u32,
    max_steps: i64,
) -> Result<u32> {
    let rows = sqlx::query(
        "SELECT s.id, s.task_id, s.name, s.config, s.attempts + 1, s.attempts - s.retry_base, t.context,
                t.n_total
         FROM tasker_steps s JOIN tasker_tasks t ON t.id = s.task_id
         WHERE s.handler = $1 AND s.state = 'ready'
         ORDER BY s.priority DESC, s.ready_at, s.id LIMIT $2 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(FAN_OUT_HANDLER)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ready = Vec::with_capacity(rows.len());
    for r in rows {
        ready.push(Ready {
            id: r.try_get(0)?,
            task_id: r.try_get(1)?,
            name: r.try_get(2)?,
            config: parse(r.try_get(3)?),
            attempt: r.try_get(4)?,
            run_attempts: r.try_get(5)?,
            context: parse(r.try_get(6)?),
            n_total: r.try_get(7)?,
        });
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::new();
    let mut started = Vec::new();
    let mut finished = Vec::new();
    let mut added: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for s in &ready {
        let parent_rows = sqlx::query(
            "SELECT p.name, p.result FROM tasker_edges e JOIN tasker_steps p ON p.id = e.parent_id
             WHERE e.child_id = $1",
        )
        .bind(s.id)
        .fetch_all(&mut *conn)
        .await?;
        let mut parents: Vec<(String, Option<String>)> = Vec::with_capacity(parent_rows.len());
        for r in parent_rows {
            parents.push((r.try_get(0)?, r.try_get(1)?));
        }
        if s.run_attempts > 0 {
            collect(conn, s, parents, now, &mut deltas, &mut trs).await?;
            finished.push(s.id);
            continue;
        }
        let results: BTreeMap<String, Value> =
            parents.into_iter().map(|(n, r)| (n, parse(r))).collect();
        started.push(s.task_id);
        // Earlier expansions of this call grew the task: count them in.
        let grown = s.n_total + added.get(&s.task_id).copied().unwrap_or(0);
        let planned = fan_out::items(&s.config, &s.context, &results).and_then(|items| {
            fan_out::check_task_size(grown, items.len(), max_steps).map(|()| items)
        });
        match planned {
            Err(refusal) => {
                let error = refusal.error_json();
                sqlx::query(
                    "UPDATE tasker_steps SET state = 'error', attempts = attempts + 1, last_error = $2,
                         ready_at = NULL, first_started_at = COALESCE(first_started_at, $3),
                         started_at = $3, finished_at = $3, updated_at = $3
                     WHERE id = $1",
                )
                .bind(s.id)
                .bind(&error)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                bump(&mut deltas, s.task_id, |d| {
                    d.active -= 1;
                    d.error += 1;
                });
                let details = json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null) });
                trs.push(
                    Tr::step(
                        s.task_id,
                        s.id,
                        &s.name,
                        Some("ready"),
                        "error",
                        reason::FAN_OUT_FAILED,
                    )
                    .attempt(s.attempt, None)
                    .details(Some(details.to_string())),
                );
            }
            Ok(items) if items.is_empty() => {
                sqlx::query(
                    "UPDATE tasker_steps SET state = 'complete', attempts = attempts + 1, result = '[]',
                         ready_at = NULL, first_started_at = COALESCE(first_started_at, $2),
                         started_at = $2, finished_at = $2, updated_at = $2
                     WHERE id = $1",
                )
                .bind(s.id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                bump(&mut deltas, s.task_id, |d| {
                    d.active -= 1;
                    d.done += 1;
                });
                trs.push(
                    Tr::step(
                        s.task_id,
                        s.id,
                        &s.name,
                        Some("ready"),
                        "complete",
                        reason::FANNED_OUT,
                    )
                    .attempt(s.attempt, None)
                    .details(Some(json!({ "items": 0 }).to_string())),
                );
                finished.push(s.id);
            }
            Ok(items) => {
                *added.entry(s.task_id).or_default() += items.len() as i64;
                expand(conn, s, items, now, &mut deltas, &mut trs).await?
            }
        }
    }
    started.sort_unstable();
    started.dedup();
    let ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE tasker_tasks SET prev_state = state, state = 'running',
             started_at = COALESCE(started_at, $2), updated_at = $2
         WHERE id = ANY($1) AND state = 'pending' RETURNING id",
    )
    .bind(&started)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = ids;
    ids.sort_unstable();
    // The task starts before its first step moves on, as at a first claim.
    let starts: Vec<Tr> = ids
        .into_iter()
        .map(|id| Tr::task(id, Some("pending"), "running", reason::FANNED_OUT))
        .collect();
    trs.splice(0..0, starts);
    write::release_children(conn, &finished, now, &mut deltas, &mut trs).await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(ready.len() as u32)
}

async fn expand(
    conn: &mut PgConnection,
    s: &Ready,
    items: Vec<Value>,
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    let count = items.len();
    let handler = s
        .config
        .get("handler")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::internal(format!(
                "fan-out step {} has no handler in its config",
                s.id
            ))
        })?
        .to_owned();
    trs.push(
        Tr::step(
            s.task_id,
            s.id,
            &s.name,
            Some("ready"),
            "pending",
            reason::FANNED_OUT,
        )
        .attempt(s.attempt, None)
        .details(Some(json!({ "items": count }).to_string())),
    );
    let names: Vec<String> = (0..count)
        .map(|i| fan_out::instance_name(&s.name, i))
        .collect();
    let configs: Vec<String> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| fan_out::instance_config(&s.config, item, i, count).to_string())
        .collect();
    // The instances copy the step's policy columns; ids come in item order.
    let rows = sqlx::query(
        "INSERT INTO tasker_steps (id, task_id, name, handler, state, pending_parents, max_attempts,
             backoff, base_ms, max_ms, jitter, timeout_ms, priority, config, ready_at, created_at, updated_at,
             limited, concurrency_key, concurrency_max, rate_key, rate_limit, rate_per_ms)
         SELECT nextval('tasker_steps_id_seq'), f.task_id, u.name, $3, 'ready', 0, f.max_attempts,
                f.backoff, f.base_ms, f.max_ms, f.jitter, f.timeout_ms, f.priority, u.config, $4, $4, $4,
                f.concurrency_key IS NOT NULL OR f.rate_key IS NOT NULL,
                f.concurrency_key, f.concurrency_max, f.rate_key, f.rate_limit, f.rate_per_ms
         FROM tasker_steps f
         CROSS JOIN unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(name, config, n)
         WHERE f.id = $5
         ORDER BY u.n
         RETURNING id, name",
    )
    .bind(&names)
    .bind(&configs)
    .bind(&handler)
    .bind(now)
    .bind(s.id)
    .fetch_all(&mut *conn)
    .await?;
    let mut made: Vec<(i64, String)> = Vec::with_capacity(rows.len());
    for r in rows {
        made.push((r.try_get(0)?, r.try_get(1)?));
    }
    made.sort_unstable_by_key(|m| m.0);
    let ids: Vec<i64> = made.iter().map(|m| m.0).collect();
    sqlx::query(
        "INSERT INTO tasker_edges (parent_id, child_id) SELECT u.id, $2 FROM unnest($1::bigint[]) AS u(id)",
    )
    .bind(&ids)
    .bind(s.id)
    .execute(&mut *conn)
    .await?;
    for (id, name) in &made {
        trs.push(Tr::step(
            s.task_id,
            *id,
            name,
            None,
            "ready",
            reason::CREATED,
        ));
    }
    sqlx::query(
        "UPDATE tasker_steps SET state = 'pending', pending_parents = pending_parents + $2,
             attempts = attempts + 1, ready_at = NULL,
             first_started_at = COALESCE(first_started_at, $3), started_at = $3, updated_at = $3
         WHERE id = $1",
    )
    .bind(s.id)
    .bind(count as i64)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tasker_tasks SET n_total = n_total + $2 WHERE id = $1")
        .bind(s.task_id)
        .bind(count as i64)
        .execute(&mut *conn)
        .await?;
    bump(deltas, s.task_id, |d| d.active += count as i64 - 1);
    Ok(())
}

async fn collect(
    conn: &mut PgConnection,
    s: &Ready,
    parents: Vec<(String, Option<String>)>,
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    let mut got: Vec<(usize, String)> = parents
        .into_iter()
        .filter_map(|(n, r)| {
            fan_out::index_of(&s.name, &n).map(|i| (i, r.unwrap_or_else(|| "null".into())))
        })
        .collect();
    got.sort_unstable_by_key(|g| g.0);
    let result = format!(
        "[{}]",
        got.iter()
            .map(|g| g.1.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    sqlx::query(
        "UPDATE tasker_steps SET state = 'complete', result = $2, ready_at = NULL,
             finished_at = $3, updated_at = $3
         WHERE id = $1",
    )
    .bind(s.id)
    .bind(&result)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    bump(deltas, s.task_id, |d| {
        d.active -= 1;
        d.done += 1;
    });
    trs.push(
        Tr::step(
            s.task_id,
            s.id,
            &s.name,
            Some("ready"),
            "complete",
            reason::COMPLETED,
        )
        .attempt(s.attempt - 1, None)
        .details(Some(json!({ "items": got.len() }).to_string())),
    );
    Ok(())
}
