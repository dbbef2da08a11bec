//! `tasker-bench`: the measurements behind `scripts/bench`. Every benchmark runs on a
//! fresh SQLite file in a temp dir; the results are a flat JSON object of named numbers.
//!
//! ```text
//! tasker-bench [--quick] [--sync normal|full] [--out PATH] [--ffi-bin PATH] [--only a,b]
//! ```
//! Benchmarks (`--only`): ffi, latency, steps, dag, commits.

mod commits;
mod dag;
mod ffi;
mod latency;
mod results;
mod throughput;
mod util;

use std::path::PathBuf;
use std::time::Instant;

use results::Results;
use util::Res;

struct Args {
    quick: bool,
    sync: String,
    out: PathBuf,
    ffi_bin: Option<PathBuf>,
    only: Option<Vec<String>>,
}

const USAGE: &str = "usage: tasker-bench [--quick] [--sync normal|full] [--out PATH] [--ffi-bin PATH] [--only ffi,latency,steps,dag,commits]";

fn parse_args() -> Res<Args> {
    let mut args = Args {
        quick: false,
        sync: "normal".into(),
        out: PathBuf::from("target/bench/results.json"),
        ffi_bin: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--sync" => args.sync = value("--sync")?,
            "--out" => args.out = value("--out")?.into(),
            "--ffi-bin" => args.ffi_bin = Some(value("--ffi-bin")?.into()),
            "--only" => args.only = Some(value("--only")?.split(',').map(str::to_owned).collect()),
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
    let wants = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    };
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
    if wants("commits") {
        eprintln!("commits:");
        commits::run(sync, if q { 1.0 } else { 2.0 }, &mut r)?;
    }
    if wants("latency") {
        eprintln!("latency:");
        latency::run(sync, if q { 50 } else { 1_000 }, &mut r)?;
    }
    if wants("steps") {
        eprintln!("steps:");
        throughput::run(sync, if q { 5_000 } else { 20_000 }, 256, &mut r)?;
    }
    if wants("dag") {
        eprintln!("dag:");
        let small = dag::run(sync, 1_000, "dag1k", 256, &mut r)?;
        let large = dag::run(sync, 10_000, "dag10k", 256, &mut r)?;
        r.num("dag10k_over_dag1k", large / small);
    }
    r.num("bench_wall_s", started.elapsed().as_secs_f64());
    r.num("machine_loadavg_1m_end", loadavg());
    r.write(&args.out)?;
    println!("{}", r.table());
    println!("results: {}", args.out.display());
    Ok(())
}

fn sqlite_version() -> Res<String> {
    let c = rusqlite::Connection::open_in_memory()?;
    Ok(c.query_row("SELECT sqlite_version()", [], |r| r.get(0))?)
}
