//! The analytics SQL of migrations/postgres/0002_analytics.sql, queried directly the way
//! an operator would from psql, must agree with what `get_task`, `explain_task` and
//! `stats` report; and the creation function of migration 0005 must be safe to repeat.
//! PostgreSQL only: run with `TASKER_TEST_STORE=postgres`.

mod common;

use std::collections::BTreeMap;

use common::{fast_retry, on_postgres, open, postgres_url, template, Db};
use serde_json::{json, Value};
use sqlx::{Connection, Row};

fn skip() -> bool {
    if !on_postgres() {
        eprintln!("skipped: PostgreSQL only (set TASKER_TEST_STORE=postgres)");
        return true;
    }
    false
}

/// Runs `f` on a plain connection whose search_path is NOT the test's schema: the
/// functions must find their tables by themselves (they pin the schema they live in).
fn with_conn<T>(f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
        f(&mut c).await
    })
}

/// A diamond a -> (b, c) -> d plus a lone step e, with a done, b done and c failed for good.
fn half_done_diamond(db: &Db) -> i64 {
    db.register(template(
        "shape",
        &[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
            ("e", &[]),
        ],
        fast_retry(1),
    ));
    let id = db.create("shape", json!({}));
    let a = db.claim(&["a"], 1, 30_000);
    db.complete(&a[0], json!({ "a": 1 }));
    let b = db.claim(&["b"], 1, 30_000);
    db.complete(&b[0], json!({ "b": 1 }));
    let c = db.claim(&["c"], 1, 30_000);
    db.call(
        "fail_step",
        json!({ "step_id": c[0]["step_id"], "claim_token": c[0]["claim_token"],
                "error": { "message": "no", "retryable": false } }),
    );
    id
}

#[test]
fn dependency_levels_match_get_task() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let id = half_done_diamond(&db);
    let schema = db.schema.clone().unwrap();
    let from_sql: BTreeMap<String, i64> = with_conn(async |c| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT step_name, level FROM \"{schema}\".tasker_dependency_levels($1)"
        )))
        .bind(id)
        .fetch_all(c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    });
    let from_api: BTreeMap<String, i64> = db.task(id)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["level"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(from_sql, from_api);
    assert_eq!(from_sql["d"], 2);
    assert_eq!(from_sql["e"], 0);
}

#[test]
fn waiting_on_matches_explain_task() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let id = half_done_diamond(&db);
    let schema = db.schema.clone().unwrap();
    let from_sql: BTreeMap<String, (String, Vec<String>)> = with_conn(async |c| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT step_name, state, waiting_on FROM \"{schema}\".tasker_step_waiting_on($1)"
        )))
        .bind(id)
        .fetch_all(c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
    });
    // c failed, d waits on c (not on b, which is done), e is ready with no parents.
    assert_eq!(
        from_sql.keys().cloned().collect::<Vec<_>>(),
        ["c", "d", "e"]
    );
    assert_eq!(from_sql["d"].1, ["c"]);
    assert!(from_sql["e"].1.is_empty());
    let explained = db.call("explain_task", json!({ "task_id": id }));
    for s in explained["steps"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let (state, _) = &from_sql[name];
        assert_eq!(s["state"], json!(state), "state of {name}");
    }
}

#[test]
fn health_and_stats_views_match_stats() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    half_done_diamond(&db);
    let schema = db.schema.clone().unwrap();
    let stats = db.call("stats", json!({ "window_ms": 60_000 }));
    let health: Vec<(String, String, i64)> = with_conn(async |c| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT kind, state, n FROM \"{schema}\".tasker_health ORDER BY kind, state"
        )))
        .fetch_all(c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    });
    for (kind, state, n) in &health {
        let key = if kind == "task" { "tasks" } else { "steps" };
        assert_eq!(stats[key][state], json!(n), "{kind} {state}");
    }
    // 5 steps: a, b complete; c error; d pending; e ready.
    let steps: i64 = health.iter().filter(|h| h.0 == "step").map(|h| h.2).sum();
    assert_eq!(steps, 5);
    assert_eq!(stats["throughput"]["steps_completed"], 2);
    assert_eq!(stats["throughput"]["steps_failed"], 1);
    let slowest: Vec<Value> = stats["slowest_steps"].as_array().unwrap().clone();
    assert_eq!(slowest.len(), 2);
    let raw: Value = with_conn(async |c| {
        let text: String = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_stats($1, 60000)::text"
        )))
        .bind(tasker_now_ms())
        .fetch_one(c)
        .await
        .unwrap()
        .get(0);
        serde_json::from_str(&text).unwrap()
    });
    assert_eq!(raw["last_event_id"], stats["last_event_id"]);
    assert_eq!(raw["tasks"], stats["tasks"]);
}

fn tasker_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The arguments of `tasker_create_task` after `p_now` up to the lock key, for one step
/// `a` of handler `h` with no edges: the same in 0004's signature and 0005's.
const ONE_STEP: &str = "ARRAY['a'], ARRAY['h'], ARRAY[0::bigint], ARRAY[3::bigint],
    ARRAY['exponential'], ARRAY[10::bigint], ARRAY[100::bigint], ARRAY[0::float8],
    ARRAY[1000::bigint], ARRAY[0::bigint], ARRAY[NULL::text], ARRAY[]::int[], ARRAY[]::int[]";

/// The last two arguments of every hot-path function: the event-order lock's key and
/// the NOTIFY channel, as the engine passes them for `schema`.
fn lock_args(schema: &str) -> String {
    format!("{}, 'tasker_{schema}'", event_lock_key(schema))
}

/// Calls 0005's `tasker_create_task` for a one-step task with id `id` and `key`.
async fn create_with_id(
    c: &mut sqlx::PgConnection,
    schema: &str,
    id: i64,
    key: Option<&str>,
) -> Option<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT \"{schema}\".tasker_create_task($1, 'sql', 'one', '1.0.0', '{{}}', $2, 0, 0, {ONE_STEP}, {})",
        lock_args(schema)
    )))
    .bind(id)
    .bind(key)
    .fetch_one(c)
    .await
    .unwrap()
}

#[test]
fn a_repeated_creation_with_a_reserved_id_makes_one_task() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let schema = db.schema.clone().unwrap();
    let count = |table: &str, id: i64| -> i64 {
        let (schema, table) = (schema.clone(), table.to_owned());
        with_conn(async move |c| {
            let column = if table == "tasker_tasks" {
                "id"
            } else {
                "task_id"
            };
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM \"{schema}\".{table} WHERE {column} = $1"
            )))
            .bind(id)
            .fetch_one(c)
            .await
            .unwrap()
        })
    };
    let (ids, first, again, keyed, same_key, old_signature) = with_conn(async |c| {
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_reserve_task_ids(3)"
        )))
        .fetch_all(&mut *c)
        .await
        .unwrap();
        let first = create_with_id(c, &schema, ids[0], None).await;
        // The repeat a lost answer causes: the same id again.
        let again = create_with_id(c, &schema, ids[0], None).await;
        let keyed = create_with_id(c, &schema, ids[1], Some("k")).await;
        let same_key = create_with_id(c, &schema, ids[2], Some("k")).await;
        // 0004's signature, as a worker of the previous version calls it.
        let old: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_create_task('sql', 'one', '1.0.0', '{{}}', NULL, 0, 0, {ONE_STEP}, {})",
            lock_args(&schema)
        )))
        .fetch_one(&mut *c)
        .await
        .unwrap();
        (ids, first, again, keyed, same_key, old)
    });
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "reserved ids ascend: {ids:?}"
    );
    assert_eq!((first, again), (Some(ids[0]), Some(ids[0])));
    assert_eq!(count("tasker_tasks", ids[0]), 1);
    assert_eq!(count("tasker_steps", ids[0]), 1);
    // One transition row (migration 0013) holds the task's event and its step's: the
    // repeat wrote none.
    assert_eq!(count("tasker_transitions", ids[0]), 1);
    let events = db.call("events", json!({ "task_id": ids[0] }));
    let events = events["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "task.created", "{events:?}");
    assert!(events[0]["step_id"].is_null(), "{events:?}");
    assert_eq!(events[1]["step_name"], "a", "{events:?}");
    assert_eq!(
        events[1]["id"].as_i64().unwrap(),
        events[0]["id"].as_i64().unwrap() + 1,
        "the second event of a row has the next id: {events:?}"
    );
    assert_eq!(keyed, Some(ids[1]));
    assert_eq!(same_key, None, "a taken idempotency key makes no task");
    assert_eq!(count("tasker_tasks", ids[2]), 0);
    let old = old_signature.expect("the old signature creates a task");
    assert!(old > ids[2], "its id comes from the same sequence: {old}");
    // The engine reads what the SQL made.
    let task = db.call("get_task", json!({ "task_id": ids[0] }));
    assert_eq!(task["task"]["state"], "pending");
}

/// The event-order lock's key, as the store derives it from its schema name (FNV-1a,
/// `key_of` in store/postgres/mod.rs). Were the two to differ, the test below would
/// fail, not pass: the engine's readers would not wait for the writer held open here.
fn event_lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Migration 0006: writers hold the event-order lock shared, so a creation commits while
/// another is still open; readers take it exclusive, so `events` and the "from now"
/// cursor of `stats` wait for the open one instead of returning past its rows (which
/// commit later with smaller ids, and a cursor would have skipped them).
#[test]
fn event_readers_wait_for_writers_in_flight_and_writers_wait_for_no_one() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let schema = db.schema.clone().unwrap();
    let key = event_lock_key(&schema);
    let since = db.call("stats", json!({}))["last_event_id"]
        .as_i64()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = postgres_url();
    let (a, ids) = rt.block_on(async {
        let mut a = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut b = sqlx::PgConnection::connect(&url).await.unwrap();
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_reserve_task_ids(2)"
        )))
        .fetch_all(&mut a)
        .await
        .unwrap();
        // A: a creation left open, holding its transition ids and the lock.
        sqlx::raw_sql("BEGIN").execute(&mut a).await.unwrap();
        assert_eq!(
            create_with_id(&mut a, &schema, ids[0], None).await,
            Some(ids[0])
        );
        // B commits meanwhile. Were writers serialized it would wait for A: the lock
        // timeout makes that an error rather than a hang.
        sqlx::raw_sql("SET lock_timeout = '10s'")
            .execute(&mut b)
            .await
            .unwrap();
        let second: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_create_task($1, 'sql', 'one', '1.0.0', '{{}}', NULL, 0, 0, {ONE_STEP}, {})",
            lock_args(&schema)
        )))
        .bind(ids[1])
        .fetch_one(&mut b)
        .await
        .expect("a writer must not wait for another writer's commit");
        assert_eq!(second, Some(ids[1]));
        (a, ids)
    });
    let (events, stats) = std::thread::scope(|s| {
        let events = s.spawn(|| db.call("events", json!({ "since": since, "limit": 100 })));
        let stats = s.spawn(|| db.call("stats", json!({})));
        // `a` moves in: should an assertion fail, dropping it ends A's transaction and
        // lets the readers (which the scope joins) finish.
        let running = (&events, &stats);
        rt.block_on(async move {
            let mut a = a;
            let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
            // Both readers queue for the lock A holds (exclusive requests on this key).
            let mut waiting = 0i64;
            for _ in 0..1_500 {
                waiting = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                       AND mode = 'ExclusiveLock' AND objsubid = 1
                       AND classid::bigint = ($1 >> 32) & 4294967295
                       AND objid::bigint = $1 & 4294967295",
                )
                .bind(key)
                .fetch_one(&mut watch)
                .await
                .unwrap();
                if waiting == 2 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(waiting, 2, "both readers wait for the writer in flight");
            assert!(!running.0.is_finished() && !running.1.is_finished());
            sqlx::raw_sql("COMMIT").execute(&mut a).await.unwrap();
        });
        (events.join().unwrap(), stats.join().unwrap())
    });
    let got: Vec<(i64, i64, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["task_id"].as_i64().unwrap(),
                e["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let tasks: Vec<i64> = got.iter().map(|g| g.1).collect();
    // A drew its ids first and committed last; the reader returns them all the same, in
    // id order, before B's.
    assert_eq!(tasks, vec![ids[0], ids[0], ids[1], ids[1]], "{got:?}");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{got:?}");
    assert_eq!(got[0].2, "task.created");
    assert_eq!(events["next_cursor"].as_i64(), Some(got[3].0));
    assert_eq!(stats["last_event_id"].as_i64(), Some(got[3].0));
}

/// Calls `tasker_create_tasks` (the overload of 0009 the engine calls, as 0014 defines it)
/// for one-step tasks with `ids` and `keys`; returns its rows `(position, id, created,
/// state)`.
async fn create_batch_with_ids(
    c: &mut sqlx::PgConnection,
    schema: &str,
    ids: &[i64],
    keys: &[Option<&str>],
) -> Vec<(i32, i64, bool, String)> {
    try_create_batch_with_ids(c, schema, ids, keys)
        .await
        .unwrap()
}

async fn try_create_batch_with_ids(
    c: &mut sqlx::PgConnection,
    schema: &str,
    ids: &[i64],
    keys: &[Option<&str>],
) -> Result<Vec<(i32, i64, bool, String)>, sqlx::Error> {
    let n = ids.len();
    let positions: Vec<i32> = (1..=n as i32).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r_n, r_id, r_created, r_state FROM \"{schema}\".tasker_create_tasks(
             $1, array_fill('sql'::text, ARRAY[$3]), array_fill('one'::text, ARRAY[$3]),
             array_fill('1.0.0'::text, ARRAY[$3]), array_fill('{{}}'::text, ARRAY[$3]), $2,
             array_fill(0::bigint, ARRAY[$3]), array_fill(1::bigint, ARRAY[$3]),
             array_fill(1::bigint, ARRAY[$3]), 0,
             array_fill(NULL::bigint, ARRAY[$3]), array_fill(NULL::bigint, ARRAY[$3]),
             array_fill(NULL::bigint, ARRAY[$3]), array_fill(NULL::bigint, ARRAY[$3]),
             $4, array_fill('a'::text, ARRAY[$3]), array_fill('h'::text, ARRAY[$3]),
             array_fill(0::bigint, ARRAY[$3]), array_fill(3::bigint, ARRAY[$3]),
             array_fill('exponential'::text, ARRAY[$3]), array_fill(10::bigint, ARRAY[$3]),
             array_fill(100::bigint, ARRAY[$3]), array_fill(0::float8, ARRAY[$3]),
             array_fill(1000::bigint, ARRAY[$3]), array_fill(0::bigint, ARRAY[$3]),
             array_fill(NULL::text, ARRAY[$3]), ARRAY[]::int[], ARRAY[]::int[], {})",
        lock_args(schema)
    )))
    .bind(ids)
    .bind(keys)
    .bind(n as i32)
    .bind(positions)
    .fetch_all(c)
    .await
    .map(|rows| {
        rows.into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    })
}

/// Migration 0008: the batch creation is safe to repeat as 0005's single one is: a
/// repeat of a committed call finds its own tasks (created, nothing written twice), and
/// a taken idempotency key returns the task that has it.
#[test]
fn a_repeated_batch_creation_makes_each_task_once() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let schema = db.schema.clone().unwrap();
    let (ids, first, again, other) = with_conn(async |c| {
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_reserve_task_ids(5)"
        )))
        .fetch_all(&mut *c)
        .await
        .unwrap();
        let keys = [None, Some("k1"), Some("k2")];
        let first = create_batch_with_ids(c, &schema, &ids[..3], &keys).await;
        // The repeat a lost answer causes: the same ids and keys again.
        let again = create_batch_with_ids(c, &schema, &ids[..3], &keys).await;
        // Another call with fresh ids, one of them under a taken key.
        let other = create_batch_with_ids(c, &schema, &ids[3..], &[Some("k2"), None]).await;
        (ids, first, again, other)
    });
    let made = |i: usize| (i as i32 + 1, ids[i], true, "pending".to_owned());
    assert_eq!(first, vec![made(0), made(1), made(2)]);
    assert_eq!(again, first, "a repeat answers as the call it repeats");
    assert_eq!(
        other,
        vec![
            (1, ids[2], false, "pending".to_owned()),
            (2, ids[4], true, "pending".to_owned())
        ]
    );
    let stats = db.call("stats", json!({}));
    assert_eq!(stats["tasks"]["pending"], 4);
    assert_eq!(stats["steps"]["ready"], 4);
    // Two events per task (the task's and its step's) in one row each (migration
    // 0013), none written twice.
    let events = db.call("events", json!({ "limit": 100 }));
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(8),
        "{events}"
    );
    let rows: i64 = with_conn(async |c| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".tasker_transitions"
        )))
        .fetch_one(c)
        .await
        .unwrap()
    });
    assert_eq!(rows, 4);
}

/// Migration 0014: tasks without a key are inserted without `ON CONFLICT`. A repeat that
/// runs while the call it repeats is still open (the server still runs a call whose
/// connection the engine lost) waits for it, then fails on the ids with a unique
/// violation of the primary key once it commits: the store reports that as the
/// serialization failure it repeats a call after (`hot::repeat_on_taken_id`), and the
/// next repeat finds the tasks.
#[test]
fn a_repeat_racing_the_open_call_it_repeats_fails_on_the_ids_and_the_next_finds_them() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let schema = db.schema.clone().unwrap();
    let url = postgres_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ids, raced, again) = rt.block_on(async {
        let mut a = sqlx::PgConnection::connect(&url).await.unwrap();
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT \"{schema}\".tasker_reserve_task_ids(2)"
        )))
        .fetch_all(&mut a)
        .await
        .unwrap();
        sqlx::query("BEGIN").execute(&mut a).await.unwrap();
        let first = create_batch_with_ids(&mut a, &schema, &ids, &[None, None]).await;
        assert_eq!(first.len(), 2);
        let (s2, ids2) = (schema.clone(), ids.clone());
        let url2 = url.clone();
        let repeat = tokio::spawn(async move {
            let mut b = sqlx::PgConnection::connect(&url2).await.unwrap();
            try_create_batch_with_ids(&mut b, &s2, &ids2, &[None, None]).await
        });
        // The repeat waits on the open call's ids (it cannot see them yet).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !repeat.is_finished(),
            "the repeat did not wait for the open call"
        );
        sqlx::query("COMMIT").execute(&mut a).await.unwrap();
        let raced = repeat.await.unwrap();
        let again = create_batch_with_ids(&mut a, &schema, &ids, &[None, None]).await;
        (ids, raced, again)
    });
    let e = raced.expect_err("a repeat racing its open call must fail");
    let d = e.as_database_error().expect("a database error");
    assert_eq!(d.code().as_deref(), Some("23505"), "{e}");
    assert_eq!(d.constraint(), Some("tasker_tasks_pkey"), "{e}");
    let made = |i: usize| (i as i32 + 1, ids[i], true, "pending".to_owned());
    assert_eq!(
        again,
        vec![made(0), made(1)],
        "the next repeat finds the tasks"
    );
    let stats = db.call("stats", json!({}));
    assert_eq!(stats["tasks"]["pending"], 2, "{stats}");
}

/// Migration 0008: a write sends NOTIFY only when it makes a step ready: a creation and
/// a completion that releases a child do; a claim and a completion that releases
/// nothing do not.
#[test]
fn notify_is_sent_only_when_work_becomes_claimable() {
    if skip() {
        return;
    }
    let db = open(json!({}));
    let schema = db.schema.clone().unwrap();
    db.register(template(
        "pair",
        &[("a", &[]), ("b", &["a"])],
        fast_retry(1),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut listener = rt.block_on(async {
        let mut l = sqlx::postgres::PgListener::connect(&postgres_url())
            .await
            .unwrap();
        l.listen(&format!("tasker_{schema}")).await.unwrap();
        l
    });
    // Whether a notification arrives within a while after `f` (the engine's own calls
    // return after their commit; the creation's NOTIFY follows from its notifier).
    let mut notified_after = |what: &str, f: &dyn Fn()| -> bool {
        rt.block_on(async {
            // Drain what earlier steps sent.
            while let Ok(Ok(Some(_))) =
                tokio::time::timeout(std::time::Duration::from_millis(300), listener.try_recv())
                    .await
            {}
        });
        f();
        let got = rt.block_on(async {
            matches!(
                tokio::time::timeout(std::time::Duration::from_secs(2), listener.try_recv()).await,
                Ok(Ok(Some(_)))
            )
        });
        eprintln!("{what}: notified {got}");
        got
    };
    let created = std::cell::Cell::new(0);
    assert!(notified_after("create_task", &|| created.set(db.create("pair", json!({})))));
    let claimed = std::cell::RefCell::new(Vec::new());
    assert!(!notified_after("claim", &|| *claimed.borrow_mut() =
        db.claim(&["a"], 1, 60_000)));
    // Completing `a` releases `b`.
    assert!(notified_after("complete a", &|| {
        db.complete(&claimed.borrow()[0], json!(1));
    }));
    let b = db.claim(&["b"], 1, 60_000);
    // Completing `b` releases nothing (the task completes).
    assert!(!notified_after("complete b", &|| {
        db.complete(&b[0], json!(2));
    }));
    assert_eq!(db.task(created.get())["state"], "complete");
    assert!(notified_after("create_tasks", &|| {
        db.call(
            "create_tasks",
            json!({ "tasks": [{ "namespace": "t", "name": "pair" }] }),
        );
    }));
    // The listener's connection goes back inside its runtime (the closure's borrow of
    // it ended with its last call).
    rt.block_on(async move {
        let _ = listener.unlisten_all().await;
        drop(listener);
        tokio::task::yield_now().await;
    });
}
