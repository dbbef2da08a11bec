//! End-to-end latency of small workflows: create a task and run it to completion with one
//! in-process no-op worker, one task at a time, each workflow on its own fresh database
//! (a SQLite file or a PostgreSQL schema).

use std::time::Instant;

use crate::results::Results;
use crate::util::{self, Db, OpTimes, Res, Store};

fn steps(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    spec.iter()
        .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
        .collect()
}

struct Flow<'a> {
    label: &'static str,
    store: &'static str,
    n_steps: usize,
    db: Db<'a>,
    create: String,
    ms: Vec<f64>,
    create_ns: u64,
    times: OpTimes,
    last: i64,
}

impl<'a> Flow<'a> {
    fn new(label: &'static str, spec: &[(String, Vec<String>)], store: Store<'a>) -> Res<Self> {
        let db = Db::open(store, label)?;
        util::register(&db.tasker, &util::template(label, spec))?;
        Ok(Flow {
            label,
            store: store.name(),
            n_steps: spec.len(),
            db,
            create: util::create_request(label),
            ms: Vec::new(),
            create_ns: 0,
            times: OpTimes::default(),
            last: 0,
        })
    }

    /// Runs one task to completion; records it unless warming up.
    fn one(&mut self, record: bool) -> Res<()> {
        let mut times = OpTimes::default();
        let start = Instant::now();
        let id = util::create(&self.db.tasker, &self.create)?;
        let create_ns = start.elapsed().as_nanos() as u64;
        util::drain(&self.db.tasker, 64, self.n_steps, &mut times)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        self.last = id;
        if record {
            self.ms.push(ms);
            self.create_ns += create_ns;
            self.times.add(&times);
        }
        Ok(())
    }

    fn finish(mut self, out: &mut Results) -> Res<()> {
        util::expect_complete(&self.db.tasker, self.last)?;
        let (label, store) = (self.label, self.store);
        let ms = &mut self.ms;
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        let p50 = util::percentile(ms, 50.0);
        out.num(&format!("{label}_p50_ms_{store}"), p50);
        out.num(
            &format!("{label}_p90_ms_{store}"),
            util::percentile(ms, 90.0),
        );
        out.num(
            &format!("{label}_p99_ms_{store}"),
            util::percentile(ms, 99.0),
        );
        out.num(
            &format!("{label}_mean_ms_{store}"),
            ms.iter().sum::<f64>() / n,
        );
        // The SQLite names predate the PostgreSQL runs; they keep their unsuffixed form.
        let sfx = if store == "sqlite" {
            String::new()
        } else {
            format!("_{store}")
        };
        out.int(&format!("{label}_tasks{sfx}"), ms.len() as u64);
        out.num(
            &format!("{label}_create_call_ms{sfx}"),
            self.create_ns as f64 / n / 1e6,
        );
        self.times.record(&format!("{label}{sfx}"), out);
        out.num(
            &format!("{label}_claims_per_task{sfx}"),
            self.times.claims as f64 / n,
        );
        eprintln!(
            "  {label} ({store}): p50 {p50:.3} ms over {} tasks",
            ms.len()
        );
        Ok(())
    }
}

pub fn run(store: Store, tasks: usize, out: &mut Results) -> Res<()> {
    let linear = steps(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["c"])]);
    let diamond = steps(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
    let warmup = (tasks / 10).clamp(5, 20);
    for (label, spec) in [("linear4", &linear), ("diamond4", &diamond)] {
        let mut flow = Flow::new(label, spec, store)?;
        for i in 0..warmup + tasks {
            flow.one(i >= warmup)?;
        }
        flow.finish(out)?;
    }
    Ok(())
}
