//! Runs every example of `docs/api.md` against a fresh SQLite database, in document
//! order, and checks each response against the documented one.
//!
//! The format (also described in the HTML comment at the top of `docs/api.md`):
//! - a fenced block with the info string `json request op=NAME` holds the raw request
//!   text handed to `call(NAME, text)`;
//! - the next fenced block is `json response` (the call must succeed and its response
//!   must contain every documented key with an equal value, recursively; arrays must
//!   have the same length and match element by element) or `json error` (the call must
//!   fail with the documented `code`, and any documented `message`/`details` must match
//!   the same way);
//! - the string `"<any>"` in a documented response matches any value;
//! - the string `"<token:STEP_ID>"` in a request is replaced by the last `claim_token`
//!   a `claim` response handed out for that step;
//! - the string `"<task:last>"` in a request is replaced by the `task_id` of the last
//!   `create_task` response (task ids differ between the stores after a batch).
//!
//! Set `API_DOCS_PRINT=1` to print every actual response (useful when writing examples).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tasker_core::api::ops::OPERATIONS;
use tasker_core::api::Tasker;
use tasker_core::model::state::{StepState, TaskState};
use tasker_core::ErrorCode;

/// The engine settings the examples run with (documented at the top of `docs/api.md`).
fn example_config(dir: &Path) -> Value {
    json!({
        "database_url": format!("sqlite://{}/api-docs.db", dir.display()),
        "templates_dir": dir.join("templates").display().to_string(),
        "env": "test",
        "sweep_interval_ms": 3_600_000,
        "max_payload_bytes": 256,
        // Settings whose defaults show in the examples, pinned against TASKER_* variables
        // and a tasker.yaml in the working directory.
        "lease_ms": 30_000,
        "claim_limit_max": 1_000,
        "list_page_max": 1_000,
        "event_page_max": 1_000,
        "default_timeout_s": 300,
        "default_retry": {"max_attempts": 3, "backoff": "exponential", "base_ms": 1_000, "max_ms": 60_000, "jitter": 0.1},
    })
}

#[derive(Debug)]
enum Expect {
    Response(Value),
    Error(Value),
}

#[derive(Debug)]
struct Example {
    line: usize,
    op: String,
    request: String,
    expect: Expect,
}

struct Block {
    line: usize,
    info: String,
    body: String,
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md")
}

/// Blanks out HTML comments (keeping their line breaks, so line numbers stay right).
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("-->")
            .map_or(rest.len(), |e| start + e + 3);
        out.extend(rest[start..end].chars().filter(|&c| c == '\n'));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every fenced block of the document (outside HTML comments) with its 1-based
/// opening line.
fn fenced_blocks(text: &str) -> Vec<Block> {
    let text = without_comments(text);
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Block {
                        line: i + 1,
                        info: info.trim().to_owned(),
                        body: String::new(),
                    });
                }
            }
            Some(b) => {
                if trimmed.starts_with("```") {
                    blocks.extend(open.take());
                } else {
                    b.body.push_str(line);
                    b.body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "docs/api.md ends inside a fenced block");
    blocks
}

fn parse_examples(text: &str, problems: &mut Vec<String>) -> Vec<Example> {
    let blocks = fenced_blocks(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let b = &blocks[i];
        let mut words = b.info.split_whitespace();
        let is_request = words.next() == Some("json") && words.next() == Some("request");
        if !is_request {
            if b.info.starts_with("json response") || b.info.starts_with("json error") {
                problems.push(format!(
                    "line {}: a `{}` block without a request block before it",
                    b.line, b.info
                ));
            }
            i += 1;
            continue;
        }
        let op = words.find_map(|w| w.strip_prefix("op=")).map(str::to_owned);
        let Some(op) = op else {
            problems.push(format!("line {}: request block without op=NAME", b.line));
            i += 1;
            continue;
        };
        let Some(next) = blocks.get(i + 1) else {
            problems.push(format!("line {}: request block without a response", b.line));
            break;
        };
        let parsed: Result<Value, _> = serde_json::from_str(&next.body);
        let expected = match parsed {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "line {}: the `{}` block is not JSON: {e}",
                    next.line, next.info
                ));
                i += 2;
                continue;
            }
        };
        let expect = match next.info.as_str() {
            "json response" => Expect::Response(expected),
            "json error" => Expect::Error(expected),
            other => {
                problems.push(format!(
                    "line {}: expected a `json response` or `json error` block after the request, found `{other}`",
                    next.line
                ));
                i += 1;
                continue;
            }
        };
        out.push(Example {
            line: b.line,
            op,
            request: b.body.trim_end().to_owned(),
            expect,
        });
        i += 2;
    }
    out
}

/// Checks that `actual` holds everything `expected` documents. Returns the mismatches
/// as `path: expected X, got Y`.
fn matches(expected: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    if expected == &json!("<any>") {
        return;
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => matches(ev, av, &p, out),
                    None => out.push(format!("{p}: missing (expected {ev})")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!(
                    "{path}: expected {} elements, got {}: {actual}",
                    e.len(),
                    a.len()
                ));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, &format!("{path}[{i}]"), out);
            }
        }
        _ => {
            if expected != actual {
                out.push(format!("{path}: expected {expected}, got {actual}"));
            }
        }
    }
}

/// Replaces every `"<token:STEP_ID>"` with the last claim token seen for that step.
fn substitute(request: &str, tokens: &HashMap<i64, String>) -> Result<String, String> {
    let mut out = String::with_capacity(request.len());
    let mut rest = request;
    while let Some(start) = rest.find("\"<token:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "\"<token:".len()..];
        let Some(end) = after.find(">\"") else {
            return Err("unterminated <token:...> placeholder".into());
        };
        let id: i64 = after[..end]
            .trim()
            .parse()
            .map_err(|_| format!("bad step id in <token:{}>", &after[..end]))?;
        let token = tokens
            .get(&id)
            .ok_or_else(|| format!("no claim_token seen yet for step {id}"))?;
        out.push_str(&json!(token).to_string());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every `"<task:last>"` with the id of the task the last `create_task` made.
fn substitute_task(request: &str, last_task: Option<i64>) -> Result<String, String> {
    const PLACEHOLDER: &str = "\"<task:last>\"";
    if !request.contains(PLACEHOLDER) {
        return Ok(request.to_owned());
    }
    let id = last_task.ok_or("<task:last> before any create_task example")?;
    Ok(request.replace(PLACEHOLDER, &id.to_string()))
}

/// Remembers the claim tokens a `claim` response hands out.
fn remember_tokens(response: &Value, tokens: &mut HashMap<i64, String>) {
    if let Some(steps) = response["steps"].as_array() {
        for s in steps {
            if let (Some(id), Some(token)) = (s["step_id"].as_i64(), s["claim_token"].as_str()) {
                tokens.insert(id, token.to_owned());
            }
        }
    }
}

/// The text of the section that starts with heading `title` (up to the next heading of
/// the same or a higher level).
fn section<'a>(text: &'a str, title: &str) -> Option<&'a str> {
    let start = text.find(title)?;
    let level = title.chars().take_while(|&c| c == '#').count();
    let body = &text[start + title.len()..];
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if offset > 0 && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            return Some(&body[..offset]);
        }
        offset += line.len();
    }
    Some(body)
}

fn check_coverage(text: &str, examples: &[Example], problems: &mut Vec<String>) {
    let with_examples: BTreeSet<&str> = examples.iter().map(|e| e.op.as_str()).collect();
    for op in OPERATIONS {
        if !with_examples.contains(op) {
            problems.push(format!("operation `{op}` has no example"));
        }
        if !text.contains(&format!("### `{op}`")) {
            problems.push(format!("operation `{op}` has no `### `{op}`` section"));
        }
    }
    for e in examples {
        let unknown_on_purpose =
            matches!(&e.expect, Expect::Error(v) if v["code"] == "unknown_operation");
        if !OPERATIONS.contains(&e.op.as_str()) && !unknown_on_purpose {
            problems.push(format!(
                "line {}: example of `{}`, which is not an operation",
                e.line, e.op
            ));
        }
    }
    // The operation sections appear in OPERATIONS order.
    let mut last = 0;
    for op in OPERATIONS {
        if let Some(at) = text.find(&format!("### `{op}`")) {
            if at < last {
                problems.push(format!(
                    "section `{op}` is out of order (OPERATIONS order is the documentation order)"
                ));
            }
            last = at;
        }
    }
    match section(text, "## Errors") {
        Some(errors) => {
            for code in ErrorCode::ALL {
                if !errors.contains(&format!("| `{}` |", code.as_str())) {
                    problems.push(format!(
                        "error code `{}` is not in the table of the Errors section",
                        code.as_str()
                    ));
                }
            }
        }
        None => problems.push("no `## Errors` section".into()),
    }
    match section(text, "## Events") {
        Some(events) => {
            for name in tasker_core::model::events::ALL {
                if !events.contains(&format!("| `{name}` |")) {
                    problems.push(format!(
                        "event `{name}` is not in the table of the Events section"
                    ));
                }
            }
        }
        None => problems.push("no `## Events` section".into()),
    }
    match section(text, "## State machines") {
        Some(states) => {
            let names = StepState::ALL
                .iter()
                .map(|s| s.as_str())
                .chain(TaskState::ALL.iter().map(|s| s.as_str()));
            for s in names {
                if !states.contains(&format!("`{s}`")) {
                    problems.push(format!("state `{s}` is not in the State machines section"));
                }
            }
        }
        None => problems.push("no `## State machines` section".into()),
    }
}

fn run_examples(tasker: &Tasker, examples: &[Example], problems: &mut Vec<String>) {
    let print = std::env::var_os("API_DOCS_PRINT").is_some();
    let mut tokens: HashMap<i64, String> = HashMap::new();
    let mut last_task: Option<i64> = None;
    for e in examples {
        let request =
            match substitute(&e.request, &tokens).and_then(|r| substitute_task(&r, last_task)) {
                Ok(r) => r,
                Err(m) => {
                    problems.push(format!("line {} ({}): {m}", e.line, e.op));
                    continue;
                }
            };
        let outcome = tasker.call(&e.op, &request);
        if print {
            match &outcome {
                Ok(r) => println!("line {} {} -> {r}", e.line, e.op),
                Err(err) => println!("line {} {} -> ERROR {}", e.line, e.op, err.to_json()),
            }
        }
        let mut diffs = Vec::new();
        let actual_text = match (&e.expect, outcome) {
            (Expect::Response(expected), Ok(text)) => {
                match serde_json::from_str::<Value>(&text) {
                    Ok(actual) => {
                        remember_tokens(&actual, &mut tokens);
                        if e.op == "create_task" {
                            last_task = actual["task_id"].as_i64().or(last_task);
                        }
                        matches(expected, &actual, "$", &mut diffs);
                    }
                    Err(err) => diffs.push(format!("the response is not JSON: {err}")),
                }
                text
            }
            (Expect::Response(_), Err(err)) => {
                diffs.push("expected a response, got an error".into());
                err.to_json()
            }
            (Expect::Error(expected), Ok(text)) => {
                diffs.push(format!(
                    "expected error {}, got a response",
                    expected["code"]
                ));
                text
            }
            (Expect::Error(expected), Err(err)) => {
                let actual = serde_json::to_value(&err).unwrap_or(Value::Null);
                if expected.get("code").is_none() {
                    diffs.push("the documented error has no `code`".into());
                }
                matches(expected, &actual, "$", &mut diffs);
                err.to_json()
            }
        };
        if !diffs.is_empty() {
            problems.push(format!(
                "line {} ({}):\n    {}\n    actual: {actual_text}",
                e.line,
                e.op,
                diffs.join("\n    ")
            ));
        }
    }
}

#[test]
fn every_example_in_the_api_reference_runs_as_documented() {
    let text = std::fs::read_to_string(doc_path()).expect("docs/api.md is readable");
    let mut problems = Vec::new();
    let examples = parse_examples(&text, &mut problems);
    check_coverage(&text, &examples, &mut problems);

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    // The examples hold on every store: SQLite by default, PostgreSQL with
    // TASKER_TEST_STORE=postgres.
    let mut config = example_config(dir.path());
    let (store, schema) = common::store_config(dir.path());
    for (k, v) in store.as_object().into_iter().flatten() {
        config[k] = v.clone();
    }
    let tasker = Tasker::open(&config.to_string()).expect("open");
    run_examples(&tasker, &examples, &mut problems);
    tasker.close();
    if let Some(schema) = schema {
        common::drop_schema(&schema);
    }

    assert!(
        problems.is_empty(),
        "docs/api.md: {} problem(s) in {} examples:\n{}",
        problems.len(),
        examples.len(),
        problems.join("\n")
    );
}

#[test]
fn the_matcher_is_strict_where_it_should_be() {
    let mut d = Vec::new();
    matches(
        &json!({"a": [1, "<any>"]}),
        &json!({"a": [1, {"x": 2}], "b": 3}),
        "$",
        &mut d,
    );
    assert!(d.is_empty(), "{d:?}");
    matches(&json!({"a": [1]}), &json!({"a": [1, 2]}), "$", &mut d);
    matches(&json!({"a": {"b": 1}}), &json!({"a": {}}), "$", &mut d);
    matches(&json!({"a": 1}), &json!({"a": 1.5}), "$", &mut d);
    assert_eq!(d.len(), 3, "{d:?}");
    let tokens = HashMap::from([(7, "123".to_owned())]);
    assert_eq!(
        substitute(r#"{"claim_token": "<token:7>"}"#, &tokens).unwrap(),
        r#"{"claim_token": "123"}"#
    );
    assert!(substitute(r#"{"claim_token": "<token:8>"}"#, &tokens).is_err());
}
