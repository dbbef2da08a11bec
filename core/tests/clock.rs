//! The engine's clock: on a manual clock (`clock: manual`) retries, backoffs, leases and
//! step timeouts come due only when `advance_clock` moves it, and `next_ready_at` says
//! where to move it; on the system clock `advance_clock` is refused and changes nothing.
//! Also template registration again under the same version (unchanged / conflict).

mod common;

use common::{open, template};
use serde_json::{json, Value};
use tasker_core::worker::{HandlerError, Worker};
use tasker_core::ErrorCode;

fn ms_of(db: &common::Db) -> i64 {
    db.call("advance_clock", json!({ "ms": 0 }))["now_ms"]
        .as_i64()
        .unwrap()
}

fn slow_retry() -> Value {
    // Ten minutes between attempts: no test could wait for it in real time.
    json!({ "max_attempts": 3, "backoff": "fixed", "base_ms": 600_000, "max_ms": 600_000, "jitter": 0 })
}

#[test]
fn a_retry_comes_due_only_when_the_manual_clock_reaches_it() {
    let db = open(json!({ "clock": "manual" }));
    db.register(template("slow", &[("a", &[])], slow_retry()));
    let t0 = ms_of(&db);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let id = db.create("slow", json!({}));
    // Transition timestamps come from the engine's clock, not the system's.
    assert_eq!(
        db.task(id)["created_at"],
        json!(tasker_core::time::rfc3339(t0))
    );
    let step = &db.claim(&["a"], 1, 30_000)[0];
    let failed = db.call(
        "fail_step",
        json!({ "step_id": step["step_id"], "claim_token": step["claim_token"], "error": { "message": "gateway timeout" } }),
    );
    assert_eq!(failed["state"], "ready", "{failed}");
    assert!(db.claim(&["a"], 1, 30_000).is_empty());
    let next = db.call("next_ready_at", json!({}));
    assert_eq!(next["clock"], "manual");
    assert_eq!(next["in_ms"], 600_000, "{next}");
    assert_eq!(
        next["next_ready_at"],
        json!(tasker_core::time::rfc3339(t0 + 600_000))
    );
    // Only for the handlers asked about.
    let other = db.call("next_ready_at", json!({ "handlers": ["b"] }));
    assert_eq!(other["next_ready_at"], Value::Null);

    db.call("advance_clock", json!({ "ms": 599_999 }));
    assert!(db.claim(&["a"], 1, 30_000).is_empty());
    let now = db.call("advance_clock", json!({ "ms": 1 }));
    assert_eq!(now["now_ms"], t0 + 600_000);
    let again = db.claim(&["a"], 1, 30_000);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["attempt"], 2, "{}", again[0]);
    db.complete(&again[0], json!({"ok": true}));
    let task = db.task(id);
    assert_eq!(task["state"], "complete");
    assert_eq!(
        task["finished_at"],
        json!(tasker_core::time::rfc3339(t0 + 600_000))
    );
    assert_eq!(
        db.call("next_ready_at", json!({}))["next_ready_at"],
        Value::Null
    );
}

#[test]
fn a_worker_on_a_manual_clock_is_idle_while_a_retry_waits_for_the_clock() {
    let db = open(json!({ "clock": "manual" }));
    db.register(template("slow", &[("a", &[])], slow_retry()));
    let id = db.create("slow", json!({}));
    let worker = Worker::new(&db.tasker, "w").handle("a", |s| match s.attempt {
        1 => Err(HandlerError::retryable("first attempt fails")),
        _ => Ok(json!({ "attempt": s.attempt })),
    });
    // Returns although a retry is scheduled: waiting cannot bring it due.
    let first = worker.run_until_idle().unwrap();
    assert_eq!((first.completed, first.failed), (0, 1));
    let wait = db.call("next_ready_at", json!({}))["in_ms"]
        .as_i64()
        .unwrap();
    assert_eq!(wait, 600_000);
    db.call("advance_clock", json!({ "ms": wait }));
    let second = worker.run_until_idle().unwrap();
    assert_eq!(second.completed, 1);
    assert_eq!(db.task(id)["state"], "complete");
}

#[test]
fn leases_expire_by_the_manual_clock() {
    let db = open(json!({ "clock": "manual", "sweep_interval_ms": 3_600_000 }));
    db.register(template("one", &[("a", &[])], common::fast_retry(3)));
    let id = db.create("one", json!({}));
    let held = db.claim(&["a"], 1, 60_000);
    assert_eq!(held.len(), 1);
    assert_eq!(db.call("sweep", json!({}))["expired"], 0);
    db.call("advance_clock", json!({ "ms": 60_001 }));
    assert_eq!(db.call("sweep", json!({}))["expired"], 1);
    let step = db.step(id, "a");
    assert_eq!(step["state"], "ready", "{step}");
    assert_eq!(step["error"]["kind"], "lease_expired", "{step}");
}

#[test]
fn the_system_clock_cannot_be_advanced() {
    let db = open(json!({}));
    let before = db.fingerprint();
    let e = db.call_err("advance_clock", json!({ "ms": 1000 }));
    assert_eq!(e.code, ErrorCode::InvalidState, "{e}");
    assert!(e.message.contains("clock: manual"), "{e}");
    assert_eq!(db.fingerprint(), before);
    assert_eq!(db.call("next_ready_at", json!({}))["clock"], "system");
    // Bad input is named.
    let db = open(json!({ "clock": "manual" }));
    for bad in [
        json!({}),
        json!({ "ms": -1 }),
        json!({ "ms": "soon" }),
        json!({ "ms": 1, "to": 2 }),
    ] {
        let e = db.call_err("advance_clock", bad.clone());
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}: {e}");
    }
    let e =
        tasker_core::api::Tasker::open(r#"{"clock": "fast", "database_url": "sqlite::memory:"}"#)
            .unwrap_err();
    assert!(e.message.contains("clock"), "{e}");
}

#[test]
fn registering_the_same_version_again_is_unchanged_or_a_conflict_that_names_the_differences() {
    let db = open(json!({}));
    let t = template(
        "orders",
        &[("a", &[]), ("b", &["a"])],
        common::fast_retry(3),
    );
    let first = db.call("register_template", json!({ "template": t }));
    assert_eq!(
        (first["registered"].clone(), first["unchanged"].clone()),
        (json!(true), json!(false))
    );
    let again = db.call("register_template", json!({ "template": t }));
    assert_eq!(again["registered"], false);
    assert_eq!(again["unchanged"], true);
    assert!(
        again["note"].as_str().unwrap().contains("nothing changed"),
        "{again}"
    );

    let mut edited = t.clone();
    edited["steps"][1]["handler"] = json!("b2");
    edited["steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "c", "handler": "c", "depends_on": ["b"] }));
    let before = db.fingerprint();
    let e = db.call_err("register_template", json!({ "template": edited }));
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(
        e.message.contains("steps.b.handler: \"b\" -> \"b2\""),
        "{e}"
    );
    assert!(e.message.contains("steps.c added"), "{e}");
    assert!(e.message.contains("new version (e.g. version: 2)"), "{e}");
    let details = e.details.clone().unwrap();
    assert_eq!(details["next_version"], "2");
    let paths: Vec<&str> = details["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["steps.b.handler", "steps.c"]);
    assert_eq!(db.fingerprint(), before);
    let stored = db.call(
        "get_template",
        json!({ "namespace": "t", "name": "orders", "version": "1" }),
    );
    assert_eq!(stored["template"]["steps"][1]["handler"], "b");
}

#[test]
fn messages_name_the_field_the_valid_values_and_the_nearest_name() {
    let db = open(json!({}));
    // A template field of the wrong type: the field and the expected type in words.
    let e = db.call_err(
        "register_template",
        json!({ "yaml": "namespace: t\nname: p\nversion: '1'\nsteps:\n  - { name: a, handler: a, priority: high }\n" }),
    );
    assert_eq!(e.code, ErrorCode::InvalidTemplate);
    assert!(
        e.message
            .ends_with("steps[0].priority: expected an integer, got the string \"high\""),
        "{e}"
    );
    assert_eq!(e.details.unwrap()["field"], "steps[0].priority");

    // An unknown version lists the versions there are.
    for v in ["1.0.0", "1.10.0", "1.9.0"] {
        let mut t = template("versions", &[("a", &[])], common::fast_retry(1));
        t["version"] = json!(v);
        db.register(t);
    }
    let e = db.call_err(
        "create_task",
        json!({ "namespace": "t", "name": "versions", "version": "2.0.0" }),
    );
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message
            .contains("the registered versions are: 1.0.0, 1.9.0, 1.10.0"),
        "{e}"
    );
    let listed = db.call("list_templates", json!({ "name": "versions" }));
    let versions: Vec<&str> = listed["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.9.0", "1.10.0"]);

    // A step named on a task that does not exist, and on one that has no such step.
    let e = db.call_err("retry_step", json!({ "task_id": 99, "step_name": "a" }));
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::NotFound, "task 99 does not exist")
    );
    let id = db.create("versions", json!({}));
    let e = db.call_err("retry_step", json!({ "task_id": id, "step_name": "b" }));
    assert!(
        e.message.ends_with("has no step `b`; its steps are: a"),
        "{e}"
    );

    // States and event names: the valid ones, and a suggestion for a near miss.
    let e = db.call_err("list_tasks", json!({ "state": "failed" }));
    assert!(
        e.message.ends_with(
            "did you mean `error`? the states are: pending, running, complete, error, cancelled"
        ),
        "{e}"
    );
    let e = db.call_err("events", json!({ "types": ["task.complete"] }));
    assert!(e.message.contains("did you mean `task.completed`?"), "{e}");
}
