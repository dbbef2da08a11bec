//! Reliability on PostgreSQL with real OS processes: many workers draining one schema,
//! a worker SIGKILLed or SIGSTOPped mid-run, the server restarted under running
//! workers, an exhausted connection pool and a statement timeout.
//!
//! PostgreSQL only: with `TASKER_TEST_STORE` other than `postgres` every test prints
//! that it is skipped and returns. Worker processes are this test binary run again with
//! `--ignored --exact reliability_child_*`. Every assertion is made from the database
//! (the schema's tables, read with sqlx) and from `get_task`, never from the workers'
//! own word alone. See docs/testing.md.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use common::{on_postgres, postgres_url};
use serde_json::{json, Value};
use sqlx::Connection;
use tasker_core::api::Tasker;
use tasker_core::ErrorCode;

// ---- helpers ---------------------------------------------------------------------------

/// The restart test stops a server the other tests may be using (when the whole suite
/// runs on the private cluster), so it takes this for writing and runs alone.
static SERVER: RwLock<()> = RwLock::new(());

/// `None` (after saying so) when the suite is not running on PostgreSQL; else a share
/// of the server, held for the whole test.
fn on_server(test: &str) -> Option<RwLockReadGuard<'static, ()>> {
    if !on_postgres() {
        eprintln!("{test}: skipped (PostgreSQL only; run with TASKER_TEST_STORE=postgres)");
        return None;
    }
    Some(SERVER.read().unwrap_or_else(|p| p.into_inner()))
}

/// A direct connection to one schema, for assertions and for locking tables behind the
/// engine's back.
struct Sql {
    rt: tokio::runtime::Runtime,
    conn: sqlx::PgConnection,
    schema: String,
}

impl Sql {
    fn connect(url: &str, schema: &str) -> Sql {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(sqlx::PgConnection::connect(url))
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let mut sql = Sql {
            rt,
            conn,
            schema: schema.to_owned(),
        };
        sql.exec(&format!("SET search_path TO \"{schema}\""));
        sql
    }

    fn exec(&mut self, q: &str) {
        self.rt
            .block_on(sqlx::query(sqlx::AssertSqlSafe(q.to_owned())).execute(&mut self.conn))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    }

    /// The first column of the first row, as an integer.
    fn int(&mut self, q: &str) -> i64 {
        use sqlx::Row;
        let row = self
            .rt
            .block_on(sqlx::query(sqlx::AssertSqlSafe(q.to_owned())).fetch_one(&mut self.conn))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        row.try_get::<i64, _>(0).unwrap()
    }

    /// Every row as text columns (NULL as "").
    fn rows(&mut self, q: &str) -> Vec<Vec<String>> {
        use sqlx::Row;
        let rows = self
            .rt
            .block_on(sqlx::query(sqlx::AssertSqlSafe(q.to_owned())).fetch_all(&mut self.conn))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .unwrap()
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    }

    /// How many lock requests on this schema's tables are waiting (a call is blocked).
    fn waiting_locks(&mut self) -> i64 {
        let schema = self.schema.clone();
        self.int(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT l.granted AND n.nspname = '{schema}'"
        ))
    }

    /// Steps whose `completed` transition is missing or recorded more than once.
    fn steps_not_completed_once(&mut self) -> i64 {
        self.int(
            "SELECT count(*) FROM tasker_steps s LEFT JOIN (
                 SELECT step_id, count(*) AS n FROM tasker_transitions
                 WHERE step_id IS NOT NULL AND to_state = 'complete' GROUP BY step_id) c
             ON c.step_id = s.id WHERE COALESCE(c.n, 0) <> 1",
        )
    }

    fn steps_not_complete(&mut self) -> i64 {
        self.int("SELECT count(*) FROM tasker_steps WHERE state <> 'complete'")
    }
}

fn drop_schema_at(url: &str, schema: &str) {
    let mut sql = Sql::connect(url, "public");
    sql.exec(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
}

/// Waits until `done` holds, panicking with `what` after `limit` (a hang detector with a
/// generous bound, not a speed check).
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call(t: &Tasker, op: &str, req: Value) -> Value {
    let out = t
        .call(op, &req.to_string())
        .unwrap_or_else(|e| panic!("{op} {req} failed: {e}"));
    serde_json::from_str(&out).unwrap()
}

fn task_view(t: &Tasker, id: i64) -> Value {
    call(t, "get_task", json!({ "task_id": id }))["task"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {} failed", child.id());
}

// Templates: every step's result is 1 + the sum of its parents' results, so a wrong
// or missing parent result shows up in the stored results.

fn chain(name: &str, len: usize, retry: &Value) -> Value {
    let steps: Vec<Value> = (1..=len)
        .map(|i| {
            let deps: Vec<String> = if i == 1 {
                vec![]
            } else {
                vec![format!("s{}", i - 1)]
            };
            json!({ "name": format!("s{i}"), "handler": "chain", "depends_on": deps })
        })
        .collect();
    json!({ "namespace": "rel", "name": name, "version": "1", "defaults": { "retry": retry }, "steps": steps })
}

fn diamond(retry: &Value) -> Value {
    json!({ "namespace": "rel", "name": "diamond", "version": "1", "defaults": { "retry": retry }, "steps": [
        { "name": "top", "handler": "diamond" },
        { "name": "left", "handler": "diamond", "depends_on": ["top"] },
        { "name": "right", "handler": "diamond", "depends_on": ["top"] },
        { "name": "bottom", "handler": "diamond", "depends_on": ["left", "right"] },
    ]})
}

/// One root, `width` parallel steps, one join: `width + 2` steps.
fn wide(width: usize, retry: &Value) -> Value {
    let mut steps = vec![json!({ "name": "start", "handler": "wide" })];
    let mids: Vec<String> = (1..=width).map(|i| format!("m{i}")).collect();
    for m in &mids {
        steps.push(json!({ "name": m, "handler": "wide", "depends_on": ["start"] }));
    }
    steps.push(json!({ "name": "end", "handler": "wide", "depends_on": mids }));
    json!({ "namespace": "rel", "name": "wide", "version": "1", "defaults": { "retry": retry }, "steps": steps })
}

fn retry(max_attempts: u32) -> Value {
    json!({ "max_attempts": max_attempts, "backoff": "fixed", "base_ms": 1, "max_ms": 1, "jitter": 0 })
}

/// Creates `count` tasks of `name` from `threads` threads; returns their ids.
fn create_many(t: &Tasker, name: &str, count: usize, threads: usize) -> Vec<i64> {
    let per = count.div_ceil(threads);
    let parts: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|n| {
                let t = t.clone();
                s.spawn(move || {
                    (n * per..((n + 1) * per).min(count))
                        .map(|i| {
                            call(
                                &t,
                                "create_task",
                                json!({ "namespace": "rel", "name": name, "context": { "i": i } }),
                            )["task_id"]
                                .as_i64()
                                .unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    parts.into_iter().flatten().collect()
}

/// A worker process: this binary running `reliability_child_worker`.
struct WorkerProc {
    name: String,
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

/// What a worker process reports when it stops.
#[derive(Debug)]
struct WorkerReport {
    /// Steps completed, as counted by `Worker` (runs that ended in an error lose
    /// their count).
    completed: i64,
    /// Handler executions.
    ran: i64,
    /// Calls refused with `unavailable` that the worker rode out by trying again.
    unavailable: i64,
    /// The code of every error a run ended with, and the first few messages.
    errors: Vec<String>,
    messages: Vec<String>,
}

/// Settings of a worker process.
struct WorkerSpec<'a> {
    config: &'a Value,
    dir: &'a Path,
    stop: &'a Path,
    batch: u32,
    handler_sleep_ms: u64,
}

fn spawn_worker(name: &str, spec: &WorkerSpec) -> WorkerProc {
    let out = spec.dir.join(format!("{name}.out"));
    let log = spec.dir.join(format!("{name}.log"));
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "reliability_child_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TASKER_REL_CONFIG", spec.config.to_string())
        .env("TASKER_REL_WORKER", name)
        .env("TASKER_REL_STOP", spec.stop)
        .env("TASKER_REL_OUT", &out)
        .env("TASKER_REL_BATCH", spec.batch.to_string())
        .env("TASKER_REL_SLEEP_MS", spec.handler_sleep_ms.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    WorkerProc {
        name: name.to_owned(),
        child,
        out,
        log,
    }
}

/// A worker left running by a failed test would wait for its stop file forever.
impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills (SIGKILL also ends a stopped process) and reaps the child when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl WorkerProc {
    /// Panics (with the process's log) if it has exited; call while it should run.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "worker {} exited early ({status}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Waits for a process told to stop and reads its report.
    fn finish(mut self) -> WorkerReport {
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            status.success(),
            "worker {} failed ({status}); its log:\n{log}",
            self.name
        );
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(&self.out)
                .unwrap_or_else(|e| panic!("worker {} wrote no report ({e}): {log}", self.name)),
        )
        .unwrap();
        WorkerReport {
            completed: report["completed"].as_i64().unwrap(),
            ran: report["ran"].as_i64().unwrap(),
            unavailable: report["unavailable"].as_i64().unwrap(),
            errors: strings(&report["errors"]),
            messages: strings(&report["messages"]),
        }
    }
}

/// Runs only as a worker process spawned by the tests below: works with
/// `tasker_core::worker::Worker` until the stop file appears, retrying after
/// `unavailable` (the server is away) and recording every error it saw.
#[test]
#[ignore = "run as a child process by the reliability tests"]
fn reliability_child_worker() {
    let Ok(config) = std::env::var("TASKER_REL_CONFIG") else {
        return;
    };
    let name = std::env::var("TASKER_REL_WORKER").unwrap();
    let stop_file = PathBuf::from(std::env::var("TASKER_REL_STOP").unwrap());
    let out = std::env::var("TASKER_REL_OUT").unwrap();
    let batch: u32 = std::env::var("TASKER_REL_BATCH").unwrap().parse().unwrap();
    let sleep_ms: u64 = std::env::var("TASKER_REL_SLEEP_MS")
        .unwrap()
        .parse()
        .unwrap();

    // Opening may itself meet a server that is restarting: retry while unavailable.
    let tasker = loop {
        match Tasker::open(&config) {
            Ok(t) => break t,
            Err(e) if e.code == ErrorCode::Unavailable => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("worker {name} cannot open: {e}"),
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop_file.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Release);
        });
    }
    let ran = Arc::new(AtomicU64::new(0));
    let runs = ran.clone();
    let handler = move |s: &tasker_core::worker::StepInput| {
        runs.fetch_add(1, Ordering::Relaxed);
        if sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
        let parents: i64 = s.results.values().map(|v| v.as_i64().unwrap()).sum();
        Ok(json!(parents + 1))
    };
    let worker = tasker_core::worker::Worker::new(&tasker, name.clone())
        .batch(batch)
        .idle_wait_ms(100)
        .handle("chain", handler.clone())
        .handle("diamond", handler.clone())
        .handle("wide", handler);
    let mut completed = 0u64;
    let mut unavailable = 0u64;
    let mut errors: Vec<String> = Vec::new();
    let mut messages: Vec<String> = Vec::new();
    loop {
        match worker.run_until(&stop) {
            Ok(stats) => {
                completed += stats.completed;
                unavailable += stats.unavailable;
                break;
            }
            Err(e) => {
                eprintln!("worker {name}: {e}");
                errors.push(e.code.as_str().to_owned());
                if messages.len() < 3 && !messages.contains(&e.message) {
                    messages.push(e.message.clone());
                }
                if e.code != ErrorCode::Unavailable {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    std::fs::write(
        out,
        json!({ "completed": completed, "ran": ran.load(Ordering::Relaxed), "unavailable": unavailable, "errors": errors, "messages": messages })
            .to_string(),
    )
    .unwrap();
    tasker.close();
}

/// Waits until no step of the schema is left unfinished, failing at once if a worker
/// process dies on the way.
fn wait_until_drained(what: &str, timeout: Duration, workers: &mut [WorkerProc], sql: &mut Sql) {
    wait_for(what, timeout, || {
        for w in workers.iter_mut() {
            w.assert_running();
        }
        sql.steps_not_complete() == 0
    });
}

/// Chains of five steps on a fresh schema, created by this process (which stays out of
/// the work: its sweeper is off), with the settings worker processes use for them:
/// short leases and a fast sweep, so a lost lease comes back within seconds. `extra`
/// goes into both configurations.
struct ChainRun {
    tasker: Tasker,
    schema: String,
    ids: Vec<i64>,
    dir: tempfile::TempDir,
    stop: std::path::PathBuf,
    config: Value,
}

impl ChainRun {
    fn new(url: &str, tasks: usize, max_attempts: u32, extra: Value) -> ChainRun {
        let mut own = json!({ "sweep_interval_ms": 3_600_000 });
        let mut workers = json!({ "lease_ms": 1_500, "sweep_interval_ms": 100 });
        for (k, v) in extra.as_object().unwrap() {
            own[k] = v.clone();
            workers[k] = v.clone();
        }
        let (tasker, schema) = open_schema(url, own);
        call(
            &tasker,
            "register_template",
            json!({ "template": chain("chain", 5, &retry(max_attempts)) }),
        );
        let ids = create_many(&tasker, "chain", tasks, 2);
        let dir = tempfile::tempdir().unwrap();
        let stop = dir.path().join("stop");
        let config = worker_config(url, &schema, workers);
        ChainRun {
            tasker,
            schema,
            ids,
            dir,
            stop,
            config,
        }
    }

    /// Worker processes in batches of 8, each handler sleeping `handler_sleep_ms`.
    fn spec(&self, handler_sleep_ms: u64) -> WorkerSpec<'_> {
        WorkerSpec {
            config: &self.config,
            dir: self.dir.path(),
            stop: &self.stop,
            batch: 8,
            handler_sleep_ms,
        }
    }
}

/// A store configuration for worker processes on `url`, schema `schema`.
fn worker_config(url: &str, schema: &str, extra: Value) -> Value {
    let mut config = json!({
        "database_url": url,
        "postgres_schema": schema,
        "postgres_pool_size": 3,
        "migrate_on_open": false,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// Opens the test's own handle on a fresh schema (creating the tables).
fn open_schema(url: &str, extra: Value) -> (Tasker, String) {
    let schema = common::fresh_schema();
    let mut config =
        json!({ "database_url": url, "postgres_schema": schema, "postgres_pool_size": 4 });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    (Tasker::open(&config.to_string()).unwrap(), schema)
}

// ---- 1. exactly once at scale ----------------------------------------------------------

#[test]
fn four_processes_complete_40000_steps_exactly_once() {
    let Some(_server) = on_server("four_processes_complete_40000_steps_exactly_once") else {
        return;
    };
    // 2,000 chains of 5 + 2,500 diamonds of 4 + 1,000 fan-out/fan-in tasks of 20.
    const CHAINS: usize = 2_000;
    const DIAMONDS: usize = 2_500;
    const WIDES: usize = 1_000;
    const STEPS: i64 = (CHAINS * 5 + DIAMONDS * 4 + WIDES * 20) as i64;
    assert_eq!(STEPS, 40_000);
    let url = postgres_url();
    let (t, schema) = open_schema(&url, json!({}));
    let dir = tempfile::tempdir().unwrap();
    for template in [
        chain("chain", 5, &retry(3)),
        diamond(&retry(3)),
        wide(18, &retry(3)),
    ] {
        call(&t, "register_template", json!({ "template": template }));
    }
    let started = Instant::now();
    let chains = create_many(&t, "chain", CHAINS, 4);
    let diamonds = create_many(&t, "diamond", DIAMONDS, 4);
    let wides = create_many(&t, "wide", WIDES, 4);
    eprintln!(
        "created {} tasks in {:?}",
        CHAINS + DIAMONDS + WIDES,
        started.elapsed()
    );
    let mut sql = Sql::connect(&url, &schema);
    assert_eq!(sql.int("SELECT count(*) FROM tasker_steps"), STEPS);

    let stop = dir.path().join("stop");
    let config = worker_config(&url, &schema, json!({}));
    let spec = WorkerSpec {
        config: &config,
        dir: dir.path(),
        stop: &stop,
        batch: 64,
        handler_sleep_ms: 0,
    };
    let started = Instant::now();
    let mut workers: Vec<WorkerProc> = (0..4)
        .map(|n| spawn_worker(&format!("proc-{n}"), &spec))
        .collect();
    wait_until_drained(
        "the workers to drain every step",
        Duration::from_secs(300),
        &mut workers,
        &mut sql,
    );
    eprintln!(
        "4 processes drained {STEPS} steps in {:?}",
        started.elapsed()
    );
    std::fs::write(&stop, "").unwrap();
    let (mut total, mut ran) = (0, 0);
    for w in workers {
        let name = w.name.clone();
        let report = w.finish();
        eprintln!("{name} completed {} steps", report.completed);
        assert!(
            report.errors.is_empty(),
            "{name} saw errors: {:?} {:?}",
            report.errors,
            report.messages
        );
        assert!(report.completed > 0, "{name} did no work");
        total += report.completed;
        ran += report.ran;
    }
    // No handler ran twice, and no report was refused.
    assert_eq!(ran, STEPS, "handler executions");
    assert_eq!(total, STEPS, "the workers' own counts add up");

    // Every step completed exactly once, on its first attempt, by one of the workers.
    assert_eq!(
        sql.steps_not_completed_once(),
        0,
        "a step completed twice or never"
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM tasker_transitions WHERE step_id IS NOT NULL AND to_state = 'complete'"),
        STEPS
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM tasker_steps WHERE attempts <> 1"),
        0
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM tasker_steps WHERE state IN ('ready', 'running') OR claim_token IS NOT NULL"),
        0
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM tasker_tasks WHERE state <> 'complete'"),
        0
    );
    // Results flowed along the edges: 1 + the sum of the parents' results.
    let expected: HashMap<&str, &str> = [
        ("s1", "1"),
        ("s2", "2"),
        ("s3", "3"),
        ("s4", "4"),
        ("s5", "5"),
        ("top", "1"),
        ("left", "2"),
        ("right", "2"),
        ("bottom", "5"),
        ("start", "1"),
        ("end", "37"),
    ]
    .into_iter()
    .collect();
    for row in
        sql.rows("SELECT name, result, count(*)::text FROM tasker_steps GROUP BY name, result")
    {
        let want = expected
            .get(row[0].as_str())
            .copied()
            .unwrap_or(if row[0].starts_with('m') { "2" } else { "?" });
        assert_eq!(
            row[1], want,
            "step {} has result {} ({} times)",
            row[0], row[1], row[2]
        );
    }
    // The API agrees, for a sample of every shape.
    for id in chains
        .iter()
        .step_by(97)
        .chain(diamonds.iter().step_by(97))
        .chain(wides.iter().step_by(37))
    {
        let task = task_view(&t, *id);
        assert_eq!(task["state"], "complete", "task {id}");
        let last = task["steps"].as_array().unwrap().last().unwrap().clone();
        assert!(
            matches!(last["result"].as_i64(), Some(5 | 37)),
            "task {id}: {last}"
        );
        assert_eq!(last["attempts"], 1);
    }
    t.close();
    drop_schema_at(&url, &schema);
}

// ---- 2. SIGKILL mid-run ----------------------------------------------------------------

#[test]
fn sigkilled_worker_among_three_loses_nothing() {
    let Some(_server) = on_server("sigkilled_worker_among_three_loses_nothing") else {
        return;
    };
    const TASKS: usize = 300;
    let url = postgres_url();
    // This process creates the tasks and stays out of the work; the survivors' sweepers
    // take the dead worker's leases back.
    let run = ChainRun::new(&url, TASKS, 3, json!({}));
    let (t, schema, ids, stop) = (&run.tasker, &run.schema, &run.ids, &run.stop);
    let spec = run.spec(5);
    let mut victim = spawn_worker("victim", &spec);
    let mut survivors: Vec<WorkerProc> = (0..2)
        .map(|n| spawn_worker(&format!("survivor-{n}"), &spec))
        .collect();
    let mut sql = Sql::connect(&url, schema);

    // Kill the victim mid-run: once it has finished some steps and holds leases.
    wait_for(
        "the victim to work and hold leases",
        Duration::from_secs(120),
        || {
            victim.assert_running();
            sql.int("SELECT count(*) FROM tasker_transitions WHERE to_state = 'complete' AND worker = 'victim'") >= 40
            && sql.int("SELECT count(*) FROM tasker_steps WHERE state = 'running' AND worker = 'victim'") > 0
        },
    );
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    // A COMMIT the victim sent just before it died still lands on the server after the
    // process is gone: read its held steps once two reads a moment apart agree.
    let read_held = |sql: &mut Sql| -> Vec<i64> {
        sql.rows("SELECT id::text FROM tasker_steps WHERE state = 'running' AND worker = 'victim' ORDER BY id")
            .into_iter()
            .map(|r| r[0].parse().unwrap())
            .collect()
    };
    let mut held = read_held(&mut sql);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let again = read_held(&mut sql);
        if again == held {
            break;
        }
        held = again;
    }
    assert!(
        !held.is_empty(),
        "the victim died holding no lease; the test proves nothing"
    );
    let remaining = sql.steps_not_complete();
    eprintln!(
        "killed the victim holding {} steps; {remaining} steps left",
        held.len()
    );

    wait_until_drained(
        "the survivors to finish every step",
        Duration::from_secs(120),
        &mut survivors,
        &mut sql,
    );
    std::fs::write(stop, "").unwrap();
    for w in survivors {
        let name = w.name.clone();
        let report = w.finish();
        eprintln!("{name} completed {} steps", report.completed);
        assert!(
            report.errors.is_empty(),
            "{name} saw errors: {:?}",
            report.errors
        );
    }

    assert_eq!(
        sql.steps_not_completed_once(),
        0,
        "a step completed twice or never"
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM tasker_tasks WHERE state <> 'complete'"),
        0
    );
    for step_id in &held {
        // The lost attempt is in the step's history, then a survivor's completion.
        let history = sql.rows(&format!(
            "SELECT to_state, COALESCE(reason, ''), attempt::text, COALESCE(worker, '')
             FROM tasker_transitions WHERE step_id = {step_id} ORDER BY id"
        ));
        let expired: Vec<_> = history.iter().filter(|h| h[1] == "lease_expired").collect();
        assert_eq!(expired.len(), 1, "step {step_id}: {history:?}");
        assert_eq!(
            (expired[0][2].as_str(), expired[0][3].as_str()),
            ("1", "victim")
        );
        let done: Vec<_> = history.iter().filter(|h| h[0] == "complete").collect();
        assert_eq!(done.len(), 1, "step {step_id}: {history:?}");
        assert_eq!(
            done[0][2], "2",
            "step {step_id} completed on its second attempt"
        );
        assert!(
            done[0][3].starts_with("survivor-"),
            "step {step_id}: {history:?}"
        );
        assert_eq!(
            sql.int(&format!(
                "SELECT attempts FROM tasker_steps WHERE id = {step_id}"
            )),
            2
        );
    }
    // The API shows the same: every task complete, the lost steps on attempt 2.
    let task_ids: Vec<i64> = sql
        .rows(&format!(
            "SELECT DISTINCT task_id::text FROM tasker_steps WHERE id IN ({})",
            held.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ))
        .into_iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    for id in ids {
        let task = task_view(t, *id);
        assert_eq!(task["state"], "complete", "task {id}");
        assert_eq!(task["steps"][4]["result"], 5, "task {id}");
        if task_ids.contains(id) {
            let lost = task["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| held.contains(&s["id"].as_i64().unwrap()))
                .count();
            assert!(lost > 0);
            for s in task["steps"].as_array().unwrap() {
                if held.contains(&s["id"].as_i64().unwrap()) {
                    assert_eq!(s["attempts"], 2, "task {id}: {s}");
                    assert_ne!(s["worker"], "victim");
                }
            }
        }
    }
    t.close();
    drop_schema_at(&url, schema);
}

// ---- 3. SIGSTOP past the lease ---------------------------------------------------------

/// Runs only as process A of `sigstopped_worker_gets_lease_lost`: claims one step with
/// a short lease, reports the claim, waits for the go file, then tries to complete.
#[test]
#[ignore = "run as a child process by sigstopped_worker_gets_lease_lost"]
fn reliability_child_claims_then_completes_late() {
    let Ok(config) = std::env::var("TASKER_REL_CONFIG") else {
        return;
    };
    let claimed = std::env::var("TASKER_REL_CLAIMED").unwrap();
    let go = PathBuf::from(std::env::var("TASKER_REL_GO").unwrap());
    let out = std::env::var("TASKER_REL_OUT").unwrap();
    let t = Tasker::open(&config).unwrap();
    let page = call(
        &t,
        "claim",
        json!({ "handlers": ["a"], "limit": 1, "worker_id": "A", "lease_ms": 300, "wait_ms": 5000 }),
    );
    let step = page["steps"][0].clone();
    assert!(step.is_object(), "nothing to claim: {page}");
    std::fs::write(&claimed, step.to_string()).unwrap();
    // SIGSTOPped around here; the parent makes the go file before SIGCONT.
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = match t.call(
        "complete_step",
        &json!({ "step_id": step["step_id"], "claim_token": step["claim_token"], "result": { "by": "A" } })
            .to_string(),
    ) {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code.as_str().to_owned(),
    };
    std::fs::write(out, outcome).unwrap();
    t.close();
}

#[test]
fn sigstopped_worker_gets_lease_lost() {
    let Some(_server) = on_server("sigstopped_worker_gets_lease_lost") else {
        return;
    };
    let url = postgres_url();
    // The test is worker B; its sweeper takes A's lease back.
    let (t, schema) = open_schema(&url, json!({ "sweep_interval_ms": 50 }));
    let template = json!({ "namespace": "rel", "name": "one", "version": "1",
        "defaults": { "retry": retry(3) }, "steps": [{ "name": "a", "handler": "a" }] });
    call(&t, "register_template", json!({ "template": template }));
    let task_id = call(
        &t,
        "create_task",
        json!({ "namespace": "rel", "name": "one", "context": {} }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (claimed, go, out) = (
        dir.path().join("claimed"),
        dir.path().join("go"),
        dir.path().join("out"),
    );
    let log = dir.path().join("a.log");
    let config = worker_config(&url, &schema, json!({ "sweep_interval_ms": 3_600_000 }));
    let mut a = Reaper(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "reliability_child_claims_then_completes_late",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TASKER_REL_CONFIG", config.to_string())
            .env("TASKER_REL_CLAIMED", &claimed)
            .env("TASKER_REL_GO", &go)
            .env("TASKER_REL_OUT", &out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("process A to claim", Duration::from_secs(60), || {
        if let Ok(Some(status)) = a.0.try_wait() {
            panic!(
                "A exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::fs::read_to_string(&claimed).is_ok_and(|s| s.ends_with('}'))
    });
    signal(&a.0, "-STOP");
    let a_step: Value = serde_json::from_str(&std::fs::read_to_string(&claimed).unwrap()).unwrap();
    assert_eq!(a_step["attempt"], 1);

    // A's lease runs out while it is stopped; B claims the step and completes it.
    let page = call(
        &t,
        "claim",
        json!({ "handlers": ["a"], "limit": 1, "worker_id": "B", "wait_ms": 10_000 }),
    );
    let b_step = page["steps"][0].clone();
    assert_eq!(
        b_step["step_id"], a_step["step_id"],
        "B did not get A's step back: {page}"
    );
    assert_eq!(b_step["attempt"], 2);
    assert_ne!(b_step["claim_token"], a_step["claim_token"]);
    call(
        &t,
        "complete_step",
        json!({ "step_id": b_step["step_id"], "claim_token": b_step["claim_token"], "result": { "by": "B" } }),
    );

    // A wakes up and reports with its stale token.
    std::fs::write(&go, "").unwrap();
    signal(&a.0, "-CONT");
    let status = a.0.wait().unwrap();
    assert!(
        status.success(),
        "A failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "lease_lost");

    let task = task_view(&t, task_id);
    assert_eq!(task["state"], "complete");
    assert_eq!(task["steps"][0]["result"], json!({ "by": "B" }));
    assert_eq!(task["steps"][0]["worker"], "B");
    assert_eq!(task["steps"][0]["attempts"], 2);
    let mut sql = Sql::connect(&url, &schema);
    let step_id = a_step["step_id"].as_i64().unwrap();
    let history = sql.rows(&format!(
        "SELECT to_state, COALESCE(reason, ''), COALESCE(worker, '') FROM tasker_transitions
         WHERE step_id = {step_id} ORDER BY id"
    ));
    let done: Vec<_> = history.iter().filter(|h| h[0] == "complete").collect();
    assert_eq!(done.len(), 1, "{history:?}");
    assert_eq!(done[0][2], "B");
    assert!(
        history
            .iter()
            .any(|h| h[1] == "lease_expired" && h[2] == "A"),
        "{history:?}"
    );
    assert_eq!(
        sql.int(&format!("SELECT count(*) FROM tasker_steps WHERE id = {step_id} AND result = '{{\"by\":\"B\"}}'")),
        1
    );
    t.close();
    drop_schema_at(&url, &schema);
}

// ---- 4. PostgreSQL restart mid-run -----------------------------------------------------

/// The private cluster (never the shared server): its URL and data directory.
struct PrivateCluster {
    url: String,
    data: PathBuf,
    log: PathBuf,
    pg_ctl: PathBuf,
    as_root: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn private_cluster() -> PrivateCluster {
    let url = match std::env::var("TASKER_TEST_PRIVATE_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let out = Command::new(repo_root().join("scripts/pg-ensure"))
                .env("TASKER_PG_FORCE_PRIVATE", "1")
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run scripts/pg-ensure: {e}"));
            assert!(
                out.status.success(),
                "the restart test needs the private PostgreSQL cluster, and \
                 `TASKER_PG_FORCE_PRIVATE=1 scripts/pg-ensure` failed (see its message above)"
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    // The server names its own data directory; restarting is destructive, so it must
    // be one that scripts/pg-ensure made (target/pg-test/data, or
    // /var/tmp/tasker-pg-test-*/data for a checkout `postgres` cannot enter).
    let mut sql = Sql::connect(&url, "public");
    let data = PathBuf::from(&sql.rows("SHOW data_directory")[0][0]);
    let made_by_pg_ensure = data.file_name().is_some_and(|n| n == "data")
        && data
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "pg-test" || n.starts_with("tasker-pg-test-"));
    assert!(
        made_by_pg_ensure,
        "the server at {url} keeps its data in {}, not in a private cluster of \
         scripts/pg-ensure; refusing to restart it",
        data.display()
    );
    let pg_ctl = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            let mut bins: Vec<PathBuf> = dirs
                .filter_map(|d| Some(d.ok()?.path().join("bin/pg_ctl")))
                .filter(|p| p.exists())
                .collect();
            bins.sort_by_key(|p| {
                p.parent()?
                    .parent()?
                    .file_name()?
                    .to_str()?
                    .parse::<u32>()
                    .ok()
            });
            bins.pop()
        })
        .unwrap_or_else(|| PathBuf::from("pg_ctl"));
    let uid = Command::new("id").arg("-u").output().unwrap();
    PrivateCluster {
        url,
        log: data.parent().unwrap().join("log"),
        data,
        pg_ctl,
        as_root: String::from_utf8_lossy(&uid.stdout).trim() == "0",
    }
}

impl PrivateCluster {
    /// Runs pg_ctl as the cluster's owner (`postgres` when we are root, as pg-ensure does).
    fn pg_ctl(&self, args: &[&str]) {
        if let Err(e) = self.try_pg_ctl(args) {
            panic!("{e}");
        }
    }

    fn start(&self) -> Result<(), String> {
        let log = self.log.to_str().unwrap().to_owned();
        self.try_pg_ctl(&["start", "-w", "-t", "60", "-l", &log])
    }

    fn try_pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            c
        } else {
            Command::new(&self.pg_ctl)
        };
        let out_file = self.data.parent().unwrap().join("pg_ctl.out");
        let status = cmd
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if !status.success() {
            return Err(format!(
                "pg_ctl {args:?} failed: {}",
                std::fs::read_to_string(&out_file).unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// Starts the stopped server again, even when the test fails while it is down.
struct StartOnDrop<'a>(&'a PrivateCluster);

impl Drop for StartOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.start() {
            eprintln!("could not start the private cluster again: {e}");
        }
    }
}

#[test]
fn workers_ride_out_a_server_restart() {
    if on_server("workers_ride_out_a_server_restart").is_none() {
        return;
    }
    let _alone = SERVER.write().unwrap_or_else(|p| p.into_inner());
    const TASKS: usize = 400;
    let pg = private_cluster();
    let url = pg.url.clone();
    let run = ChainRun::new(&url, TASKS, 5, json!({ "acquire_timeout_ms": 500 }));
    let (t, schema, ids, stop) = (&run.tasker, &run.schema, &run.ids, &run.stop);
    let spec = run.spec(3);
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|n| spawn_worker(&format!("proc-{n}"), &spec))
        .collect();
    let total = (TASKS * 5) as i64;
    let mut sql = Sql::connect(&url, schema);
    wait_for(
        "a quarter of the steps done",
        Duration::from_secs(120),
        || {
            for w in &mut workers {
                w.assert_running();
            }
            total - sql.steps_not_complete() >= total / 4
        },
    );
    drop(sql); // its connection dies with the server anyway

    pg.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
    let down = StartOnDrop(&pg);
    // While the server is down a call fails with `unavailable`, naming the cause.
    let err = t
        .call("get_task", &json!({ "task_id": ids[0] }).to_string())
        .expect_err("get_task answered with the server stopped");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    eprintln!("with the server down: {err}");
    let err = t
        .call(
            "create_task",
            &json!({ "namespace": "rel", "name": "chain", "context": {} }).to_string(),
        )
        .expect_err("create_task answered with the server stopped");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    // The workers keep trying meanwhile.
    std::thread::sleep(Duration::from_millis(1_000));
    drop(down); // pg_ctl start

    let mut sql = Sql::connect(&url, schema);
    wait_until_drained(
        "the workers to finish after the restart",
        Duration::from_secs(180),
        &mut workers,
        &mut sql,
    );
    std::fs::write(stop, "").unwrap();
    let mut errors = Vec::new();
    let mut refused = 0;
    for w in workers {
        let name = w.name.clone();
        let report = w.finish();
        eprintln!(
            "{name} ran {} handlers; rode out {} unavailable calls; errors: {:?}; messages: {:#?}",
            report.ran, report.unavailable, report.errors, report.messages
        );
        refused += report.unavailable;
        errors.extend(report.errors);
    }
    assert!(
        refused > 0,
        "no worker noticed the restart; the test proves nothing"
    );
    // The Worker rides out a short outage by itself (its `patience`): no run ended in
    // an error.
    assert!(
        errors.is_empty(),
        "while the server restarted, worker runs ended with {errors:?}"
    );
    assert_eq!(
        sql.steps_not_completed_once(),
        0,
        "a step completed twice or never"
    );
    assert_eq!(
        sql.int("SELECT count(*) FROM tasker_tasks WHERE state <> 'complete'"),
        0
    );
    // The create refused while the server was down left nothing behind.
    assert_eq!(sql.int("SELECT count(*) FROM tasker_tasks"), TASKS as i64);
    for id in ids {
        let task = task_view(t, *id);
        assert_eq!(task["state"], "complete", "task {id}");
        assert_eq!(task["steps"][4]["result"], 5, "task {id}");
    }
    t.close();
    drop_schema_at(&url, schema);
}

// ---- 5. pool exhaustion ----------------------------------------------------------------

#[test]
fn exhausted_pool_fails_with_unavailable_then_recovers() {
    let Some(_server) = on_server("exhausted_pool_fails_with_unavailable_then_recovers") else {
        return;
    };
    let url = postgres_url();
    let (t, schema) = open_schema(
        &url,
        json!({ "postgres_pool_size": 1, "acquire_timeout_ms": 300, "sweep_interval_ms": 3_600_000 }),
    );
    let template = json!({ "namespace": "rel", "name": "one", "version": "1",
        "steps": [{ "name": "a", "handler": "a" }] });
    call(&t, "register_template", json!({ "template": template }));
    call(
        &t,
        "create_task",
        json!({ "namespace": "rel", "name": "one", "context": {} }),
    );
    let mut lock = Sql::connect(&url, &schema);
    let mut watch = Sql::connect(&url, &schema);
    lock.exec("BEGIN");
    lock.exec("LOCK TABLE tasker_steps IN ACCESS EXCLUSIVE MODE");

    // A claim blocks on the lock, holding the pool's only connection.
    let blocked = {
        let t = t.clone();
        std::thread::spawn(move || {
            t.call(
                "claim",
                &json!({ "handlers": ["a"], "limit": 1, "worker_id": "w" }).to_string(),
            )
        })
    };
    wait_for(
        "the claim to block on the lock",
        Duration::from_secs(30),
        || watch.waiting_locks() > 0,
    );

    // A second call finds no connection: `unavailable` after acquire_timeout_ms.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let t = t.clone();
        std::thread::spawn(move || {
            let _ = tx.send(
                t.call(
                    "create_task",
                    &json!({ "namespace": "rel", "name": "one", "context": { "second": true } })
                        .to_string(),
                ),
            );
        });
    }
    let second = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the second call hung instead of failing");
    let err = second.expect_err("the second call got a connection from a pool of one");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(
        err.message.contains("acquire_timeout_ms") && err.message.contains("postgres_pool_size"),
        "the message should name the pool and the timeout: {err}"
    );
    eprintln!("pool exhausted: {err}");

    lock.exec("COMMIT");
    let page: Value =
        serde_json::from_str(&blocked.join().unwrap().expect("the blocked claim")).unwrap();
    let step = page["steps"][0].clone();
    assert!(step.is_object(), "{page}");
    // Everything works again, and the refused create changed nothing.
    call(
        &t,
        "complete_step",
        json!({ "step_id": step["step_id"], "claim_token": step["claim_token"], "result": 1 }),
    );
    assert_eq!(watch.int("SELECT count(*) FROM tasker_tasks"), 1);
    let id = call(
        &t,
        "create_task",
        json!({ "namespace": "rel", "name": "one", "context": {} }),
    )["task_id"]
        .as_i64()
        .unwrap();
    assert_eq!(task_view(&t, id)["state"], "pending");
    assert_eq!(watch.int("SELECT count(*) FROM tasker_tasks"), 2);
    t.close();
    drop_schema_at(&url, &schema);
}

// ---- 6. statement timeout --------------------------------------------------------------

#[test]
fn statement_timeout_fails_with_unavailable_and_changes_nothing() {
    let Some(_server) = on_server("statement_timeout_fails_with_unavailable_and_changes_nothing")
    else {
        return;
    };
    let url = postgres_url();
    let (t, schema) = open_schema(
        &url,
        json!({ "postgres_statement_timeout_ms": 300, "sweep_interval_ms": 3_600_000 }),
    );
    let template = json!({ "namespace": "rel", "name": "one", "version": "1",
        "steps": [{ "name": "a", "handler": "a" }] });
    call(&t, "register_template", json!({ "template": template }));
    let task_id = call(
        &t,
        "create_task",
        json!({ "namespace": "rel", "name": "one", "context": {} }),
    )["task_id"]
        .as_i64()
        .unwrap();
    let mut watch = Sql::connect(&url, &schema);
    let before = (
        watch.int("SELECT count(*) FROM tasker_tasks"),
        watch.int("SELECT count(*) FROM tasker_transitions"),
    );
    let mut lock = Sql::connect(&url, &schema);
    lock.exec("BEGIN");
    lock.exec("LOCK TABLE tasker_steps IN ACCESS EXCLUSIVE MODE");

    for (op, req) in [
        (
            "claim",
            json!({ "handlers": ["a"], "limit": 1, "worker_id": "w" }),
        ),
        (
            "create_task",
            json!({ "namespace": "rel", "name": "one", "context": {} }),
        ),
    ] {
        let err = t
            .call(op, &req.to_string())
            .expect_err("the call got past an exclusive lock");
        assert_eq!(err.code, ErrorCode::Unavailable, "{op}: {err}");
        assert_eq!(err.sqlstate(), Some("57014"), "{op}: {err}");
        assert!(
            err.message.contains("postgres_statement_timeout_ms"),
            "{op}: {err}"
        );
        eprintln!("{op} under the lock: {err}");
    }
    lock.exec("COMMIT");
    // Nothing was changed by the refused calls.
    assert_eq!(
        (
            watch.int("SELECT count(*) FROM tasker_tasks"),
            watch.int("SELECT count(*) FROM tasker_transitions"),
        ),
        before
    );
    assert_eq!(
        watch.int("SELECT count(*) FROM tasker_steps WHERE state = 'ready' AND attempts = 0"),
        1
    );
    // Both succeed once the lock is gone.
    let page = call(
        &t,
        "claim",
        json!({ "handlers": ["a"], "limit": 1, "worker_id": "w" }),
    );
    let step = page["steps"][0].clone();
    call(
        &t,
        "complete_step",
        json!({ "step_id": step["step_id"], "claim_token": step["claim_token"], "result": 1 }),
    );
    assert_eq!(task_view(&t, task_id)["state"], "complete");
    call(
        &t,
        "create_task",
        json!({ "namespace": "rel", "name": "one", "context": {} }),
    );
    assert_eq!(watch.int("SELECT count(*) FROM tasker_tasks"), before.0 + 1);
    t.close();
    drop_schema_at(&url, &schema);
}
