//! Shared helpers: scratch databases, JSON calls, the no-op worker loop, percentiles.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{json, Value};
use tasker_core::api::Tasker;

use crate::pg::Pg;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The handler name every benchmark step uses.
pub const NOOP: &str = "noop";

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Res<Scratch> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tasker-bench-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch { dir })
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("bench.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Opens the engine on a fresh database file with the given `sqlite_synchronous`.
pub fn open(db: &Path, sync: &str) -> Res<Tasker> {
    let cfg = json!({ "database_url": sqlite_url(db), "sqlite_synchronous": sync });
    Ok(Tasker::open(&cfg.to_string())?)
}

/// One operation; the response parsed.
pub fn call(t: &Tasker, op: &str, req: &str) -> Res<Value> {
    Ok(serde_json::from_str(&call_text(t, op, req)?)?)
}

/// One operation; the response as given.
pub fn call_text(t: &Tasker, op: &str, req: &str) -> Res<String> {
    Ok(t.call(op, req)
        .map_err(|e| format!("{op} failed: {} {}", e.code, e.message))?)
}

/// What the no-op worker reads of a claimed step. serde passes over the rest of each
/// step (its context, config and parents' results) without building it, as a Rust
/// client reading into its own types would: the harness's CPU is not the engine's
/// (building a `Value` of every 256-step page was a third of the process's
/// instructions).
#[derive(Debug, serde::Deserialize)]
pub struct Claimed {
    pub step_id: i64,
    /// Absent from a worker session's steps, which report without tokens.
    #[serde(default)]
    pub claim_token: String,
}

/// The steps of a `claim`, `complete_steps` or `worker_next` response.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Page {
    #[serde(default)]
    pub steps: Vec<Claimed>,
}

impl Page {
    pub fn parse(text: &str) -> Res<Page> {
        Ok(serde_json::from_str(text)?)
    }
}

pub fn register(t: &Tasker, template: &Value) -> Res<()> {
    call(
        t,
        "register_template",
        &json!({ "template": template }).to_string(),
    )?;
    Ok(())
}

/// The `create_task` request for a template registered under `bench/<name>`.
pub fn create_request(name: &str) -> String {
    json!({ "namespace": "bench", "name": name, "version": "1.0.0", "context": {"n": 1} })
        .to_string()
}

pub fn create(t: &Tasker, req: &str) -> Res<i64> {
    let v = call(t, "create_task", req)?;
    v["task_id"]
        .as_i64()
        .ok_or_else(|| format!("create_task returned no task_id: {v}").into())
}

/// A template in namespace `bench` whose steps (name, parents) all use the no-op handler.
pub fn template(name: &str, steps: &[(String, Vec<String>)]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(n, deps)| {
            if deps.is_empty() {
                json!({ "name": n, "handler": NOOP })
            } else {
                json!({ "name": n, "handler": NOOP, "depends_on": deps })
            }
        })
        .collect();
    json!({ "namespace": "bench", "name": name, "version": "1.0.0", "steps": steps })
}

/// Time spent in each kind of call, summed over a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpTimes {
    pub claims: u64,
    pub claim_ns: u64,
    pub completes: u64,
    pub complete_ns: u64,
}

impl OpTimes {
    pub fn add(&mut self, other: &OpTimes) {
        self.claims += other.claims;
        self.claim_ns += other.claim_ns;
        self.completes += other.completes;
        self.complete_ns += other.complete_ns;
    }

    /// Adds `<prefix>_claim_rounds`, the mean ms per claim and per completion call.
    pub fn record(&self, prefix: &str, out: &mut crate::results::Results) {
        out.int(&format!("{prefix}_claim_rounds"), self.claims);
        out.num(
            &format!("{prefix}_claim_call_ms"),
            self.claim_ns as f64 / self.claims.max(1) as f64 / 1e6,
        );
        out.num(
            &format!("{prefix}_complete_call_ms"),
            self.complete_ns as f64 / self.completes.max(1) as f64 / 1e6,
        );
    }
}

/// The `claim` request of the bench's no-op worker; `wait_ms` 0 asks without waiting.
pub fn claim_request(limit: u32, wait_ms: u64) -> String {
    format!(r#"{{"handlers":["{NOOP}"],"limit":{limit},"wait_ms":{wait_ms},"worker_id":"bench"}}"#)
}

/// Reports every step of a claimed `page` done in one `complete_steps`; with `claim_next`
/// the same call (one transaction) also claims up to `limit` more, which are returned.
pub fn complete_page(
    t: &Tasker,
    steps: &[Claimed],
    claim_next: bool,
    limit: u32,
    times: &mut OpTimes,
) -> Res<Option<Page>> {
    let mut items = String::with_capacity(64 * steps.len() + 128);
    items.push_str(r#"{"items":["#);
    for (i, s) in steps.iter().enumerate() {
        if i > 0 {
            items.push(',');
        }
        let (id, token) = (s.step_id, &s.claim_token);
        let _ = write!(
            items,
            r#"{{"step_id":{id},"claim_token":"{token}","result":null}}"#
        );
    }
    items.push(']');
    if claim_next {
        let _ = write!(
            items,
            r#","claim":{{"handlers":["{NOOP}"],"limit":{limit},"worker_id":"bench"}}"#
        );
    }
    items.push('}');
    let start = Instant::now();
    let out = t
        .call("complete_steps", &items)
        .map_err(|e| format!("complete_steps failed: {} {}", e.code, e.message))?;
    times.completes += 1;
    times.complete_ns += start.elapsed().as_nanos() as u64;
    if out.contains(r#""ok":false"#) {
        return Err(format!("a completion was refused: {out}").into());
    }
    if !claim_next {
        return Ok(None);
    }
    let page = Page::parse(&out)?;
    Ok((!page.steps.is_empty()).then_some(page))
}

/// One `claim` (timed into `times`).
pub fn claim(t: &Tasker, request: &str, times: &mut OpTimes) -> Res<Page> {
    let start = Instant::now();
    let out = call_text(t, "claim", request)?;
    times.claims += 1;
    times.claim_ns += start.elapsed().as_nanos() as u64;
    Page::parse(&out)
}

/// A worker of no-op handlers, as the engine's own workers run: claim (with a wait) up
/// to `limit` steps, then report them all in one `complete_steps` that also claims the
/// next batch in the same transaction; claim again (waiting) only when that comes back
/// empty. Runs until `target` steps are done and adds its calls to `times`.
pub fn drain(t: &Tasker, limit: u32, target: usize, times: &mut OpTimes) -> Res<()> {
    drain_loop(t, limit, target, &AtomicUsize::new(0), 1000, 5, times)
}

/// `loops` claim loops on as many threads of this process, sharing its engine (one
/// connection pool), drain together until `target` steps are done: one worker process
/// that keeps several claim/complete transactions in flight, as a worker with
/// concurrency does (graphile-worker's peer runs one process at concurrency 24). Each
/// loop is [`drain`]'s. Adds every loop's calls to `times`.
pub fn drain_concurrently(
    t: &Tasker,
    limit: u32,
    target: usize,
    loops: usize,
    times: &mut OpTimes,
) -> Res<()> {
    if loops <= 1 {
        return drain(t, limit, target, times);
    }
    let done = AtomicUsize::new(0);
    let per_loop = std::thread::scope(|s| {
        let handles: Vec<_> = (0..loops)
            .map(|_| {
                let done = &done;
                s.spawn(move || -> Res<OpTimes> {
                    let mut times = OpTimes::default();
                    // Near the end the others hold the last steps: short waits, more of them.
                    drain_loop(t, limit, target, done, 100, 50, &mut times)?;
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a draining thread panicked")?)
            .collect::<Res<Vec<OpTimes>>>()
    })?;
    for t in &per_loop {
        times.add(t);
    }
    Ok(())
}

/// One claim loop: drains until `done` (shared by every loop) reaches `target`; a claim
/// waits up to `wait_ms`, and `patience` empty claims in a row is a stall.
fn drain_loop(
    t: &Tasker,
    limit: u32,
    target: usize,
    done: &AtomicUsize,
    wait_ms: u64,
    patience: u32,
    times: &mut OpTimes,
) -> Res<()> {
    let claim_req = claim_request(limit, wait_ms);
    let mut empty = 0u32;
    let mut page: Option<Page> = None;
    while done.load(Ordering::Acquire) < target {
        let current = match page.take() {
            Some(p) => p,
            None => claim(t, &claim_req, times)?,
        };
        let steps = current.steps.as_slice();
        if steps.is_empty() {
            empty += 1;
            if empty >= patience {
                let done = done.load(Ordering::Acquire);
                return Err(
                    format!("stalled: {done} of {target} steps done, claims find nothing").into(),
                );
            }
            continue;
        }
        empty = 0;
        // Ask for the next batch only while more steps remain to be done.
        let total = done.fetch_add(steps.len(), Ordering::AcqRel) + steps.len();
        page = complete_page(t, steps, total < target, limit, times)?;
    }
    Ok(())
}

/// Before a timed run: `loops` threads claim at once, a few times, for a handler no step
/// has, so the pool has a connection per loop and each connection has prepared and
/// planned the claim (on PostgreSQL, compiled the function) before the clock starts, as
/// in a worker process that has been running for a while.
pub fn warm_up(t: &Tasker, loops: usize) -> Res<()> {
    let request =
        r#"{"handlers":["tasker-bench-warm-up"],"limit":1,"wait_ms":0,"worker_id":"bench"}"#;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..loops.max(1))
            .map(|_| {
                s.spawn(move || -> Res<()> {
                    for _ in 0..20 {
                        call(t, "claim", request)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a warm-up thread panicked")?)
    })
}

/// The task's state, from `get_task` (used to verify runs, never timed).
pub fn task_state(t: &Tasker, task_id: i64) -> Res<String> {
    let v = call(t, "get_task", &json!({ "task_id": task_id }).to_string())?;
    Ok(v["task"]["state"].as_str().unwrap_or("?").to_owned())
}

pub fn expect_complete(t: &Tasker, task_id: i64) -> Res<()> {
    match task_state(t, task_id)?.as_str() {
        "complete" => Ok(()),
        other => Err(format!("task {task_id} ended {other}, not complete").into()),
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 50.0)
}

/// Where a benchmark's engine keeps its data.
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// A fresh SQLite file per benchmark, with this `sqlite_synchronous`.
    Sqlite { sync: &'a str },
    /// A fresh schema per benchmark on this PostgreSQL server.
    Postgres(&'a Pg),
}

impl Store<'_> {
    /// The suffix of the result names: `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Sqlite { .. } => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// An engine on a fresh database; the file or schema goes away on drop.
pub struct Db<'a> {
    pub tasker: Tasker,
    _scratch: Option<Scratch>,
    schema: Option<(&'a Pg, String)>,
}

impl<'a> Db<'a> {
    /// The PostgreSQL schema, when on PostgreSQL.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_ref().map(|(_, s)| s.as_str())
    }

    pub fn open(store: Store<'a>, tag: &str) -> Res<Db<'a>> {
        match store {
            Store::Sqlite { sync } => {
                let scratch = Scratch::new(tag)?;
                let tasker = open(&scratch.db(), sync)?;
                Ok(Db {
                    tasker,
                    _scratch: Some(scratch),
                    schema: None,
                })
            }
            Store::Postgres(pg) => {
                let schema = pg.fresh_schema(tag)?;
                let tasker = open_postgres(&pg.url, &schema)?;
                Ok(Db {
                    tasker,
                    _scratch: None,
                    schema: Some((pg, schema)),
                })
            }
        }
    }
}

impl Drop for Db<'_> {
    fn drop(&mut self) {
        self.tasker.close();
        if let Some((pg, schema)) = &self.schema {
            if let Err(e) = pg.drop_schema(schema) {
                eprintln!("tasker-bench: could not drop schema {schema}: {e}");
            }
        }
    }
}

/// Opens the engine on PostgreSQL, its tables in `schema`.
pub fn open_postgres(url: &str, schema: &str) -> Res<Tasker> {
    let cfg = json!({ "database_url": url, "postgres_schema": schema });
    Ok(Tasker::open(&cfg.to_string())?)
}

/// Creates `n` tasks from `req` on `threads` threads (set-up, not timed: on PostgreSQL
/// each creation is a round trip, so one thread would spend most of the run waiting).
pub fn create_many(t: &Tasker, req: &str, n: usize, threads: usize) -> Res<()> {
    let threads = threads.clamp(1, n.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let count = n / threads + usize::from(i < n % threads);
                s.spawn(move || -> Res<()> {
                    for _ in 0..count {
                        create(t, req)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a creating thread panicked")?)
    })
}
