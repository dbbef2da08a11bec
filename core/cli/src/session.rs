//! Opening the handle the way each command needs it, and calling operations.

use std::path::PathBuf;

use serde_json::{json, Map, Value};
use tasker_core::api::Tasker;
use tasker_core::config::Config;
use tasker_core::Error;

use crate::Cli;

/// Why a command failed; decides the message and the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad command-line input (exit 2).
    Usage(String),
    /// The engine refused the operation (exit 1).
    Api(Error),
    /// Writing the output failed (a closed pipe is not an error).
    Io(std::io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Api(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

pub type Outcome<T = ()> = Result<T, Failure>;

/// How a command uses the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// The database must exist already (a mistyped path is reported, not created).
    Existing,
    /// Create the database if needed; migrations are applied by the command itself.
    Create,
    /// No stored data is needed (template validation): use a private in-memory
    /// database unless `--database-url` names one.
    Scratch,
}

pub struct Session {
    pub tasker: Tasker,
    pub json: bool,
}

impl Session {
    pub fn open(cli: &Cli, how: Open) -> Outcome<Session> {
        let mut overrides = Map::new();
        if let Some(path) = &cli.config {
            overrides.insert("config_file".into(), json!(path));
        }
        match (&cli.database_url, how) {
            (Some(url), _) => {
                overrides.insert("database_url".into(), json!(url));
            }
            (None, Open::Scratch) => {
                overrides.insert("database_url".into(), json!("sqlite::memory:"));
            }
            _ => {}
        }
        if how != Open::Existing {
            overrides.insert("migrate_on_open".into(), json!(false));
        }
        let config = Config::load(&Value::Object(overrides))?;
        if how == Open::Existing {
            if let Some(path) = sqlite_file(&config.database_url) {
                if !path.exists() {
                    return Err(Failure::Api(Error::not_found(format!(
                        "database file `{}` does not exist (database_url {}); create it with `tasker migrate`",
                        path.display(),
                        config.database_url
                    ))));
                }
            }
        }
        let tasker = Tasker::open_config(config)?;
        Ok(Session {
            tasker,
            json: cli.json,
        })
    }

    /// Runs `op` and returns the parsed response; with `--json` the raw response is
    /// printed too.
    pub fn call(&self, op: &str, request: &Value) -> Outcome<Value> {
        let raw = self.call_quiet(op, request)?;
        if self.json {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{raw}")?;
            out.flush()?;
        }
        parse(&raw)
    }

    /// Runs `op` and returns the raw response without printing it.
    pub fn call_quiet(&self, op: &str, request: &Value) -> Outcome<String> {
        Ok(self.tasker.call(op, &request.to_string())?)
    }
}

pub fn parse(raw: &str) -> Outcome<Value> {
    serde_json::from_str(raw)
        .map_err(|e| Failure::Api(Error::internal(format!("unreadable response: {e}"))))
}

/// The file behind an SQLite URL (`sqlite://path`, `sqlite:path`); `None` for an
/// in-memory database or another kind of URL.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_file("sqlite://a/b.db"),
            Some(PathBuf::from("a/b.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:///t/x.db?mode=rwc"),
            Some(PathBuf::from("/t/x.db"))
        );
        assert_eq!(sqlite_file("sqlite:x.db"), Some(PathBuf::from("x.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }
}
