//! SQL statements per step on PostgreSQL's hot path, counted for real: sqlx reports
//! every statement it runs (including `BEGIN` and `COMMIT`) as a `sqlx::query` tracing
//! event when that target is enabled; a layer here counts those events while a batched
//! drain runs, keyed by the statement's first words. Counting is off outside that
//! window, so the timed benchmarks pay nothing for it.

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
static SEEN: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

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
        let mut v = Summary(String::new());
        event.record(&mut v);
        let key = kind(&v.0);
        *SEEN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }
}

struct Summary(String);

impl Visit for Summary {
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
/// `pg_statements_per_step`, per batch, and the breakdown by statement kind.
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
    let seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|p| p.into_inner()));
    let total: u64 = seen.values().sum();
    if total == 0 {
        return Err("no statements were counted: sqlx's query events did not arrive".into());
    }
    let calls = times.claims + times.completes;
    let per_step = total as f64 / n as f64;
    out.num("pg_statements_per_step", per_step);
    out.int("pg_statements_counted", total);
    out.int("pg_statements_calls", calls);
    out.num("pg_statements_per_call", total as f64 / calls.max(1) as f64);
    let breakdown: Vec<String> = seen.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    out.text("pg_statements_breakdown", &breakdown.join("; "));
    eprintln!(
        "  statements: {per_step:.3} per step ({total} for {n} steps in {calls} calls of up to {batch})"
    );
    for line in &breakdown {
        eprintln!("    {line}");
    }
    Ok(())
}
