//! Configuration: one flat set of settings with documented defaults.
//!
//! Sources, lowest precedence first:
//! 1. the defaults below (documented in `docs/configuration.md`; a test keeps the two equal),
//! 2. `tasker.yaml` (path from `TASKER_CONFIG`, else `./tasker.yaml` if present), with the
//!    block `environments.<TASKER_ENV>` laid over its top level,
//! 3. `TASKER_<SETTING>` environment variables (for example `TASKER_LEASE_MS=60000`),
//! 4. the explicit overrides an application passes to `open` (a JSON object).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorCode, Result};
use crate::model::retry::RetryPolicy;

/// Every tunable of the engine. Field names are the keys of `tasker.yaml`, of the JSON
/// given to `open`, and (upper-cased, prefixed `TASKER_`) of the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `sqlite://path` (embedded, zero set-up) or `postgres://...`.
    pub database_url: String,
    /// Directory searched for templates not in the registry.
    pub templates_dir: String,
    /// The environment whose overrides apply (`TASKER_ENV`).
    pub env: String,
    /// SQLite `synchronous` pragma under WAL: `normal` (default: a commit survives a
    /// process crash, the last commits may be lost on power loss) or `full` (every commit
    /// is fsynced) or `off`.
    pub sqlite_synchronous: String,
    /// How long an SQLite statement waits on a lock held by another process.
    pub sqlite_busy_timeout_ms: u64,
    /// Read-only connections for queries that do not change state.
    pub sqlite_read_connections: u32,
    /// PostgreSQL schema holding Tasker's tables (created if missing).
    pub postgres_schema: String,
    /// Connections in this process's PostgreSQL pool (one more is used to listen).
    pub postgres_pool_size: u32,
    /// Statement timeout on PostgreSQL connections; a statement past it fails with
    /// `unavailable` instead of hanging.
    pub postgres_statement_timeout_ms: u64,
    /// Apply pending migrations when a handle opens the database.
    pub migrate_on_open: bool,
    /// How long to wait for a database connection before failing with `unavailable`.
    pub acquire_timeout_ms: u64,
    /// Lease length a claim grants (heartbeats renew it).
    pub lease_ms: u64,
    /// How often each process sweeps expired leases.
    pub sweep_interval_ms: u64,
    /// How often each process fires due cron schedules (`create_schedule`).
    pub schedule_poll_ms: u64,
    /// Most expired leases taken back in one sweep transaction.
    pub sweep_batch: u32,
    /// Fallback re-check interval of a waiting claim, which covers work made ready by
    /// other processes (in-process readiness wakes waiters at once).
    pub claim_poll_ms: u64,
    /// Largest `limit` a claim may ask for.
    pub claim_limit_max: u32,
    /// Largest `wait_ms` a claim or event read may ask for.
    pub wait_ms_max: u64,
    /// Largest request accepted by `call`, in bytes.
    pub max_request_bytes: usize,
    /// Largest context, step result, step config or error detail, in bytes.
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects in any JSON value the engine stores or
    /// validates (a context, a result, an error document, a step config, an input
    /// schema), 1 to 100.
    pub max_json_depth: usize,
    /// Most steps one template may have.
    pub max_steps_per_task: usize,
    /// Most events one `events` read returns.
    pub event_page_max: u32,
    /// Most tasks one `list_tasks` page returns.
    pub list_page_max: u32,
    /// Tasks per `list_tasks` page when the request gives no `limit`.
    pub list_page_default: u32,
    /// Events per `events` read when the request gives no `limit`.
    pub event_page_default: u32,
    /// The window `stats` measures throughput and rates over, unless the request says.
    pub stats_window_ms: u64,
    /// Step timeout when neither the step nor the template defaults set one.
    pub default_timeout_s: u64,
    /// Retry policy when neither the step nor the template defaults set one.
    pub default_retry: RetryPolicy,
    /// How long a worker session rides out an `unavailable` database (claims, lease
    /// renewals and reports are tried again with growing pauses) before its calls
    /// return the error.
    pub worker_patience_ms: u64,
    /// The clock the engine decides with: `system` (default) or `manual`, which starts
    /// at the real time and moves only through `advance_clock` (for tests).
    pub clock: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite://tasker.db".into(),
            templates_dir: "templates".into(),
            env: "development".into(),
            sqlite_synchronous: "normal".into(),
            sqlite_busy_timeout_ms: 5_000,
            sqlite_read_connections: 4,
            postgres_schema: "tasker".into(),
            postgres_pool_size: 10,
            postgres_statement_timeout_ms: 30_000,
            migrate_on_open: true,
            acquire_timeout_ms: 5_000,
            lease_ms: 30_000,
            sweep_interval_ms: 1_000,
            schedule_poll_ms: 1_000,
            sweep_batch: 500,
            claim_poll_ms: 500,
            claim_limit_max: 1_000,
            wait_ms_max: 60_000,
            max_request_bytes: 16 * 1024 * 1024,
            max_payload_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_steps_per_task: 100_000,
            event_page_max: 1_000,
            list_page_max: 1_000,
            list_page_default: 50,
            event_page_default: 100,
            stats_window_ms: 300_000,
            default_timeout_s: 300,
            default_retry: RetryPolicy::default(),
            worker_patience_ms: 60_000,
            clock: "system".into(),
        }
    }
}

impl Config {
    /// Builds the configuration from every source (see the module docs). `overrides` is
    /// the JSON object an application passes to `open`; it may name a `config_file`.
    pub fn load(overrides: &Value) -> Result<Config> {
        Self::load_from(overrides, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an injectable environment (tests use a map).
    pub fn load_from(overrides: &Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut overrides = match overrides {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            _ => return Err(Error::invalid_argument("config must be a JSON object")),
        };
        let explicit_file = match overrides.remove("config_file") {
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(_) => return Err(Error::invalid_argument("config_file must be a string")),
            None => env("TASKER_CONFIG").map(PathBuf::from),
        };
        let file = match explicit_file {
            Some(p) => Some(read_yaml_file(&p)?),
            None if Path::new("tasker.yaml").exists() => {
                Some(read_yaml_file(Path::new("tasker.yaml"))?)
            }
            None => None,
        };
        // The environment is chosen by open(), then TASKER_ENV, then the file's `env`.
        let environment = overrides
            .get("env")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| env("TASKER_ENV"))
            .or_else(|| {
                file.as_ref()
                    .and_then(|f| f.get("env"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| Config::default().env);

        let mut merged = match serde_json::to_value(Config::default()) {
            Ok(Value::Object(m)) => m,
            _ => return Err(Error::internal("default config is not an object")),
        };
        if let Some(mut file) = file {
            let envs = file.remove("environments");
            overlay(&mut merged, file, "tasker.yaml")?;
            if let Some(Value::Object(envs)) = envs {
                if let Some(Value::Object(block)) = envs.get(&environment) {
                    overlay(&mut merged, block.clone(), "tasker.yaml environments")?;
                }
            }
        }
        merged.insert("env".into(), Value::String(environment.clone()));

        let keys: Vec<(String, Value)> =
            merged.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, current) in keys {
            let var = format!("TASKER_{}", key.to_ascii_uppercase());
            if key == "env" {
                continue;
            }
            if let Some(raw) = env(&var) {
                merged.insert(key, parse_env_value(&var, &raw, &current)?);
            }
        }
        overrides.remove("env");
        overlay(&mut merged, overrides, "open")?;

        let config: Config = match serde_json::from_value(Value::Object(merged.clone())) {
            Ok(c) => c,
            Err(e) => return Err(name_bad_setting(&merged, e)),
        };
        config.validate()?;
        Ok(config)
    }

    /// What identifies one database in a process: two handles with the same key share an
    /// engine. For PostgreSQL the schema is part of it.
    pub fn store_key(&self) -> String {
        if self.database_url.starts_with("postgres") {
            format!("{}#{}", self.database_url, self.postgres_schema)
        } else {
            self.database_url.clone()
        }
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.sqlite_synchronous.as_str(), "normal" | "full" | "off") {
            return Err(Error::invalid_argument(
                "sqlite_synchronous must be one of normal, full, off",
            ));
        }
        if !matches!(self.clock.as_str(), "system" | "manual") {
            return Err(Error::invalid_argument(format!(
                "clock: expected one of system, manual, got {:?}",
                self.clock
            ))
            .with_details(serde_json::json!({ "field": "clock" })));
        }
        if self.lease_ms == 0 || self.sweep_interval_ms == 0 || self.claim_poll_ms == 0 {
            return Err(Error::invalid_argument(
                "lease_ms, sweep_interval_ms and claim_poll_ms must be positive",
            ));
        }
        if self.claim_limit_max == 0 || self.event_page_max == 0 || self.list_page_max == 0 {
            return Err(Error::invalid_argument(
                "claim_limit_max, event_page_max and list_page_max must be positive",
            ));
        }
        if self.list_page_default == 0
            || self.list_page_default > self.list_page_max
            || self.event_page_default == 0
            || self.event_page_default > self.event_page_max
        {
            return Err(Error::invalid_argument(
                "list_page_default and event_page_default must be between 1 and their *_max",
            ));
        }
        let day_ms = 24 * 3600 * 1000;
        let max_ms = 30 * day_ms;
        let ranges: [(&str, u64, u64, u64); 14] = [
            ("lease_ms", 1, max_ms, self.lease_ms),
            ("sweep_interval_ms", 1, day_ms, self.sweep_interval_ms),
            ("schedule_poll_ms", 1, day_ms, self.schedule_poll_ms),
            ("claim_poll_ms", 1, day_ms, self.claim_poll_ms),
            ("wait_ms_max", 0, max_ms, self.wait_ms_max),
            (
                "sqlite_busy_timeout_ms",
                0,
                day_ms,
                self.sqlite_busy_timeout_ms,
            ),
            (
                "postgres_statement_timeout_ms",
                0,
                day_ms,
                self.postgres_statement_timeout_ms,
            ),
            ("acquire_timeout_ms", 0, day_ms, self.acquire_timeout_ms),
            (
                "stats_window_ms",
                1,
                crate::api::validate::MAX_ID as u64,
                self.stats_window_ms,
            ),
            (
                "default_timeout_s",
                1,
                crate::model::template::MAX_TIMEOUT_S,
                self.default_timeout_s,
            ),
            (
                "max_json_depth",
                1,
                crate::api::validate::MAX_JSON_DEPTH_LIMIT as u64,
                self.max_json_depth as u64,
            ),
            (
                "claim_limit_max",
                1,
                100_000,
                u64::from(self.claim_limit_max),
            ),
            ("event_page_max", 1, 100_000, u64::from(self.event_page_max)),
            ("list_page_max", 1, 100_000, u64::from(self.list_page_max)),
        ];
        for (key, min, max, got) in ranges {
            if got < min || got > max {
                return Err(out_of_range(key, min, max, got));
            }
        }
        self.default_retry
            .validate()
            .map_err(|m| Error::invalid_argument(format!("default_retry: {m}")))?;
        Ok(())
    }
}

/// Names the setting a failed configuration read tripped on: each value is tried alone
/// over the defaults, and the first that fails is reported with its type and value.
fn name_bad_setting(merged: &Map<String, Value>, whole: serde_json::Error) -> Error {
    let defaults = match serde_json::to_value(Config::default()) {
        Ok(Value::Object(m)) => m,
        _ => return Error::invalid_argument(format!("invalid configuration: {whole}")),
    };
    for (key, value) in merged {
        let mut one = defaults.clone();
        one.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<Config>(Value::Object(one)) {
            let expected = match defaults.get(key) {
                Some(Value::Number(_)) => "a non-negative integer".to_owned(),
                Some(Value::Bool(_)) => "true or false".to_owned(),
                Some(Value::String(_)) => "a string".to_owned(),
                _ => format!("a valid value ({e})"),
            };
            let mut given = value.to_string();
            if given.len() > 40 {
                let mut end = 40;
                while !given.is_char_boundary(end) {
                    end -= 1;
                }
                given = format!("{}...", &given[..end]);
            }
            return Error::invalid_argument(format!("{key}: expected {expected}, got {given}"))
                .with_details(serde_json::json!({ "field": key }));
        }
    }
    Error::invalid_argument(format!("invalid configuration: {whole}"))
}

/// A setting out of its range.
fn out_of_range(key: &str, min: u64, max: u64, got: u64) -> Error {
    Error::invalid_argument(format!(
        "{key}: expected an integer between {min} and {max}, got {got}"
    ))
    .with_details(serde_json::json!({ "field": key }))
}

fn read_yaml_file(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid_argument(format!("cannot read config file {}: {e}", path.display()))
    })?;
    let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        Error::invalid_argument(format!(
            "config file {} is not valid YAML: {e}",
            path.display()
        ))
    })?;
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(Error::invalid_argument(format!(
            "config file {} must hold a mapping",
            path.display()
        ))),
    }
}

/// Lays `layer` over `base`. Unknown keys are rejected here so a typo in any source is
/// reported with the source's name. Object settings (`default_retry`) merge key by key,
/// so a source may set only the fields it changes.
fn overlay(base: &mut Map<String, Value>, layer: Map<String, Value>, source: &str) -> Result<()> {
    for (k, v) in layer {
        let Some(current) = base.get_mut(&k) else {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("unknown configuration key `{k}` in {source}"),
            ));
        };
        match (current, v) {
            (Value::Object(cur), Value::Object(new)) => {
                for (field, value) in new {
                    cur.insert(field, value);
                }
            }
            (current, v) => *current = v,
        }
    }
    Ok(())
}

/// Environment values are typed by the setting's default: numbers and booleans are
/// parsed, objects are read as JSON, everything else is a string.
fn parse_env_value(var: &str, raw: &str, current: &Value) -> Result<Value> {
    let bad = || Error::invalid_argument(format!("{var}={raw:?} is not a valid value"));
    match current {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Value::Bool(true)),
            "0" | "false" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        Value::Number(_) => raw
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| bad()),
        Value::Object(_) => serde_json::from_str(raw).map_err(|_| bad()),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn precedence_is_defaults_file_env_block_variables_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tasker.yaml");
        std::fs::write(
            &file,
            "lease_ms: 1000\nsweep_batch: 7\nenvironments:\n  test:\n    lease_ms: 2000\n    claim_poll_ms: 9\n",
        )
        .unwrap();
        let env = env_of(&[
            ("TASKER_CONFIG", file.to_str().unwrap()),
            ("TASKER_ENV", "test"),
            ("TASKER_CLAIM_POLL_MS", "11"),
            ("TASKER_MIGRATE_ON_OPEN", "false"),
        ]);
        let c = Config::load_from(
            &json!({"sweep_batch": 3, "default_retry": {"max_attempts": 7}}),
            &env,
        )
        .unwrap();
        assert_eq!(c.default_retry.max_attempts, 7);
        assert_eq!(
            c.default_retry.base_ms,
            Config::default().default_retry.base_ms
        );
        assert_eq!(c.env, "test");
        assert_eq!(c.lease_ms, 2000);
        assert_eq!(c.claim_poll_ms, 11);
        assert_eq!(c.sweep_batch, 3);
        assert!(!c.migrate_on_open);
        assert_eq!(c.wait_ms_max, Config::default().wait_ms_max);
    }

    #[test]
    fn the_files_env_key_picks_its_environment_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tasker.yaml");
        std::fs::write(
            &file,
            "env: staging\nenvironments:\n  staging:\n    lease_ms: 2000\n",
        )
        .unwrap();
        let env = env_of(&[("TASKER_CONFIG", file.to_str().unwrap())]);
        let c = Config::load_from(&Value::Null, &env).unwrap();
        assert_eq!((c.env.as_str(), c.lease_ms), ("staging", 2000));
        let env = env_of(&[
            ("TASKER_CONFIG", file.to_str().unwrap()),
            ("TASKER_ENV", "prod"),
        ]);
        let c = Config::load_from(&Value::Null, &env).unwrap();
        assert_eq!((c.env.as_str(), c.lease_ms), ("prod", 30_000));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_by_name() {
        let none = env_of(&[]);
        let e = Config::load_from(&json!({"lease_msec": 1}), &none).unwrap_err();
        assert!(e.message.contains("lease_msec"), "{e}");
        let e = Config::load_from(&json!({"sqlite_synchronous": "extra"}), &none).unwrap_err();
        assert!(e.message.contains("sqlite_synchronous"), "{e}");
        let env = env_of(&[("TASKER_LEASE_MS", "soon")]);
        let e = Config::load_from(&Value::Null, &env).unwrap_err();
        assert!(e.message.contains("TASKER_LEASE_MS"), "{e}");
    }
}
