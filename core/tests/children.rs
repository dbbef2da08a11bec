//! Child tasks on the store under test (SQLite, or PostgreSQL with
//! TASKER_TEST_STORE=postgres): a handler starts child tasks with `create_task {parent}`
//! and its step waits for them (`complete_step {wait_for_children: true}`); the step
//! completes with their results in start order when the last one is final, or fails
//! with `child_failed`; keys make a repeated start return the same child; a stale claim
//! is refused with nothing stored; the sweep finishes a wait a process left behind.

mod common;

use common::{fast_retry, open, template, Db};
use serde_json::{json, Value};
use tasker_core::api::Tasker;
use tasker_core::ErrorCode;

/// spawn -> after, and a one-step child template.
fn setup(extra: Value) -> Db {
    let db = open(extra);
    db.register(template(
        "parent",
        &[("spawn", &[]), ("after", &["spawn"])],
        fast_retry(3),
    ));
    db.register(template("child", &[("work", &[])], fast_retry(1)));
    db
}

fn start_child(db: &Db, step: &Value, key: &str, context: Value) -> Value {
    db.call(
        "create_task",
        json!({
            "namespace": "t", "name": "child", "context": context, "idempotency_key": key,
            "parent": { "step_id": step["step_id"], "claim_token": step["claim_token"] },
        }),
    )
}

fn wait(db: &Db, step: &Value) -> Value {
    db.call(
        "complete_step",
        json!({ "step_id": step["step_id"], "claim_token": step["claim_token"], "wait_for_children": true }),
    )
}

#[test]
fn a_step_waits_for_its_children_and_completes_with_their_results_in_start_order() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let a = start_child(&db, &spawn, "a", json!({ "n": 1 }));
    let b = start_child(&db, &spawn, "b", json!({ "n": 2 }));
    assert_eq!(a["created"], true);
    let (a, b) = (
        a["task_id"].as_i64().unwrap(),
        b["task_id"].as_i64().unwrap(),
    );
    assert_ne!(a, b);
    let waited = wait(&db, &spawn);
    assert_eq!(waited["children"], 2);
    assert_eq!(waited["unfinished"], 2);
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "waiting");
    assert_eq!(step["children"], json!([a, b]));
    assert!(step["wait_until"].is_string());
    assert_eq!(db.task(id)["state"], "running");
    assert_eq!(
        db.task(b)["parent"],
        json!({ "task_id": id, "step_id": spawn["step_id"], "step_name": "spawn" })
    );
    assert!(db.events(id).contains(&"step.waiting".to_owned()));
    let explained = db.call("explain_task", json!({ "task_id": id }));
    let spawn_why = explained["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "spawn")
        .unwrap()
        .clone();
    assert_eq!(spawn_why["status"], "waiting_for_children", "{explained}");
    // The old token no longer holds the step.
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": spawn["step_id"], "claim_token": spawn["claim_token"], "result": 1 }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);

    // The children run; the second finishes first.
    let mut work = db.claim(&["work"], 2, 60_000);
    work.sort_by_key(|s| -s["task_id"].as_i64().unwrap());
    assert_eq!(work[0]["task_id"], b);
    db.complete(&work[0], json!({ "got": work[0]["context"]["n"] }));
    assert_eq!(db.step(id, "spawn")["state"], "waiting");
    assert_eq!(db.task(b)["state"], "complete");
    db.complete(&work[1], json!({ "got": work[1]["context"]["n"] }));

    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "complete");
    assert_eq!(
        step["result"],
        json!({ "children": [
            { "task_id": a, "key": "a", "state": "complete", "results": { "work": { "got": 1 } } },
            { "task_id": b, "key": "b", "state": "complete", "results": { "work": { "got": 2 } } },
        ] })
    );
    // Its own children proceed with that result.
    let after = db.claim(&["after"], 1, 60_000).remove(0);
    assert_eq!(after["results"]["spawn"]["children"][1]["task_id"], b);
    db.complete(&after, json!(null));
    assert_eq!(db.task(id)["state"], "complete");
}

#[test]
fn a_failed_child_fails_the_waiting_step_permanently() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let ok = start_child(&db, &spawn, "ok", json!({}))["task_id"]
        .as_i64()
        .unwrap();
    let bad = start_child(&db, &spawn, "bad", json!({}))["task_id"]
        .as_i64()
        .unwrap();
    wait(&db, &spawn);
    for w in db.claim(&["work"], 2, 60_000) {
        if w["task_id"] == bad {
            db.call(
                "fail_step",
                json!({ "step_id": w["step_id"], "claim_token": w["claim_token"],
                        "error": { "message": "boom", "retryable": false } }),
            );
        } else {
            db.complete(&w, json!(1));
        }
    }
    assert_eq!(db.task(ok)["state"], "complete");
    assert_eq!(db.task(bad)["state"], "error");
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "error");
    assert_eq!(step["error"]["kind"], "child_failed");
    assert_eq!(step["error"]["retryable"], false);
    assert_eq!(step["error"]["details"]["task_id"], bad);
    assert_eq!(step["error"]["details"]["key"], "bad");
    assert_eq!(db.task(id)["state"], "error");
    assert_eq!(db.step(id, "after")["state"], "pending");
}

#[test]
fn a_repeated_start_with_the_same_key_returns_the_same_child() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let first = start_child(&db, &spawn, "k", json!({ "n": 1 }));
    let again = start_child(&db, &spawn, "k", json!({ "n": 99 }));
    assert_eq!(again["task_id"], first["task_id"]);
    assert_eq!(again["created"], false);
    let other = start_child(&db, &spawn, "k2", json!({}));
    assert_ne!(other["task_id"], first["task_id"]);
    // A key of the longest length a key may have works for a child too.
    let long = "x".repeat(256);
    let longest = start_child(&db, &spawn, &long, json!({}));
    assert_eq!(
        start_child(&db, &spawn, &long, json!({}))["task_id"],
        longest["task_id"]
    );
    // The next attempt of the step (a retry after a crash) starts the same child again.
    db.call(
        "release_step",
        json!({ "step_id": spawn["step_id"], "claim_token": spawn["claim_token"] }),
    );
    let retried = db.claim(&["spawn"], 1, 60_000).remove(0);
    let third = start_child(&db, &retried, "k", json!({ "n": 1 }));
    assert_eq!(third["task_id"], first["task_id"]);
    assert_eq!(third["created"], false);
    assert_eq!(
        db.step(id, "spawn")["children"],
        json!([first["task_id"], other["task_id"], longest["task_id"]])
    );
    // A plain task of the same template with the same key is another task: the child's
    // key is scoped by its parent step.
    let plain = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "child", "idempotency_key": "k" }),
    );
    assert_ne!(plain["task_id"], first["task_id"]);
}

#[test]
fn a_stale_or_bad_parent_is_refused_and_nothing_is_stored() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let before = db.fingerprint();
    let stale = json!({ "step_id": spawn["step_id"], "claim_token": "12345" });
    let e = db.call_err(
        "create_task",
        json!({ "namespace": "t", "name": "child", "idempotency_key": "a", "parent": stale }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);
    let e = db.call_err(
        "create_task",
        json!({ "namespace": "t", "name": "child", "parent": { "step_id": spawn["step_id"], "claim_token": spawn["claim_token"] } }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("idempotency_key"), "{}", e.message);
    let e = db.call_err(
        "create_task",
        json!({ "namespace": "t", "name": "child", "idempotency_key": "a", "parent": { "step_id": 999_999, "claim_token": "1" } }),
    );
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = db.call_err(
        "create_task",
        json!({ "namespace": "t", "name": "child", "idempotency_key": "a", "parent": { "step_id": spawn["step_id"] } }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let e = db.call_err(
        "create_task",
        json!({ "namespace": "t", "name": "child", "idempotency_key": "a", "parent": { "step_id": spawn["step_id"], "claim_token": spawn["claim_token"], "x": 1 } }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let e = db.call_err(
        "create_tasks",
        json!({ "tasks": [{ "namespace": "t", "name": "child", "idempotency_key": "a", "parent": { "step_id": spawn["step_id"], "claim_token": spawn["claim_token"] } }] }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": spawn["step_id"], "claim_token": spawn["claim_token"], "result": 1, "wait_for_children": true }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let e = db.call_err(
        "complete_step",
        json!({ "step_id": spawn["step_id"], "claim_token": "777", "wait_for_children": true }),
    );
    assert_eq!(e.code, ErrorCode::LeaseLost);
    assert_eq!(db.fingerprint(), before);
    assert_eq!(db.step(id, "spawn")["state"], "running");
    assert!(db.step(id, "spawn").get("children").is_none());
}

#[test]
fn a_step_without_children_that_waits_completes_at_once() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let waited = wait(&db, &spawn);
    assert_eq!(waited["unfinished"], 0);
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "complete");
    assert_eq!(step["result"], json!({ "children": [] }));
    assert_eq!(db.step(id, "after")["state"], "ready");
}

#[test]
fn children_finished_before_the_wait_complete_the_step_at_once() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    start_child(&db, &spawn, "a", json!({}));
    let w = db.claim(&["work"], 1, 60_000).remove(0);
    db.complete(&w, json!("done"));
    let waited = wait(&db, &spawn);
    assert_eq!(waited["unfinished"], 0);
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "complete");
    assert_eq!(step["result"]["children"][0]["results"]["work"], "done");
}

#[test]
fn the_sweep_finishes_a_wait_whose_follow_up_never_ran() {
    // No background sweep during the test: only the explicit `sweep` below.
    let db = setup(json!({ "sweep_interval_ms": 3_600_000 }));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    start_child(&db, &spawn, "a", json!({}));
    wait(&db, &spawn);
    // Another process, which never saw a child task, completes the child: its calls
    // skip the follow-up (as a crash right after the completion would).
    // A URL of its own for the same database: handles of one URL share one engine.
    let url = if db.url.starts_with("postgres") {
        let sep = if db.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}application_name=other_process", db.url)
    } else {
        db.url.replace("/tasker.db", "/./tasker.db")
    };
    let mut config =
        json!({ "database_url": url, "migrate_on_open": false, "sweep_interval_ms": 3_600_000 });
    if let Some(schema) = &db.schema {
        config["postgres_schema"] = json!(schema);
    }
    let other = Tasker::open(&config.to_string()).unwrap();
    let call = |op: &str, req: Value| -> Value {
        serde_json::from_str(&other.call(op, &req.to_string()).unwrap()).unwrap()
    };
    let w = call(
        "claim",
        json!({ "handlers": ["work"], "limit": 1, "worker_id": "other", "lease_ms": 60_000 }),
    )["steps"][0]
        .clone();
    call(
        "complete_step",
        json!({ "step_id": w["step_id"], "claim_token": w["claim_token"], "result": 5 }),
    );
    assert_eq!(db.step(id, "spawn")["state"], "waiting");
    // The sweep of that process is the backstop.
    let swept = call("sweep", json!({}));
    assert!(swept["expired"].as_i64().unwrap() >= 1, "{swept}");
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "complete");
    assert_eq!(step["result"]["children"][0]["results"]["work"], 5);
    assert_eq!(db.step(id, "after")["state"], "ready");
    other.close();
}

#[test]
fn a_wait_past_its_deadline_fails_with_children_timeout() {
    let db = setup(json!({ "clock": "manual" }));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let child = start_child(&db, &spawn, "slow", json!({}))["task_id"]
        .as_i64()
        .unwrap();
    wait(&db, &spawn);
    db.call("advance_clock", json!({ "ms": 7 * 86_400_000 - 1 }));
    db.call("sweep", json!({}));
    assert_eq!(db.step(id, "spawn")["state"], "waiting");
    db.call("advance_clock", json!({ "ms": 1 }));
    db.call("sweep", json!({}));
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "error");
    assert_eq!(step["error"]["kind"], "children_timeout");
    assert_eq!(step["error"]["details"]["unfinished"], json!([child]));
}

#[test]
fn cancelling_the_parent_cancels_its_unfinished_children() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let a = start_child(&db, &spawn, "a", json!({}))["task_id"]
        .as_i64()
        .unwrap();
    let b = start_child(&db, &spawn, "b", json!({}))["task_id"]
        .as_i64()
        .unwrap();
    let w = db.claim(&["work"], 1, 60_000).remove(0);
    let done = w["task_id"].as_i64().unwrap();
    db.complete(&w, json!(1));
    wait(&db, &spawn);
    db.call("cancel_task", json!({ "task_id": id }));
    assert_eq!(db.task(id)["state"], "cancelled");
    assert_eq!(db.step(id, "spawn")["state"], "cancelled");
    let open = if done == a { b } else { a };
    assert_eq!(db.task(open)["state"], "cancelled");
    assert_eq!(db.task(done)["state"], "complete");
}

#[test]
fn a_worker_session_reports_wait_for_children_and_the_step_leaves_the_session() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let w = db.call(
        "worker_open",
        json!({ "handlers": ["spawn", "work"], "batch": 4 }),
    )["worker_id"]
        .clone();
    let page = db.call(
        "worker_next",
        json!({ "worker_id": w, "max": 1, "wait_ms": 1000 }),
    );
    let spawn = page["steps"][0].clone();
    assert_eq!(spawn["step_name"], "spawn");
    let child = start_child(&db, &spawn, "a", json!({}))["task_id"].clone();
    let e = db.call_err(
        "worker_report",
        json!({ "worker_id": w, "outcomes": [{ "step_id": spawn["step_id"], "wait_for_children": true, "result": 1 }] }),
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let out = db.call(
        "worker_report",
        json!({ "worker_id": w, "outcomes": [{ "step_id": spawn["step_id"], "wait_for_children": true }], "next": { "max": 1 } }),
    );
    assert_eq!(out["results"][0]["outcome"], "waiting", "{out}");
    assert_eq!(db.step(id, "spawn")["state"], "waiting");
    let work = out["steps"][0].clone();
    assert_eq!(work["task_id"], child);
    let out = db.call(
        "worker_report",
        json!({ "worker_id": w, "outcomes": [{ "step_id": work["step_id"], "result": "ok" }] }),
    );
    assert_eq!(out["results"][0]["outcome"], "completed");
    assert_eq!(db.step(id, "spawn")["state"], "complete");
    let stats = db.call("worker_stats", json!({ "worker_id": w }));
    assert_eq!(stats["completed"], 2, "{stats}");
    db.call("worker_close", json!({ "worker_id": w }));
}

#[test]
fn nested_children_finish_up_the_tree_in_one_call() {
    let db = setup(json!({}));
    db.register(template("tree", &[("node", &[])], fast_retry(1)));
    let root = db.create("tree", json!({ "depth": 0 }));
    let mut waiting = Vec::new();
    for depth in 1..=2 {
        let step = db.claim(&["node"], 1, 60_000).remove(0);
        db.call(
            "create_task",
            json!({ "namespace": "t", "name": "tree", "context": { "depth": depth }, "idempotency_key": "next",
                    "parent": { "step_id": step["step_id"], "claim_token": step["claim_token"] } }),
        );
        wait(&db, &step);
        waiting.push(step["task_id"].as_i64().unwrap());
    }
    let leaf = db.claim(&["node"], 1, 60_000).remove(0);
    assert_eq!(leaf["context"]["depth"], 2);
    db.complete(&leaf, json!("leaf"));
    // The leaf's completion finished its parent's wait, which finished the root's.
    for id in waiting {
        assert_eq!(db.task(id)["state"], "complete");
    }
    let result = &db.step(root, "node")["result"];
    assert_eq!(
        result["children"][0]["results"]["node"]["children"][0]["results"]["node"],
        "leaf"
    );
}

#[test]
fn cancelling_a_child_fails_the_waiting_step_and_leaves_the_parent_task_running_until_then() {
    let db = setup(json!({}));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    let child = start_child(&db, &spawn, "a", json!({}))["task_id"]
        .as_i64()
        .unwrap();
    wait(&db, &spawn);
    assert_eq!(db.task(id)["state"], "running");
    db.call("cancel_task", json!({ "task_id": child }));
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "error");
    assert_eq!(step["error"]["kind"], "child_failed");
    assert_eq!(step["error"]["details"]["state"], "cancelled");
    assert_eq!(db.task(id)["state"], "error");
}

#[test]
fn a_combined_result_over_max_payload_bytes_fails_the_waiting_step() {
    // Each child's result fits; together they do not: the step fails permanently, as a
    // handler's oversized result would, and nothing after it runs.
    let db = setup(json!({ "max_payload_bytes": 1024 }));
    let id = db.create("parent", json!({}));
    let spawn = db.claim(&["spawn"], 1, 60_000).remove(0);
    for k in ["a", "b", "c"] {
        start_child(&db, &spawn, k, json!({}));
    }
    wait(&db, &spawn);
    for step in db.claim(&["work"], 10, 60_000) {
        db.complete(&step, json!("x".repeat(500)));
    }
    let step = db.step(id, "spawn");
    assert_eq!(step["state"], "error", "{step}");
    assert_eq!(step["error"]["kind"], "result_too_large", "{step}");
    assert_eq!(step["error"]["retryable"], false);
    assert_eq!(step["error"]["details"]["max_payload_bytes"], 1024);
    assert!(db.claim(&["after"], 1, 60_000).is_empty());
    assert_eq!(db.task(id)["state"], "error");
}
