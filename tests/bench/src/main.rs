//! `tasker-bench`: the measurements behind `scripts/bench`. Every benchmark runs on a
//! fresh SQLite file in a temp dir or a fresh schema of a PostgreSQL server (dropped
//! after); the results are a flat JSON object of named numbers.
//!
//! ```text
//! tasker-bench [--quick] [--sync normal|full] [--out PATH] [--ffi-bin PATH] [--c-worker-bin PATH] [--only a,b]
//!              [--pg-url URL] [--pg-loops N] [--peer-dir DIR] [--node PATH]
//! tasker-bench --pg-worker --pg-url URL --schema S --limit L [--pg-loops N]   (child mode)
//! ```
//! Benchmarks (`--only`): ffi, latency, steps, delayed, dag, commits (SQLite); pg-commits,
//! pg-latency, pg-steps, pg-create, pg-flows, pg-4proc, pg-stmts, peer (PostgreSQL, need
//! `--pg-url`; `peer` also `--peer-dir`). `--pg-loops` (default 3) is how many claim loops the one worker
//! process of `pg-steps` runs at once.

mod commits;
mod cpu;
mod dag;
mod delayed;
mod ffi;
mod flows;
mod latency;
mod multiproc;
mod peer;
mod pg;
mod results;
mod stmts;
mod throughput;
mod util;
mod writers;

use std::path::PathBuf;
use std::time::Instant;

use results::Results;
use util::{Res, Store};

struct Args {
    quick: bool,
    sync: String,
    out: PathBuf,
    ffi_bin: Option<PathBuf>,
    c_worker_bin: Option<PathBuf>,
    only: Option<Vec<String>>,
    pg_url: Option<String>,
    pg_loops: usize,
    peer_dir: Option<PathBuf>,
    node: String,
    worker: Option<WorkerArgs>,
}

/// Child mode (`--pg-worker`): one of the worker processes of `pg-4proc`.
#[derive(Default)]
struct WorkerArgs {
    schema: String,
    limit: u32,
    /// Drive worker sessions instead of claim/complete (`--sessions`).
    sessions: bool,
}

const USAGE: &str = "usage: tasker-bench [--quick] [--sync normal|full] [--out PATH] [--ffi-bin PATH] [--c-worker-bin PATH]
                    [--pg-url URL] [--pg-loops N] [--peer-dir DIR] [--node PATH]
                    [--only ffi,latency,steps,delayed,dag,commits,pg-commits,pg-latency,pg-steps,pg-create,pg-flows,pg-4proc,pg-stmts,peer]";

/// Every benchmark `--only` accepts.
const BENCHES: &[&str] = &[
    "ffi",
    "latency",
    "steps",
    "delayed",
    "dag",
    "commits",
    "pg-commits",
    "pg-latency",
    "pg-steps",
    "pg-create",
    "pg-flows",
    "pg-4proc",
    "pg-stmts",
    "peer",
];

fn parse_args() -> Res<Args> {
    let mut args = Args {
        quick: false,
        sync: "normal".into(),
        out: PathBuf::from("target/bench/results.json"),
        ffi_bin: None,
        c_worker_bin: None,
        only: None,
        pg_url: None,
        pg_loops: 3,
        peer_dir: None,
        node: "node".into(),
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--sync" => args.sync = value("--sync")?,
            "--out" => args.out = value("--out")?.into(),
            "--ffi-bin" => args.ffi_bin = Some(value("--ffi-bin")?.into()),
            "--c-worker-bin" => args.c_worker_bin = Some(value("--c-worker-bin")?.into()),
            "--only" => args.only = Some(value("--only")?.split(',').map(str::to_owned).collect()),
            "--pg-url" => args.pg_url = Some(value("--pg-url")?),
            "--pg-loops" => {
                args.pg_loops = value("--pg-loops")?
                    .parse()
                    .map_err(|e| format!("--pg-loops: {e}"))?
            }
            "--peer-dir" => args.peer_dir = Some(value("--peer-dir")?.into()),
            "--node" => args.node = value("--node")?,
            "--pg-worker" => args.worker = Some(WorkerArgs::default()),
            "--schema" => args.worker.get_or_insert_default().schema = value("--schema")?,
            "--sessions" => args.worker.get_or_insert_default().sessions = true,
            "--limit" => {
                args.worker.get_or_insert_default().limit = value("--limit")?
                    .parse()
                    .map_err(|e| format!("--limit: {e}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
        }
    }
    if !matches!(args.sync.as_str(), "normal" | "full" | "off") {
        return Err(format!("--sync must be normal, full or off, not `{}`", args.sync).into());
    }
    if let Some(only) = &args.only {
        if let Some(bad) = only.iter().find(|o| !BENCHES.contains(&o.as_str())) {
            return Err(format!("--only: unknown benchmark `{bad}`\n{USAGE}").into());
        }
    }
    Ok(args)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average: other work on the machine skews every number.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tasker-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = parse_args()?;
    if let Some(w) = &args.worker {
        let url = args.pg_url.as_deref().ok_or("--pg-worker needs --pg-url")?;
        return multiproc::child(url, &w.schema, w.limit, args.pg_loops, w.sessions);
    }
    let wants = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    };
    let pg_benches = [
        "pg-commits",
        "pg-latency",
        "pg-steps",
        "pg-create",
        "pg-flows",
        "pg-4proc",
        "pg-stmts",
        "peer",
    ];
    let wants_pg = pg_benches.iter().any(|b| wants(b));
    if wants_pg {
        // Before any engine opens: the statement counter must see its sqlx events.
        stmts::install();
    }
    let sync = args.sync.as_str();
    let q = args.quick;
    let mut r = Results::default();
    r.text("mode", if q { "quick" } else { "full" });
    r.text("sqlite_synchronous", sync);
    r.text("sqlite_journal_mode", "wal");
    r.text(
        "machine_cores",
        &std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    r.text("machine_cpu", &cpu_model());
    // Before this process's first SQLite connection, as the engine's own open does.
    tasker_core::store::sqlite::configure_sqlite_once();
    r.text("sqlite_version", &sqlite_version()?);
    r.num("machine_loadavg_1m_start", loadavg());
    let started = Instant::now();

    if wants("ffi") {
        eprintln!("ffi:");
        let (calls, batch) = if q {
            (50_000, 5_000)
        } else {
            (200_000, 10_000)
        };
        ffi::rust(sync, calls, batch, &mut r)?;
        match &args.ffi_bin {
            Some(bin) => ffi::c(bin, calls, batch, &mut r)?,
            None => eprintln!("  C ping: skipped (no --ffi-bin)"),
        }
    }
    let sqlite = Store::Sqlite { sync };
    if wants("commits") {
        eprintln!("commits:");
        commits::run(sync, if q { 1.0 } else { 2.0 }, &mut r)?;
    }
    if wants("latency") {
        eprintln!("latency:");
        latency::run(sqlite, if q { 50 } else { 1_000 }, &mut r)?;
    }
    if wants("steps") {
        eprintln!("steps:");
        let n = if q { 5_000 } else { 20_000 };
        throughput::run(sqlite, n, 256, 1, &mut r)?;
        match &args.c_worker_bin {
            Some(bin) => {
                ffi::c_worker(bin, sync, n, &mut r)?;
                if let (Some(c), Some(rust)) = (
                    r.get("steps_per_s_c_worker_sqlite"),
                    r.get("steps_per_s_sqlite"),
                ) {
                    r.num("c_worker_over_rust_sqlite", c / rust);
                }
            }
            None => eprintln!("  C worker: skipped (no --c-worker-bin)"),
        }
    }
    if wants("delayed") {
        eprintln!("delayed:");
        delayed::run(sqlite, if q { 5_000 } else { 20_000 }, 256, &mut r)?;
    }
    if wants("dag") {
        eprintln!("dag:");
        let small = dag::run(sync, 1_000, "dag1k", 256, &mut r)?;
        let large = dag::run(sync, 10_000, "dag10k", 256, &mut r)?;
        r.num("dag10k_over_dag1k", large / small);
    }
    if wants_pg {
        match &args.pg_url {
            Some(url) => postgres(&args, url, &mut r)?,
            None => eprintln!("postgres: skipped (no --pg-url)"),
        }
    }
    r.num("bench_wall_s", started.elapsed().as_secs_f64());
    r.num("machine_loadavg_1m_end", loadavg());
    r.write(&args.out)?;
    println!("{}", r.table());
    println!("results: {}", args.out.display());
    Ok(())
}

/// The PostgreSQL benchmarks and the graphile-worker peer, on one server and TLS mode.
fn postgres(args: &Args, url: &str, r: &mut Results) -> Res<()> {
    let wants = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    };
    let q = args.quick;
    let pg = pg::Pg::connect(url)?;
    r.text("pg_tls_mode", &tls_mode(url));
    pg.describe(r)?;
    let steps = if q { 5_000 } else { 20_000 };
    if wants("pg-commits") {
        eprintln!("commits (postgres):");
        pg.commits(if q { 1.0 } else { 2.0 }, r)?;
        writers::run(&pg, 8, if q { 1.0 } else { 2.0 }, r)?;
    }
    if wants("pg-latency") {
        eprintln!("latency (postgres):");
        latency::run(Store::Postgres(&pg), if q { 50 } else { 300 }, r)?;
    }
    if wants("pg-steps") {
        eprintln!("steps (postgres):");
        throughput::run(Store::Postgres(&pg), steps, 256, args.pg_loops.max(1), r)?;
    }
    if wants("pg-create") {
        eprintln!("create_tasks (postgres):");
        flows::creation(&pg, steps, r)?;
    }
    let flows_n = if q { 2_000 } else { 5_000 };
    if wants("pg-flows") {
        eprintln!("workflows (postgres):");
        let loops = args.pg_loops.max(1);
        flows::run(&pg, "chain4", &flows::chain(4), flows_n, loops, r)?;
        flows::run(&pg, "fanout10", &flows::fanout(10), flows_n, loops, r)?;
    }
    if wants("pg-4proc") {
        eprintln!("steps (postgres, 4 processes):");
        let exe = std::env::current_exe()?;
        let loops = args.pg_loops.max(1);
        // `steps_per_s_postgres_4proc` is four processes driving worker sessions (the
        // worker runtime in core: what every binding's worker runs); the same four
        // processes calling claim/complete directly are `..._4proc_claims`
        // (docs/architecture.md says why).
        multiproc::run(&pg, &exe, 4, loops, steps, 256, "", true, r)?;
        multiproc::run(&pg, &exe, 4, loops, steps, 256, "_claims", false, r)?;
        if loops > 1 {
            // One claim loop per process, as the engine's own workers run (one claimer,
            // handlers on threads): fewer claimers skipping each other's locked rows.
            multiproc::run(&pg, &exe, 4, 1, steps, 256, "_1loop", false, r)?;
        }
        // Small batches, as workers whose handlers are slow claim them: a transaction per
        // few steps, so this rate is bounded by how many transactions the processes
        // together can commit (what the event-order lock once serialized).
        let small = if q { 1_000 } else { 4_000 };
        multiproc::run(&pg, &exe, 4, loops, small, 4, "_batch4", false, r)?;
    }
    if wants("pg-stmts") {
        eprintln!("statements per step (postgres):");
        stmts::run(&pg, if q { 1_280 } else { 5_120 }, 256, r)?;
    }
    if wants("peer") {
        eprintln!("peer: graphile-worker:");
        match &args.peer_dir {
            Some(dir) => peer::run(
                &args.node,
                dir,
                &pg,
                steps,
                if q { 2_000 } else { 5_000 },
                r,
            )?,
            None => eprintln!("  skipped (no --peer-dir)"),
        }
        if let Some(dir) = &args.peer_dir {
            let (chains, fanouts) = if q { (500, 300) } else { (2_000, 1_000) };
            peer::workflows(&args.node, dir, &pg, chains, fanouts, r)?;
        }
    }
    Ok(())
}

/// The URL's `sslmode` (libpq's default, `prefer`, when it names none).
fn tls_mode(url: &str) -> String {
    url.split_once('?')
        .and_then(|(_, q)| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("sslmode=").or(kv.strip_prefix("ssl-mode=")))
        })
        .unwrap_or("prefer")
        .to_owned()
}

fn sqlite_version() -> Res<String> {
    let c = rusqlite::Connection::open_in_memory()?;
    Ok(c.query_row("SELECT sqlite_version()", [], |r| r.get(0))?)
}
