//! Throughput of independent steps with 100,000 delayed tasks waiting in the table
//! (`steps_per_s_sqlite_with_100k_delayed`): measured as `steps` measures
//! `steps_per_s_sqlite` (single-step tasks created beforehand, one worker draining
//! them in claim/complete batches), with the delayed tasks of the same template and
//! handler created first, due a day later. A delayed task's root step waits `pending`,
//! outside the claim index, so the target is at least 0.9 times `steps_per_s_sqlite`.

use std::time::Instant;

use serde_json::json;

use crate::results::Results;
use crate::util::{self, Db, OpTimes, Res, Store};

/// Delayed tasks created before the drain, in `create_tasks` batches of `BATCH`.
const DELAYED: usize = 100_000;
const BATCH: usize = 10_000;

pub fn run(store: Store, n: usize, batch: u32, out: &mut Results) -> Res<()> {
    let db = Db::open(store, "delayed")?;
    let t = &db.tasker;
    util::register(t, &util::template("single", &[("only".into(), Vec::new())]))?;
    let start = Instant::now();
    let item = json!({ "namespace": "bench", "name": "single", "version": "1.0.0",
                       "context": {"n": 1}, "delay_ms": 86_400_000 });
    for _ in 0..DELAYED / BATCH {
        let req = json!({ "tasks": vec![item.clone(); BATCH] }).to_string();
        util::call(t, "create_tasks", &req)?;
    }
    let delayed_s = start.elapsed().as_secs_f64();
    util::create_many(t, &util::create_request("single"), n, 1)?;
    util::warm_up(t, 1)?;
    let start = Instant::now();
    let mut times = OpTimes::default();
    util::drain_concurrently(t, batch, n, 1, &mut times)?;
    let drain_s = start.elapsed().as_secs_f64();
    let stats = util::call(t, "stats", "{}")?;
    let complete = stats["tasks"]["complete"].as_u64().unwrap_or(0);
    let pending = stats["tasks"]["pending"].as_u64().unwrap_or(0);
    drop(db);
    if complete != n as u64 || pending != DELAYED as u64 {
        return Err(format!(
            "{complete} of {n} tasks complete and {pending} of {DELAYED} delayed tasks pending: {stats}"
        )
        .into());
    }
    let rate = n as f64 / drain_s;
    out.num("steps_per_s_sqlite_with_100k_delayed", rate);
    out.int("delayed_tasks_waiting", DELAYED as u64);
    out.num(
        "delayed_create_tasks_per_s_sqlite",
        DELAYED as f64 / delayed_s,
    );
    times.record("steps_with_100k_delayed", out);
    if let Some(plain) = out.get("steps_per_s_sqlite") {
        out.num("delayed_over_steps_sqlite", rate / plain);
    }
    eprintln!(
        "  steps with {DELAYED} delayed tasks waiting: {rate:.0} steps/s drained ({n} tasks; the delayed ones created at {:.0}/s)",
        DELAYED as f64 / delayed_s
    );
    Ok(())
}
