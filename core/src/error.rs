//! The one error type of the core boundary. Every failure that reaches a user carries a
//! stable [`ErrorCode`] (a closed set, documented in `docs/api.md`), a human message and
//! optional structured details.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The closed set of error codes every language sees. Never rename one: bindings and
/// users match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not syntactically valid JSON.
    InvalidJson,
    /// A string crossing the C boundary is not valid UTF-8.
    InvalidUtf8,
    /// The request is JSON but a field is missing, mistyped or out of range.
    InvalidArgument,
    /// The operation name is not one the engine knows.
    UnknownOperation,
    /// A template was rejected (duplicate step, unknown dependency, cycle, ...).
    InvalidTemplate,
    /// A task context does not satisfy the template's `input_schema`.
    SchemaViolation,
    /// The task, step, template or handle does not exist.
    NotFound,
    /// The request conflicts with stored data (for example a different template
    /// registered under the same namespace, name and version).
    Conflict,
    /// The claim token is stale: the step is no longer held by this claim.
    LeaseLost,
    /// The operation is not allowed in the current state of the task or step.
    InvalidState,
    /// A payload exceeds the configured size limit.
    TooLarge,
    /// The database could not be reached in time (connection or pool timeout).
    Unavailable,
    /// The database reported an error.
    Database,
    /// The handle was closed.
    Closed,
    /// A bug in Tasker: please report it.
    Internal,
}

impl ErrorCode {
    /// The stable string form, as it appears in JSON errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnknownOperation => "unknown_operation",
            ErrorCode::InvalidTemplate => "invalid_template",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Database => "database",
            ErrorCode::Closed => "closed",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidUtf8,
        ErrorCode::InvalidArgument,
        ErrorCode::UnknownOperation,
        ErrorCode::InvalidTemplate,
        ErrorCode::SchemaViolation,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::LeaseLost,
        ErrorCode::InvalidState,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Database,
        ErrorCode::Closed,
        ErrorCode::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code, a message for people and optional details for programs.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn invalid_template(problem: &str, message: impl Into<String>, details: Value) -> Self {
        let mut details = details;
        if let Value::Object(map) = &mut details {
            map.insert("problem".into(), Value::String(problem.into()));
        }
        Self::new(ErrorCode::InvalidTemplate, message).with_details(details)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The JSON form `{code, message, details}` handed to every language.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"code":"{}","message":"error could not be serialized"}}"#,
                self.code
            )
        })
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Sq;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    Sq::DatabaseBusy | Sq::DatabaseLocked | Sq::CannotOpen
                ) =>
            {
                Error::new(ErrorCode::Unavailable, format!("database unavailable: {e}"))
            }
            rusqlite::Error::QueryReturnedNoRows => Error::not_found(e.to_string()),
            _ => Error::new(ErrorCode::Database, format!("database error: {e}")),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => {
                Error::new(ErrorCode::Unavailable, format!("database unavailable: {e}"))
            }
            sqlx::Error::Database(db) => {
                let state = db.code().map(|c| c.into_owned());
                // 57014: statement timeout; 57P01-57P03: the server is shutting down or
                // starting; 08xxx: the connection failed.
                let (code, message) = match state.as_deref() {
                    // Name the setting: the server's own text ("canceling statement due
                    // to statement timeout") does not say which knob set the limit.
                    Some("57014") => (
                        ErrorCode::Unavailable,
                        format!("statement cancelled (postgres_statement_timeout_ms ran out, or it was cancelled on the server); nothing was changed: {e}"),
                    ),
                    Some(s) if s.starts_with("57P") || s.starts_with("08") => {
                        (ErrorCode::Unavailable, format!("database unavailable: {e}"))
                    }
                    _ => (ErrorCode::Database, format!("database error: {e}")),
                };
                Error::new(code, message).with_details(serde_json::json!({ "sqlstate": state }))
            }
            _ => Error::new(ErrorCode::Database, format!("database error: {e}")),
        }
    }
}

impl Error {
    /// The SQLSTATE of a PostgreSQL error, when this came from one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.details.as_ref()?.get("sqlstate")?.as_str()
    }
}
