//! The graphile-worker peer: `tests/bench/peers/graphile-worker/bench.js` run under
//! Node (the package installed from npm by `scripts/bench`), once in graphile-worker's
//! documented fastest configuration and once with its defaults, each in a fresh schema
//! of the same server and TLS mode as the engine; then the workflows of `flows.rs` built
//! from its jobs (each job adds its successors), in the fastest configuration.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::pg::Pg;
use crate::results::Results;
use crate::util::Res;

fn one(node: &str, dir: &Path, pg: &Pg, jobs: usize, mode: &str) -> Res<Value> {
    let schema = pg.fresh_schema(&format!("gw_{mode}"))?;
    let output = Command::new(node)
        .current_dir(dir)
        .args(["bench.js", &pg.url, &schema, &jobs.to_string(), mode])
        .output()
        .map_err(|e| format!("cannot run {node}: {e}"))?;
    // The harness drops its schema itself; this covers a crash.
    pg.drop_schema(&schema)?;
    if !output.status.success() {
        return Err(format!(
            "graphile-worker peer ({mode}) failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .map_err(|e| format!("graphile-worker peer printed `{line}`: {e}"))?;
    // `ran`: jobs, or for the workflow modes the workflows whose last job ran.
    if v["ran"].as_u64() != Some(jobs as u64) {
        return Err(format!("graphile-worker peer ran {} of {jobs} jobs", v["ran"]).into());
    }
    Ok(v)
}

pub fn run(
    node: &str,
    dir: &Path,
    pg: &Pg,
    jobs: usize,
    default_jobs: usize,
    out: &mut Results,
) -> Res<()> {
    let fast = one(node, dir, pg, jobs, "fast")?;
    let rate = fast["jobs_per_s"].as_f64().unwrap_or(f64::NAN);
    out.num("peer_graphile_worker_jobs_per_s", rate);
    out.int("peer_graphile_worker_jobs", jobs as u64);
    out.num(
        "peer_graphile_worker_add_jobs_per_s",
        fast["add_jobs_per_s"].as_f64().unwrap_or(f64::NAN),
    );
    let cpu = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    out.num(
        "peer_graphile_worker_server_cpu_us_per_job",
        cpu(&fast, "server_cpu_us_per_job"),
    );
    out.num(
        "peer_graphile_worker_client_cpu_us_per_job",
        cpu(&fast, "client_cpu_us_per_job"),
    );
    eprintln!(
        "  graphile-worker (local queue, batched completion): {rate:.0} jobs/s ({jobs} jobs); CPU per job: {:.1} us in node, {:.1} us in postgres processes",
        cpu(&fast, "client_cpu_us_per_job"),
        cpu(&fast, "server_cpu_us_per_job"),
    );
    let default = one(node, dir, pg, default_jobs, "default")?;
    let rate = default["jobs_per_s"].as_f64().unwrap_or(f64::NAN);
    out.num("peer_graphile_worker_default_jobs_per_s", rate);
    out.int("peer_graphile_worker_default_jobs", default_jobs as u64);
    eprintln!("  graphile-worker (defaults): {rate:.0} jobs/s ({default_jobs} jobs)");
    out.int(
        "peer_graphile_worker_concurrency",
        fast["concurrency"].as_u64().unwrap_or(0),
    );
    out.text(
        "peer_graphile_worker_version",
        fast["version"].as_str().unwrap_or("?"),
    );
    out.text("node_version", fast["node_version"].as_str().unwrap_or("?"));
    let tls = |v: &Value| {
        if v["tls"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }
    };
    out.text("pg_tls_peer", tls(&fast));
    Ok(())
}

/// The workflows: `peer_graphile_worker_chain4_per_s` and `..._fanout10_per_s`
/// (workflows per second), `chains` and `fanouts` of them. Fewer than the engine runs:
/// each peer job that adds a job commits on its own, so these take far longer.
pub fn workflows(
    node: &str,
    dir: &Path,
    pg: &Pg,
    chains: usize,
    fanouts: usize,
    out: &mut Results,
) -> Res<()> {
    for (mode, flows) in [("chain4", chains), ("fanout10", fanouts)] {
        let v = one(node, dir, pg, flows, mode)?;
        let rate = v["jobs_per_s"].as_f64().unwrap_or(f64::NAN);
        out.num(&format!("peer_graphile_worker_{mode}_per_s"), rate);
        out.int(&format!("peer_graphile_worker_{mode}_flows"), flows as u64);
        out.num(
            &format!("peer_graphile_worker_{mode}_server_cpu_us_per_flow"),
            v["server_cpu_us_per_job"].as_f64().unwrap_or(f64::NAN),
        );
        eprintln!(
            "  graphile-worker {mode} (each job adds the next): {rate:.0} workflows/s ({flows}); {:.1} us of postgres CPU per workflow",
            v["server_cpu_us_per_job"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
