//! SQL statements per step on PostgreSQL's hot path, counted for real: sqlx reports
//! every statement it runs (and `COMMIT`) as a `sqlx::query` tracing event when that
//! target is enabled; a layer here counts those events while a batched drain runs,
//! keyed by the statement's first words. Counting is off outside that window, so the
//! timed benchmarks pay nothing for it.
//!
//! sqlx sends `BEGIN` without such an event (it queues the simple query and waits for
//! the server's ready message), so each transaction's `BEGIN` is added from the number
//! of `COMMIT`/`ROLLBACK` statements: that is exact, as every transaction ends in one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::pg::Pg;
use crate::results::Results;
use crate::util::{self, Db, OpTimes, Res, Store};

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Statement kind to (count, seconds spent waiting on it as sqlx measured).
static SEEN: Mutex<BTreeMap<String, (u64, f64)>> = Mutex::new(BTreeMap::new());

struct Counter;

const TARGET: &str = "sqlx::query";

impl<S: Subscriber> Layer<S> for Counter {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.target() == TARGET {
            // Asked again on every event, so switching COUNTING takes effect at once.
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        meta.target() == TARGET && COUNTING.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut v = Summary(String::new(), 0.0);
        event.record(&mut v);
        let key = kind(&v.0);
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(key).or_default();
        entry.0 += 1;
        entry.1 += v.1;
    }
}

struct Summary(String, f64);

impl Visit for Summary {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.1 = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = format!("{value:?}").trim_matches('"').to_owned();
        }
    }
}

/// A statement's kind: its verb and the table or function it touches, e.g.
/// `UPDATE tasker_steps`, `WITH ... UPDATE tasker_tasks`, `SELECT pg_advisory_xact_lock`.
fn kind(summary: &str) -> String {
    let words: Vec<&str> = summary
        .split(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .filter(|w| !w.is_empty() && *w != "…")
        .collect();
    match words.first().map(|w| w.to_ascii_uppercase()) {
        Some(v) if v == "SELECT" => format!("SELECT {}", words.get(1).unwrap_or(&"")),
        Some(v) if v == "UPDATE" || v == "DELETE" => {
            format!("{v} {}", words.get(1).unwrap_or(&""))
        }
        Some(v) if v == "INSERT" => format!("INSERT {}", words.get(2).unwrap_or(&"")),
        Some(v) if v == "WITH" => format!("WITH {}", words.get(1).unwrap_or(&"")),
        Some(v) => v,
        None => "?".into(),
    }
}

/// Installs the counting layer as this process's subscriber (before any engine opens).
pub fn install() {
    let _ = tracing_subscriber::registry().with(Counter).try_init();
}

/// Drains `n` single-step tasks in batches of `batch` with counting on; records
/// `pg_statements_per_step`, per call, and the breakdown by statement kind (count and
/// total time each kind took, as sqlx timed it). The pool's health check when a call
/// takes a connection (sqlx's `test_before_acquire`, a bare Sync message) is a round
/// trip too but no statement; it is not counted here.
pub fn run(pg: &Pg, n: usize, batch: u32, out: &mut Results) -> Res<()> {
    let db = Db::open(Store::Postgres(pg), "stmts")?;
    let t = &db.tasker;
    util::register(t, &util::template("single", &[("only".into(), Vec::new())]))?;
    util::create_many(t, &util::create_request("single"), n, 4)?;
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let mut times = OpTimes::default();
    COUNTING.store(true, Ordering::SeqCst);
    let drained = util::drain(t, batch, n, &mut times);
    COUNTING.store(false, Ordering::SeqCst);
    drained?;
    drop(db);
    let mut seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|p| p.into_inner()));
    let ends: u64 = ["COMMIT", "ROLLBACK"]
        .iter()
        .filter_map(|k| seen.get(*k).map(|v| v.0))
        .sum();
    if ends > 0 {
        seen.insert("BEGIN (one per COMMIT/ROLLBACK)".into(), (ends, f64::NAN));
    }
    let total: u64 = seen.values().map(|v| v.0).sum();
    if total == 0 {
        return Err("no statements were counted: sqlx's query events did not arrive".into());
    }
    let calls = times.claims + times.completes;
    let per_step = total as f64 / n as f64;
    out.num("pg_statements_per_step", per_step);
    out.int("pg_statements_counted", total);
    out.int("pg_statements_calls", calls);
    out.num("pg_statements_per_call", total as f64 / calls.max(1) as f64);
    let breakdown: Vec<String> = seen
        .iter()
        .map(|(k, (count, secs))| {
            if secs.is_nan() {
                format!("{k}: {count}")
            } else {
                format!("{k}: {count} ({:.1} ms)", secs * 1e3)
            }
        })
        .collect();
    out.text("pg_statements_breakdown", &breakdown.join("; "));
    eprintln!(
        "  statements: {per_step:.3} per step ({total} for {n} steps in {calls} calls of up to {batch})"
    );
    for line in &breakdown {
        eprintln!("    {line}");
    }
    Ok(())
}
