//! Throughput of independent steps: single-step tasks created beforehand (not timed),
//! drained by one worker in claim/complete batches.

use std::time::Instant;

use crate::results::Results;
use crate::util::{self, OpTimes, Res, Scratch};

pub fn run(sync: &str, n: usize, batch: u32, out: &mut Results) -> Res<()> {
    let scratch = Scratch::new("steps")?;
    let t = util::open(&scratch.db(), sync)?;
    util::register(
        &t,
        &util::template("single", &[("only".into(), Vec::new())]),
    )?;
    let req = util::create_request("single");
    let start = Instant::now();
    for _ in 0..n {
        util::create(&t, &req)?;
    }
    let create_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut times = OpTimes::default();
    util::drain(&t, batch, n, &mut times)?;
    let drain_s = start.elapsed().as_secs_f64();
    let stats = util::call(&t, "stats", "{}")?;
    let complete = stats["tasks"]["complete"].as_u64().unwrap_or(0);
    t.close();
    if complete != n as u64 {
        return Err(format!("{complete} of {n} single-step tasks complete: {stats}").into());
    }
    out.num("steps_per_s_sqlite", n as f64 / drain_s);
    out.int("steps_tasks", n as u64);
    out.int("steps_claim_limit", u64::from(batch));
    times.record("steps", out);
    out.num("create_tasks_per_s_sqlite", n as f64 / create_s);
    eprintln!(
        "  steps: {:.0} steps/s drained ({n} tasks, created at {:.0}/s)",
        n as f64 / drain_s,
        n as f64 / create_s
    );
    Ok(())
}
