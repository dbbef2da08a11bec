//! Signals (steps with `wait_for`) on the store under test (SQLite, or PostgreSQL with
//! TASKER_TEST_STORE=postgres): a step waits in `waiting` until `send_signal`, its
//! payload becomes the result and the children proceed; a signal sent early is kept; a
//! wait past its deadline fails with `signal_timeout`; bad signals change nothing.

mod common;

use common::{fast_retry, open};
use serde_json::{json, Value};
use tasker_core::ErrorCode;

/// fetch -> approve (waits for `approved`, 60 s) -> ship.
fn approval() -> Value {
    json!({
        "namespace": "t", "name": "approval", "version": "1",
        "defaults": { "retry": fast_retry(3) },
        "steps": [
            { "name": "fetch", "handler": "fetch" },
            { "name": "approve", "depends_on": ["fetch"], "wait_for": { "signal": "approved", "timeout_s": 60 } },
            { "name": "ship", "handler": "ship", "depends_on": ["approve"] }
        ]
    })
}

fn run_fetch(db: &common::Db) {
    let step = db.claim(&["fetch"], 1, 60_000).remove(0);
    db.complete(&step, json!({ "order": 7 }));
}

#[test]
fn a_signal_completes_the_waiting_step_and_its_payload_reaches_the_children() {
    let db = open(json!({ "clock": "manual" }));
    db.register(approval());
    let id = db.create("approval", json!({}));
    assert_eq!(db.step(id, "approve")["state"], "pending");
    run_fetch(&db);
    let approve = db.step(id, "approve");
    assert_eq!(approve["state"], "waiting");
    assert_eq!(approve["handler"], "tasker.signal");
    assert_eq!(
        approve["config"],
        json!({ "signal": "approved", "timeout_s": 60 })
    );
    assert!(approve["wait_until"].is_string());
    let explained = db.call("explain_task", json!({ "task_id": id }));
    let e = &explained["steps"][0];
    assert_eq!(e["status"], "waiting_for_signal", "{explained}");
    assert_eq!(e["actions"][0]["operation"], "send_signal");
    let stats = db.call("stats", json!({}));
    assert_eq!(stats["steps"]["waiting"], 1, "{stats}");
    assert_eq!(db.task(id)["state"], "running");
    assert!(db.claim(&["ship"], 1, 60_000).is_empty());

    let out = db.call(
        "send_signal",
        json!({ "task_id": id, "name": "approved", "payload": { "by": "ada" } }),
    );
    assert_eq!(out["signal"], "approved");
    assert_eq!(out["steps"][0]["step_name"], "approve");
    assert_eq!(out["steps"][0]["state"], "complete");
    assert_eq!(db.step(id, "approve")["result"], json!({ "by": "ada" }));
    let ship = db.claim(&["ship"], 1, 60_000).remove(0);
    assert_eq!(ship["results"]["approve"], json!({ "by": "ada" }));
    db.complete(&ship, json!(null));
    assert_eq!(db.task(id)["state"], "complete");
    let events = db.events(id);
    for name in ["step.waiting", "step.signalled"] {
        assert!(events.iter().any(|e| e == name), "{name} in {events:?}");
    }
    // The task is finished: another signal is refused and changes nothing.
    let before = db.fingerprint();
    let e = db.call_err("send_signal", json!({ "task_id": id, "name": "approved" }));
    assert_eq!(e.code, ErrorCode::InvalidState, "{e}");
    assert_eq!(db.fingerprint(), before);
}

#[test]
fn a_signal_sent_before_the_step_waits_is_kept_and_taken_when_it_gets_there() {
    let db = open(json!({ "clock": "manual" }));
    db.register(approval());
    let id = db.create("approval", json!({}));
    let out = db.call(
        "send_signal",
        json!({ "task_id": id, "name": "approved", "payload": "early" }),
    );
    assert_eq!(out["steps"][0]["state"], "pending", "{out}");
    assert_eq!(db.step(id, "approve")["state"], "pending");
    // The same name again is a conflict, and changes nothing.
    let before = db.fingerprint();
    let e = db.call_err(
        "send_signal",
        json!({ "task_id": id, "name": "approved", "payload": "twice" }),
    );
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert_eq!(db.fingerprint(), before);

    run_fetch(&db);
    let approve = db.step(id, "approve");
    assert_eq!(approve["state"], "complete");
    assert_eq!(approve["result"], "early");
    let ship = db.claim(&["ship"], 1, 60_000).remove(0);
    assert_eq!(ship["results"]["approve"], "early");
}

#[test]
fn a_root_wait_step_waits_from_creation() {
    let db = open(json!({}));
    db.register(json!({
        "namespace": "t", "name": "hook", "version": "1",
        "steps": [
            { "name": "hook", "wait_for": { "signal": "webhook" } },
            { "name": "use", "handler": "use", "depends_on": ["hook"] }
        ]
    }));
    let id = db.create("hook", json!({}));
    let hook = db.step(id, "hook");
    assert_eq!(hook["state"], "waiting");
    assert_eq!(hook["config"]["timeout_s"], 7 * 24 * 3600);
    db.call(
        "send_signal",
        json!({ "task_id": id, "name": "webhook", "payload": [1, 2] }),
    );
    let step = db.claim(&["use"], 1, 60_000).remove(0);
    assert_eq!(step["results"]["hook"], json!([1, 2]));
}

#[test]
fn a_wait_past_its_deadline_fails_permanently_with_signal_timeout() {
    let db = open(json!({ "clock": "manual" }));
    db.register(approval());
    let id = db.create("approval", json!({}));
    run_fetch(&db);
    db.call("advance_clock", json!({ "ms": 59_999 }));
    db.call("sweep", json!({}));
    assert_eq!(db.step(id, "approve")["state"], "waiting");
    db.call("advance_clock", json!({ "ms": 1 }));
    assert_eq!(db.call("sweep", json!({}))["expired"], 1);
    let approve = db.step(id, "approve");
    assert_eq!(approve["state"], "error");
    assert_eq!(approve["error"]["kind"], "signal_timeout");
    assert_eq!(approve["error"]["retryable"], false);
    assert_eq!(approve["errors"][0]["kind"], "signal_timeout");
    assert_eq!(db.task(id)["state"], "error");

    // A signal to the errored task is kept; an operator retry makes the step wait
    // again, and it takes the kept signal at once.
    let out = db.call(
        "send_signal",
        json!({ "task_id": id, "name": "approved", "payload": "late" }),
    );
    assert_eq!(out["steps"][0]["state"], "error");
    db.call(
        "retry_step",
        json!({ "task_id": id, "step_name": "approve" }),
    );
    assert_eq!(db.step(id, "approve")["state"], "complete");
    assert_eq!(db.step(id, "approve")["result"], "late");
    assert_eq!(db.task(id)["state"], "running");
}

#[test]
fn cancelling_and_resolving_take_waiting_steps_too() {
    let db = open(json!({}));
    db.register(approval());
    let a = db.create("approval", json!({}));
    run_fetch(&db);
    assert_eq!(db.step(a, "approve")["state"], "waiting");
    db.call("cancel_task", json!({ "task_id": a }));
    assert_eq!(db.step(a, "approve")["state"], "cancelled");
    let e = db.call_err("send_signal", json!({ "task_id": a, "name": "approved" }));
    assert_eq!(e.code, ErrorCode::InvalidState);

    let b = db.create("approval", json!({}));
    run_fetch(&db);
    db.call(
        "resolve_step",
        json!({ "task_id": b, "step_name": "approve", "result": "by hand" }),
    );
    let ship = db.claim(&["ship"], 1, 60_000).remove(0);
    assert_eq!(ship["results"]["approve"], "by hand");
    db.complete(&ship, json!(1));
    assert_eq!(db.task(b)["state"], "complete");
    assert_eq!(db.task(b)["steps_done"], 3);
}

#[test]
fn bad_signals_get_clear_errors_and_change_nothing() {
    let db = open(json!({}));
    db.register(approval());
    let id = db.create("approval", json!({}));
    let before = db.fingerprint();
    let cases = [
        (
            json!({ "task_id": 999_999, "name": "approved" }),
            ErrorCode::NotFound,
        ),
        (
            json!({ "task_id": id, "name": "aproved" }),
            ErrorCode::NotFound,
        ),
        (json!({ "task_id": id }), ErrorCode::InvalidArgument),
        (
            json!({ "task_id": id, "name": "" }),
            ErrorCode::InvalidArgument,
        ),
        (
            json!({ "task_id": id, "name": "a b" }),
            ErrorCode::InvalidArgument,
        ),
        (
            json!({ "task_id": id, "name": "approved", "extra": 1 }),
            ErrorCode::InvalidArgument,
        ),
        (
            json!({ "task_id": "1", "name": "approved" }),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let e = db.call_err("send_signal", req.clone());
        assert_eq!(e.code, code, "{req}: {e}");
    }
    let e = db.call_err("send_signal", json!({ "task_id": id, "name": "aproved" }));
    assert!(e.message.contains("did you mean `approved`"), "{e}");
    assert_eq!(db.fingerprint(), before);
    // The engine's handler names are not claimable nor declarable.
    let e = db.call_err(
        "claim",
        json!({ "handlers": ["tasker.signal"], "worker_id": "w" }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    for step in [
        json!({ "name": "a", "handler": "tasker.signal" }),
        json!({ "name": "a", "handler": "x", "wait_for": { "signal": "s" } }),
        json!({ "name": "a", "wait_for": { "signal": "s", "timeout_s": 0 } }),
        json!({ "name": "a", "wait_for": { "signal": "s" }, "config": {} }),
        json!({ "name": "a", "wait_for": { "signal": "no spaces" } }),
        json!({ "name": "a", "wait_for": { "signal": "s", "extra": 1 } }),
        json!({ "name": "a" }),
    ] {
        let t = json!({ "namespace": "t", "name": "bad", "version": "1", "steps": [step] });
        let e = db.call_err("register_template", json!({ "template": t }));
        assert_eq!(e.code, ErrorCode::InvalidTemplate, "{step}: {e}");
    }
}

#[test]
fn signals_racing_the_start_of_their_waits_are_never_lost() {
    let db = open(json!({}));
    db.register(approval());
    let ids: Vec<i64> = (0..40).map(|_| db.create("approval", json!({}))).collect();
    std::thread::scope(|s| {
        // One thread completes the parents (each completion starts a wait) while the
        // other sends the signals: some arrive early, some while the step starts to
        // wait, some after.
        s.spawn(|| {
            let mut done = 0;
            while done < ids.len() {
                for step in db.claim(&["fetch"], 3, 60_000) {
                    db.complete(&step, json!(1));
                    done += 1;
                }
            }
        });
        s.spawn(|| {
            for (i, id) in ids.iter().enumerate() {
                if i % 3 == 0 {
                    std::thread::yield_now();
                }
                db.call(
                    "send_signal",
                    json!({ "task_id": id, "name": "approved", "payload": i }),
                );
            }
        });
    });
    db.call("sweep", json!({}));
    for (i, id) in ids.iter().enumerate() {
        let approve = db.step(*id, "approve");
        assert_eq!(approve["state"], "complete", "task {id}: {approve}");
        assert_eq!(approve["result"], json!(i));
    }
}
