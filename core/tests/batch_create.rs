//! `create_tasks`: many tasks in one transaction, checked and made as `create_task` makes
//! them (fields, templates, input schemas, idempotency keys), on SQLite and, with
//! `TASKER_TEST_STORE=postgres`, on PostgreSQL.

mod common;

use common::{fast_retry, open, template};
use serde_json::{json, Value};
use tasker_core::ErrorCode;

fn item(name: &str, context: Value, key: Option<&str>) -> Value {
    let mut v = json!({ "namespace": "t", "name": name, "context": context });
    if let Some(k) = key {
        v["idempotency_key"] = json!(k);
    }
    v
}

fn batch(db: &common::Db, items: &[Value]) -> Vec<Value> {
    db.call("create_tasks", json!({ "tasks": items }))["tasks"]
        .as_array()
        .unwrap()
        .clone()
}

/// Every event of the database, without ids, times and task/step ids.
fn event_shapes(db: &common::Db) -> Vec<Value> {
    db.call("events", json!({ "limit": 1000 }))["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!([e["event"], e["step_name"], e["from_state"], e["to_state"]]))
        .collect()
}

#[test]
fn a_batch_makes_every_task_with_the_events_create_task_makes() {
    let single = open(json!({}));
    let many = open(json!({}));
    let t = template(
        "flow",
        &[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])],
        fast_retry(1),
    );
    single.register(t.clone());
    many.register(t);
    let items: Vec<Value> = (0..3)
        .map(|n| item("flow", json!({ "n": n }), None))
        .collect();
    let mut one_by_one = Vec::new();
    for i in &items {
        one_by_one.push(single.call("create_task", i.clone()));
    }
    let made = batch(&many, &items);
    assert_eq!(made.len(), 3);
    for (a, b) in one_by_one.iter().zip(&made) {
        assert_eq!(a["created"], b["created"]);
        assert_eq!(a["state"], b["state"]);
        assert_eq!(b["created"], true);
    }
    // Ids in batch order, each a task with its own steps, context and counters.
    let ids: Vec<i64> = made
        .iter()
        .map(|t| t["task_id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (n, id) in ids.iter().enumerate() {
        let task = many.task(*id);
        assert_eq!(task["context"], json!({ "n": n }));
        assert_eq!(task["steps_total"], 3);
        let states: Vec<&str> = task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["ready", "pending", "pending"]);
    }
    assert_eq!(event_shapes(&single), event_shapes(&many));
    // The batch's tasks run like any other.
    let claimed = many.claim(&["a"], 10, 60_000);
    assert_eq!(claimed.len(), 3);
    assert_eq!(
        claimed
            .iter()
            .map(|s| s["task_id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn idempotency_keys_behave_exactly_as_with_create_task() {
    // The same requests, one database through create_task one by one, the other
    // through create_tasks in two batches: the same answers, the same tasks.
    let single = open(json!({}));
    let many = open(json!({}));
    for db in [&single, &many] {
        db.register(template("one", &[("a", &[])], fast_retry(1)));
        db.register(template("two", &[("a", &[])], fast_retry(1)));
    }
    let first = vec![
        item("one", json!({ "n": 1 }), Some("k1")),
        item("one", json!({ "n": 2 }), Some("k2")),
        // The same key again in the batch: the earlier item's task.
        item("one", json!({ "n": 3 }), Some("k1")),
        // The same key on another template is another task.
        item("two", json!({ "n": 4 }), Some("k1")),
        item("one", json!({ "n": 5 }), None),
    ];
    let second = vec![
        // Keys of tasks made by the first batch.
        item("one", json!({ "n": 6 }), Some("k2")),
        item("one", json!({ "n": 7 }), Some("k3")),
        item("one", json!({ "n": 8 }), None),
        item("one", json!({ "n": 9 }), Some("k3")),
    ];
    let mut expected = Vec::new();
    for i in first.iter().chain(&second) {
        expected.push(single.call("create_task", i.clone()));
    }
    let mut got = batch(&many, &first);
    got.extend(batch(&many, &second));
    let shape = |answers: &[Value]| -> Vec<Value> {
        // Ids differ between databases; which answers share a task does not.
        let ids: Vec<&Value> = answers.iter().map(|a| &a["task_id"]).collect();
        answers
            .iter()
            .map(|a| {
                let same = ids.iter().position(|id| *id == &a["task_id"]).unwrap();
                json!([same, a["created"], a["state"]])
            })
            .collect()
    };
    assert_eq!(shape(&got), shape(&expected));
    assert_eq!(
        shape(&got),
        vec![
            json!([0, true, "pending"]),
            json!([1, true, "pending"]),
            json!([0, false, "pending"]),
            json!([3, true, "pending"]),
            json!([4, true, "pending"]),
            json!([1, false, "pending"]),
            json!([6, true, "pending"]),
            json!([7, true, "pending"]),
            json!([6, false, "pending"]),
        ]
    );
    let count = |db: &common::Db| db.call("stats", json!({}))["tasks"]["pending"].clone();
    assert_eq!(count(&many), 6);
    assert_eq!(count(&many), count(&single));
    // The context of a task returned by its key is the first request's.
    let k1 = got[0]["task_id"].as_i64().unwrap();
    assert_eq!(many.task(k1)["context"], json!({ "n": 1 }));
}

#[test]
fn a_known_key_returns_its_task_without_checking_the_rest_as_create_task_does() {
    let db = open(json!({}));
    let mut t = template("typed", &[("a", &[])], fast_retry(1));
    t["input_schema"] = json!({ "type": "object", "required": ["order_id"] });
    db.register(t);
    let made = db.call(
        "create_task",
        json!({ "namespace": "t", "name": "typed", "context": { "order_id": 1 }, "idempotency_key": "o-1" }),
    );
    // A context the schema refuses, under a key that made a task: that task, as
    // create_task answers the same request.
    let again = item("typed", json!({ "other": true }), Some("o-1"));
    let single = db.call("create_task", again.clone());
    let got = batch(&db, &[again]);
    assert_eq!(got[0]["task_id"], made["task_id"]);
    assert_eq!(got[0]["created"], false);
    assert_eq!(got[0]["task_id"], single["task_id"]);
}

#[test]
fn one_bad_item_refuses_the_whole_batch_and_names_its_index() {
    let db = open(json!({ "max_payload_bytes": 1024 }));
    let mut t = template("typed", &[("a", &[])], fast_retry(1));
    t["input_schema"] = json!({ "type": "object", "required": ["order_id"] });
    db.register(t);
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    db.create("one", json!({}));
    let before = db.fingerprint();
    let good = item("one", json!({ "n": 1 }), Some("good"));
    let cases: Vec<(Value, ErrorCode, &str)> = vec![
        (
            item("nope", json!({}), None),
            ErrorCode::NotFound,
            "tasks[1]",
        ),
        (
            item("typed", json!({ "x": 1 }), None),
            ErrorCode::SchemaViolation,
            "tasks[1]",
        ),
        (
            item("one", json!({ "big": "x".repeat(2000) }), None),
            ErrorCode::TooLarge,
            "tasks[1]",
        ),
        (
            json!({ "namespace": "t", "name": "one", "priority": "high" }),
            ErrorCode::InvalidArgument,
            "tasks[1].priority",
        ),
        (
            json!({ "namespace": "t", "name": "one", "extra": 1 }),
            ErrorCode::InvalidArgument,
            "tasks[1].extra",
        ),
        (
            json!({ "namespace": "t", "name": "one", "idempotency_key": "" }),
            ErrorCode::InvalidArgument,
            "tasks[1].idempotency_key",
        ),
        (
            json!("not an object"),
            ErrorCode::InvalidArgument,
            "tasks[1]",
        ),
    ];
    for (bad, code, path) in cases {
        let e = db.call_err(
            "create_tasks",
            json!({ "tasks": [good.clone(), bad.clone(), good.clone()] }),
        );
        assert_eq!(e.code, code, "{bad}: {e}");
        assert!(e.message.contains(path), "{bad}: {e}");
        assert!(e.message.starts_with("tasks[1]"), "{bad}: {e}");
        assert_eq!(e.details.as_ref().unwrap()["index"], 1, "{e:?}");
        assert_eq!(db.fingerprint(), before, "{bad} changed something");
    }
    for (req, path) in [
        (json!({}), "tasks"),
        (json!({ "tasks": {} }), "tasks"),
        (json!({ "tasks": [], "other": 1 }), "other"),
    ] {
        let e = db.call_err("create_tasks", req.clone());
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{req}: {e}");
        assert!(e.message.contains(path), "{req}: {e}");
    }
    assert_eq!(db.fingerprint(), before);
    // An empty batch creates nothing.
    assert!(batch(&db, &[]).is_empty());
    assert_eq!(db.fingerprint(), before);
}

#[test]
fn racing_batches_with_the_same_key_make_one_task() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    for round in 0..5 {
        let key = format!("race-{round}");
        let answers: Vec<Value> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let (db, key) = (&db, key.clone());
                    s.spawn(move || {
                        let items = [
                            item("one", json!({ "thread": i }), None),
                            item("one", json!({ "thread": i }), Some(&key)),
                        ];
                        batch(db, &items).remove(1)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids: std::collections::BTreeSet<String> =
            answers.iter().map(|a| a["task_id"].to_string()).collect();
        assert_eq!(ids.len(), 1, "{answers:?}");
        assert_eq!(
            answers.iter().filter(|a| a["created"] == true).count(),
            1,
            "{answers:?}"
        );
    }
    // Four unkeyed tasks and one keyed task per round.
    assert_eq!(db.call("stats", json!({}))["tasks"]["pending"], 25);
}

#[test]
fn ids_follow_creation_order_within_a_process_across_single_and_batch_creations() {
    // PostgreSQL hands each process blocks of task ids; a batch takes what is left of
    // the block before reserving more, so a later single creation never gets a lower id.
    let db = open(json!({}));
    db.register(template("flow", &[("a", &[])], fast_retry(1)));
    let mut ids = vec![db.call("create_task", item("flow", json!({}), None))["task_id"].clone()];
    for size in [2, 40, 1] {
        let items: Vec<Value> = (0..size).map(|_| item("flow", json!({}), None)).collect();
        ids.extend(batch(&db, &items).iter().map(|t| t["task_id"].clone()));
        ids.push(db.call("create_task", item("flow", json!({}), None))["task_id"].clone());
    }
    let ids: Vec<i64> = ids.iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1 + 3 + 41 + 2);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of creation order: {ids:?}"
    );
}

#[test]
fn a_batch_without_versions_takes_the_highest_version_registered_when_it_runs() {
    // A batch looks each unversioned template up once: every task of it gets the same
    // version, and a version registered after it is what the next batch takes.
    let db = open(json!({}));
    let versioned = |version: &str, steps: &[(&str, &[&str])]| {
        let mut t = template("grow", steps, fast_retry(1));
        t["version"] = json!(version);
        t
    };
    let shape = |task: &Value| {
        let t = &db.call("get_task", json!({ "task_id": task["task_id"] }))["task"];
        (
            t["version"].as_str().unwrap().to_owned(),
            t["steps"].as_array().unwrap().len(),
        )
    };
    db.register(versioned("1.9.0", &[("a", &[])]));
    let mut pinned = item("grow", json!({}), None);
    pinned["version"] = json!("1.9.0");
    let first = batch(
        &db,
        &[
            item("grow", json!({}), None),
            pinned.clone(),
            item("grow", json!({}), None),
        ],
    );
    for t in &first {
        assert_eq!(shape(t), ("1.9.0".to_owned(), 1));
    }
    // 1.10.0 is the higher version (by semver, not by text).
    db.register(versioned("1.10.0", &[("a", &[]), ("b", &["a"])]));
    let second = batch(
        &db,
        &[
            item("grow", json!({}), None),
            pinned,
            item("grow", json!({}), None),
        ],
    );
    let shapes: Vec<_> = second.iter().map(shape).collect();
    assert_eq!(
        shapes,
        [
            ("1.10.0".to_owned(), 2),
            ("1.9.0".to_owned(), 1),
            ("1.10.0".to_owned(), 2)
        ]
    );
    for t in &first {
        assert_eq!(shape(t), ("1.9.0".to_owned(), 1), "an earlier task changed");
    }
    // An unknown template without a version is refused by its index, as before.
    let e = db.call_err(
        "create_tasks",
        json!({ "tasks": [item("grow", json!({}), None), item("nowhere", json!({}), None)] }),
    );
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.starts_with("tasks[1]"), "{e}");
}
