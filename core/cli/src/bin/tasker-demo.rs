//! `tasker-demo`: order fulfilment end to end on a fresh embedded SQLite database.
//!
//! Registers `examples/templates/orders/fulfill/1.0.0.yaml` (a diamond: validate ->
//! reserve + charge -> ship), creates five orders (one of them twice with the same
//! idempotency key, and one bad order the input schema rejects), runs two workers whose
//! `charge_payment` handler fails once per order and then succeeds, prints progress from
//! the event log as it happens, and ends with every task's state and steps.
//!
//! Usage: `tasker-demo [DIR]`. The database is `DIR/demo.db`; DIR must not hold one
//! yet (default: a new directory under the system temp dir, kept for exploring).
//!
//! Exit status 0 only when every task completed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tasker_cli::format::{cell, duration, error_message};
use tasker_cli::table::Table;
use tasker_core::api::Tasker;
use tasker_core::worker::{HandlerError, StepInput, Worker};
use tasker_core::Error;

const TEMPLATE_PATH: &str = "examples/templates/orders/fulfill/1.0.0.yaml";
/// The template ships inside the binary, so the demo runs from any directory.
const TEMPLATE_YAML: &str =
    include_str!("../../../../examples/templates/orders/fulfill/1.0.0.yaml");
const ORDERS: [i64; 5] = [1001, 1002, 1003, 1004, 1005];
const WORKERS: usize = 2;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error [{}]: {}", e.code, e.message);
            ExitCode::from(1)
        }
    }
}

fn call(t: &Tasker, op: &str, request: Value) -> Result<Value, Error> {
    let raw = t.call(op, &request.to_string())?;
    serde_json::from_str(&raw).map_err(|e| Error::internal(format!("bad response: {e}")))
}

fn run() -> Result<bool, Error> {
    let started = Instant::now();
    let dir = match std::env::args_os().nth(1) {
        Some(d) if d == "-h" || d == "--help" => {
            println!("usage: tasker-demo [DIR]   (runs the order-fulfilment demo on DIR/demo.db)");
            return Ok(true);
        }
        Some(d) => PathBuf::from(d),
        None => fresh_dir()?,
    };
    let db = dir.join("demo.db");
    if db.exists() {
        return Err(Error::invalid_argument(format!(
            "{} exists already; the demo needs a fresh database",
            db.display()
        )));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    let url = format!("sqlite://{}", db.display());
    println!("Tasker demo: order fulfilment");
    println!("database: {url} (fresh)\n");
    let tasker =
        Tasker::open(&json!({ "database_url": url, "migrate_on_open": true }).to_string())?;

    // 1. The template.
    let reg = call(
        &tasker,
        "register_template",
        json!({ "yaml": TEMPLATE_YAML }),
    )?;
    println!(
        "registered {}/{} {} from {TEMPLATE_PATH}",
        cell(&reg["namespace"]),
        cell(&reg["name"]),
        cell(&reg["version"])
    );
    println!(
        "  validate -> (reserve, charge) -> ship; charge fails once per order, then succeeds\n"
    );

    // 2. The tasks.
    let mut tasks: Vec<(i64, i64)> = Vec::new();
    for order in ORDERS {
        let r = call(&tasker, "create_task", order_request(order))?;
        let id = r["task_id"].as_i64().unwrap_or(0);
        println!("created task {id} for order {order} (idempotency key order-{order})");
        tasks.push((id, order));
    }
    let again = call(&tasker, "create_task", order_request(1003))?;
    println!(
        "order 1003 submitted again with key order-1003: got task {} back, created={} (deduplicated)",
        cell(&again["task_id"]),
        cell(&again["created"])
    );
    match tasker.call(
        "create_task",
        &json!({ "namespace": "orders", "name": "fulfill", "context": { "items": ["?"] } })
            .to_string(),
    ) {
        Err(e) => println!(
            "an order without order_id is refused: [{}] {}",
            e.code, e.message
        ),
        Ok(r) => println!("unexpected: an order without order_id was accepted: {r}"),
    }

    // 3. Progress from the event log, from here on.
    let stats = call(&tasker, "stats", json!({}))?;
    let cursor = stats["last_event_id"].as_i64().unwrap_or(0);
    let seen = Arc::new(AtomicI64::new(cursor));
    let seen_cb = seen.clone();
    let t0 = Instant::now();
    let subscription = tasker.subscribe(cursor, None, move |e| {
        if let Some(line) = progress_line(e) {
            println!("  [{:>5} ms] {line}", t0.elapsed().as_millis());
        }
        if let Some(id) = e["id"].as_i64() {
            seen_cb.store(id, Ordering::Release);
        }
    })?;

    // 4. The workers.
    println!("\nrunning {WORKERS} workers:");
    let threads: Vec<_> = (1..=WORKERS)
        .map(|n| {
            let t = tasker.clone();
            std::thread::spawn(move || worker(&t, &format!("worker-{n}")).run_until_idle())
        })
        .collect();
    for th in threads {
        match th.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::internal("a worker thread panicked")),
        }
    }
    // Let the subscription print everything the workers caused before summing up.
    let last = call(&tasker, "stats", json!({}))?["last_event_id"]
        .as_i64()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.load(Ordering::Acquire) < last && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    subscription.stop();

    // 5. The outcome.
    println!("\nresults:");
    let listed = call(&tasker, "list_tasks", json!({ "limit": 100 }))?;
    let count = listed["tasks"].as_array().map_or(0, Vec::len);
    let mut all_complete = count == ORDERS.len();
    if !all_complete {
        println!("expected {} tasks, found {count}", ORDERS.len());
    }
    for (id, order) in &tasks {
        let view = call(&tasker, "get_task", json!({ "task_id": id }))?;
        let t = &view["task"];
        let state = cell(&t["state"]);
        all_complete &= state == "complete";
        println!(
            "\ntask {id}  order {order}  {state}  in {}",
            duration(t["duration_ms"].as_i64())
        );
        let mut table = Table::new(&["STEP", "STATE", "ATTEMPTS", "DURATION MS", "WORKER"])
            .right_align(&[2, 3]);
        for st in t["steps"].as_array().into_iter().flatten() {
            table.row([
                cell(&st["name"]),
                cell(&st["state"]),
                cell(&st["attempts"]),
                cell(&st["duration_ms"]),
                cell(&st["worker"]),
            ]);
        }
        for line in table.render().lines() {
            println!("  {line}");
        }
    }
    tasker.close();

    println!();
    if all_complete {
        println!(
            "all {} tasks complete in {:.2}s",
            ORDERS.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("FAILED: not every task completed");
    }
    println!(
        "explore the database with the CLI:\n  {} --database-url {url} task list\n  {} --database-url {url} task show {}\n  {} --database-url {url} events",
        cli_path(),
        cli_path(),
        tasks.first().map_or(1, |t| t.0),
        cli_path()
    );
    Ok(all_complete)
}

fn order_request(order: i64) -> Value {
    json!({
        "namespace": "orders",
        "name": "fulfill",
        "version": "1.0.0",
        "context": { "order_id": order, "items": ["book", "lamp"], "amount_cents": 4200 + order % 10 * 100 },
        "idempotency_key": format!("order-{order}"),
    })
}

/// A short, deterministic amount of "work" so durations are visible.
fn work(step: &StepInput) {
    let order = step.context["order_id"].as_i64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(5 + (order % 4) as u64 * 3));
}

fn worker(t: &Tasker, id: &str) -> Worker {
    Worker::new(t, id)
        .batch(2)
        .handle("validate_order", |s| {
            work(s);
            match s.context["order_id"].as_i64() {
                Some(order) => Ok(json!({ "valid": true, "order_id": order })),
                None => Err(HandlerError::permanent("order_id is missing")),
            }
        })
        .handle("reserve_inventory", |s| {
            work(s);
            Ok(json!({
                "reserved": s.context["items"],
                "warehouse": s.config["warehouse"],
            }))
        })
        .handle("charge_payment", |s| {
            work(s);
            if s.attempt == 1 {
                return Err(HandlerError::retryable(
                    "payment gateway timed out (simulated; succeeds on retry)",
                ));
            }
            Ok(json!({
                "charged_cents": s.context["amount_cents"],
                "currency": s.config["currency"],
                "attempt": s.attempt,
            }))
        })
        .handle("ship_order", |s| {
            work(s);
            let order = s.context["order_id"].as_i64().unwrap_or(0);
            if s.results.get("charge").is_none() || s.results.get("reserve").is_none() {
                return Err(HandlerError::permanent(
                    "ship ran before reserve and charge",
                ));
            }
            Ok(json!({
                "carrier": s.config["carrier"],
                "tracking": format!("1Z{order:08}"),
            }))
        })
}

/// A progress line for the events worth showing (`None` for the rest).
fn progress_line(e: &Value) -> Option<String> {
    let task = cell(&e["task_id"]);
    let step = cell(&e["step_name"]);
    let attempt = cell(&e["attempt"]);
    let worker = cell(&e["worker"]);
    let line = match e["event"].as_str()? {
        "step.completed" => {
            format!("task {task}: {step} completed (attempt {attempt}, {worker})")
        }
        "step.retry_scheduled" => format!(
            "task {task}: {step} failed on attempt {attempt} ({worker}): {}; retry scheduled",
            error_message(&e["details"]["error"]).unwrap_or_default()
        ),
        "step.failed" => format!(
            "task {task}: {step} FAILED for good: {}",
            error_message(&e["details"]["error"]).unwrap_or_default()
        ),
        "step.lease_expired" => format!("task {task}: {step} lease expired; taken back"),
        "task.completed" => format!("task {task}: COMPLETE"),
        "task.failed" => format!("task {task}: FAILED"),
        "task.cancelled" => format!("task {task}: cancelled"),
        _ => return None,
    };
    Some(line)
}

/// A new, empty directory under the system temp dir.
fn fresh_dir() -> Result<PathBuf, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tasker-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// The `tasker` CLI built next to this binary, if it is there.
fn cli_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tasker")))
        .filter(|p| Path::new(p).exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "tasker".into())
}
