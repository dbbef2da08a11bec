//! Engine behaviour on a real SQLite file: fencing, leases, retries, operator actions,
//! idempotency, validation, and refusals that change nothing.

mod common;

use common::{fast_retry, open, template, Db};
use serde_json::{json, Value};
use tasker_core::ErrorCode;

fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

#[test]
fn a_stale_claim_token_gets_lease_lost_and_changes_nothing() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.create("one", json!({}));
    let first = db.claim(&["a"], 1, 1).remove(0);
    sleep_ms(10);
    assert_eq!(db.call("sweep", json!({}))["expired"], 1);
    let second = db.claim_wait(&["a"], 1, 60_000).remove(0);
    assert_ne!(first["claim_token"], second["claim_token"]);
    assert_eq!(second["attempt"], 2);

    let before = db.fingerprint();
    for (op, extra) in [
        ("complete_step", json!({ "result": 1 })),
        ("fail_step", json!({ "error": { "message": "late" } })),
        ("heartbeat", json!({})),
    ] {
        let mut req = json!({ "step_id": first["step_id"], "claim_token": first["claim_token"] });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let e = db.call_err(op, req);
        assert_eq!(e.code, ErrorCode::LeaseLost, "{op}: {e}");
    }
    assert_eq!(db.fingerprint(), before);
    let step = db.step(id, "a");
    assert_eq!(step["state"], "running");
    assert_eq!(step["result"], Value::Null);

    db.complete(&second, json!("winner"));
    assert_eq!(db.step(id, "a")["result"], "winner");
    assert_eq!(db.task(id)["state"], "complete");
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": second["step_id"], "claim_token": second["claim_token"], "result": 2 }),
    );
    assert_eq!(
        e.code,
        ErrorCode::LeaseLost,
        "a second report of the same attempt is refused"
    );
    assert_eq!(db.step(id, "a")["result"], "winner");
}

#[test]
fn expired_leases_are_retried_then_exhausted_and_recorded() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(2)));
    let id = db.create("one", json!({}));
    db.claim(&["a"], 1, 1);
    sleep_ms(10);
    assert_eq!(db.call("sweep", json!({}))["expired"], 1);
    let step = db.step(id, "a");
    assert_eq!(step["state"], "ready");
    assert_eq!(step["error"]["kind"], "lease_expired");
    assert_eq!(db.claim_wait(&["a"], 1, 1).len(), 1);
    sleep_ms(10);
    assert_eq!(db.call("sweep", json!({}))["expired"], 1);
    assert_eq!(db.step(id, "a")["state"], "error");
    assert_eq!(db.task(id)["state"], "error");
    let events = db.events(id);
    assert_eq!(
        events.iter().filter(|e| *e == "step.lease_expired").count(),
        2,
        "{events:?}"
    );
    assert_eq!(events.last().unwrap(), "task.failed");
}

#[test]
fn the_background_sweep_takes_back_a_dead_workers_step() {
    let db = open(json!({ "sweep_interval_ms": 20 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.create("one", json!({}));
    db.claim(&["a"], 1, 1);
    // No explicit sweep: the engine's own sweeper must take it back.
    let again = db.call("claim", json!({ "handlers": ["a"], "wait_ms": 5000 }))["steps"].clone();
    assert_eq!(again.as_array().unwrap().len(), 1);
    assert_eq!(again[0]["attempt"], 2);
    db.complete(&again[0], json!(null));
    assert_eq!(db.task(id)["state"], "complete");
}

#[test]
fn heartbeats_extend_the_lease_but_not_past_the_timeout() {
    let db = open(json!({}));
    let mut t = template("one", &[("a", &[])], fast_retry(1));
    t["steps"][0]["timeout_s"] = json!(1);
    db.register(t);
    db.create("one", json!({}));
    let s = db.claim(&["a"], 1, 100).remove(0);
    let hb = db.call(
        "heartbeat",
        json!({ "step_id": s["step_id"], "claim_token": s["claim_token"], "lease_ms": 600_000 }),
    );
    // The lease is capped at started_at + timeout (1 s), not 10 minutes away.
    let expires = hb["lease_expires_at"].as_str().unwrap().to_owned();
    assert!(expires.as_str() > s["lease_expires_at"].as_str().unwrap());
    let ms_of = |ts: &str| -> i64 {
        let secs: f64 = ts[17..23].parse().unwrap();
        let mins: i64 = ts[14..16].parse().unwrap();
        mins * 60_000 + (secs * 1000.0) as i64
    };
    let span =
        (ms_of(&expires) - ms_of(s["lease_expires_at"].as_str().unwrap())).rem_euclid(3_600_000);
    assert!(
        span <= 1000,
        "lease extended by {span} ms, past the 1 s timeout"
    );
}

#[test]
fn failures_follow_the_policy_and_retry_after() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.create("one", json!({}));
    let s = db.claim(&["a"], 1, 60_000).remove(0);
    let out = db.call(
        "fail_step",
        json!({ "step_id": s["step_id"], "claim_token": s["claim_token"],
                "error": { "message": "rate limited", "kind": "RateLimit", "retry_after_ms": 3_600_000, "details": {"status": 429} } }),
    );
    assert_eq!(out["state"], "ready");
    assert_eq!(out["attempt"], 1);
    // retry_after_ms pushes the retry an hour out: nothing is claimable now.
    assert!(db.claim(&["a"], 1, 60_000).is_empty());
    let step = db.step(id, "a");
    assert_eq!(step["error"]["kind"], "RateLimit");
    assert_eq!(step["error"]["details"]["status"], 429);
    let explain = db.call("explain_task", json!({ "task_id": id }));
    assert_eq!(
        explain["steps"][0]["status"], "retry_scheduled",
        "{explain}"
    );
}

#[test]
fn a_permanent_failure_errors_the_task_after_independent_work_finishes() {
    let db = open(json!({}));
    db.register(template(
        "two",
        &[("a", &[]), ("b", &[]), ("c", &["a"])],
        fast_retry(3),
    ));
    let id = db.create("two", json!({}));
    let steps = db.claim(&["a", "b"], 10, 60_000);
    assert_eq!(steps.len(), 2);
    let a = steps.iter().find(|s| s["step_name"] == "a").unwrap();
    let b = steps.iter().find(|s| s["step_name"] == "b").unwrap();
    let out = db.call(
        "fail_step",
        json!({ "step_id": a["step_id"], "claim_token": a["claim_token"], "error": { "message": "bad card", "retryable": false } }),
    );
    assert_eq!(out["state"], "error");
    assert_eq!(out["task_state"], "running", "b is still running");
    db.complete(b, json!(1));
    let task = db.task(id);
    assert_eq!(task["state"], "error");
    let explain = db.call("explain_task", json!({ "task_id": id }));
    let c = explain["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "c")
        .unwrap();
    assert_eq!(c["status"], "blocked");
    assert_eq!(c["blocked_by"], json!(["a"]));

    // Operator retries the errored step: the task runs again and completes.
    let r = db.call("retry_step", json!({ "task_id": id, "step_name": "a" }));
    assert_eq!(r["task_state"], "running");
    let a2 = db.claim(&["a"], 1, 60_000).remove(0);
    assert_eq!(
        a2["attempt"], 1,
        "an operator retry starts a fresh attempt budget"
    );
    db.complete(&a2, json!(2));
    let c2 = db.claim(&["c"], 1, 60_000).remove(0);
    assert_eq!(c2["results"]["a"], 2);
    db.complete(&c2, json!(3));
    assert_eq!(db.task(id)["state"], "complete");
    let ev = db.events(id);
    assert!(
        ev.contains(&"task.failed".to_owned()) && ev.contains(&"task.resumed".to_owned()),
        "{ev:?}"
    );
}

#[test]
fn resolving_a_step_by_hand_lets_dependents_run_with_its_result() {
    let db = open(json!({}));
    db.register(template("lin", &[("a", &[]), ("b", &["a"])], fast_retry(1)));
    let id = db.create("lin", json!({}));
    let a = db.claim(&["a"], 1, 60_000).remove(0);
    db.call(
        "fail_step",
        json!({ "step_id": a["step_id"], "claim_token": a["claim_token"], "error": { "message": "x" } }),
    );
    assert_eq!(db.task(id)["state"], "error");
    let r = db.call(
        "resolve_step",
        json!({ "task_id": id, "step_name": "a", "result": {"manual": true}, "reason": "fixed by hand" }),
    );
    assert_eq!(r["state"], "resolved_manually");
    assert_eq!(r["task_state"], "running");
    let b = db.claim(&["b"], 1, 60_000).remove(0);
    assert_eq!(b["results"]["a"], json!({"manual": true}));
    db.complete(&b, json!(null));
    assert_eq!(db.task(id)["state"], "complete");
    let e = db.call_err("resolve_step", json!({ "task_id": id, "step_name": "a" }));
    assert_eq!(e.code, ErrorCode::InvalidState);
}

#[test]
fn cancelling_fences_out_running_workers() {
    let db = open(json!({}));
    db.register(template("lin", &[("a", &[]), ("b", &["a"])], fast_retry(1)));
    let id = db.create("lin", json!({}));
    let a = db.claim(&["a"], 1, 60_000).remove(0);
    let out = db.call(
        "cancel_task",
        json!({ "task_id": id, "reason": "customer asked" }),
    );
    assert_eq!(out["state"], "cancelled");
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": a["step_id"], "claim_token": a["claim_token"], "result": 1 }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);
    let task = db.task(id);
    assert_eq!(task["state"], "cancelled");
    assert!(task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "cancelled"));
    assert!(db.claim(&["a", "b"], 5, 1000).is_empty());
    assert_eq!(
        db.call("cancel_task", json!({ "task_id": id }))["changed"],
        false
    );
    let e = db.call_err("retry_step", json!({ "task_id": id, "step_name": "a" }));
    assert_eq!(e.code, ErrorCode::InvalidState);
}

#[test]
fn idempotency_keys_return_the_existing_task() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let req = json!({ "namespace": "t", "name": "one", "context": {"n": 1}, "idempotency_key": "order-42" });
    let first = db.call("create_task", req.clone());
    let second = db.call("create_task", req);
    assert_eq!(first["task_id"], second["task_id"]);
    assert_eq!(first["created"], true);
    assert_eq!(second["created"], false);
    assert_eq!(
        db.call("list_tasks", json!({}))["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn bad_input_gets_a_stable_code_and_changes_nothing() {
    let db = open(json!({ "max_payload_bytes": 1024, "max_request_bytes": 4096 }));
    let mut t = template("one", &[("a", &[])], fast_retry(1));
    t["input_schema"] = json!({ "type": "object", "required": ["order_id"], "properties": { "order_id": { "type": "integer" } } });
    db.register(t);
    let id = db.create("one", json!({ "order_id": 1 }));
    let before = db.fingerprint();
    let raw = |op: &str, req: &str| db.tasker.call(op, req).unwrap_err().code;
    assert_eq!(raw("create_task", "{not json"), ErrorCode::InvalidJson);
    assert_eq!(
        raw("create_task", r#"{"namespace":"t","name":"one","extra":1}"#),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        raw("create_task", r#"{"namespace":"t"}"#),
        ErrorCode::InvalidArgument
    );
    assert_eq!(raw("no_such_op", "{}"), ErrorCode::UnknownOperation);
    assert_eq!(raw("get_task", &"x".repeat(5000)), ErrorCode::TooLarge);
    let cases: Vec<(&str, Value, ErrorCode)> = vec![
        (
            "create_task",
            json!({ "namespace": "t", "name": "one", "context": {} }),
            ErrorCode::SchemaViolation,
        ),
        (
            "create_task",
            json!({ "namespace": "t", "name": "one", "context": { "order_id": "x" } }),
            ErrorCode::SchemaViolation,
        ),
        (
            "create_task",
            json!({ "namespace": "t", "name": "one", "context": { "order_id": 1, "pad": "y".repeat(2000) } }),
            ErrorCode::TooLarge,
        ),
        (
            "create_task",
            json!({ "namespace": "t", "name": "nope" }),
            ErrorCode::NotFound,
        ),
        ("get_task", json!({ "task_id": 999 }), ErrorCode::NotFound),
        (
            "cancel_task",
            json!({ "task_id": 999 }),
            ErrorCode::NotFound,
        ),
        (
            "retry_step",
            json!({ "task_id": id, "step_name": "a" }),
            ErrorCode::InvalidState,
        ),
        (
            "retry_step",
            json!({ "task_id": id, "step_name": "zz" }),
            ErrorCode::NotFound,
        ),
        (
            "retry_step",
            json!({ "task_id": id }),
            ErrorCode::InvalidArgument,
        ),
        (
            "complete_step",
            json!({ "step_id": 999, "claim_token": "1", "result": 1 }),
            ErrorCode::NotFound,
        ),
        (
            "complete_step",
            json!({ "step_id": 1, "claim_token": "not-a-token" }),
            ErrorCode::InvalidArgument,
        ),
        (
            "claim",
            json!({ "handlers": [] }),
            ErrorCode::InvalidArgument,
        ),
        (
            "claim",
            json!({ "handlers": ["a"], "limit": 0 }),
            ErrorCode::InvalidArgument,
        ),
        (
            "list_tasks",
            json!({ "state": "weird" }),
            ErrorCode::InvalidArgument,
        ),
        (
            "events",
            json!({ "types": ["step.exploded"] }),
            ErrorCode::InvalidArgument,
        ),
        (
            "register_template",
            json!({ "template": template("cyc", &[("a", &["b"]), ("b", &["a"])], fast_retry(1)) }),
            ErrorCode::InvalidTemplate,
        ),
        (
            "register_template",
            json!({ "yaml": "namespace: t\nname: one\nversion: '1'\nsteps: [{name: z, handler: z}]" }),
            ErrorCode::Conflict,
        ),
        (
            "register_template",
            json!({ "yaml": "a", "path": "b" }),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (op, req, code) in cases {
        let e = db.call_err(op, req.clone());
        assert_eq!(e.code, code, "{op} {req}: {e}");
        assert!(!e.message.is_empty());
    }
    assert_eq!(db.fingerprint(), before);
}

#[test]
fn handles_share_one_engine_per_database_and_close_cleanly() {
    let db = open(json!({}));
    let other =
        tasker_core::api::Tasker::open(&json!({ "database_url": db.url, "postgres_schema": db.schema.as_deref().unwrap_or("tasker") }).to_string()).unwrap();
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    // The second handle sees the first one's template through the shared engine cache.
    let out = other
        .call(
            "create_task",
            &json!({ "namespace": "t", "name": "one" }).to_string(),
        )
        .unwrap();
    assert!(out.contains("task_id"));
    other.close();
    other.close();
    assert_eq!(
        other.call("ping", "{}").unwrap_err().code,
        ErrorCode::Closed
    );
    // Closing one handle leaves the other working.
    assert_eq!(db.call("ping", json!({}))["ok"], true);

    let id = tasker_core::api::handles::insert(db.tasker.clone());
    assert!(tasker_core::api::handles::get(id).is_ok());
    tasker_core::api::handles::remove(id).unwrap();
    assert_eq!(
        tasker_core::api::handles::get(id).unwrap_err().code,
        ErrorCode::Closed
    );
    assert_eq!(
        tasker_core::api::handles::get(u64::MAX).unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn subscribers_receive_events_in_order() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let sub = db
        .tasker
        .subscribe(
            0,
            Some(vec!["task.created".into(), "task.completed".into()]),
            move |e| {
                let _ = tx.send(e["event"].as_str().unwrap().to_owned());
            },
        )
        .unwrap();
    db.create("one", json!({}));
    let s = db.claim(&["a"], 1, 60_000).remove(0);
    db.complete(&s, json!(1));
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(rx.recv_timeout(wait).unwrap(), "task.created");
    assert_eq!(rx.recv_timeout(wait).unwrap(), "task.completed");
    sub.stop();
}

#[test]
fn a_waiting_claim_is_woken_by_new_work() {
    // The fallback poll is 60 s and the claim waits up to 30 s: only the in-process
    // notification can hand the waiter its step before the 15 s the test allows.
    let db = open(json!({ "claim_poll_ms": 60_000 }));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let t = db.tasker.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(t.call(
            "claim",
            &json!({ "handlers": ["a"], "wait_ms": 30_000 }).to_string(),
        ));
    });
    sleep_ms(100);
    db.create("one", json!({}));
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(15))
        .expect("the waiting claim was not woken by the new task")
        .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["steps"].as_array().unwrap().len(), 1);
}

#[test]
fn templates_are_found_in_the_template_directory() {
    let db = open(json!({}));
    let dir = db.dir.path().join("templates/t/fromfile");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("2.0.0.yaml"),
        "namespace: t\nname: fromfile\nversion: 2.0.0\nsteps:\n  - name: a\n    handler: a\n",
    )
    .unwrap();
    let out = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "fromfile", "version": "2.0.0" }),
    );
    assert_eq!(out["created"], true);
    let tpl = db.call(
        "get_template",
        json!({ "namespace": "t", "name": "fromfile" }),
    );
    assert_eq!(tpl["template"]["version"], "2.0.0");
}

#[test]
fn batch_completion_reports_each_item() {
    let db = open(json!({}));
    db.register(template(
        "fan",
        &[("a", &[]), ("b", &[]), ("c", &["a", "b"])],
        fast_retry(1),
    ));
    let id = db.create("fan", json!({}));
    let steps = db.claim(&["a", "b"], 10, 60_000);
    let items: Vec<Value> = steps
        .iter()
        .map(|s| json!({ "step_id": s["step_id"], "claim_token": s["claim_token"], "result": s["step_name"] }))
        .chain(std::iter::once(json!({ "step_id": 424242, "claim_token": "7", "result": 0 })))
        .collect();
    let out = db.call("complete_steps", json!({ "items": items }));
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[1]["ok"], true);
    assert_eq!(results[2]["error"]["code"], "not_found");
    let c = db.claim(&["c"], 1, 60_000).remove(0);
    assert_eq!(c["results"], json!({ "a": "a", "b": "b" }));
    assert_eq!(db.step(id, "c")["pending_parents"], 0);
}

#[test]
fn completing_can_claim_the_next_batch_in_the_same_transaction() {
    let db = open(json!({}));
    db.register(template(
        "lin",
        &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
        fast_retry(1),
    ));
    let id = db.create("lin", json!({}));
    let a = db.claim(&["a", "b", "c"], 10, 60_000).remove(0);
    let out = db.call(
        "complete_steps",
        json!({ "items": [{ "step_id": a["step_id"], "claim_token": a["claim_token"], "result": 1 }],
                "claim": { "handlers": ["a", "b", "c"], "limit": 10, "worker_id": "w" } }),
    );
    assert_eq!(out["results"][0]["ok"], true);
    // b was released by a's result and claimed by the same call, with a's result.
    let steps = out["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["step_name"], "b");
    assert_eq!(steps[0]["results"]["a"], 1);
    assert_eq!(db.step(id, "b")["state"], "running");
    assert_eq!(db.step(id, "b")["worker"], "w");
    // A refused claim part refuses the whole call and records nothing.
    let before = db.fingerprint();
    let e = db.call_err(
        "complete_steps",
        json!({ "items": [{ "step_id": steps[0]["step_id"], "claim_token": steps[0]["claim_token"], "result": 2 }],
                "claim": { "handlers": [], "limit": 10 } }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert_eq!(db.fingerprint(), before);
    assert_eq!(db.step(id, "b")["state"], "running");
}

#[test]
fn releasing_a_step_hands_it_back_without_spending_an_attempt() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let id = db.create("one", json!({}));
    let s = db.claim(&["a"], 1, 60_000).remove(0);
    let out = db.call(
        "release_step",
        json!({ "step_id": s["step_id"], "claim_token": s["claim_token"], "delay_ms": 3_600_000, "reason": "shutting down" }),
    );
    assert_eq!(out["state"], "ready");
    // Held back by delay_ms, and the token is spent.
    assert!(db.claim(&["a"], 1, 60_000).is_empty());
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": s["step_id"], "claim_token": s["claim_token"], "result": 1 }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);
    let step = db.step(id, "a");
    assert_eq!(step["state"], "ready");
    assert_eq!(step["attempts"], 0, "a released attempt is not counted");
    assert_eq!(db.task(id)["state"], "running");
    let ev = db.events(id);
    assert_eq!(ev.last().unwrap(), "step.released", "{ev:?}");

    // With no delay it is claimable at once, still as attempt 1 of 1.
    let db2 = open(json!({}));
    db2.register(template("one", &[("a", &[])], fast_retry(1)));
    db2.create("one", json!({}));
    let s = db2.claim(&["a"], 1, 60_000).remove(0);
    db2.call(
        "release_step",
        json!({ "step_id": s["step_id"], "claim_token": s["claim_token"] }),
    );
    let again = db2.claim(&["a"], 1, 60_000).remove(0);
    assert_eq!(again["attempt"], 1);
    db2.complete(&again, json!("done"));
}

#[test]
fn stats_report_throughput_rates_slowest_work_and_levels() {
    let db = open(json!({}));
    db.register(template(
        "dia",
        &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
        fast_retry(1),
    ));
    let ok = db.create("dia", json!({}));
    let worker = tasker_core::worker::Worker::new(&db.tasker, "w").handle("a", |_| Ok(json!(1)));
    worker.run_until_idle().unwrap();
    let rest = tasker_core::worker::Worker::new(&db.tasker, "w")
        .handle("b", |_| Ok(json!(2)))
        .handle("c", |_| Ok(json!(3)))
        .handle("d", |_| Ok(json!(4)));
    rest.run_until_idle().unwrap();
    let bad = db.create("dia", json!({}));
    let a = db.claim(&["a"], 1, 60_000).remove(0);
    db.call(
        "fail_step",
        json!({ "step_id": a["step_id"], "claim_token": a["claim_token"], "error": { "message": "no", "retryable": false } }),
    );
    assert_eq!(db.task(bad)["state"], "error");

    let levels: Vec<i64> = db.task(ok)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["level"].as_i64().unwrap())
        .collect();
    assert_eq!(levels, [0, 1, 1, 2]);
    let explain = db.call("explain_task", json!({ "task_id": bad }));
    let d = explain["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "d")
        .unwrap();
    assert_eq!(d["level"], 2);

    let stats = db.call("stats", json!({ "window_ms": 600_000 }));
    let t = &stats["throughput"];
    assert_eq!(t["window_ms"], 600_000);
    assert_eq!(t["steps_completed"], 4);
    assert_eq!(t["steps_failed"], 1);
    assert_eq!(t["tasks_completed"], 1);
    assert_eq!(t["tasks_failed"], 1);
    assert_eq!(t["completion_rate"], 0.5);
    assert_eq!(t["error_rate"], 0.5);
    assert_eq!(stats["slowest_tasks"][0]["task_id"], ok);
    assert_eq!(stats["slowest_tasks"].as_array().unwrap().len(), 1);
    assert_eq!(stats["tasks"]["complete"], 1);
    assert_eq!(stats["tasks"]["error"], 1);
    // The window ends now: after a pause, a 5 ms window holds nothing, and the rates
    // are null rather than a division by zero.
    sleep_ms(20);
    let quiet = db.call("stats", json!({ "window_ms": 5 }));
    assert_eq!(quiet["throughput"]["steps_completed"], 0);
    assert_eq!(quiet["throughput"]["completion_rate"], Value::Null);
}

#[test]
fn payloads_come_back_exactly_as_given() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    // Key order and number spelling are the user's: nothing re-parses a stored payload.
    let context = r#"{"z":1,"a":2.50,"m":{"y":[1.0,1e3],"b":null}}"#;
    let result = r#"{"total":10.00,"currency":"EUR","amount_cents":1000}"#;
    let out = db
        .tasker
        .call(
            "create_task",
            &format!(r#"{{"namespace":"t","name":"one","context":{context}}}"#),
        )
        .unwrap();
    let id = serde_json::from_str::<Value>(&out).unwrap()["task_id"]
        .as_i64()
        .unwrap();
    let step = db.claim(&["a"], 1, 30_000).remove(0);
    db.tasker
        .call(
            "complete_step",
            &format!(
                r#"{{"step_id":{},"claim_token":"{}","result":{result}}}"#,
                step["step_id"],
                step["claim_token"].as_str().unwrap()
            ),
        )
        .unwrap();
    let task = db
        .tasker
        .call("get_task", &json!({ "task_id": id }).to_string())
        .unwrap();
    assert!(
        task.contains(&format!(r#""context":{context}"#)),
        "context changed: {task}"
    );
    assert!(
        task.contains(&format!(r#""result":{result}"#)),
        "result changed: {task}"
    );
}

/// Reads the whole event log `limit` events at a time, from cursor 0.
fn read_log(db: &Db, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page = db.call("events", json!({ "since": since, "limit": limit }));
        let events = page["events"].as_array().unwrap();
        out.extend(events.iter().cloned());
        let next = page["next_cursor"].as_i64().unwrap();
        if events.is_empty() || next == since {
            return out;
        }
        since = next;
    }
}

/// The event stream is the same however it is paged, ids only increase, each task's
/// events come in the order they happened, and the newest id is the last event's. On
/// PostgreSQL one transition row may hold two events (migration 0013): pages that end
/// between them, and claims and completions of several tasks in one call, are where
/// that could go wrong.
#[test]
fn every_page_size_reads_the_same_ordered_event_stream() {
    let db = open(json!({}));
    db.register(template(
        "pair",
        &[("a", &[]), ("b", &["a"])],
        fast_retry(1),
    ));
    let tasks: Vec<i64> = (0..3).map(|_| db.create("pair", json!({}))).collect();
    for handler in ["a", "b"] {
        let steps = db.claim(&[handler], 10, 30_000);
        assert_eq!(steps.len(), 3, "one call claims every task's {handler}");
        let done: Vec<Value> = steps
            .iter()
            .map(|s| json!({ "step_id": s["step_id"], "claim_token": s["claim_token"], "result": 1 }))
            .collect();
        db.call("complete_steps", json!({ "items": done }));
    }
    let whole = read_log(&db, 1000);
    for limit in [1, 2, 3, 7] {
        assert_eq!(read_log(&db, limit), whole, "pages of {limit}");
    }
    let ids: Vec<i64> = whole.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    let last = db.call("stats", json!({}))["last_event_id"]
        .as_i64()
        .unwrap();
    assert_eq!(Some(&last), ids.last(), "the newest id is the last event's");
    for task in tasks {
        let names: Vec<String> = whole
            .iter()
            .filter(|e| e["task_id"] == task)
            .map(|e| match e["step_name"].as_str() {
                Some(step) => format!("{}:{step}", e["event"].as_str().unwrap()),
                None => e["event"].as_str().unwrap().to_owned(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "task.created",
                "step.ready:a",
                "step.created:b",
                "task.started",
                "step.started:a",
                "step.completed:a",
                "step.ready:b",
                "step.started:b",
                "step.completed:b",
                "task.completed",
            ],
            "task {task}"
        );
    }
}
