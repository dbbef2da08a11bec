//! Crash safety with real processes: a worker process holding leases is killed with
//! SIGKILL; another process takes its steps back after the lease and finishes the task.

mod common;

use std::process::{Command, Stdio};

use common::{fast_retry, open, template};
use serde_json::json;
use tasker_core::api::Tasker;

/// Runs only as the child process spawned by the test below.
#[test]
#[ignore = "run as a child process by killed_worker_steps_come_back"]
fn child_worker_claims_and_hangs() {
    let Ok(url) = std::env::var("TASKER_CRASH_DB") else {
        return;
    };
    let t = Tasker::open(&json!({ "database_url": url, "migrate_on_open": false }).to_string())
        .unwrap();
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
        .env("TASKER_CRASH_MARKER", &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The child writes how many steps it holds once its claim has committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let claimed = loop {
        if let Ok(n) = std::fs::read_to_string(&marker) {
            break n;
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
