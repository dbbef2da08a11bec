//! Crash safety with real processes: a worker process holding leases is killed with
//! SIGKILL; another process takes its steps back after the lease and finishes the task.

mod common;

use std::process::{Command, Stdio};

use common::{fast_retry, open, template};
use serde_json::json;
use tasker_core::api::Tasker;

/// The configuration a child worker process opens: the parent's database (and schema).
fn child_config(url: &str) -> serde_json::Value {
    let mut config = json!({ "database_url": url, "migrate_on_open": false });
    if let Ok(schema) = std::env::var("TASKER_CRASH_SCHEMA") {
        if !schema.is_empty() {
            config["postgres_schema"] = json!(schema);
        }
    }
    config
}

/// Runs only as the child process spawned by the test below.
#[test]
#[ignore = "run as a child process by killed_worker_steps_come_back"]
fn child_worker_claims_and_hangs() {
    let Ok(url) = std::env::var("TASKER_CRASH_DB") else {
        return;
    };
    let t = Tasker::open(&child_config(&url).to_string()).unwrap();
    let out = t
        .call(
            "claim",
            &json!({ "handlers": ["a"], "limit": 3, "worker_id": "doomed", "lease_ms": 300 })
                .to_string(),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let marker = std::env::var("TASKER_CRASH_MARKER").unwrap();
    std::fs::write(marker, v["steps"].as_array().unwrap().len().to_string()).unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[test]
fn killed_worker_steps_come_back() {
    let db = open(json!({ "sweep_interval_ms": 50 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let ids: Vec<i64> = (0..3)
        .map(|i| db.create("one", json!({ "i": i })))
        .collect();
    let marker = db.dir.path().join("claimed");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_worker_claims_and_hangs",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TASKER_CRASH_DB", &db.url)
        .env("TASKER_CRASH_SCHEMA", db.schema.as_deref().unwrap_or(""))
        .env("TASKER_CRASH_MARKER", &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The child writes how many steps it holds once its claim has committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let claimed = loop {
        // (The file exists a moment before its content is written.)
        if let Ok(n) = std::fs::read_to_string(&marker).map(|n| n.trim().to_owned()) {
            if !n.is_empty() {
                break n;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited ({status}) before claiming");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never claimed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(claimed, "3");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // This process's sweeper takes the steps back once the 300 ms lease runs out.
    let mut done = 0;
    while done < 3 {
        let out = db.call(
            "claim",
            json!({ "handlers": ["a"], "limit": 3, "wait_ms": 10_000, "worker_id": "survivor" }),
        );
        let steps = out["steps"].as_array().unwrap();
        assert!(
            !steps.is_empty(),
            "the killed worker's steps never came back"
        );
        for s in steps {
            assert_eq!(s["attempt"], 2, "the lost attempt counts");
            db.complete(s, json!("recovered"));
            done += 1;
        }
    }
    for id in ids {
        assert_eq!(db.task(id)["state"], "complete");
        let events = db.call("events", json!({ "task_id": id, "limit": 100 }))["events"].clone();
        let lost = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "step.lease_expired")
            .expect("the lost attempt is recorded");
        assert_eq!(lost["worker"], "doomed");
        assert_eq!(lost["attempt"], 1);
    }
}

/// Runs only as a child process spawned by `several_processes_complete_each_step_once`.
#[test]
#[ignore = "run as a child process by several_processes_complete_each_step_once"]
fn child_worker_drains() {
    let Ok(url) = std::env::var("TASKER_DRAIN_DB") else {
        return;
    };
    let id = std::env::var("TASKER_DRAIN_WORKER").unwrap();
    let t = Tasker::open(&child_config(&url).to_string()).unwrap();
    let stats = tasker_core::worker::Worker::new(&t, id)
        .batch(16)
        .idle_wait_ms(300)
        .handle("a", |s| Ok(json!(s.context["i"])))
        .handle("b", |s| Ok(json!(s.results["a"].as_i64().unwrap() * 2)))
        .run_until_idle()
        .unwrap();
    std::fs::write(
        std::env::var("TASKER_DRAIN_OUT").unwrap(),
        stats.completed.to_string(),
    )
    .unwrap();
}

#[test]
fn several_processes_complete_each_step_once() {
    const TASKS: i64 = 2000;
    let db = open(json!({}));
    db.register(template(
        "pair",
        &[("a", &[]), ("b", &["a"])],
        fast_retry(3),
    ));
    let ids: Vec<i64> = (0..TASKS)
        .map(|i| db.create("pair", json!({ "i": i })))
        .collect();
    let children: Vec<(std::process::Child, std::path::PathBuf)> = (0..3)
        .map(|n| {
            let out = db.dir.path().join(format!("drained-{n}"));
            let child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "child_worker_drains",
                    "--test-threads=1",
                ])
                .env("TASKER_DRAIN_DB", &db.url)
                .env("TASKER_CRASH_SCHEMA", db.schema.as_deref().unwrap_or(""))
                .env("TASKER_DRAIN_WORKER", format!("proc-{n}"))
                .env("TASKER_DRAIN_OUT", &out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    let mut reported = 0;
    let mut busy = 0;
    for (mut child, out) in children {
        assert!(child.wait().unwrap().success(), "a worker process failed");
        let n = std::fs::read_to_string(out)
            .unwrap()
            .parse::<i64>()
            .unwrap();
        eprintln!("worker process completed {n} steps");
        busy += i64::from(n > 0);
        reported += n;
    }
    assert!(
        busy >= 2,
        "the processes did not overlap; the test proves nothing"
    );
    // Every step completed exactly once, counted from the transitions table.
    assert_eq!(reported, 2 * TASKS, "the workers' own counts");
    let mut completions = std::collections::HashMap::<i64, i64>::new();
    let mut cursor = 0;
    loop {
        let page = db.call(
            "events",
            json!({ "since": cursor, "limit": 1000, "types": ["step.completed"] }),
        );
        for e in page["events"].as_array().unwrap() {
            *completions
                .entry(e["step_id"].as_i64().unwrap())
                .or_default() += 1;
        }
        let next = page["next_cursor"].as_i64().unwrap();
        if next == cursor {
            break;
        }
        cursor = next;
    }
    assert_eq!(completions.len() as i64, 2 * TASKS);
    assert!(
        completions.values().all(|&n| n == 1),
        "a step completed twice"
    );
    for (i, id) in ids.iter().enumerate() {
        let task = db.task(*id);
        assert_eq!(task["state"], "complete");
        assert_eq!(task["steps"][1]["result"], json!(2 * i as i64));
    }
}
