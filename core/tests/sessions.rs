//! The worker runtime's session operations (`docs/workers.md`), on the store the suite
//! runs on: outcomes checked one by one, failure documents cut in core, stop signals
//! for cancel and timeout, leases renewed by core, releases that cost no attempt,
//! idleness, and the warnings and errors a session's caller gets.

mod common;

use std::time::{Duration, Instant};

use common::{fast_retry, open, template, Db};
use serde_json::{json, Value};
use tasker_core::ErrorCode;

fn session(db: &Db, handlers: &[&str], extra: Value) -> String {
    let mut req = json!({ "handlers": handlers, "name": "sess" });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    db.call("worker_open", req)["worker_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn next(db: &Db, w: &str, max: u32, wait_ms: u64) -> Value {
    db.call(
        "worker_next",
        json!({ "worker_id": w, "max": max, "wait_ms": wait_ms }),
    )
}

fn report(db: &Db, w: &str, outcomes: Value) -> Value {
    db.call(
        "worker_report",
        json!({ "worker_id": w, "outcomes": outcomes }),
    )
}

/// Waits (in `worker_next` calls that return early on a stop signal) for a stop.
fn wait_for_stop(db: &Db, w: &str, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    while started.elapsed() < within {
        let page = next(db, w, 0, 500);
        if let Some(s) = page["stop"].as_array().and_then(|a| a.first()) {
            return (s.clone(), started.elapsed());
        }
    }
    panic!("no stop signal within {within:?}");
}

#[test]
fn an_oversize_result_fails_only_its_step_and_the_session_goes_on() {
    let db = open(json!({ "max_payload_bytes": 1024 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let ids: Vec<i64> = (0..3).map(|_| db.create("one", json!({}))).collect();
    let w = session(&db, &["a"], json!({ "batch": 3 }));
    let steps = next(&db, &w, 3, 0)["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 3);
    let big = "x".repeat(2048);
    let outcomes: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| match i {
            1 => json!({ "step_id": s["step_id"], "result": big }),
            _ => json!({ "step_id": s["step_id"], "result": i }),
        })
        .collect();
    let out = report(&db, &w, json!(outcomes));
    let kinds: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["completed", "failed", "completed"]);
    assert_eq!(out["results"][1]["reason"], "result_too_large");
    assert_eq!(out["results"][1]["state"], "error", "never retried");
    let failed_task = steps[1]["task_id"].as_i64().unwrap();
    let step = db.step(failed_task, "a");
    assert_eq!(step["state"], "error");
    assert_eq!(step["error"]["kind"], "result_too_large");
    assert_eq!(step["error"]["retryable"], false);
    for id in ids.iter().filter(|id| **id != failed_task) {
        assert_eq!(db.step(*id, "a")["state"], "complete");
    }
    // The session is still usable, and says what it did.
    let stats = db.call("worker_stats", json!({ "worker_id": w }));
    assert_eq!(
        (
            stats["completed"].as_u64(),
            stats["failed"].as_u64(),
            stats["held"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    assert_eq!(next(&db, &w, 3, 0)["idle"], true);
}

#[test]
fn a_failure_document_over_the_limit_is_cut_not_lost() {
    let db = open(json!({ "max_payload_bytes": 600 }));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let id = db.create("one", json!({}));
    let w = session(&db, &["a"], json!({}));
    let step = next(&db, &w, 1, 0)["steps"][0].clone();
    let backtrace = format!("{}the frame that raised", "  frame\n".repeat(500));
    let out = report(
        &db,
        &w,
        json!([{ "step_id": step["step_id"], "error": {
            "message": "boom", "kind": "ValueError", "backtrace": backtrace, "details": { "a": "b".repeat(300) } } }]),
    );
    assert_eq!(out["results"][0]["outcome"], "failed");
    let error = db.step(id, "a")["error"].clone();
    assert!(error.to_string().len() <= 600, "{error}");
    assert_eq!(error["message"], "boom");
    assert_eq!(error["truncated"], true);
    assert!(error["backtrace"]
        .as_str()
        .unwrap()
        .ends_with("the frame that raised"));
}

#[test]
fn invalid_results_and_releases_are_outcomes_of_their_own() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let first = db.create("one", json!({}));
    let second = db.create("one", json!({}));
    let w = session(&db, &["a"], json!({ "batch": 2 }));
    let steps = next(&db, &w, 2, 0)["steps"].as_array().unwrap().clone();
    let out = report(
        &db,
        &w,
        json!([
            { "step_id": steps[0]["step_id"], "invalid_result": "Object of type set is not JSON serializable" },
            { "step_id": steps[1]["step_id"], "release": true },
            { "step_id": steps[1]["step_id"], "result": 1 },
            { "step_id": 999_999, "result": 1 },
        ]),
    );
    let r = out["results"].as_array().unwrap();
    assert_eq!(r[0]["outcome"], "failed");
    assert_eq!(r[0]["reason"], "invalid_result");
    assert_eq!(r[1]["outcome"], "released");
    assert_eq!(r[2]["outcome"], "lost", "one outcome per step per report");
    assert_eq!(r[3]["outcome"], "lost");
    assert_eq!(r[3]["error"]["code"], "lease_lost");
    let a = db.step(first, "a");
    assert_eq!(
        (a["state"].as_str(), a["error"]["kind"].as_str()),
        (Some("error"), Some("invalid_result"))
    );
    assert!(a["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not JSON serializable"));
    let b = db.step(second, "a");
    assert_eq!(
        (b["state"].as_str(), b["attempts"].as_i64()),
        (Some("ready"), Some(0))
    );
}

#[test]
fn a_cancel_reaches_the_running_step_as_a_stop_signal() {
    let db = open(json!({}));
    db.register(template("two", &[("a", &[]), ("b", &[])], fast_retry(3)));
    let id = db.create("two", json!({}));
    let w = session(&db, &["a", "b"], json!({ "batch": 2, "lease_ms": 600 }));
    let steps = next(&db, &w, 2, 0)["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 2);
    db.call("cancel_task", json!({ "task_id": id }));
    let mut stopped = Vec::new();
    let started = Instant::now();
    while stopped.len() < 2 && started.elapsed() < Duration::from_secs(5) {
        for s in next(&db, &w, 0, 500)["stop"].as_array().unwrap() {
            assert_eq!(s["reason"], "cancelled");
            assert_eq!(s["task_id"], id);
            stopped.push(s["step_id"].as_i64().unwrap());
        }
    }
    stopped.sort();
    assert_eq!(stopped.len(), 2, "each step is named once");
    // Named once: later calls do not repeat it.
    assert_eq!(next(&db, &w, 0, 0)["stop"], json!([]));
    let out = report(
        &db,
        &w,
        json!(steps
            .iter()
            .map(|s| json!({ "step_id": s["step_id"], "result": 1 }))
            .collect::<Vec<_>>()),
    );
    for r in out["results"].as_array().unwrap() {
        assert_eq!(r["outcome"], "lost", "{r}");
    }
    assert_eq!(db.task(id)["state"], "cancelled");
}

#[test]
fn a_timeout_is_a_stop_signal_and_a_failed_attempt() {
    let db = open(json!({ "sweep_interval_ms": 3_600_000 }));
    let mut t = template("slow", &[("a", &[])], fast_retry(2));
    t["steps"][0]["timeout_s"] = json!(1);
    db.register(t);
    let id = db.create("slow", json!({}));
    let w = session(&db, &["a"], json!({ "lease_ms": 600 }));
    let step = next(&db, &w, 1, 0)["steps"][0].clone();
    let (stop, after) = wait_for_stop(&db, &w, Duration::from_secs(10));
    assert_eq!(stop["reason"], "timeout");
    assert_eq!(stop["step_id"], step["step_id"]);
    assert!(
        after >= Duration::from_millis(800),
        "stopped after {after:?}"
    );
    let s = db.step(id, "a");
    assert_eq!(s["state"], "ready", "retried under its policy");
    assert_eq!(s["error"]["kind"], "timeout");
    // The late result is refused, and the retry runs as attempt 2.
    let out = report(
        &db,
        &w,
        json!([{ "step_id": step["step_id"], "result": 1 }]),
    );
    assert_eq!(out["results"][0]["outcome"], "lost");
    let again = next(&db, &w, 1, 2_000)["steps"][0].clone();
    assert_eq!(again["attempt"], 2);
}

#[test]
fn core_renews_the_leases_of_held_steps() {
    // A 300 ms lease, a 50 ms sweep and 1.5 s in the host's hands: without core's
    // renewals the step would be taken back.
    let db = open(json!({ "lease_ms": 300, "sweep_interval_ms": 50 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.create("one", json!({}));
    let w = session(&db, &["a"], json!({}));
    let step = next(&db, &w, 1, 0)["steps"][0].clone();
    std::thread::sleep(Duration::from_millis(1_500));
    let out = report(
        &db,
        &w,
        json!([{ "step_id": step["step_id"], "result": "late" }]),
    );
    assert_eq!(out["results"][0]["outcome"], "completed", "{out}");
    assert!(!db.events(id).contains(&"step.lease_expired".to_owned()));
    assert_eq!(db.step(id, "a")["attempts"], 1);
}

#[test]
fn close_releases_unreported_steps_without_spending_an_attempt() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let ids: Vec<i64> = (0..3).map(|_| db.create("one", json!({}))).collect();
    let w = session(&db, &["a"], json!({ "batch": 3 }));
    let steps = next(&db, &w, 3, 0)["steps"].as_array().unwrap().clone();
    report(
        &db,
        &w,
        json!([{ "step_id": steps[0]["step_id"], "result": 0 }]),
    );
    let closed = db.call("worker_close", json!({ "worker_id": w, "grace_ms": 50 }));
    assert_eq!(
        (closed["completed"].as_u64(), closed["released"].as_u64()),
        (Some(1), Some(2))
    );
    let states: Vec<(String, i64)> = ids
        .iter()
        .map(|id| {
            let s = db.step(*id, "a");
            (
                s["state"].as_str().unwrap().to_owned(),
                s["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states.iter().filter(|s| s.0 == "ready" && s.1 == 0).count(),
        2,
        "{states:?}"
    );
    let e = db.call_err("worker_next", json!({ "worker_id": w }));
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[test]
fn a_waiting_session_is_woken_by_new_work_and_reports_idle_when_there_is_none() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let w = session(&db, &["a"], json!({ "batch": 4 }));
    assert_eq!(next(&db, &w, 4, 0)["idle"], true);
    let t = db.tasker.clone();
    let maker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        t.call(
            "create_task",
            &json!({ "namespace": "t", "name": "one" }).to_string(),
        )
        .unwrap();
    });
    let started = Instant::now();
    let page = next(&db, &w, 4, 10_000);
    maker.join().unwrap();
    assert_eq!(page["steps"].as_array().unwrap().len(), 1);
    assert_eq!(page["idle"], false);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );
    // Holding a step, the session is not idle even when nothing else is claimable.
    assert_eq!(next(&db, &w, 3, 0)["idle"], false);
}

#[test]
fn two_sessions_waiting_for_the_same_handlers_share_the_work() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let ids: Vec<String> = (0..2)
        .map(|_| session(&db, &["a"], json!({ "batch": 5 })))
        .collect();
    let waiters: Vec<_> = ids
        .iter()
        .map(|w| {
            let (t, w) = (db.tasker.clone(), w.clone());
            std::thread::spawn(move || {
                let req = json!({ "worker_id": w, "max": 5, "wait_ms": 10_000 });
                let page: Value =
                    serde_json::from_str(&t.call("worker_next", &req.to_string()).unwrap())
                        .unwrap();
                page["steps"].as_array().unwrap().len()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = &db.tasker;
    let many: Vec<Value> = (0..10)
        .map(|_| json!({ "namespace": "t", "name": "one" }))
        .collect();
    for req in many {
        t.call("create_task", &req.to_string()).unwrap();
    }
    let got: usize = waiters.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(got >= 1, "the waiting sessions were served");
    let mut total = got;
    for w in &ids {
        total += next(&db, w, 5, 0)["steps"].as_array().unwrap().len();
    }
    assert_eq!(total, 10, "every step claimed exactly once");
}

#[test]
fn session_requests_are_checked() {
    let db = open(json!({}));
    db.register(template("one", &[("validate_order", &[])], fast_retry(3)));
    let opened = db.call("worker_open", json!({ "handlers": ["valdate_order"] }));
    let warning = opened["warning"].as_str().unwrap();
    assert!(
        warning.contains("`valdate_order` (did you mean `validate_order`?)"),
        "{warning}"
    );
    assert!(db
        .call("worker_open", json!({ "handlers": ["validate_order"] }))
        .get("warning")
        .is_none());
    let w = opened["worker_id"].as_str().unwrap();
    for (op, req, field) in [
        ("worker_open", json!({ "handlers": [] }), "handlers"),
        (
            "worker_open",
            json!({ "handlers": ["a"], "concurrency": 0 }),
            "concurrency",
        ),
        (
            "worker_open",
            json!({ "handlers": ["a"], "batch": 100_000 }),
            "batch",
        ),
        (
            "worker_open",
            json!({ "handlers": ["a"], "lease_ms": 0 }),
            "lease_ms",
        ),
        (
            "worker_open",
            json!({ "handlers": ["a"], "name": "" }),
            "name",
        ),
        ("worker_next", json!({ "worker_id": w, "max": 2 }), "max"),
        (
            "worker_report",
            json!({ "worker_id": w, "outcomes": [{ "step_id": 1 }] }),
            "outcomes[0]",
        ),
        (
            "worker_report",
            json!({ "worker_id": w, "outcomes": [{ "step_id": 1, "result": 1, "release": true }] }),
            "outcomes[0]",
        ),
    ] {
        let e = db.call_err(op, req.clone());
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{op} {req}: {e}");
        assert!(e.message.starts_with(field), "{op} {req}: {e}");
    }
    let e = db.call_err("worker_stats", json!({ "worker_id": "w999" }));
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = db.call_err("worker_next", json!({ "worker_id": w, "bogus": 1 }));
    assert_eq!(e.code, ErrorCode::InvalidArgument);
}

#[test]
fn a_waiting_worker_next_ends_with_closed_when_its_handle_closes() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    // A second handle on the same database shares the engine; closing it ends the
    // calls made through it, not the engine.
    let mut config = json!({ "database_url": db.url });
    if let Some(schema) = &db.schema {
        config["postgres_schema"] = json!(schema);
    }
    let other = tasker_core::api::Tasker::open(&config.to_string()).unwrap();
    let opened: Value = serde_json::from_str(
        &other
            .call("worker_open", &json!({ "handlers": ["a"] }).to_string())
            .unwrap(),
    )
    .unwrap();
    let w = opened["worker_id"].as_str().unwrap().to_owned();
    let waiting = other.clone();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        waiting.call(
            "worker_next",
            &json!({ "worker_id": w, "max": 1, "wait_ms": 20_000 }).to_string(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    other.close();
    let e = waiter
        .join()
        .unwrap()
        .expect_err("the wait returned normally after close");
    assert_eq!(e.code, ErrorCode::Closed, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended by the close, not the wait"
    );
    // The engine stays open for the other handle.
    assert_eq!(next_idle(&db), json!(true));
}

fn next_idle(db: &Db) -> Value {
    let w = session(db, &["a"], json!({}));
    next(db, &w, 1, 0)["idle"].clone()
}

#[test]
fn a_handler_whose_steps_cannot_be_claimed_does_not_starve_the_others() {
    if common::on_postgres() {
        // The broken row is made with SQLite's own tools; the claimer is store-neutral.
        return;
    }
    let db = open(json!({}));
    db.register(template(
        "two",
        &[("bad", &[]), ("good", &[])],
        fast_retry(3),
    ));
    let ids: Vec<i64> = (0..3).map(|_| db.create("two", json!({}))).collect();
    // A stored config that is no longer JSON: every claim that includes the `bad`
    // handler fails in the store.
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE tasker_steps SET config = 'not json' WHERE handler = 'bad'",
        [],
    )
    .unwrap();
    drop(conn);
    let w = session(&db, &["bad", "good"], json!({ "batch": 10 }));
    let page = next(&db, &w, 10, 0);
    let steps = page["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        3,
        "the good handler's steps are served: {page}"
    );
    assert!(steps.iter().all(|s| s["handler"] == "good"));
    let outcomes: Vec<Value> = steps
        .iter()
        .map(|s| json!({ "step_id": s["step_id"], "result": 1 }))
        .collect();
    report(&db, &w, json!(outcomes));
    // Later claims leave the broken handler out instead of failing every time.
    for _ in 0..3 {
        let page = next(&db, &w, 10, 0);
        assert_eq!(page["steps"], json!([]), "{page}");
    }
    // (get_task would refuse the broken row too: read the states directly.)
    let conn = rusqlite::Connection::open(&path).unwrap();
    for id in ids {
        let states: Vec<(String, String)> = conn
            .prepare("SELECT handler, state FROM tasker_steps WHERE task_id = ?1 ORDER BY handler")
            .unwrap()
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            states,
            [
                ("bad".to_owned(), "ready".to_owned()),
                ("good".to_owned(), "complete".to_owned())
            ]
        );
    }
}
