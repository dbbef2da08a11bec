//! Throughput of independent steps with several worker processes on one PostgreSQL
//! schema, each running as many claim loops as the one process of `pg-steps`: the bench binary runs itself in child mode (`--pg-worker`) once per process.
//! Each child opens its engine, warms its connections up and says `ready`; the clock
//! starts when all are ready and told to `go`, and stops at the last step's completion in
//! any child (wall-clock times, one machine), as the one-process run stops at its last
//! completion: a child's idle wait before it sees that nothing is left is not counted.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cpu::Meter;
use crate::pg::Pg;
use crate::results::Results;
use crate::util::{self, Db, OpTimes, Res, Store};

struct Worker {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn line(&mut self) -> Res<String> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if line.is_empty() {
            return Err("a worker process exited early (see its stderr above)".into());
        }
        Ok(line.trim().to_owned())
    }
}

/// Records `steps_per_s_postgres_<procs>proc<suffix>` and its companions; `suffix`
/// tells apart runs of the same process count with other loop counts.
#[allow(clippy::too_many_arguments)]
pub fn run(
    pg: &Pg,
    exe: &Path,
    procs: usize,
    loops: usize,
    n: usize,
    batch: u32,
    suffix: &str,
    sessions: bool,
    out: &mut Results,
) -> Res<()> {
    let db = Db::open(Store::Postgres(pg), "steps4p")?;
    let schema = db.schema().ok_or("no schema")?.to_owned();
    let t = &db.tasker;
    util::register(t, &util::template("single", &[("only".into(), Vec::new())]))?;
    // Set-up, not timed: in batches (one commit per 100 tasks).
    crate::flows::create_batches(t, "single", n)?;
    let mut workers = Vec::with_capacity(procs);
    for _ in 0..procs {
        let mut child = Command::new(exe)
            .args(["--pg-worker", "--pg-url", &pg.url, "--schema", &schema])
            .args(["--limit", &batch.to_string()])
            .args(["--pg-loops", &loops.to_string()])
            .args(sessions.then_some("--sessions"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        workers.push(Worker {
            child,
            out: BufReader::new(stdout),
        });
    }
    let result = drive(&mut workers, n);
    for w in &mut workers {
        // Only reached on error paths with children still running.
        if w.child.try_wait()?.is_none() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
    let (secs, server_s, per_proc) = result?;
    let stats = util::call(t, "stats", "{}")?;
    let complete = stats["tasks"]["complete"].as_u64().unwrap_or(0);
    drop(db);
    if complete != n as u64 {
        return Err(
            format!("{complete} of {n} tasks complete after {procs} processes: {stats}").into(),
        );
    }
    let rate = n as f64 / secs;
    out.num(&format!("steps_per_s_postgres_{procs}proc{suffix}"), rate);
    out.int(
        &format!("steps_postgres_{procs}proc{suffix}_loops"),
        loops as u64,
    );
    out.num(
        &format!("steps_server_cpu_us_per_step_postgres_{procs}proc{suffix}"),
        server_s * 1e6 / n as f64,
    );
    let shares: Vec<String> = per_proc.iter().map(u64::to_string).collect();
    out.text(
        &format!("steps_postgres_{procs}proc{suffix}_shares"),
        &shares.join("/"),
    );
    eprintln!(
        "  steps ({procs} processes of {loops} claim loops, postgres): {rate:.0} steps/s ({n} tasks, shares {}); {:.1} us of postgres CPU per step",
        shares.join("/"),
        server_s * 1e6 / n as f64
    );
    Ok(())
}

/// Starts the workers together; returns the wall seconds until the last completion in
/// any of them, the server's CPU seconds until they all exited, and each one's count of
/// steps.
fn drive(workers: &mut [Worker], n: usize) -> Res<(f64, f64, Vec<u64>)> {
    for w in workers.iter_mut() {
        let l = w.line()?;
        if l != "ready" {
            return Err(format!("a worker process said `{l}`, not ready").into());
        }
    }
    let start = unix_s();
    let cpu = Meter::start();
    for w in workers.iter_mut() {
        let stdin = w.child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
    }
    let mut per_proc = Vec::with_capacity(workers.len());
    let mut last = start;
    for w in workers.iter_mut() {
        let l = w.line()?;
        let v: Value = serde_json::from_str(&l)?;
        per_proc.push(v["done"].as_u64().ok_or("a worker reported no count")?);
        last = last.max(
            v["last_done_s"]
                .as_f64()
                .ok_or("a worker reported no time")?,
        );
        let status = w.child.wait()?;
        if !status.success() {
            return Err(format!("a worker process failed: {status}").into());
        }
    }
    let secs = last - start;
    let server_s = cpu.stop().server_s;
    let total: u64 = per_proc.iter().sum();
    if total != n as u64 {
        return Err(format!("the processes completed {total} steps, not {n}").into());
    }
    Ok((secs, server_s, per_proc))
}

/// Now as seconds since the Unix epoch: the one clock that the harness and its child
/// processes share.
fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Child mode: `loops` claim loops (threads sharing this process's engine) drain the
/// schema's no-op steps with batched claim + complete-and-claim until every task is
/// done; print `{"done": steps this process did, "last_done_s": when its last
/// completion returned}`.
pub fn child(url: &str, schema: &str, limit: u32, loops: usize, sessions: bool) -> Res<()> {
    let t = util::open_postgres(url, schema)?;
    util::warm_up(&t, loops)?;
    // With --sessions every loop drives one worker session of this process (the worker
    // runtime: its shared claimer, its leases), as the bindings' workers do.
    let session = if sessions {
        let open = json!({ "handlers": [util::NOOP], "concurrency": loops.max(1),
                           "batch": (limit as usize * loops.max(1)).min(1000), "name": "bench" });
        let opened = util::call(&t, "worker_open", &open.to_string())?;
        Some(opened["worker_id"].as_str().unwrap_or_default().to_owned())
    } else {
        None
    };
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let done = std::thread::scope(|s| {
        let handles: Vec<_> = (0..loops.max(1))
            .map(|_| {
                s.spawn(|| match &session {
                    Some(w) => drain_session(&t, w, limit),
                    None => drain_until_complete(&t, limit),
                })
            })
            .collect();
        handles.into_iter().try_fold((0u64, 0f64), |(n, last), h| {
            let (done, at) = h.join().map_err(|_| "a claim loop panicked")??;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((n + done, last.max(at)))
        })
    })?;
    t.close();
    let (done, last) = done;
    writeln!(stdout, "{}", json!({ "done": done, "last_done_s": last }))?;
    stdout.flush()?;
    Ok(())
}

/// One claim loop of a child: claim, complete-and-claim while steps come, and when a
/// claim finds nothing, stop once no task is pending or running (two index reads; the
/// `stats` call the harness used before scans every table, and a dozen loops calling it
/// at the end of a run slowed the run it measured). Returns the steps it did and when its
/// last completion returned (0 when it did none).
fn drain_until_complete(t: &tasker_core::api::Tasker, limit: u32) -> Res<(u64, f64)> {
    let claim = util::claim_request(limit, 100);
    let mut times = OpTimes::default();
    drain_with(
        t,
        |times: &mut OpTimes| util::claim(t, &claim, times),
        |steps: &[util::Claimed], times: &mut OpTimes| {
            Ok(util::complete_page(t, steps, true, limit, times)?.unwrap_or_default())
        },
        &mut times,
    )
}

/// `drain_until_complete` through a worker session: `worker_next` waits for work,
/// `worker_report` records a batch and claims the next in one round trip.
fn drain_session(t: &tasker_core::api::Tasker, w: &str, limit: u32) -> Res<(u64, f64)> {
    let next = json!({ "worker_id": w, "max": limit, "wait_ms": 100 }).to_string();
    drain_with(
        t,
        |_: &mut OpTimes| util::Page::parse(&util::call_text(t, "worker_next", &next)?),
        |steps: &[util::Claimed], _: &mut OpTimes| {
            let outcomes: Vec<Value> = steps
                .iter()
                .map(|s| json!({ "step_id": s.step_id, "result": null }))
                .collect();
            let req = json!({ "worker_id": w, "outcomes": outcomes, "next": { "max": limit } });
            util::Page::parse(&util::call_text(t, "worker_report", &req.to_string())?)
        },
        &mut OpTimes::default(),
    )
}

/// The loop both drains share: `claim` a page, `report` it (which returns the next
/// page) while steps come; when a claim finds nothing, stop once no task is pending or
/// running. Returns the steps done and when the last report returned.
fn drain_with(
    t: &tasker_core::api::Tasker,
    mut claim: impl FnMut(&mut OpTimes) -> Res<util::Page>,
    mut report: impl FnMut(&[util::Claimed], &mut OpTimes) -> Res<util::Page>,
    times: &mut OpTimes,
) -> Res<(u64, f64)> {
    let mut done = 0u64;
    let mut last = 0f64;
    loop {
        let mut page = claim(times)?;
        let mut any = false;
        loop {
            let steps = page.steps.as_slice();
            if steps.is_empty() {
                break;
            }
            any = true;
            done += steps.len() as u64;
            page = report(steps, times)?;
            last = unix_s();
        }
        if !any && unfinished(t, "pending")? == 0 && unfinished(t, "running")? == 0 {
            return Ok((done, last));
        }
    }
}

/// How many tasks (0 or 1: the first page of one) are in `state`.
fn unfinished(t: &tasker_core::api::Tasker, state: &str) -> Res<usize> {
    let page = util::call(
        t,
        "list_tasks",
        &json!({ "state": state, "limit": 1 }).to_string(),
    )?;
    Ok(page["tasks"].as_array().map_or(0, Vec::len))
}
