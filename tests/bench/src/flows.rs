//! Workflow throughput on PostgreSQL, against the same shapes built from graphile-worker
//! jobs (`peer.rs`): a 4-step chain and a fan-out of 10 with a join (root, ten
//! parallel steps, one step after all ten). The tasks are created beforehand in batches
//! of 100 (`create_tasks`, not timed), then one worker process with `loops` claim loops
//! runs them to completion; the clock stops at the last step's completion. Also the batch
//! creation rate: single-step tasks created by `create_tasks` in batches of 100.

use std::time::Instant;

use serde_json::Value;

use crate::cpu::Meter;
use crate::pg::Pg;
use crate::results::Results;
use crate::util::{self, Db, OpTimes, Res, Store};

/// How many tasks one `create_tasks` call creates here.
pub const BATCH: usize = 100;

/// The steps of a chain of `n` steps.
pub fn chain(n: usize) -> Vec<(String, Vec<String>)> {
    (0..n)
        .map(|i| {
            let deps = if i == 0 {
                Vec::new()
            } else {
                vec![format!("s{}", i - 1)]
            };
            (format!("s{i}"), deps)
        })
        .collect()
}

/// A root, `n` steps after it, and a join after all of them.
pub fn fanout(n: usize) -> Vec<(String, Vec<String>)> {
    let mut steps = vec![("root".to_owned(), Vec::new())];
    let middle: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    for m in &middle {
        steps.push((m.clone(), vec!["root".to_owned()]));
    }
    steps.push(("join".to_owned(), middle));
    steps
}

/// Creates `n` tasks of template `bench/<name>` through `create_tasks`, `BATCH` a call.
/// The request is written as text and the answer read only as far as counting its
/// tasks, as a program that has its requests in hand would: building and dropping a
/// `serde_json::Value` tree per task cost this process about a fifth of its CPU per task,
/// which is the harness's, not the engine's (the peer's harness hands plain objects to
/// `addJobs`).
pub fn create_batches(t: &tasker_core::api::Tasker, name: &str, n: usize) -> Res<()> {
    use std::fmt::Write as _;
    #[derive(serde::Deserialize)]
    struct Made {
        tasks: Vec<serde::de::IgnoredAny>,
    }
    let mut left = n;
    let mut i = 0usize;
    let mut req = String::with_capacity(BATCH * 96);
    while left > 0 {
        let k = left.min(BATCH);
        req.clear();
        req.push_str(r#"{"tasks": ["#);
        for j in 0..k {
            if j > 0 {
                req.push(',');
            }
            write!(
                req,
                r#"{{"namespace": "bench", "name": {}, "version": "1.0.0", "context": {{"n": {}}}}}"#,
                Value::from(name),
                i + j
            )?;
        }
        req.push_str("]}");
        let out = t
            .call("create_tasks", &req)
            .map_err(|e| format!("create_tasks failed: {} {}", e.code, e.message))?;
        let made: Made = serde_json::from_str(&out)?;
        if made.tasks.len() != k {
            return Err(format!(
                "create_tasks answered {} of {k} tasks: {out}",
                made.tasks.len()
            )
            .into());
        }
        left -= k;
        i += k;
    }
    Ok(())
}

/// Runs `tasks` tasks of `spec` to completion; records `<label>_tasks_per_s_postgres`.
pub fn run(
    pg: &Pg,
    label: &str,
    spec: &[(String, Vec<String>)],
    tasks: usize,
    loops: usize,
    out: &mut Results,
) -> Res<()> {
    let db = Db::open(Store::Postgres(pg), label)?;
    let t = &db.tasker;
    util::register(t, &util::template(label, spec))?;
    create_batches(t, label, tasks)?;
    util::warm_up(t, loops)?;
    let steps = tasks * spec.len();
    let start = Instant::now();
    let cpu = Meter::start();
    let mut times = OpTimes::default();
    util::drain_concurrently(t, 256, steps, loops, &mut times)?;
    let secs = start.elapsed().as_secs_f64();
    let used = cpu.stop();
    let stats = util::call(t, "stats", "{}")?;
    let complete = stats["tasks"]["complete"].as_u64().unwrap_or(0);
    drop(db);
    if complete != tasks as u64 {
        return Err(format!("{complete} of {tasks} {label} tasks complete: {stats}").into());
    }
    let rate = tasks as f64 / secs;
    out.num(&format!("{label}_tasks_per_s_postgres"), rate);
    out.num(
        &format!("{label}_steps_per_s_postgres"),
        steps as f64 / secs,
    );
    out.int(&format!("{label}_tasks_postgres"), tasks as u64);
    out.num(
        &format!("{label}_server_cpu_us_per_task_postgres"),
        used.server_s * 1e6 / tasks as f64,
    );
    eprintln!(
        "  {label} (postgres): {rate:.0} tasks/s ({tasks} tasks of {} steps, {loops} claim loops); {:.1} us of postgres CPU per task",
        spec.len(),
        used.server_s * 1e6 / tasks as f64
    );
    Ok(())
}

/// Single-step tasks created by `create_tasks` in batches of `BATCH`: by one caller
/// (`create_tasks_per_s_postgres_batch`), then by four at once (`..._batch_4callers`:
/// the server flushes several callers' commits together).
pub fn creation(pg: &Pg, n: usize, out: &mut Results) -> Res<()> {
    for callers in [1usize, 4] {
        let db = Db::open(Store::Postgres(pg), "create")?;
        let t = &db.tasker;
        util::register(t, &util::template("single", &[("only".into(), Vec::new())]))?;
        // The first batches plan the function on the connections, as in a running process.
        std::thread::scope(|s| -> Res<()> {
            let handles: Vec<_> = (0..callers)
                .map(|_| s.spawn(|| create_batches(t, "single", BATCH)))
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().map_err(|_| "a creating thread panicked")?)
        })?;
        let start = Instant::now();
        let cpu = Meter::start();
        std::thread::scope(|s| -> Res<()> {
            let handles: Vec<_> = (0..callers)
                .map(|i| {
                    let share = n / callers + usize::from(i < n % callers);
                    s.spawn(move || create_batches(t, "single", share))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().map_err(|_| "a creating thread panicked")?)
        })?;
        let secs = start.elapsed().as_secs_f64();
        let used = cpu.stop();
        let stats = util::call(t, "stats", "{}")?;
        let pending = stats["tasks"]["pending"].as_u64().unwrap_or(0);
        drop(db);
        let expected = (n + callers * BATCH) as u64;
        if pending != expected {
            return Err(format!("{pending} of {expected} created tasks are pending").into());
        }
        let rate = n as f64 / secs;
        let sfx = if callers == 1 {
            String::new()
        } else {
            format!("_{callers}callers")
        };
        out.num(&format!("create_tasks_per_s_postgres_batch{sfx}"), rate);
        out.num(
            &format!("create_tasks_server_cpu_us_per_task_postgres_batch{sfx}"),
            used.server_s * 1e6 / n as f64,
        );
        out.num(
            &format!("create_tasks_client_cpu_us_per_task_postgres_batch{sfx}"),
            used.own_s * 1e6 / n as f64,
        );
        eprintln!(
            "  create_tasks (postgres, batches of {BATCH}, {callers} callers): {rate:.0} tasks/s ({n} tasks); CPU per task: {:.1} us here, {:.1} us in postgres processes",
            used.own_s * 1e6 / n as f64,
            used.server_s * 1e6 / n as f64
        );
    }
    out.int("create_tasks_batch_size", BATCH as u64);
    Ok(())
}
