//! Dynamic fan-out on the store under test (SQLite, or PostgreSQL with
//! TASKER_TEST_STORE=postgres): a step expands at run time into one instance per item
//! of a parent's list, each with its item and index; the join waits for all of them and
//! gets their results in item order; empty, non-list and oversize lists; retries of an
//! instance; bad templates.

mod common;

use common::{fast_retry, open};
use serde_json::{json, Value};
use tasker_core::ErrorCode;

/// split -> process (fan_out over split's items, handler `work`) -> join.
fn fan(max_items: Option<u64>) -> Value {
    let mut fan_out = json!({ "items": "$results.split.items" });
    if let Some(m) = max_items {
        fan_out["max_items"] = json!(m);
    }
    json!({
        "namespace": "t", "name": "fan", "version": "1",
        "defaults": { "retry": fast_retry(2) },
        "steps": [
            { "name": "split", "handler": "split" },
            { "name": "process", "handler": "work", "depends_on": ["split"], "fan_out": fan_out,
              "config": { "scale": 10 } },
            { "name": "join", "handler": "join", "depends_on": ["process"] }
        ]
    })
}

fn split(db: &common::Db, items: Value) {
    let step = db.claim(&["split"], 1, 60_000).remove(0);
    db.complete(&step, json!({ "items": items }));
}

#[test]
fn a_step_fans_out_per_item_and_the_join_gets_every_result_in_item_order() {
    let db = open(json!({}));
    db.register(fan(None));
    let id = db.create("fan", json!({}));
    split(&db, json!(["a", "b", "c"]));
    let task = db.task(id);
    assert_eq!(task["steps_total"], 6, "{task}");
    let process = db.step(id, "process");
    assert_eq!(process["state"], "pending");
    assert_eq!(process["handler"], "tasker.fan_out");
    assert_eq!(process["pending_parents"], 3);
    // Claim the instances in reverse and complete them out of order.
    let mut claimed = db.claim(&["work"], 10, 60_000);
    assert_eq!(claimed.len(), 3);
    claimed.sort_by_key(|s| std::cmp::Reverse(s["step_name"].as_str().unwrap().to_owned()));
    for s in &claimed {
        let fo = &s["config"]["fan_out"];
        assert_eq!(s["step_name"], format!("process[{}]", fo["index"]));
        assert_eq!(fo["count"], 3);
        assert_eq!(s["config"]["scale"], 10);
        assert!(db.claim(&["join"], 1, 60_000).is_empty());
        db.complete(s, json!(format!("{}!", fo["item"].as_str().unwrap())));
    }
    let join = db.claim(&["join"], 1, 60_000).remove(0);
    assert_eq!(join["results"]["process"], json!(["a!", "b!", "c!"]));
    db.complete(&join, json!(null));
    let task = db.task(id);
    assert_eq!(task["state"], "complete");
    assert_eq!(task["steps_done"], 6);
    let events = db.events(id);
    assert!(events.iter().any(|e| e == "step.fanned_out"), "{events:?}");
}

#[test]
fn an_empty_list_completes_at_once_and_bad_lists_fail_permanently() {
    let db = open(json!({}));
    db.register(fan(Some(2)));
    let empty = db.create("fan", json!({}));
    split(&db, json!([]));
    assert_eq!(db.step(empty, "process")["state"], "complete");
    assert_eq!(db.step(empty, "process")["result"], json!([]));
    let join = db.claim(&["join"], 1, 60_000).remove(0);
    assert_eq!(join["results"]["process"], json!([]));

    for (items, kind) in [
        (json!([1, 2, 3]), "fan_out_too_large"),
        (json!("abc"), "fan_out_not_a_list"),
    ] {
        let id = db.create("fan", json!({}));
        split(&db, items);
        let process = db.step(id, "process");
        assert_eq!(process["state"], "error", "{process}");
        assert_eq!(process["error"]["kind"], kind);
        assert_eq!(process["error"]["retryable"], false);
        assert_eq!(db.task(id)["state"], "error");
        assert_eq!(db.task(id)["steps_total"], 3);
    }
}

#[test]
fn an_instance_retries_under_the_step_policy_and_an_operator_can_finish_the_run() {
    let db = open(json!({}));
    db.register(fan(None));
    let id = db.create("fan", json!({}));
    split(&db, json!([1, 2]));
    let first = db.claim(&["work"], 2, 60_000);
    db.complete(&first[0], json!(1));
    // Two attempts (fast_retry(2)), then the instance is in error and the task fails.
    db.call(
        "fail_step",
        json!({ "step_id": first[1]["step_id"], "claim_token": first[1]["claim_token"], "error": { "message": "x" } }),
    );
    let again = db.claim_wait(&["work"], 1, 60_000).remove(0);
    assert_eq!(again["attempt"], 2);
    db.call(
        "fail_step",
        json!({ "step_id": again["step_id"], "claim_token": again["claim_token"], "error": { "message": "y" } }),
    );
    assert_eq!(db.task(id)["state"], "error");
    assert_eq!(db.step(id, "process")["state"], "pending");
    db.call(
        "resolve_step",
        json!({ "task_id": id, "step_name": "process[1]", "result": "by hand" }),
    );
    let join = db.claim(&["join"], 1, 60_000).remove(0);
    assert_eq!(join["results"]["process"], json!([1, "by hand"]));
}

#[test]
fn bad_fan_out_templates_are_refused() {
    let db = open(json!({}));
    for step in [
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "$results.nope" } }),
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "items" } }),
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "$context", "max_items": 0 } }),
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "$context", "max_items": 10_001 } }),
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "$context" }, "config": "x" }),
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "$context" }, "config": { "fan_out": 1 } }),
        json!({ "name": "p", "fan_out": { "items": "$context" } }),
        json!({ "name": "p", "handler": "tasker.fan_out", "fan_out": { "items": "$context" } }),
        json!({ "name": "p", "handler": "w", "fan_out": { "items": "$context", "x": 1 } }),
    ] {
        let t = json!({ "namespace": "t", "name": "bad", "version": "1", "steps": [step] });
        let e = db.call_err("register_template", json!({ "template": t }));
        assert_eq!(e.code, ErrorCode::InvalidTemplate, "{step}: {e}");
    }
    // A fan-out over the context, from the root.
    db.register(json!({ "namespace": "t", "name": "ctx", "version": "1",
        "steps": [{ "name": "p", "handler": "w", "fan_out": { "items": "$context.list" } }] }));
    let id = db.create("ctx", json!({ "list": [{ "n": 1 }] }));
    let s = db.claim(&["w"], 5, 60_000);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["config"]["fan_out"]["item"], json!({ "n": 1 }));
    db.complete(&s[0], json!(5));
    assert_eq!(db.task(id)["state"], "complete");
    assert_eq!(db.step(id, "p")["result"], json!([5]));
}

#[test]
fn an_expansion_past_max_steps_per_task_fails_the_step() {
    let db = open(json!({ "max_steps_per_task": 6 }));
    db.register(fan(None));
    let ok = db.create("fan", json!({}));
    split(&db, json!([1, 2, 3]));
    assert_eq!(db.task(ok)["steps_total"], 6);
    let over = db.create("fan", json!({}));
    split(&db, json!([1, 2, 3, 4]));
    let process = db.step(over, "process");
    assert_eq!(process["state"], "error");
    assert_eq!(process["error"]["kind"], "fan_out_too_large");
    assert!(
        process["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_steps_per_task"),
        "{process}"
    );
    assert_eq!(db.task(over)["steps_total"], 3);
}

#[test]
fn instances_run_under_the_fan_out_steps_concurrency_and_rate_limits() {
    let db = open(json!({ "clock": "manual" }));
    let mut t = fan(None);
    t["steps"][1]["concurrency"] = json!({ "key": "$context.customer", "max": 2 });
    t["steps"][1]["rate_limit"] = json!({ "limit": 100, "per_ms": 1000 });
    db.register(t);
    let id = db.create("fan", json!({ "customer": "acme" }));
    split(&db, json!([1, 2, 3, 4, 5]));
    // The fan-out step itself is the engine's: it is never held back, so it expanded.
    assert_eq!(db.step(id, "process")["pending_parents"], 5);
    // Five ready instances, at most two running for the key at once.
    let first = db.claim(&["work"], 10, 60_000);
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(db.claim(&["work"], 10, 60_000).is_empty());
    let explained = db.call("explain_task", json!({ "task_id": id }));
    let held: Vec<&Value> = explained["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "held_by_limit")
        .collect();
    assert_eq!(held.len(), 3, "{explained}");
    // The rate limit's default key is the instances' handler, not the engine's.
    let limits = &held[0]["limits"];
    assert!(
        limits.to_string().contains("work"),
        "rate key should name the handler `work`: {limits}"
    );
    db.complete(&first[0], json!(1));
    let next = db.claim(&["work"], 10, 60_000);
    assert_eq!(next.len(), 1, "{next:?}");
}
