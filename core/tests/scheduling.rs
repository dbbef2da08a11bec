//! Scheduling (issue 19), on the store `TASKER_TEST_STORE` names: delayed tasks
//! (`run_at`/`delay_ms`) wait off the claim path until the engine clock reaches them,
//! task timeouts (`timeout_s`) end a task in `error` and stop its running handlers, and
//! cron schedules create exactly one task per tick, with their catch-up policy after
//! downtime, pause/resume, and clear errors for bad input that store nothing.

mod common;

use common::{fast_retry, open, template};
use serde_json::{json, Value};
use tasker_core::time::rfc3339;
use tasker_core::ErrorCode;

fn now_ms(db: &common::Db) -> i64 {
    db.call("advance_clock", json!({ "ms": 0 }))["now_ms"]
        .as_i64()
        .unwrap()
}

fn manual() -> common::Db {
    let db = open(json!({ "clock": "manual" }));
    db.register(template(
        "chain",
        &[("a", &[]), ("b", &["a"])],
        fast_retry(3),
    ));
    db
}

fn advance(db: &common::Db, ms: i64) -> Value {
    db.call("advance_clock", json!({ "ms": ms }))
}

/// `worker_next` until its answer has something under `key` (steps or stop), for up to
/// ten seconds of real time (a loaded machine may answer a wait early and empty).
fn next_with(db: &common::Db, worker: &Value, key: &str) -> Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = db.call(
            "worker_next",
            json!({ "worker_id": worker, "max": 1, "wait_ms": 2000 }),
        );
        if got[key].as_array().is_some_and(|a| !a.is_empty()) || std::time::Instant::now() > until {
            return got;
        }
    }
}

#[test]
fn a_delayed_task_waits_off_the_claim_path_until_it_is_due() {
    let db = manual();
    let t0 = now_ms(&db);
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "delay_ms": 60_000 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let task = db.task(id);
    assert_eq!(task["state"], "pending");
    assert_eq!(task["run_at"], json!(rfc3339(t0 + 60_000)), "{task}");
    assert_eq!(task["delayed"], true);
    // Its root is pending, not ready with a future ready_at: the claim index holds nothing.
    assert_eq!(db.step(id, "a")["state"], "pending");
    assert_eq!(db.step(id, "a")["ready_at"], Value::Null);
    assert!(db.claim(&["a"], 10, 30_000).is_empty());
    let stats = db.call("stats", json!({}));
    assert_eq!(stats["steps"]["ready"].as_i64().unwrap_or(0), 0, "{stats}");
    // A harness learns when to move the clock.
    let next = db.call("next_ready_at", json!({}));
    assert_eq!(next["in_ms"], 60_000, "{next}");
    // A sweep before it is due changes nothing.
    db.call("sweep", json!({}));
    assert_eq!(db.step(id, "a")["state"], "pending");

    advance(&db, 59_999);
    assert!(db.claim(&["a"], 10, 30_000).is_empty());
    advance(&db, 1);
    assert_eq!(db.step(id, "a")["state"], "ready");
    assert_eq!(
        db.events(id),
        ["task.created", "step.created", "step.created", "step.ready"],
        "created, both steps created pending, then the root ready at its due time"
    );
    let ready =
        db.call("events", json!({ "task_id": id, "types": ["step.ready"] }))["events"][0].clone();
    assert_eq!(ready["at"], json!(rfc3339(t0 + 60_000)));
    assert_eq!(ready["reason"], "due");
    let a = db.claim(&["a"], 10, 30_000);
    assert_eq!(a.len(), 1);
    db.complete(&a[0], json!(1));
    let b = db.claim(&["b"], 10, 30_000);
    db.complete(&b[0], json!(2));
    let task = db.task(id);
    assert_eq!(task["state"], "complete");
    assert_eq!(task["run_at"], json!(rfc3339(t0 + 60_000)));
    assert!(task.get("delayed").is_none());
}

#[test]
fn run_at_in_the_past_starts_now_and_the_claim_promotes_a_due_task() {
    let db = manual();
    let t0 = now_ms(&db);
    let past = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "run_at": "2001-01-01T00:00:00Z" }),
    )["task_id"]
        .as_i64()
        .unwrap();
    assert_eq!(db.step(past, "a")["state"], "ready");
    let at = rfc3339(t0 + 5_000);
    let later = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "run_at": at, "idempotency_key": "k" }),
    );
    let id = later["task_id"].as_i64().unwrap();
    // Idempotency is unchanged: the same key returns the same task.
    let again = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "delay_ms": 1, "idempotency_key": "k" }),
    );
    assert_eq!(again["task_id"], id);
    assert_eq!(again["created"], false);
    // Moving the clock without advance_clock's own promotion: a manual clock moved by
    // advance_clock promotes at once; a claim after the due time promotes as well.
    advance(&db, 5_000);
    let got = db.claim(&["a"], 10, 30_000);
    assert_eq!(got.len(), 2, "the past task and the now-due one");
    assert!(got.iter().any(|s| s["task_id"] == id));
}

#[test]
fn create_tasks_items_take_delays_and_bad_timing_is_refused() {
    let db = manual();
    let before = db.fingerprint();
    for (req, field) in [
        (
            json!({ "namespace": "t", "name": "chain", "run_at": "soon" }),
            "run_at",
        ),
        (
            json!({ "namespace": "t", "name": "chain", "run_at": "2030-01-01T00:00:00Z", "delay_ms": 5 }),
            "delay_ms",
        ),
        (
            json!({ "namespace": "t", "name": "chain", "delay_ms": -1 }),
            "delay_ms",
        ),
        (
            json!({ "namespace": "t", "name": "chain", "timeout_s": 0 }),
            "timeout_s",
        ),
        (
            json!({ "namespace": "t", "name": "chain", "timeout_s": "1" }),
            "timeout_s",
        ),
    ] {
        let e = db.call_err("create_task", req.clone());
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{req}: {e}");
        assert!(e.message.contains(field), "{req}: {e}");
    }
    let e = db.call_err(
        "create_tasks",
        json!({ "tasks": [
            { "namespace": "t", "name": "chain" },
            { "namespace": "t", "name": "chain", "run_at": "yesterday" }
        ] }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("tasks[1]"), "{e}");
    assert_eq!(db.fingerprint(), before, "refused requests stored nothing");

    let made = db.call(
        "create_tasks",
        json!({ "tasks": [
            { "namespace": "t", "name": "chain" },
            { "namespace": "t", "name": "chain", "delay_ms": 10_000 }
        ] }),
    )["tasks"]
        .clone();
    let (now, later) = (
        made[0]["task_id"].as_i64().unwrap(),
        made[1]["task_id"].as_i64().unwrap(),
    );
    assert_eq!(db.step(now, "a")["state"], "ready");
    assert_eq!(db.step(later, "a")["state"], "pending");
    assert_eq!(db.call("next_ready_at", json!({}))["in_ms"], 0);
    advance(&db, 10_000);
    assert_eq!(db.step(later, "a")["state"], "ready");
}

#[test]
fn a_delayed_task_explains_itself_and_refuses_resolves_until_due() {
    let db = manual();
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "delay_ms": 1_000 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let ex = db.call("explain_task", json!({ "task_id": id }));
    assert_eq!(ex["steps"][0]["status"], "delayed", "{ex}");
    let before = db.fingerprint();
    let e = db.call_err(
        "resolve_step",
        json!({ "task_id": id, "step_name": "a", "result": 1 }),
    );
    assert_eq!(e.code, ErrorCode::InvalidState, "{e}");
    assert!(e.message.contains("delayed until"), "{e}");
    assert_eq!(db.fingerprint(), before);
    advance(&db, 1_000);
    // Once due, the usual rules: resolving the ready root releases its child.
    db.call(
        "resolve_step",
        json!({ "task_id": id, "step_name": "a", "result": 1 }),
    );
    let b = db.claim(&["b"], 1, 30_000);
    db.complete(&b[0], json!(2));
    assert_eq!(db.task(id)["state"], "complete");
}

#[test]
fn a_cancelled_delayed_task_stays_cancelled_when_it_comes_due() {
    let db = manual();
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "delay_ms": 1_000 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    db.call("cancel_task", json!({ "task_id": id }));
    assert_eq!(
        db.call("next_ready_at", json!({}))["next_ready_at"],
        Value::Null,
        "a cancelled delayed task no longer counts"
    );
    advance(&db, 2_000);
    let task = db.task(id);
    assert_eq!(task["state"], "cancelled");
    assert_eq!(db.step(id, "a")["state"], "cancelled");
    assert!(db.claim(&["a"], 10, 30_000).is_empty());
    assert_eq!(
        db.call("next_ready_at", json!({}))["next_ready_at"],
        Value::Null
    );
}

#[test]
fn a_task_timeout_fails_the_task_and_starts_nothing_more() {
    let db = manual();
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "timeout_s": 60 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let task = db.task(id);
    assert_eq!(task["timeout_s"], 60, "{task}");
    assert!(task["deadline_at"].is_string());
    let a = db.claim(&["a"], 1, 600_000);
    assert_eq!(a.len(), 1);
    advance(&db, 59_999);
    assert_eq!(db.task(id)["state"], "running");
    advance(&db, 1);
    let task = db.task(id);
    assert_eq!(task["state"], "error", "{task}");
    assert_eq!(db.step(id, "a")["state"], "cancelled");
    assert_eq!(db.step(id, "b")["state"], "cancelled");
    assert!(task.get("deadline_at").is_none());
    let failed =
        db.call("events", json!({ "task_id": id, "types": ["task.failed"] }))["events"].clone();
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["reason"], "task_timeout");
    assert_eq!(failed[0]["details"]["reason"], "timeout");
    // The handler still running hears it: its report is refused, and says why.
    let e = db.call_err(
        "heartbeat",
        json!({ "step_id": a[0]["step_id"], "claim_token": a[0]["claim_token"] }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);
    assert_eq!(e.details.as_ref().unwrap()["task_timed_out"], true, "{e}");
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": a[0]["step_id"], "claim_token": a[0]["claim_token"], "result": 1 }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);
    assert!(db.claim(&["a", "b"], 10, 30_000).is_empty());
}

#[test]
fn the_timeout_of_a_delayed_task_counts_from_its_due_time_and_the_sweep_finds_it() {
    // A system clock: the sweep (not advance_clock) finds the timeout, as after a crash.
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "one", "delay_ms": 300, "timeout_s": 1 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let task = db.task(id);
    let created = task["created_at"].as_str().unwrap().to_owned();
    assert!(task["deadline_at"].as_str().unwrap() > created.as_str());
    std::thread::sleep(std::time::Duration::from_millis(1_400));
    db.call("sweep", json!({}));
    let task = db.task(id);
    assert_eq!(task["state"], "error", "{task}");
    // The task came due (its root was ready) before it timed out.
    let events = db.events(id);
    assert!(events.contains(&"step.ready".to_owned()), "{events:?}");
    assert_eq!(events.last().unwrap(), "task.failed", "{events:?}");
}

#[test]
fn a_worker_session_gets_the_task_timeout_stop_signal() {
    let db = manual();
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "chain", "timeout_s": 30 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let w = db.call(
        "worker_open",
        json!({ "handlers": ["a"], "concurrency": 1, "lease_ms": 600_000 }),
    )["worker_id"]
        .clone();
    let got = next_with(&db, &w, "steps");
    assert_eq!(got["steps"].as_array().unwrap().len(), 1, "{got}");
    advance(&db, 30_000);
    let next = next_with(&db, &w, "stop");
    let stop = next["stop"].as_array().unwrap();
    assert_eq!(stop.len(), 1, "{next}");
    assert_eq!(stop[0]["reason"], "task_timeout");
    assert_eq!(db.task(id)["state"], "error");
    db.call("worker_close", json!({ "worker_id": w, "grace_ms": 0 }));
}

fn schedule(db: &common::Db, extra: Value) -> Value {
    let mut req = json!({
        "name": "every-minute",
        "template": { "namespace": "t", "name": "chain" },
        "cron": "* * * * *",
        "context": { "from": "schedule" },
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    db.call("create_schedule", req)["schedule"].clone()
}

fn tasks_of(db: &common::Db) -> Vec<Value> {
    db.call("list_tasks", json!({ "limit": 1000 }))["tasks"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_schedule_fires_once_per_tick_on_the_engine_clock() {
    let db = manual();
    let s = schedule(&db, json!({}));
    assert_eq!(s["name"], "every-minute");
    assert_eq!(s["timezone"], "UTC");
    assert_eq!(s["catch_up"]["policy"], "skip");
    let next = s["next_fire_at"].as_str().unwrap().to_owned();
    assert!(next.ends_with(":00.000Z"), "{next}");
    assert!(tasks_of(&db).is_empty());
    for _ in 0..5 {
        advance(&db, 60_000);
    }
    let tasks = tasks_of(&db);
    assert_eq!(tasks.len(), 5, "one task per tick");
    let mut keys: Vec<String> = tasks
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys[0], format!("schedule:every-minute:{next}"));
    keys.dedup();
    assert_eq!(keys.len(), 5);
    let t = db.task(tasks[0]["id"].as_i64().unwrap());
    assert_eq!(t["context"], json!({ "from": "schedule" }));
    // Firing again at the same time makes nothing more: the tick moved.
    assert_eq!(advance(&db, 0)["scheduled"], 0);
    let s = db.call("get_schedule", json!({ "name": "every-minute" }))["schedule"].clone();
    assert_eq!(s["last_task_id"], tasks[0]["id"]);
    let listed = db.call("list_schedules", json!({}))["schedules"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[test]
fn catch_up_skip_fires_the_latest_missed_tick_and_all_fires_up_to_the_limit() {
    let db = manual();
    schedule(&db, json!({ "name": "skip" }));
    schedule(
        &db,
        json!({ "name": "all", "catch_up": { "policy": "all", "limit": 3 } }),
    );
    schedule(
        &db,
        json!({ "name": "all-default", "catch_up": { "policy": "all" } }),
    );
    // Ten minutes of downtime in one move.
    let fired = advance(&db, 10 * 60_000);
    assert_eq!(fired["scheduled"], 1 + 3 + 10, "{fired}");
    let tasks = tasks_of(&db);
    let of = |name: &str| {
        tasks
            .iter()
            .filter(|t| {
                t["idempotency_key"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("schedule:{name}:"))
            })
            .count()
    };
    assert_eq!(of("skip"), 1);
    assert_eq!(of("all"), 3);
    assert_eq!(of("all-default"), 10);
    let s = db.call("get_schedule", json!({ "name": "skip" }))["schedule"].clone();
    assert_eq!(s["catch_up"], json!({ "policy": "skip" }));
    let a = db.call("get_schedule", json!({ "name": "all" }))["schedule"].clone();
    assert_eq!(a["catch_up"], json!({ "policy": "all", "limit": 3 }));
}

#[test]
fn a_paused_schedule_fires_nothing_and_resumes_from_the_next_tick() {
    let db = manual();
    schedule(&db, json!({ "paused": true }));
    advance(&db, 5 * 60_000);
    assert!(tasks_of(&db).is_empty());
    let s = db.call("resume_schedule", json!({ "name": "every-minute" }))["schedule"].clone();
    assert_eq!(s["paused"], false);
    assert!(s["next_fire_at"].is_string());
    // Ticks that passed while paused never fire.
    assert_eq!(advance(&db, 0)["scheduled"], 0);
    advance(&db, 60_000);
    assert_eq!(tasks_of(&db).len(), 1);
    let s = db.call("pause_schedule", json!({ "name": "every-minute" }))["schedule"].clone();
    assert_eq!(s["paused"], true);
    assert_eq!(s["next_fire_at"], Value::Null);
    advance(&db, 3 * 60_000);
    assert_eq!(tasks_of(&db).len(), 1);
    let gone = db.call("delete_schedule", json!({ "name": "every-minute" }));
    assert_eq!(gone, json!({ "name": "every-minute", "deleted": true }));
    let e = db.call_err("get_schedule", json!({ "name": "every-minute" }));
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = db.call_err("delete_schedule", json!({ "name": "every-minute" }));
    assert_eq!(e.code, ErrorCode::NotFound);
    // Its tasks stay.
    assert_eq!(tasks_of(&db).len(), 1);
}

#[test]
fn a_daily_schedule_in_a_zone_with_dst_fires_at_local_time() {
    let db = manual();
    // 09:00 in New York: 14:00 UTC in winter (EST), 13:00 UTC after the switch to EDT
    // on 2026-03-08.
    let s = schedule(
        &db,
        json!({ "name": "ny", "cron": "0 9 * * *", "timezone": "America/New_York" }),
    );
    let first = s["next_fire_at"].as_str().unwrap().to_owned();
    let hour = &first[11..13];
    assert!(hour == "13" || hour == "14", "{first}");
    // The DST rule itself, on fixed dates (the engine clock is today's).
    let spec =
        tasker_core::model::schedule::CronSpec::parse("0 9 * * *", "America/New_York").unwrap();
    let at = |s: &str| tasker_core::model::schedule::parse_rfc3339("t", s).unwrap();
    let before = spec.next_after(at("2026-03-07T00:00:00Z")).unwrap();
    assert_eq!(rfc3339(before), "2026-03-07T14:00:00.000Z");
    let after = spec.next_after(before).unwrap();
    assert_eq!(rfc3339(after), "2026-03-08T13:00:00.000Z");
    // And through the engine: a day's move fires the day's tick once.
    advance(&db, 24 * 3600 * 1000);
    assert_eq!(tasks_of(&db).len(), 1);
}

#[test]
fn bad_schedules_get_clear_errors_and_store_nothing() {
    let db = manual();
    schedule(&db, json!({ "name": "taken" }));
    let base = json!({
        "name": "s",
        "template": { "namespace": "t", "name": "chain" },
        "cron": "* * * * *",
    });
    let with = |k: &str, v: Value| {
        let mut r = base.clone();
        r[k] = v;
        r
    };
    let cases = [
        (
            with("cron", json!("61 * * * *")),
            ErrorCode::InvalidArgument,
            "cron",
        ),
        (
            with("cron", json!("0 0 30 2 *")),
            ErrorCode::InvalidArgument,
            "never",
        ),
        (
            with("timezone", json!("Mars/Olympus")),
            ErrorCode::InvalidArgument,
            "timezone",
        ),
        (
            with("template", json!({ "namespace": "t", "name": "nope" })),
            ErrorCode::NotFound,
            "nope",
        ),
        (with("name", json!("taken")), ErrorCode::Conflict, "taken"),
        (
            with("catch_up", json!({ "policy": "sometimes" })),
            ErrorCode::InvalidArgument,
            "policy",
        ),
        (
            with("catch_up", json!({ "policy": "all", "limit": 0 })),
            ErrorCode::InvalidArgument,
            "limit",
        ),
        (with("every", json!(5)), ErrorCode::InvalidArgument, "every"),
        (with("name", json!("")), ErrorCode::InvalidArgument, "name"),
    ];
    for (req, code, word) in cases {
        let e = db.call_err("create_schedule", req.clone());
        assert_eq!(e.code, code, "{req}: {e}");
        assert!(e.message.contains(word), "{req}: {e}");
    }
    let listed = db.call("list_schedules", json!({}))["schedules"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // A context the template's input_schema refuses is refused at creation.
    db.register(json!({
        "namespace": "t", "name": "typed", "version": "1",
        "input_schema": { "type": "object", "required": ["id"] },
        "steps": [ { "name": "a", "handler": "a" } ]
    }));
    let e = db.call_err(
        "create_schedule",
        json!({ "name": "typed", "template": { "namespace": "t", "name": "typed" }, "cron": "* * * * *", "context": {} }),
    );
    assert_eq!(e.code, ErrorCode::SchemaViolation, "{e}");
}

#[test]
fn waiting_claims_and_sessions_wake_when_a_delayed_task_comes_due() {
    // The system clock: no advance_clock, no sweep (it runs hourly here).
    let db = open(json!({ "sweep_interval_ms": 3_600_000 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let start = std::time::Instant::now();
    db.call(
        "create_task",
        json!({ "namespace": "t", "name": "one", "delay_ms": 400 }),
    );
    let got = db.claim_wait(&["a"], 1, 30_000);
    assert_eq!(
        got.len(),
        1,
        "the waiting claim got the delayed task's step"
    );
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(390),
        "{waited:?}"
    );
    db.complete(&got[0], json!(null));

    let w = db.call(
        "worker_open",
        json!({ "handlers": ["a"], "concurrency": 1 }),
    )["worker_id"]
        .clone();
    let start = std::time::Instant::now();
    db.call(
        "create_task",
        json!({ "namespace": "t", "name": "one", "delay_ms": 400 }),
    );
    let next = next_with(&db, &w, "steps");
    assert_eq!(next["steps"].as_array().unwrap().len(), 1, "{next}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(390));
    db.call("worker_close", json!({ "worker_id": w, "grace_ms": 0 }));
}

#[test]
fn a_task_timeout_ends_a_step_waiting_for_its_signal_too() {
    let db = open(json!({ "clock": "manual" }));
    db.call(
        "register_template",
        json!({ "template": { "namespace": "t", "name": "approval", "version": "1.0.0",
            "steps": [
                { "name": "approve", "wait_for": { "signal": "approved", "timeout_s": 3600 } },
                { "name": "pay", "handler": "pay", "depends_on": ["approve"] }
            ] } }),
    );
    let id = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "approval", "timeout_s": 60 }),
    )["task_id"]
        .as_i64()
        .unwrap();
    // The wait starts right after the creation (or at the next sweep).
    db.call("sweep", json!({}));
    assert_eq!(db.step(id, "approve")["state"], "waiting");
    advance(&db, 60_000);
    let task = db.task(id);
    assert_eq!(task["state"], "error", "{task}");
    assert_eq!(task["steps_done"], 0, "{task}");
    assert_eq!(db.step(id, "approve")["state"], "cancelled");
    assert_eq!(db.step(id, "pay")["state"], "cancelled");
    // A late signal is kept for an operator's retry of the task's errored steps (as for
    // any task in `error`), and wakes nothing now.
    let sent = db.call(
        "send_signal",
        json!({ "task_id": id, "name": "approved", "payload": 1 }),
    );
    assert_eq!(sent["task_state"], "error", "{sent}");
    assert_eq!(db.step(id, "approve")["state"], "cancelled");
    assert_eq!(db.task(id)["state"], "error");
}

/// Tasks that finished before their deadline stay as they are when it passes and keep
/// showing it (on PostgreSQL the sweep then drops them from the deadline index,
/// migration 0013), while an unfinished one with a later deadline still times out.
#[test]
fn finished_tasks_keep_their_deadline_and_later_timeouts_still_fire() {
    let db = manual();
    let create = |timeout_s: u64| {
        db.call(
            "create_task",
            json!({ "namespace": "t", "name": "chain", "timeout_s": timeout_s }),
        )["task_id"]
            .as_i64()
            .unwrap()
    };
    let done = create(60);
    let cancelled = create(60);
    let late = create(120);
    for handler in ["a", "b"] {
        for step in db.claim(&[handler], 10, 600_000) {
            if step["task_id"] == done || handler == "a" {
                db.complete(&step, json!(1));
            }
        }
    }
    db.call("cancel_task", json!({ "task_id": cancelled }));
    let shown: Vec<Value> = [done, cancelled]
        .iter()
        .map(|&id| db.task(id)["deadline_at"].clone())
        .collect();
    assert!(shown.iter().all(Value::is_string), "{shown:?}");
    advance(&db, 60_001);
    db.call("sweep", json!({}));
    for (id, (state, deadline)) in [done, cancelled]
        .iter()
        .zip([("complete", &shown[0]), ("cancelled", &shown[1])])
    {
        let task = db.task(*id);
        assert_eq!(task["state"], state, "{task}");
        assert_eq!(&task["deadline_at"], deadline, "{task}");
    }
    assert_eq!(db.task(late)["state"], "running");
    advance(&db, 60_000);
    let task = db.task(late);
    assert_eq!(task["state"], "error", "{task}");
    assert_eq!(db.step(late, "b")["state"], "cancelled");
}
