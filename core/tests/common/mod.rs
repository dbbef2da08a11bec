//! Helpers shared by the engine's integration tests: a fresh SQLite database per test,
//! and small wrappers over the JSON API.
#![allow(dead_code)]

use serde_json::{json, Value};
use tasker_core::api::Tasker;
use tasker_core::Error;

pub struct Db {
    pub tasker: Tasker,
    pub dir: tempfile::TempDir,
    pub url: String,
    /// The PostgreSQL schema this test owns (dropped when the test ends).
    pub schema: Option<String>,
}

/// Which store the suite runs on: `TASKER_TEST_STORE=postgres` runs every test against
/// the server at `TASKER_TEST_DATABASE_URL`, each test in a schema of its own.
pub fn on_postgres() -> bool {
    std::env::var("TASKER_TEST_STORE").is_ok_and(|s| s == "postgres")
}

pub fn postgres_url() -> String {
    std::env::var("TASKER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name no other test (or test process) uses.
pub fn fresh_schema() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// The store settings for a fresh database: an SQLite file in `dir`, or a fresh schema.
pub fn store_config(dir: &std::path::Path) -> (Value, Option<String>) {
    if on_postgres() {
        let schema = fresh_schema();
        (
            json!({ "database_url": postgres_url(), "postgres_schema": schema, "postgres_pool_size": 4 }),
            Some(schema),
        )
    } else {
        (
            json!({ "database_url": format!("sqlite://{}/tasker.db", dir.display()) }),
            None,
        )
    }
}

pub fn drop_schema(schema: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&postgres_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&mut c)
            .await;
        }
    });
}

impl Drop for Db {
    fn drop(&mut self) {
        self.tasker.close();
        if let Some(schema) = &self.schema {
            drop_schema(schema);
        }
    }
}

pub fn open(extra: Value) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let (store, schema) = store_config(dir.path());
    let url = store["database_url"].as_str().unwrap().to_owned();
    let mut config = json!({ "templates_dir": dir.path().join("templates").to_str().unwrap() });
    for (k, v) in store.as_object().unwrap() {
        config[k] = v.clone();
    }
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            config[k] = v;
        }
    }
    let tasker = Tasker::open(&config.to_string()).unwrap();
    Db {
        tasker,
        dir,
        url,
        schema,
    }
}

impl Db {
    pub fn call(&self, op: &str, req: Value) -> Value {
        let out = self
            .tasker
            .call(op, &req.to_string())
            .unwrap_or_else(|e| panic!("{op} {req} failed: {e}"));
        serde_json::from_str(&out).unwrap()
    }

    pub fn call_err(&self, op: &str, req: Value) -> Error {
        match self.tasker.call(op, &req.to_string()) {
            Ok(out) => panic!("{op} {req} should have failed but returned {out}"),
            Err(e) => e,
        }
    }

    pub fn register(&self, template: Value) {
        self.call("register_template", json!({ "template": template }));
    }

    pub fn create(&self, name: &str, context: Value) -> i64 {
        self.call(
            "create_task",
            json!({ "namespace": "t", "name": name, "context": context }),
        )["task_id"]
            .as_i64()
            .unwrap()
    }

    pub fn claim(&self, handlers: &[&str], limit: u32, lease_ms: u64) -> Vec<Value> {
        self.call(
            "claim",
            json!({ "handlers": handlers, "limit": limit, "worker_id": "test", "lease_ms": lease_ms }),
        )["steps"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Claims, waiting up to 5 s for a step (a retry's backoff may still be running).
    pub fn claim_wait(&self, handlers: &[&str], limit: u32, lease_ms: u64) -> Vec<Value> {
        self.call(
            "claim",
            json!({ "handlers": handlers, "limit": limit, "worker_id": "test", "lease_ms": lease_ms, "wait_ms": 5000 }),
        )["steps"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn task(&self, id: i64) -> Value {
        self.call("get_task", json!({ "task_id": id }))["task"].clone()
    }

    pub fn step(&self, task_id: i64, name: &str) -> Value {
        self.task(task_id)["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    }

    pub fn events(&self, task_id: i64) -> Vec<String> {
        self.call("events", json!({ "task_id": task_id, "limit": 1000 }))["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn complete(&self, step: &Value, result: Value) -> Value {
        self.call(
            "complete_step",
            json!({ "step_id": step["step_id"], "claim_token": step["claim_token"], "result": result }),
        )
    }

    /// Counts of rows in every table: equal before and after a refused request means
    /// the request changed nothing.
    pub fn fingerprint(&self) -> Value {
        let stats = self.call("stats", json!({}));
        json!({ "tasks": stats["tasks"], "steps": stats["steps"], "last_event_id": stats["last_event_id"] })
    }
}

/// A template in namespace `t` with steps given as (name, handler, depends_on).
pub fn template(name: &str, steps: &[(&str, &[&str])], retry: Value) -> Value {
    json!({
        "namespace": "t",
        "name": name,
        "version": "1",
        "defaults": { "retry": retry },
        "steps": steps.iter().map(|(n, deps)| json!({ "name": n, "handler": n, "depends_on": deps })).collect::<Vec<_>>(),
    })
}

pub fn fast_retry(max_attempts: u32) -> Value {
    json!({ "max_attempts": max_attempts, "backoff": "fixed", "base_ms": 1, "max_ms": 1, "jitter": 0 })
}
