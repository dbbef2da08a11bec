//! Four processes fire one every-minute schedule through a simulated hour and make
//! exactly one task per tick (60). Each child process is this test binary again, on a
//! manual clock of its own that it moves in one-minute steps to the same absolute
//! times, so all four find every tick due at about the same moment and race to fire it.
//! Runs on the store `TASKER_TEST_STORE` names (PostgreSQL in `scripts/test`'s list).

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tasker_core::api::Tasker;

const CHILDREN: usize = 4;
const MINUTES: i64 = 60;

fn call(t: &Tasker, op: &str, req: Value) -> Value {
    let out = t
        .call(op, &req.to_string())
        .unwrap_or_else(|e| panic!("{op} {req}: {e}"));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn four_processes_fire_each_tick_of_an_hour_once() {
    let db = common::open(json!({}));
    db.register(common::template(
        "tick",
        &[("a", &[])],
        common::fast_retry(1),
    ));
    let t0 = db.call("next_ready_at", json!({}))["now"]
        .as_str()
        .map(|s| tasker_core::model::schedule::parse_rfc3339("now", s).unwrap())
        .unwrap();
    db.call(
        "create_schedule",
        json!({ "name": "minutely", "template": { "namespace": "t", "name": "tick" },
                "cron": "* * * * *", "catch_up": { "policy": "all" } }),
    );
    let mut config = json!({ "database_url": db.url, "clock": "manual" });
    if let Some(schema) = &db.schema {
        config["postgres_schema"] = json!(schema);
        config["postgres_pool_size"] = json!(2);
    }
    let go = db.dir.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_fires_the_schedule",
                    "--ignored",
                    "--nocapture",
                ])
                .env("SCHED_CHILD_CONFIG", config.to_string())
                .env("SCHED_CHILD_T0", t0.to_string())
                .env("SCHED_CHILD_GO", &go)
                .env("SCHED_CHILD_INDEX", i.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    // All four open their handles first, then start together.
    std::thread::sleep(Duration::from_millis(1_500));
    std::fs::write(&go, "go").unwrap();
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "a child process failed: {status}");
    }
    let tasks = db.call("list_tasks", json!({ "limit": 1000 }))["tasks"]
        .as_array()
        .unwrap()
        .clone();
    let mut keys: Vec<String> = tasks
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    let mut expected = Vec::new();
    let first = (t0 / 60_000 + 1) * 60_000;
    for k in 0..MINUTES {
        expected.push(tasker_core::model::schedule::tick_key(
            "minutely",
            first + k * 60_000,
        ));
    }
    assert_eq!(keys.len(), 60, "one task per tick, no more: {keys:?}");
    assert_eq!(keys, expected, "exactly the hour's ticks");
    let s = db.call("get_schedule", json!({ "name": "minutely" }))["schedule"].clone();
    assert_eq!(
        s["last_tick_at"],
        json!(tasker_core::time::rfc3339(first + (MINUTES - 1) * 60_000))
    );
}

/// One child process (run by the test above, never on its own: `#[ignore]`).
#[test]
#[ignore = "a child process of four_processes_fire_each_tick_of_an_hour_once"]
fn child_fires_the_schedule() {
    let config = std::env::var("SCHED_CHILD_CONFIG").expect("run by the parent test");
    let t0: i64 = std::env::var("SCHED_CHILD_T0").unwrap().parse().unwrap();
    let go = std::env::var("SCHED_CHILD_GO").unwrap();
    let index: u64 = std::env::var("SCHED_CHILD_INDEX").unwrap().parse().unwrap();
    let t = Tasker::open(&config).unwrap();
    while !std::path::Path::new(&go).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    for k in 1..=MINUTES {
        let now = call(&t, "advance_clock", json!({ "ms": 0 }))["now_ms"]
            .as_i64()
            .unwrap();
        let target = t0 + k * 60_000;
        call(&t, "advance_clock", json!({ "ms": (target - now).max(0) }));
        // Interleave the processes differently at each step.
        std::thread::sleep(Duration::from_millis((index * 7 + k as u64) % 5));
    }
    t.close();
}

/// A delayed task created in one process comes due for a claim waiting in another: the
/// creating process's sweep promotes it, and on PostgreSQL its NOTIFY wakes the waiter
/// (whose own re-check interval is a minute, and whose own sweep is off).
#[test]
fn a_delayed_task_wakes_a_claim_waiting_in_another_process() {
    let db = common::open(json!({}));
    db.register(common::template(
        "later",
        &[("a", &[])],
        common::fast_retry(1),
    ));
    let mut config = json!({
        "database_url": db.url,
        "sweep_interval_ms": 3_600_000,
        "claim_poll_ms": if common::on_postgres() { 60_000 } else { 100 },
    });
    if let Some(schema) = &db.schema {
        config["postgres_schema"] = json!(schema);
        config["postgres_pool_size"] = json!(2);
    }
    let ready = db.dir.path().join("waiting");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_waits_for_the_delayed_task",
            "--ignored",
            "--nocapture",
        ])
        .env("SCHED_CHILD_CONFIG", config.to_string())
        .env("SCHED_CHILD_READY", &ready)
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the child never started waiting"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    db.call(
        "create_task",
        json!({ "namespace": "t", "name": "later", "delay_ms": 500 }),
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "the waiting child failed: {status}");
    let tasks = db.call("list_tasks", json!({ "state": "complete" }))["tasks"].clone();
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
}

#[test]
#[ignore = "a child process of a_delayed_task_wakes_a_claim_waiting_in_another_process"]
fn child_waits_for_the_delayed_task() {
    let config = std::env::var("SCHED_CHILD_CONFIG").expect("run by the parent test");
    let ready = std::env::var("SCHED_CHILD_READY").unwrap();
    let t = Tasker::open(&config).unwrap();
    // One claim first, so this process knows of no delayed task of its own.
    let none = call(&t, "claim", json!({ "handlers": ["a"], "limit": 1 }));
    assert_eq!(none["steps"].as_array().unwrap().len(), 0);
    std::fs::write(&ready, "waiting").unwrap();
    let start = std::time::Instant::now();
    let got = call(
        &t,
        "claim",
        json!({ "handlers": ["a"], "limit": 1, "wait_ms": 20_000, "lease_ms": 60_000 }),
    );
    let steps = got["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "no step came: {got}");
    let waited = start.elapsed();
    // Due 500 ms after creation (200 ms after this wait began); found by the other
    // process's sweep within its sweep_interval_ms (1 s) of that.
    assert!(
        waited >= Duration::from_millis(600),
        "too early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "too late: {waited:?}");
    call(
        &t,
        "complete_step",
        json!({ "step_id": steps[0]["step_id"], "claim_token": steps[0]["claim_token"], "result": null }),
    );
    t.close();
}
