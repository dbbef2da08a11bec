//! The Rust worker: handlers run concurrently up to the limit, heartbeats keep long
//! handlers' leases alive, and a panicking handler is recorded as a failed attempt.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fast_retry, open, template};
use serde_json::json;
use tasker_core::worker::Worker;

#[test]
fn handlers_run_concurrently_up_to_the_limit() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let ids: Vec<i64> = (0..8)
        .map(|i| db.create("one", json!({ "i": i })))
        .collect();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let stats = Worker::new(&db.tasker, "w")
        .concurrency(4)
        .handle("a", move |s| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(150));
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(s.context["i"].clone())
        })
        .run_until_idle()
        .unwrap();
    assert_eq!(stats.completed, 8);
    let peak = peak.load(Ordering::SeqCst);
    assert!((2..=4).contains(&peak), "peak concurrency {peak}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(db.step(*id, "a")["result"], json!(i));
    }
}

#[test]
fn heartbeats_keep_a_long_handler_s_lease() {
    // A 600 ms lease and a 50 ms sweep: without heartbeats the step would be taken back
    // during the 1.5 s handler and its result refused. (With a 300 ms lease, beats every
    // 100 ms left too little slack on a loaded 2-core machine: once the lease ran out.)
    let db = open(json!({ "lease_ms": 600, "sweep_interval_ms": 50 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.create("one", json!({}));
    let stats = Worker::new(&db.tasker, "w")
        .handle("a", |_| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(json!("slow but alive"))
        })
        .run_until_idle()
        .unwrap();
    assert_eq!((stats.completed, stats.lost), (1, 0));
    let step = db.step(id, "a");
    assert_eq!(step["attempts"], 1);
    assert_eq!(step["result"], "slow but alive");
    assert!(!db.events(id).contains(&"step.lease_expired".to_owned()));
}

#[test]
fn a_panicking_handler_is_a_failed_attempt() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let id = db.create("one", json!({}));
    let stats = Worker::new(&db.tasker, "w")
        .handle("a", |_| panic!("disk on fire"))
        .run_until_idle()
        .unwrap();
    assert_eq!(stats.failed, 1);
    let step = db.step(id, "a");
    assert_eq!(step["state"], "error");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("panicked") && message.contains("disk on fire"),
        "{message}"
    );
    assert_eq!(db.task(id)["state"], "error");
}

#[test]
fn a_cancel_reaches_a_running_handler() {
    let db = open(json!({ "lease_ms": 600 }));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let id = db.create("one", json!({}));
    let t = db.tasker.clone();
    let canceller = std::thread::spawn(move || {
        // Once the handler runs, cancel its task from another thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let stats: serde_json::Value =
                serde_json::from_str(&t.call("stats", "{}").unwrap()).unwrap();
            if stats["steps"]["running"].as_i64() == Some(1) {
                t.call("cancel_task", &json!({ "task_id": id }).to_string())
                    .unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the step never ran");
    });
    let saw = Arc::new(AtomicUsize::new(0));
    let seen = saw.clone();
    let stats = Worker::new(&db.tasker, "w")
        .handle("a", move |s| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !s.is_cancelled() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if s.is_cancelled() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            Ok(json!("ignored"))
        })
        .run_until_idle()
        .unwrap();
    canceller.join().unwrap();
    assert_eq!(saw.load(Ordering::SeqCst), 1, "the handler saw the cancel");
    assert_eq!((stats.completed, stats.lost), (0, 1));
    assert_eq!(db.task(id)["state"], "cancelled");
}

#[test]
fn a_timeout_reaches_a_running_handler_and_fails_the_attempt() {
    let db = open(json!({ "lease_ms": 600 }));
    let mut t = template("slow", &[("a", &[])], fast_retry(1));
    t["steps"][0]["timeout_s"] = json!(1);
    db.register(t);
    let id = db.create("slow", json!({}));
    let stats = Worker::new(&db.tasker, "w")
        .lease_ms(600)
        .handle("a", |s| {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while !s.is_cancelled() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(json!({ "cancelled": s.is_cancelled() }))
        })
        .run_until_idle()
        .unwrap();
    assert_eq!(stats.lost, 1, "the late result is refused");
    let step = db.step(id, "a");
    assert_eq!(step["state"], "error");
    assert_eq!(step["error"]["kind"], "timeout");
}

/// A step claimed in the same page as one that is running, whose task is cancelled
/// before its handler starts: the stop signal reaches that handler (it was once
/// dropped, because only started handlers had a flag to raise).
#[test]
fn a_cancel_before_the_handler_starts_reaches_it() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(3)));
    let ids = [db.create("one", json!({})), db.create("one", json!({}))];
    let t = db.tasker.clone();
    let first = Arc::new(AtomicUsize::new(0));
    let saw = Arc::new(AtomicUsize::new(0));
    let seen = saw.clone();
    let stats = Worker::new(&db.tasker, "w")
        .batch(2)
        .handle("a", move |s| {
            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first handler to run cancels the other task, whose step is in
                // the same page and has not started.
                let other = if s.task_id == ids[0] { ids[1] } else { ids[0] };
                t.call("cancel_task", &json!({ "task_id": other }).to_string())
                    .unwrap();
                // Time for the stop to arrive while the other step waits its turn.
                std::thread::sleep(Duration::from_millis(300));
            } else {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !s.is_cancelled() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if s.is_cancelled() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(json!(1))
        })
        .run_until_idle()
        .unwrap();
    assert_eq!(
        saw.load(Ordering::SeqCst),
        1,
        "the waiting handler saw the cancel"
    );
    assert_eq!((stats.completed, stats.lost), (1, 1), "{stats:?}");
    let states: Vec<_> = ids.iter().map(|&id| db.task(id)["state"].clone()).collect();
    assert!(states.contains(&json!("cancelled")), "{states:?}");
}
