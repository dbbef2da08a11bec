//! `tasker task import FILE|-`: tasks from JSON lines, created in batches through
//! `create_tasks`. Each line is one `create_task` request (`{"namespace", "name",
//! "version"?, "context"?, "idempotency_key"?, "priority"?}`); blank lines are skipped.
//!
//! Every line is read and parsed before anything is sent, so a line that is not a JSON
//! object stops the import with nothing stored. Each batch (`--batch` lines, fewer when
//! the request would pass `max_request_bytes`) is one transaction: a line the engine
//! refuses (an unknown template, a context its schema refuses) stores nothing of its
//! batch, and the message names the line and says how many lines before it were
//! imported. Idempotency keys make a repeated import return the tasks made before.

use std::io::Read;

use serde_json::{json, Value};
use tasker_core::{Error, ErrorCode};

use crate::session::{Failure, Outcome, Session};

/// One task line: its 1-based line number and request.
struct Line {
    number: usize,
    request: Value,
}

/// Reads `path` (`-`: standard input) into task lines.
fn read_lines(path: &str) -> Outcome<Vec<Line>> {
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            Failure::Api(
                Error::not_found(format!("cannot read `{path}`: {e}"))
                    .with_details(json!({ "path": path })),
            )
        })?
    };
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let request: Value = serde_json::from_str(raw).map_err(|e| {
            Failure::Api(
                Error::new(
                    ErrorCode::InvalidJson,
                    format!("{path}:{number}: not valid JSON: {e}; nothing was imported"),
                )
                .with_details(json!({ "line": number })),
            )
        })?;
        if !request.is_object() {
            return Err(Failure::Api(
                Error::invalid_argument(format!(
                    "{path}:{number}: expected a JSON object (a create_task request); nothing was imported"
                ))
                .with_details(json!({ "line": number })),
            ));
        }
        lines.push(Line { number, request });
    }
    Ok(lines)
}

/// What an import did: tasks created, and tasks that existed already (same key).
#[derive(Default)]
pub struct Imported {
    pub created: u64,
    pub existing: u64,
}

/// Imports every line of `path` in batches of at most `batch` lines.
pub fn import(s: &Session, path: &str, batch: usize) -> Outcome<Imported> {
    if batch == 0 {
        return Err(Failure::Usage("--batch must be at least 1".into()));
    }
    let lines = read_lines(path)?;
    // Room for the `{"tasks":[...]}` around the lines and their commas.
    let max_bytes = s.tasker.config().max_request_bytes.saturating_sub(64);
    let mut done = Imported::default();
    let mut start = 0;
    while start < lines.len() {
        let mut end = start;
        let mut bytes = 0;
        let mut tasks = Vec::new();
        while end < lines.len() && tasks.len() < batch {
            let size = lines[end].request.to_string().len() + 1;
            // A line too large on its own still goes alone: the engine names it.
            if !tasks.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            tasks.push(lines[end].request.clone());
            end += 1;
        }
        let r = s
            .call("create_tasks", &json!({ "tasks": tasks }))
            .map_err(|f| at_line(f, path, &lines[start..end], lines[start].number))?;
        for t in r["tasks"].as_array().into_iter().flatten() {
            if t["created"].as_bool() == Some(true) {
                done.created += 1;
            } else {
                done.existing += 1;
            }
        }
        start = end;
    }
    Ok(done)
}

/// Names the input line of a refused batch item (`tasks[i]` in the engine's message).
fn at_line(f: Failure, path: &str, batch: &[Line], first_line: usize) -> Failure {
    let Failure::Api(mut e) = f else {
        return f;
    };
    let index = e
        .details
        .as_ref()
        .and_then(|d| d.get("index").and_then(Value::as_u64))
        .or_else(|| index_in_message(&e.message));
    let before = if first_line > 1 {
        format!("lines before {first_line} were imported; ")
    } else {
        String::new()
    };
    match index.and_then(|i| batch.get(i as usize).map(|l| (i, l.number))) {
        Some((i, number)) => {
            let prefix = format!("tasks[{i}]");
            let rest = e
                .message
                .strip_prefix(&prefix)
                .map(|r| r.trim_start_matches(['.', ':', ' ']))
                .unwrap_or(&e.message)
                .to_owned();
            e.message = format!(
                "{path}:{number}: {rest} ({before}nothing of lines {first_line}-{} is stored)",
                batch.last().map_or(number, |l| l.number)
            );
            let mut details = match e.details.take() {
                Some(Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            details.insert("line".into(), json!(number));
            e.details = Some(Value::Object(details));
        }
        None => {
            e.message = format!(
                "{path}: {} ({before}nothing of lines {first_line}-{} is stored)",
                e.message,
                batch.last().map_or(first_line, |l| l.number)
            );
        }
    }
    Failure::Api(e)
}

/// The `i` of a message that starts with `tasks[i]` (the request validator's field path).
fn index_in_message(message: &str) -> Option<u64> {
    let rest = message.strip_prefix("tasks[")?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}
