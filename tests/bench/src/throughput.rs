//! Throughput of independent steps: single-step tasks created beforehand (not timed),
//! drained by one worker process in claim/complete batches, on SQLite or PostgreSQL.
//! On PostgreSQL the process runs `loops` claim loops at once (`--pg-loops`): the
//! server works on one transaction per connection, so a worker keeps several in flight
//! to use more than one core, as graphile-worker's peer does at concurrency 24. SQLite
//! has one writer, so one loop.

use std::time::Instant;

use crate::cpu::Meter;
use crate::results::Results;
use crate::util::{self, Db, OpTimes, Res, Store};

pub fn run(store: Store, n: usize, batch: u32, loops: usize, out: &mut Results) -> Res<()> {
    let db = Db::open(store, "steps")?;
    let t = &db.tasker;
    let name = store.name();
    util::register(t, &util::template("single", &[("only".into(), Vec::new())]))?;
    let req = util::create_request("single");
    let start = Instant::now();
    // SQLite serializes writers, so one thread creates as fast as several.
    let threads = if name == "sqlite" { 1 } else { 4 };
    util::create_many(t, &req, n, threads)?;
    let create_s = start.elapsed().as_secs_f64();
    util::warm_up(t, loops)?;
    let start = Instant::now();
    let cpu = Meter::start();
    let mut times = OpTimes::default();
    util::drain_concurrently(t, batch, n, loops, &mut times)?;
    let drain_s = start.elapsed().as_secs_f64();
    let used = cpu.stop();
    let stats = util::call(t, "stats", "{}")?;
    let complete = stats["tasks"]["complete"].as_u64().unwrap_or(0);
    drop(db);
    if complete != n as u64 {
        return Err(format!("{complete} of {n} single-step tasks complete: {stats}").into());
    }
    // The SQLite names predate the PostgreSQL runs; they keep their unsuffixed form.
    let sfx = if name == "sqlite" {
        String::new()
    } else {
        format!("_{name}")
    };
    out.num(&format!("steps_per_s_{name}"), n as f64 / drain_s);
    out.int(&format!("steps_tasks{sfx}"), n as u64);
    out.int(&format!("steps_claim_limit{sfx}"), u64::from(batch));
    out.int(&format!("steps_loops{sfx}"), loops as u64);
    times.record(&format!("steps{sfx}"), out);
    // CPU per step: steadier than steps/s on a shared VM (see cpu.rs).
    out.num(
        &format!("steps_client_cpu_us_per_step_{name}"),
        used.own_s * 1e6 / n as f64,
    );
    if name != "sqlite" {
        out.num(
            &format!("steps_server_cpu_us_per_step_{name}"),
            used.server_s * 1e6 / n as f64,
        );
    }
    out.num(&format!("create_tasks_per_s_{name}"), n as f64 / create_s);
    eprintln!(
        "  steps ({name}): {:.0} steps/s drained ({n} tasks, {loops} claim loops; created at {:.0}/s on {threads} threads); CPU per step: {:.1} us here, {:.1} us in postgres processes",
        n as f64 / drain_s,
        n as f64 / create_s,
        used.own_s * 1e6 / n as f64,
        used.server_s * 1e6 / n as f64,
    );
    Ok(())
}
