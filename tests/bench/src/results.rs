//! The results: a flat, ordered map of named numbers and strings, written as JSON, and
//! the table printed next to the targets.

use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::util::Res;

#[derive(Default)]
pub struct Results {
    map: Map<String, Value>,
}

/// A target a number is compared with.
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// At least another number of the same run (the peer, or the one-process rate).
    NotBelow(&'static str),
    /// At least this multiple of another number of the same run.
    Times(f64, &'static str),
}

impl Results {
    pub fn num(&mut self, key: &str, v: f64) {
        let rounded = if v.abs() >= 100.0 {
            v.round()
        } else {
            (v * 1000.0).round() / 1000.0
        };
        let value = Number::from_f64(rounded).map_or(Value::Null, Value::Number);
        self.map.insert(key.to_owned(), value);
    }

    pub fn int(&mut self, key: &str, v: u64) {
        self.map.insert(key.to_owned(), Value::from(v));
    }

    pub fn text(&mut self, key: &str, v: &str) {
        self.map.insert(key.to_owned(), Value::from(v));
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.map.get(key).and_then(Value::as_f64)
    }

    pub fn write(&self, path: &Path) -> Res<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&Value::Object(self.map.clone()))?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }

    /// The table: headline numbers against their targets, then every other number.
    pub fn table(&self) -> String {
        let headline: &[(&str, Option<Target>)] = &[
            ("ffi_noop_call_ns_c", Some(Target::AtMost(1000.0))),
            ("linear4_p50_ms_sqlite", Some(Target::AtMost(1.0))),
            ("diamond4_p50_ms_sqlite", None),
            ("steps_per_s_sqlite", Some(Target::AtLeast(20_000.0))),
            (
                "steps_per_s_sqlite_with_100k_delayed",
                Some(Target::Times(0.9, "steps_per_s_sqlite")),
            ),
            ("steps_per_s_c_worker_sqlite", None),
            ("c_worker_over_rust_sqlite", Some(Target::AtLeast(0.9))),
            ("dag1k_steps_per_s_sqlite", None),
            ("dag10k_steps_per_s_sqlite", None),
            ("dag10k_over_dag1k", Some(Target::AtLeast(0.7))),
            ("sqlite_commits_per_s", None),
            ("linear4_p50_ms_postgres", Some(Target::AtMost(5.0))),
            ("diamond4_p50_ms_postgres", None),
            (
                "steps_per_s_postgres",
                Some(Target::Times(0.8, "peer_graphile_worker_jobs_per_s")),
            ),
            ("peer_graphile_worker_jobs_per_s", None),
            ("peer_graphile_worker_default_jobs_per_s", None),
            (
                "steps_per_s_postgres_4proc",
                Some(Target::Times(1.2, "steps_per_s_postgres")),
            ),
            ("steps_per_s_postgres_4proc_claims", None),
            (
                "chain4_tasks_per_s_postgres",
                Some(Target::Times(8.0, "peer_graphile_worker_chain4_per_s")),
            ),
            ("peer_graphile_worker_chain4_per_s", None),
            (
                "fanout10_tasks_per_s_postgres",
                Some(Target::Times(3.0, "peer_graphile_worker_fanout10_per_s")),
            ),
            ("peer_graphile_worker_fanout10_per_s", None),
            (
                "create_tasks_per_s_postgres_batch",
                Some(Target::NotBelow("peer_graphile_worker_add_jobs_per_s")),
            ),
            ("peer_graphile_worker_add_jobs_per_s", None),
            ("create_tasks_per_s_postgres", None),
            ("steps_server_cpu_us_per_step_postgres", None),
            ("peer_graphile_worker_server_cpu_us_per_job", None),
            ("pg_commits_per_s", None),
            ("pg_statements_per_step", Some(Target::AtMost(3.0))),
        ];
        let mut out = String::new();
        out.push_str(&format!(
            "{:<40} {:>14}  {:<12} {}\n",
            "metric", "value", "target", "status"
        ));
        out.push_str(&format!("{}\n", "-".repeat(76)));
        for (key, target) in headline {
            let value = self.get(key);
            let (t, status) = match (target, value) {
                (Some(Target::AtMost(x)), Some(v)) => (
                    format!("<= {}", fmt(*x)),
                    if v <= *x { "ok" } else { "MISSED" },
                ),
                (Some(Target::AtLeast(x)), Some(v)) => (
                    format!(">= {}", fmt(*x)),
                    if v >= *x { "ok" } else { "MISSED" },
                ),
                (Some(Target::NotBelow(other)), Some(v)) => match self.get(other) {
                    Some(x) => (
                        format!(">= {}", fmt(x)),
                        if v >= x { "ok" } else { "MISSED" },
                    ),
                    None => (format!(">= {other}"), "no peer number"),
                },
                (Some(Target::Times(f, other)), Some(v)) => match self.get(other) {
                    Some(x) => (
                        format!(">= {}", fmt(f * x)),
                        if v >= f * x { "ok" } else { "MISSED" },
                    ),
                    None => (format!(">= {f}x {other}"), "no peer number"),
                },
                (Some(_), None) => ("".into(), "not measured"),
                (None, _) => ("".into(), ""),
            };
            let shown = value.map_or_else(|| "-".to_owned(), fmt);
            out.push_str(&format!("{key:<40} {shown:>14}  {t:<12} {status}\n"));
        }
        out.push_str(&format!("{}\n", "-".repeat(76)));
        for (key, v) in &self.map {
            if headline.iter().any(|(k, _)| k == key) {
                continue;
            }
            let shown = match v {
                Value::Number(n) => fmt(n.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("{key:<40} {shown:>14}\n"));
        }
        out
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
