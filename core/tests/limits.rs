//! Concurrency and rate limits (docs/scheduling.md) on the real store: keys from the
//! task's context, global and template scope, claims that skip held-back steps without
//! starving others, sliding rate windows on a manual clock, `explain`, the refusals of
//! bad shapes, and concurrent claimers that never run more than `max` steps of a key.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use common::open;
use serde_json::{json, Value};
use tasker_core::api::Tasker;
use tasker_core::ErrorCode;

fn limited(name: &str, step: Value) -> Value {
    let mut s = json!({ "name": "work", "handler": "work" });
    for (k, v) in step.as_object().unwrap() {
        s[k] = v.clone();
    }
    json!({ "namespace": "t", "name": name, "version": "1", "steps": [s] })
}

fn now_of(db: &common::Db) -> i64 {
    db.call("advance_clock", json!({ "ms": 0 }))["now_ms"]
        .as_i64()
        .unwrap()
}

fn customers(steps: &[Value]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for s in steps {
        *n.entry(s["context"]["customer"].to_string()).or_default() += 1;
    }
    n
}

#[test]
fn a_concurrency_key_from_the_context_caps_running_steps_per_key() {
    let db = open(json!({}));
    db.register(limited(
        "conc",
        json!({ "concurrency": { "key": "$context.customer", "max": 2 } }),
    ));
    let mut a_tasks = Vec::new();
    for _ in 0..5 {
        a_tasks.push(db.create("conc", json!({ "customer": "a" })));
    }
    for _ in 0..3 {
        db.create("conc", json!({ "customer": 7 }));
    }
    let first = db.claim(&["work"], 20, 60_000);
    let n = customers(&first);
    assert_eq!(n.get("\"a\""), Some(&2), "{n:?}");
    assert_eq!(n.get("7"), Some(&2), "{n:?}");
    assert!(
        db.claim(&["work"], 20, 60_000).is_empty(),
        "every key is at its max"
    );
    let claim = db.call(
        "claim",
        json!({ "handlers": ["work"], "limit": 5, "worker_id": "w" }),
    );
    assert_eq!(
        claim["next_ready_at"],
        Value::Null,
        "a concurrency slot frees at a completion, not at a time: {claim}"
    );
    assert_eq!(
        db.call("next_ready_at", json!({ "handlers": ["work"] }))["next_ready_at"],
        Value::Null
    );

    // A held step says why.
    let held = a_tasks
        .iter()
        .find(|&&t| db.step(t, "work")["state"] == "ready")
        .copied()
        .unwrap();
    let why = db.call("explain_task", json!({ "task_id": held }));
    let step = &why["steps"][0];
    assert_eq!(step["status"], "held_by_limit", "{why}");
    assert!(
        step["reason"]
            .as_str()
            .unwrap()
            .contains("concurrency key `global:a` has 2 of 2 running"),
        "{why}"
    );
    assert_eq!(step["limits"]["concurrency"]["running"], 2, "{why}");

    // A completion frees one slot of its key.
    let done_a = first
        .iter()
        .find(|s| s["context"]["customer"] == "a")
        .unwrap();
    db.complete(done_a, json!(1));
    let next = db.claim(&["work"], 20, 60_000);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["context"]["customer"], "a");
    let why = db.call("explain_task", json!({ "task_id": held }));
    assert_ne!(why["steps"][0]["status"], "waiting_for_worker", "{why}");
}

#[test]
fn keys_are_global_by_default_and_per_template_with_scope_template() {
    let db = open(json!({}));
    for (name, scope) in [
        ("g1", "global"),
        ("g2", "global"),
        ("s1", "template"),
        ("s2", "template"),
    ] {
        db.register(limited(
            name,
            json!({ "concurrency": { "key": "shared", "max": 1, "scope": scope } }),
        ));
        db.create(name, json!({}));
        db.create(name, json!({}));
    }
    let got = db.claim(&["work"], 20, 60_000);
    // One for both global templates together, one for each template-scoped one.
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(db.claim(&["work"], 20, 60_000).is_empty());
}

#[test]
fn held_back_steps_do_not_starve_steps_without_limits_or_with_other_keys() {
    let db = open(json!({}));
    db.register(limited(
        "busy",
        json!({ "priority": 100, "concurrency": { "key": "$context.k", "max": 1 } }),
    ));
    db.register(limited("free", json!({})));
    // More than a claim's first look reaches (4 x limit + 128): the best step of each
    // other key is looked at too.
    for _ in 0..400 {
        db.create("busy", json!({ "k": "hot" }));
    }
    for k in ["cold-a", "cold-b", "cold-c"] {
        db.create("busy", json!({ "k": k }));
    }
    let plain = db.create("free", json!({}));
    let first = db.claim(&["work"], 1, 60_000);
    assert_eq!(first[0]["context"]["k"], "hot", "highest priority first");
    // `hot` is at its max now, with 399 steps queued ahead of every other one.
    let got = db.claim(&["work"], 10, 60_000);
    let mut keys: Vec<String> = got
        .iter()
        .map(|s| s["context"]["k"].as_str().unwrap_or("none").to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["cold-a", "cold-b", "cold-c", "none"], "{got:?}");
    assert!(got.iter().any(|s| s["task_id"] == plain));
    assert!(db.claim(&["work"], 10, 60_000).is_empty());
}

#[test]
fn a_rate_limit_admits_limit_starts_per_sliding_window() {
    let db = open(json!({ "clock": "manual" }));
    db.register(limited(
        "rate",
        json!({ "rate_limit": { "limit": 3, "per_ms": 1000 } }),
    ));
    for _ in 0..10 {
        db.create("rate", json!({}));
    }
    let t0 = now_of(&db);
    let first = db.claim(&["work"], 2, 60_000);
    assert_eq!(first.len(), 2);
    db.call("advance_clock", json!({ "ms": 400 }));
    let second = db.claim(&["work"], 5, 60_000);
    assert_eq!(second.len(), 1, "3 per window: {second:?}");
    for s in first.iter().chain(&second) {
        db.complete(s, json!(null));
    }
    // Completing does not free a rate slot: the window does.
    let claim = db.call(
        "claim",
        json!({ "handlers": ["work"], "limit": 5, "worker_id": "w" }),
    );
    assert_eq!(claim["steps"], json!([]));
    assert_eq!(
        claim["next_ready_at"],
        json!(tasker_core::time::rfc3339(t0 + 1000)),
        "{claim}"
    );
    let next = db.call("next_ready_at", json!({ "handlers": ["work"] }));
    assert_eq!(next["in_ms"], 600, "{next}");
    let held = db.call("list_tasks", json!({ "state": "pending", "limit": 1 }))["tasks"][0]["id"]
        .as_i64()
        .unwrap();
    let why = db.call("explain_task", json!({ "task_id": held }));
    assert_eq!(why["steps"][0]["status"], "held_by_limit", "{why}");
    assert!(
        why["steps"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("rate key `global:work` had 3 of 3 starts in the last 1000 ms"),
        "{why}"
    );

    db.call("advance_clock", json!({ "ms": 599 }));
    assert!(db.claim(&["work"], 5, 60_000).is_empty());
    // The two starts at t0 leave the window; the one at t0 + 400 is still in it.
    db.call("advance_clock", json!({ "ms": 1 }));
    assert_eq!(db.claim(&["work"], 5, 60_000).len(), 2);
    assert!(db.claim(&["work"], 5, 60_000).is_empty());
    assert_eq!(
        db.call("next_ready_at", json!({ "handlers": ["work"] }))["in_ms"],
        400
    );
    db.call("advance_clock", json!({ "ms": 400 }));
    assert_eq!(db.claim(&["work"], 5, 60_000).len(), 1);
}

#[test]
fn a_rate_key_from_the_context_and_defaults_apply_to_every_step() {
    let db = open(json!({ "clock": "manual" }));
    db.register(json!({
        "namespace": "t", "name": "two", "version": "1",
        "defaults": { "rate_limit": { "key": "$context.api", "limit": 1, "per_ms": 60000 } },
        "steps": [
            { "name": "a", "handler": "a" },
            { "name": "b", "handler": "b", "rate_limit": { "limit": 5, "per_ms": 60000 } }
        ]
    }));
    db.create("two", json!({ "api": "x" }));
    db.create("two", json!({ "api": "x" }));
    db.create("two", json!({ "api": "y" }));
    // `a` is limited per api (1 a minute); `b` by its own limit keyed by its handler.
    assert_eq!(db.claim(&["a"], 10, 60_000).len(), 2);
    assert_eq!(db.claim(&["b"], 10, 60_000).len(), 3);
}

#[test]
fn bad_limits_are_refused_with_the_problem_named_and_change_nothing() {
    let db = open(json!({}));
    let before = db.fingerprint();
    for (step, problem, needle) in [
        (
            json!({ "concurrency": { "key": "k", "max": 0 } }),
            "bad_concurrency",
            "max must be between 1",
        ),
        (
            json!({ "concurrency": { "key": "k", "max": -1 } }),
            "shape",
            "concurrency.max",
        ),
        (
            json!({ "concurrency": { "key": "$ctx.k", "max": 1 } }),
            "bad_concurrency",
            "not a context path",
        ),
        (
            json!({ "concurrency": { "key": "$context.", "max": 1 } }),
            "bad_concurrency",
            "empty segment",
        ),
        (
            json!({ "concurrency": { "key": "k", "max": 1, "scope": "world" } }),
            "shape",
            "scope",
        ),
        (json!({ "concurrency": { "max": 1 } }), "shape", "key"),
        (
            json!({ "concurrency": { "key": "k", "max": 1, "extra": 1 } }),
            "shape",
            "extra",
        ),
        (
            json!({ "rate_limit": { "limit": 0, "per_ms": 10 } }),
            "bad_rate_limit",
            "limit must be between 1",
        ),
        (
            json!({ "rate_limit": { "limit": 1, "per_ms": 0 } }),
            "bad_rate_limit",
            "per_ms must be between 1",
        ),
        (
            json!({ "rate_limit": { "limit": 1, "per_ms": -5 } }),
            "shape",
            "per_ms",
        ),
        (
            json!({ "rate_limit": { "limit": 1, "per_ms": 86_400_001u64 } }),
            "bad_rate_limit",
            "per_ms",
        ),
        (json!({ "rate_limit": { "limit": 1 } }), "shape", "per_ms"),
        (
            json!({ "rate_limit": { "key": "$x", "limit": 1, "per_ms": 5 } }),
            "bad_rate_limit",
            "not a context path",
        ),
    ] {
        let e = db.call_err(
            "register_template",
            json!({ "template": limited("bad", step.clone()) }),
        );
        assert_eq!(e.code, ErrorCode::InvalidTemplate, "{step}: {e}");
        let details = e.details.clone().unwrap_or_default();
        assert_eq!(details["problem"], problem, "{step}: {e} {details}");
        assert!(e.message.contains(needle), "{step}: {e}");
    }
    let e = db.call_err(
        "register_template",
        json!({ "template": {
            "namespace": "t", "name": "bad", "version": "1",
            "defaults": { "concurrency": { "key": "k", "max": 0 } },
            "steps": [{ "name": "a", "handler": "a" }]
        } }),
    );
    assert_eq!(e.code, ErrorCode::InvalidTemplate);
    assert!(e.message.starts_with("defaults concurrency"), "{e}");
    assert_eq!(db.fingerprint(), before);

    // A context without the key's path: refused at create_task, naming the path.
    db.register(limited(
        "ctx",
        json!({ "concurrency": { "key": "$context.customer.id", "max": 1 } }),
    ));
    let before = db.fingerprint();
    for ctx in [
        json!({}),
        json!({ "customer": {} }),
        json!({ "customer": { "id": null } }),
        json!({ "customer": { "id": [1] } }),
    ] {
        let e = db.call_err(
            "create_task",
            json!({ "namespace": "t", "name": "ctx", "context": ctx }),
        );
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{ctx}: {e}");
        assert!(e.message.contains("context.customer.id"), "{e}");
        assert_eq!(
            e.details.clone().unwrap_or_default()["field"],
            "context.customer.id"
        );
        let e = db.call_err(
            "create_tasks",
            json!({ "tasks": [{ "namespace": "t", "name": "ctx", "context": { "customer": { "id": 1 } } },
                              { "namespace": "t", "name": "ctx", "context": ctx }] }),
        );
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{ctx}: {e}");
    }
    assert_eq!(db.fingerprint(), before);
}

#[test]
fn limited_steps_created_in_a_batch_keep_their_limits() {
    let db = open(json!({}));
    db.register(limited(
        "batch",
        json!({ "concurrency": { "key": "$context.k", "max": 1 } }),
    ));
    let tasks: Vec<Value> = (0..6)
        .map(|i| json!({ "namespace": "t", "name": "batch", "context": { "k": i % 2 } }))
        .collect();
    db.call("create_tasks", json!({ "tasks": tasks }));
    assert_eq!(db.claim(&["work"], 10, 60_000).len(), 2);
}

/// Four engines on one database (on PostgreSQL, four pools), each with two claiming
/// threads: the number of steps of a key held at once, counted by the claimers between
/// a claim's answer and the completion's call, never exceeds `max`.
#[test]
fn concurrent_claimers_never_run_more_than_max_steps_of_a_key() {
    let db = open(json!({}));
    db.register(limited(
        "race",
        json!({ "concurrency": { "key": "$context.k", "max": 2 } }),
    ));
    let tasks: Vec<Value> = (0..120)
        .map(|i| json!({ "namespace": "t", "name": "race", "context": { "k": i % 3 } }))
        .collect();
    db.call("create_tasks", json!({ "tasks": tasks }));
    let (store, _) = common::store_config(db.dir.path());
    let mut config = store.clone();
    config["templates_dir"] = json!(db.dir.path().join("templates").to_str().unwrap());
    if let Some(schema) = &db.schema {
        config["postgres_schema"] = json!(schema);
    }
    config["database_url"] = json!(db.url);
    let held: Arc<Vec<AtomicI64>> = Arc::new((0..3).map(|_| AtomicI64::new(0)).collect());
    let most: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(vec![0; 3]));
    let done = Arc::new(AtomicI64::new(0));
    let mut threads = Vec::new();
    for e in 0..4 {
        let engine = Arc::new(Tasker::open(&config.to_string()).unwrap());
        for t in 0..2 {
            let (engine, held, most, done) =
                (engine.clone(), held.clone(), most.clone(), done.clone());
            threads.push(std::thread::spawn(move || {
                let worker = format!("e{e}t{t}");
                let mut idle = 0;
                while done.load(Ordering::SeqCst) < 120 && idle < 2000 {
                    let out = engine
                        .call(
                            "claim",
                            &json!({ "handlers": ["work"], "limit": 3, "worker_id": worker }).to_string(),
                        )
                        .unwrap();
                    let out: Value = serde_json::from_str(&out).unwrap();
                    let steps = out["steps"].as_array().unwrap().clone();
                    if steps.is_empty() {
                        idle += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        continue;
                    }
                    for s in &steps {
                        let k = s["context"]["k"].as_u64().unwrap() as usize;
                        let now = held[k].fetch_add(1, Ordering::SeqCst) + 1;
                        let mut m = most.lock().unwrap();
                        m[k] = m[k].max(now);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    for s in &steps {
                        let k = s["context"]["k"].as_u64().unwrap() as usize;
                        held[k].fetch_sub(1, Ordering::SeqCst);
                        engine
                            .call(
                                "complete_step",
                                &json!({ "step_id": s["step_id"], "claim_token": s["claim_token"], "result": 1 })
                                    .to_string(),
                            )
                            .unwrap();
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 120, "every step ran");
    let most = most.lock().unwrap().clone();
    assert!(
        most.iter().all(|&m| m <= 2),
        "most held at once per key: {most:?}"
    );
    assert!(
        most.contains(&2),
        "claimers did compete for the keys: {most:?}"
    );
}

/// A worker whose every ready step is held back waits (the claim answers no
/// `next_ready_at`, so nothing spins) and is woken by the completion that frees the
/// slot, not by `claim_poll_ms` (set to 60 s here).
#[test]
fn a_worker_held_back_by_a_limit_wakes_when_a_completion_frees_a_slot() {
    let db = open(json!({ "claim_poll_ms": 60_000 }));
    db.register(limited(
        "wake",
        json!({ "concurrency": { "key": "one", "max": 1 } }),
    ));
    for _ in 0..4 {
        db.create("wake", json!({}));
    }
    let running = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let (r, m) = (running.clone(), most.clone());
    let started = std::time::Instant::now();
    let stats = tasker_core::worker::Worker::new(&db.tasker, "w")
        .concurrency(4)
        .idle_wait_ms(100)
        .handle("work", move |_| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(null))
        })
        .run_until_idle()
        .unwrap();
    assert_eq!(stats.completed, 4);
    assert_eq!(most.load(Ordering::SeqCst), 1);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(20),
        "the held claimers waited for claim_poll_ms instead of the completions: {took:?}"
    );
}

#[test]
fn environments_override_limits_and_the_stored_template_shows_them() {
    let db = open(json!({ "env": "prod" }));
    db.register(json!({
        "namespace": "t", "name": "env", "version": "1",
        "defaults": { "concurrency": { "key": "$context.k", "max": 5 } },
        "steps": [{ "name": "a", "handler": "a" }, { "name": "b", "handler": "b" }],
        "environments": { "prod": {
            "defaults": { "rate_limit": { "limit": 10, "per_ms": 1000, "scope": "template" } },
            "steps": [{ "name": "b", "concurrency": { "key": "$$vip", "max": 1 } }]
        } }
    }));
    let t = db.call(
        "get_template",
        json!({ "namespace": "t", "name": "env", "version": "1" }),
    )["template"]
        .clone();
    let steps = t["steps"].as_array().unwrap();
    assert_eq!(
        steps[0]["concurrency"],
        json!({ "key": "$context.k", "max": 5, "scope": "global" })
    );
    assert_eq!(
        steps[1]["concurrency"],
        json!({ "key": "$$vip", "max": 1, "scope": "global" })
    );
    assert_eq!(
        steps[1]["rate_limit"],
        json!({ "limit": 10, "per_ms": 1000, "scope": "template" })
    );
    let id = db.create("env", json!({ "k": 1 }));
    db.claim(&["a", "b"], 10, 60_000);
    let why = db.call("explain_task", json!({ "task_id": id }));
    let b = why["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "b")
        .unwrap()
        .clone();
    assert_eq!(b["limits"]["concurrency"]["key"], "global:$vip", "{why}");
    assert_eq!(b["limits"]["rate"]["key"], "template:t/env:b", "{why}");
    assert_eq!(b["limits"]["rate"]["running"], 1, "{why}");
}
