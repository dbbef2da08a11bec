//! One large task: a layered random DAG with fan-in, run to completion with batched
//! claims and completions.

use std::time::Instant;

use crate::results::Results;
use crate::util::{self, OpTimes, Res, Scratch};

/// Layers of width ~sqrt(n); every step after the first layer depends on 1-3 distinct
/// random steps of the previous layer. Deterministic for a given seed.
pub fn layered(n: usize, seed: u64) -> Vec<(String, Vec<String>)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let width = ((n as f64).sqrt().round() as usize).max(1);
    let mut steps = Vec::with_capacity(n);
    let mut prev: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < n {
        let layer: Vec<usize> = (i..(i + width).min(n)).collect();
        for &s in &layer {
            let mut deps: Vec<usize> = Vec::new();
            if !prev.is_empty() {
                let k = rng.usize(1..=3).min(prev.len());
                while deps.len() < k {
                    let p = prev[rng.usize(..prev.len())];
                    if !deps.contains(&p) {
                        deps.push(p);
                    }
                }
            }
            steps.push((
                format!("s{s}"),
                deps.iter().map(|d| format!("s{d}")).collect(),
            ));
        }
        i += layer.len();
        prev = layer;
    }
    steps
}

pub fn run(sync: &str, n: usize, label: &str, batch: u32, out: &mut Results) -> Res<f64> {
    let scratch = Scratch::new(label)?;
    let t = util::open(&scratch.db(), sync)?;
    let spec = layered(n, 0x7a5c_e4b1);
    let edges: usize = spec.iter().map(|(_, d)| d.len()).sum();
    let template = util::template(label, &spec);
    let start = Instant::now();
    util::register(&t, &template)?;
    let register_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let id = util::create(&t, &util::create_request(label))?;
    let create_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let mut times = OpTimes::default();
    util::drain(&t, batch, n, &mut times)?;
    let run_s = start.elapsed().as_secs_f64();
    util::expect_complete(&t, id)?;
    t.close();
    let rate = n as f64 / run_s;
    out.num(&format!("{label}_steps_per_s_sqlite"), rate);
    out.num(&format!("{label}_run_ms_sqlite"), run_s * 1e3);
    out.num(&format!("{label}_register_ms_sqlite"), register_ms);
    out.num(&format!("{label}_create_ms_sqlite"), create_ms);
    out.int(&format!("{label}_edges"), edges as u64);
    times.record(label, out);
    eprintln!(
        "  {label}: {rate:.0} steps/s ({n} steps, {edges} edges, register {register_ms:.0} ms, create {create_ms:.0} ms)"
    );
    Ok(rate)
}
