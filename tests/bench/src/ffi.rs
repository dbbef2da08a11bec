//! Per-call overhead of the handle API with a trivial operation (`ping`): from Rust
//! (`Tasker::call`) and, when the C benchmark binary is given, through the C ABI.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::results::Results;
use crate::util::{self, Res, Scratch};

/// Median over batches of the mean ns per `Tasker::call("ping")`.
pub fn rust(sync: &str, calls: usize, batch: usize, out: &mut Results) -> Res<()> {
    let scratch = Scratch::new("ping")?;
    let t = util::open(&scratch.db(), sync)?;
    for _ in 0..1_000 {
        t.call("ping", "{}")?;
    }
    let mut means = Vec::with_capacity(calls / batch);
    for _ in 0..calls / batch {
        let start = Instant::now();
        for _ in 0..batch {
            let r = t.call("ping", "{}")?;
            std::hint::black_box(r);
        }
        means.push(start.elapsed().as_nanos() as f64 / batch as f64);
    }
    t.close();
    let ns = util::median(&mut means);
    out.num("rust_noop_call_ns", ns);
    eprintln!("  rust ping: {ns:.0} ns/call");
    Ok(())
}

/// Runs the C benchmark (`ffi_noop <db> <calls> <batch>`), which prints `key value` lines.
pub fn c(bin: &Path, calls: usize, batch: usize, out: &mut Results) -> Res<()> {
    let scratch = Scratch::new("ffi")?;
    let mut cmd = Command::new(bin);
    cmd.arg(scratch.db())
        .arg(calls.to_string())
        .arg(batch.to_string());
    let text = run(bin, cmd)?;
    let mut found = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(key), Some(value)) = (parts.next(), parts.next()) {
            if let Ok(v) = value.parse::<f64>() {
                found |= key == "ffi_noop_call_ns_c";
                out.num(key, v);
            }
        }
    }
    if !found {
        return Err(format!("{} printed no ffi_noop_call_ns_c: {text}", bin.display()).into());
    }
    eprintln!(
        "  C ping: {:.0} ns/call",
        out.get("ffi_noop_call_ns_c").unwrap_or(f64::NAN)
    );
    Ok(())
}

/// `tests/c/worker.c` in benchmark mode: `n` single-step tasks drained by the C worker
/// loop on the worker session operations (batches of 256), on a fresh SQLite file.
pub fn c_worker(bin: &Path, sync: &str, n: usize, out: &mut Results) -> Res<()> {
    let scratch = Scratch::new("c-worker")?;
    let url = format!("sqlite://{}", scratch.db().display());
    let mut cmd = Command::new(bin);
    cmd.arg(&url)
        .arg(n.to_string())
        .env("TASKER_SQLITE_SYNCHRONOUS", sync);
    let text = run(bin, cmd)?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("steps_per_s_c_worker_sqlite "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "{} printed no steps_per_s_c_worker_sqlite: {text}",
                bin.display()
            )
        })?;
    out.num("steps_per_s_c_worker_sqlite", value);
    eprintln!("  C worker (sessions): {value:.0} steps/s drained ({n} tasks)");
    Ok(())
}

/// Runs a C benchmark program; returns its standard output, or an error with its stderr.
fn run(bin: &Path, mut cmd: Command) -> Res<String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}
