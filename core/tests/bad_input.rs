//! Hostile input, as a new user would send it: a seeded property-based suite over every
//! operation's request, and one regression test per bug found that way (issue 13).
//!
//! The property suite builds each request from a valid one and breaks it: fields set to
//! hostile JSON text (NUL characters, lone surrogates, huge and negative integers, deep
//! nesting, wrong types), fields dropped, unknown fields added, whole requests that are
//! not objects. Every answer must be a response or a documented code other than
//! `database` and `internal`; a rejected call must leave the database unchanged; and with
//! `TASKER_TEST_STORE=postgres` every request also runs on an SQLite database in the same
//! state, and both stores must give the same validation answer.
//!
//! `TASKER_BAD_INPUT_CASES` (default 1500) and `TASKER_BAD_INPUT_SECONDS` (default 40)
//! bound the run; `TASKER_BAD_INPUT_SEED` (a number) changes the fixed seed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use tasker_core::api::ops::OPERATIONS;
use tasker_core::api::Tasker;
use tasker_core::ErrorCode;

/// Codes a caller may see for a request it built itself.
const DOCUMENTED: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidArgument,
    ErrorCode::UnknownOperation,
    ErrorCode::InvalidTemplate,
    ErrorCode::SchemaViolation,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::LeaseLost,
    ErrorCode::InvalidState,
    ErrorCode::TooLarge,
];

/// Codes that depend only on the request (and templates), never on timing: both stores
/// must agree on them exactly.
const VALIDATION: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidArgument,
    ErrorCode::UnknownOperation,
    ErrorCode::InvalidTemplate,
    ErrorCode::SchemaViolation,
    ErrorCode::TooLarge,
];

fn settings() -> Value {
    // Waits are capped at 0 so a valid `claim`/`events` with a huge `wait_ms` returns at
    // once; the background sweep stays out of the way.
    json!({ "wait_ms_max": 0, "sweep_interval_ms": 86_400_000, "max_payload_bytes": 65536,
            "max_request_bytes": 1_048_576 })
}

/// A template whose `input_schema` is recursive (any nesting is validated all the way
/// down) and a two-step one for claims.
fn seed(db: &Db) -> String {
    db.register(json!({
        "namespace": "t", "name": "p", "version": "1",
        "input_schema": {
            "$defs": {"n": {"anyOf": [
                {"type": ["string", "number", "boolean", "null"]},
                {"type": "array", "items": {"$ref": "#/$defs/n"}},
                {"type": "object", "additionalProperties": {"$ref": "#/$defs/n"}}
            ]}},
            "$ref": "#/$defs/n"
        },
        "steps": [{"name": "a", "handler": "h"}, {"name": "b", "handler": "h2", "depends_on": ["a"]}]
    }));
    for _ in 0..3 {
        db.call(
            "create_task",
            json!({"namespace": "t", "name": "p", "context": {"k": 1}}),
        );
    }
    let steps = db.claim(&["h"], 1, 600_000);
    steps[0]["claim_token"].as_str().unwrap().to_owned()
}

/// What the database holds, for "a rejection changed nothing".
fn snapshot(t: &Tasker) -> Value {
    let call = |op: &str, req: Value| -> Value {
        serde_json::from_str(&t.call(op, &req.to_string()).unwrap()).unwrap()
    };
    let tasks = call("list_tasks", json!({ "limit": 1000 }));
    let full: Vec<Value> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut t = call("get_task", json!({ "task_id": s["id"] }));
            // Worker sessions renew their leases in the background: not a change a
            // request made.
            for step in t["task"]["steps"].as_array_mut().unwrap() {
                step.as_object_mut().unwrap().remove("lease_expires_at");
            }
            t
        })
        .collect();
    let templates: Vec<Value> = ["p", "q"]
        .iter()
        .map(|n| {
            t.call(
                "get_template",
                &json!({"namespace": "t", "name": n}).to_string(),
            )
            .map(|s| serde_json::from_str::<Value>(&s).unwrap())
            .unwrap_or(Value::Null)
        })
        .collect();
    json!({ "tasks": full, "events": call("stats", json!({}))["last_event_id"], "templates": templates })
}

/// Hostile JSON texts (not values: a lone surrogate cannot be a `serde_json::Value`).
fn hostile() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "2",
        "1.5",
        "-0",
        "1e3",
        "1e300",
        "2147483648",
        "4294967296",
        "9007199254740991",
        "9007199254740992",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "10000000000000000",
        "18446744073709551615",
        "100000000000000000000",
        "\"\"",
        "\"one\"",
        "\"t\"",
        "\"p\"",
        "\"h\"",
        "\"1\"",
        "\"a\\u0000b\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"x\\udc00y\"",
        "\"\\ud83d\\ude00\"",
        "\"complete\"",
        "\"step.ready\"",
        "[]",
        "[1]",
        "[\"h\"]",
        "[\"h\\u0000\"]",
        "[\"\\ud800\"]",
        "[[]]",
        "[null]",
        "{}",
        "{\"a\":1}",
        "{\"message\":\"m\"}",
        "{\"message\":\"m\\u0000\",\"kind\":\"\\u0000\"}",
        "{\"message\":1}",
        "{\"\\ud800\":1}",
        "{\"k\":\"\\ud800\"}",
        "[{\"step_id\":1}]",
        "[{\"step_id\":1,\"claim_token\":\"1\",\"result\":[[[[1]]]]}]",
    ])
    .prop_map(str::to_owned);
    let deep = (
        prop::sample::select(vec![2usize, 63, 64, 65, 100, 101, 127, 128, 129, 300, 5000]),
        any::<bool>(),
    )
        .prop_map(|(d, arrays)| {
            if arrays {
                format!("{}{}", "[".repeat(d), "]".repeat(d))
            } else {
                format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d))
            }
        });
    let ints = any::<i64>().prop_map(|i| i.to_string());
    let long = (1usize..600).prop_map(|n| format!("\"{}\"", "x".repeat(n)));
    prop_oneof![6 => fixed, 2 => deep, 1 => ints, 1 => long]
}

/// A valid request for `op` on the seeded database, as (field, JSON text) pairs.
fn base(op: &str) -> Vec<(String, String)> {
    let f = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let template = r#"{"namespace":"t","name":"q","version":"1","steps":[{"name":"a","handler":"hq","timeout_s":30,"priority":1,"config":{"c":1}}]}"#;
    match op {
        "register_template" | "validate_template" => f(&[("template", template)]),
        "get_template" => f(&[("namespace", "\"t\""), ("name", "\"p\""), ("version", "\"1\"")]),
        "create_task" => f(&[
            ("namespace", "\"t\""),
            ("name", "\"p\""),
            ("context", "{\"k\":[1,2]}"),
            ("idempotency_key", "\"key-1\""),
            ("priority", "1"),
        ]),
        "claim" => f(&[
            ("handlers", "[\"h\",\"h2\"]"),
            ("limit", "1"),
            ("wait_ms", "0"),
            ("worker_id", "\"w\""),
            ("lease_ms", "600000"),
        ]),
        "heartbeat" => f(&[("step_id", "1"), ("claim_token", "<token>"), ("lease_ms", "600000")]),
        "complete_step" => f(&[("step_id", "4"), ("claim_token", "<token>"), ("result", "{\"r\":1}")]),
        "complete_steps" => f(&[
            ("items", "[{\"step_id\":1,\"claim_token\":<token>,\"result\":1}]"),
            ("claim", "{\"handlers\":[\"h\"],\"limit\":1,\"worker_id\":\"w\",\"lease_ms\":600000}"),
        ]),
        "fail_step" => f(&[
            ("step_id", "1"),
            ("claim_token", "<token>"),
            ("error", "{\"message\":\"m\",\"kind\":\"K\",\"retryable\":true,\"retry_after_ms\":10,\"details\":{\"d\":1}}"),
        ]),
        "release_step" => f(&[("step_id", "1"), ("claim_token", "<token>"), ("delay_ms", "0"), ("reason", "\"r\"")]),
        "cancel_task" => f(&[("task_id", "3"), ("reason", "\"r\"")]),
        "retry_step" => f(&[("task_id", "2"), ("step_name", "\"a\"")]),
        "resolve_step" => f(&[("task_id", "2"), ("step_name", "\"b\""), ("result", "{\"x\":1}"), ("reason", "\"r\"")]),
        "get_task" | "explain_task" => f(&[("task_id", "1")]),
        "list_tasks" => f(&[("state", "\"running\""), ("namespace", "\"t\""), ("name", "\"p\""), ("limit", "10"), ("cursor", "3")]),
        "stats" => f(&[("window_ms", "1000")]),
        "events" => f(&[("since", "0"), ("limit", "5"), ("wait_ms", "0"), ("task_id", "1"), ("types", "[\"step.ready\"]")]),
        "worker_open" => f(&[
            ("handlers", "[\"h2\",\"hq\"]"),
            ("concurrency", "2"),
            ("batch", "2"),
            ("lease_ms", "600000"),
            ("name", "\"w\""),
        ]),
        "worker_next" => f(&[("worker_id", "<wid>"), ("max", "1"), ("wait_ms", "0")]),
        "worker_report" => f(&[
            ("worker_id", "<wid>"),
            ("outcomes", "[{\"step_id\":4,\"result\":{\"r\":1}},{\"step_id\":5,\"error\":{\"message\":\"m\"}},{\"step_id\":6,\"release\":true}]"),
            ("next", "{\"max\":1,\"wait_ms\":0}"),
        ]),
        "worker_close" => f(&[("worker_id", "<wid>"), ("grace_ms", "0")]),
        "worker_stats" => f(&[("worker_id", "<wid>")]),
        _ => Vec::new(),
    }
}

/// Template fields the suite breaks inside `register_template`/`validate_template`.
const TEMPLATE_STEP_FIELDS: &[&str] = &[
    "timeout_s",
    "priority",
    "handler",
    "config",
    "name",
    "retry",
];

#[derive(Debug, Clone)]
enum Change {
    Set(usize, String),
    SetUnknown(String),
    Drop(usize),
    TemplateStep(usize, String),
}

#[derive(Debug, Clone)]
struct Case {
    op: String,
    changes: Vec<Change>,
    /// Replaces the whole request when set.
    whole: Option<String>,
}

fn case() -> impl Strategy<Value = Case> {
    let mut ops: Vec<String> = OPERATIONS.iter().map(|s| s.to_string()).collect();
    ops.push("frobnicate".into());
    let change = prop_oneof![
        5 => (0usize..8, hostile()).prop_map(|(i, v)| Change::Set(i, v)),
        1 => hostile().prop_map(Change::SetUnknown),
        1 => (0usize..8).prop_map(Change::Drop),
        2 => (0usize..TEMPLATE_STEP_FIELDS.len(), hostile()).prop_map(|(i, v)| Change::TemplateStep(i, v)),
    ];
    let whole = prop::option::weighted(
        0.1,
        prop_oneof![
            hostile(),
            prop::sample::select(vec!["", " ", "{", "[1", "{\"a\":}", "{}x", "\u{0}"])
                .prop_map(str::to_owned),
        ],
    );
    (
        prop::sample::select(ops),
        prop::collection::vec(change, 0..3),
        whole,
    )
        .prop_map(|(op, changes, whole)| Case { op, changes, whole })
}

/// The request text of a case on a store whose live claim token is `token`.
fn request_text(c: &Case, token: &str, wid: &str) -> String {
    if let Some(w) = &c.whole {
        return w.clone();
    }
    let mut fields = base(&c.op);
    for ch in &c.changes {
        match ch {
            Change::Set(i, v) if !fields.is_empty() => {
                let n = fields.len();
                fields[i % n].1 = v.clone();
            }
            Change::Set(_, v) | Change::SetUnknown(v) => fields.push(("bogus".into(), v.clone())),
            Change::Drop(i) if !fields.is_empty() => {
                let n = fields.len();
                fields.remove(i % n);
            }
            Change::Drop(_) => {}
            Change::TemplateStep(i, v) => {
                if let Some(t) = fields.iter_mut().find(|(k, _)| k == "template") {
                    let field = TEMPLATE_STEP_FIELDS[*i];
                    // The step object is the innermost `{"name":"a",...}`: replace or add
                    // the field by rebuilding the text.
                    let mut step: serde_json::Map<String, Value> = serde_json::from_str(
                        r#"{"name":"a","handler":"hq","timeout_s":30,"priority":1,"config":{"c":1}}"#,
                    )
                    .unwrap();
                    step.remove(field);
                    let mut text = Value::Object(step).to_string();
                    text.pop();
                    text.push_str(&format!(",\"{field}\":{v}}}"));
                    t.1 =
                        format!(r#"{{"namespace":"t","name":"q","version":"1","steps":[{text}]}}"#);
                }
            }
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                json!(k),
                v.replace("<token>", &json!(token).to_string())
                    .replace("<wid>", &json!(wid).to_string())
            )
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

struct Store {
    db: Db,
    token: String,
    /// A worker session opened at the start (`worker_*` requests name it).
    wid: String,
}

impl Store {
    fn new(on_pg: bool) -> Store {
        let db = if on_pg {
            open(settings())
        } else {
            open_sqlite(settings())
        };
        let token = seed(&db);
        let wid = db.call(
            "worker_open",
            json!({"handlers": ["h2"], "lease_ms": 600000, "name": "seed"}),
        )["worker_id"]
            .as_str()
            .unwrap()
            .to_owned();
        Store { db, token, wid }
    }

    /// Runs one case, checking the per-store properties; returns its code (`None`: ok).
    fn run(&self, c: &Case) -> std::result::Result<Option<ErrorCode>, TestCaseError> {
        let text = request_text(c, &self.token, &self.wid);
        let before = snapshot(&self.db.tasker);
        let out = self.db.tasker.call(&c.op, &text);
        // Strictness: a request that is not an object, or that carries an unknown field,
        // is never read.
        let not_object = c.whole.as_ref().is_some_and(|w| {
            let w = w.trim();
            !w.is_empty() && !w.starts_with('{')
        });
        let unknown = c.whole.is_none() && text.contains("\"bogus\":");
        if (not_object || unknown) && c.op != "frobnicate" {
            prop_assert!(out.is_err(), "{} {text} was accepted: {:?}", c.op, out);
        }
        match out {
            Ok(_) => {
                if c.op == "register_template" {
                    // A template the engine took must be usable: a task of it, and a
                    // claim of its handler with others, never fail in the store.
                    self.follow_up()?;
                }
                Ok(None)
            }
            Err(e) => {
                prop_assert!(
                    DOCUMENTED.contains(&e.code),
                    "{} {text}: undocumented code {e}",
                    c.op
                );
                prop_assert!(!e.message.is_empty());
                let after = snapshot(&self.db.tasker);
                prop_assert_eq!(
                    &before,
                    &after,
                    "{} {} changed the database: {}",
                    c.op,
                    text,
                    e
                );
                Ok(Some(e.code))
            }
        }
    }

    fn follow_up(&self) -> std::result::Result<(), TestCaseError> {
        let t = &self.db.tasker;
        let r = t.call(
            "create_task",
            &json!({"namespace": "t", "name": "q", "context": {}}).to_string(),
        );
        if let Err(e) = &r {
            prop_assert!(
                !matches!(e.code, ErrorCode::Database | ErrorCode::Internal),
                "create_task of an accepted template: {e}"
            );
        }
        let r = t.call(
            "claim",
            &json!({"handlers": ["hq", "h2", "zzz"], "limit": 5, "lease_ms": 600000}).to_string(),
        );
        if let Err(e) = &r {
            prop_assert!(false, "claim after an accepted template failed: {e}");
        }
        Ok(())
    }
}

/// An SQLite database even when the suite runs on PostgreSQL.
fn open_sqlite(extra: Value) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let mut config = json!({
        "database_url": format!("sqlite://{}/tasker.db", dir.path().display()),
        "templates_dir": dir.path().join("templates").to_str().unwrap(),
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let tasker = Tasker::open(&config.to_string()).unwrap();
    Db {
        url: config["database_url"].as_str().unwrap().to_owned(),
        tasker,
        dir,
        schema: None,
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn hostile_requests_get_documented_codes_the_same_on_both_stores() {
    let cases = env_num("TASKER_BAD_INPUT_CASES", 1500) as u32;
    let budget = Duration::from_secs(env_num("TASKER_BAD_INPUT_SECONDS", 40));
    let seed = env_num("TASKER_BAD_INPUT_SEED", 13);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = PropConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..PropConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let primary = Store::new(on_postgres());
    // On PostgreSQL the same requests also go to SQLite: the answers must agree.
    let peer = on_postgres().then(|| Store::new(false));
    let start = Instant::now();
    let ran = std::cell::Cell::new(0u32);
    let result = runner.run(&case(), |c| {
        if start.elapsed() > budget {
            return Ok(());
        }
        ran.set(ran.get() + 1);
        let a = primary.run(&c)?;
        if let Some(peer) = &peer {
            let b = peer.run(&c)?;
            let validation = |x: &Option<ErrorCode>| x.is_some_and(|c| VALIDATION.contains(&c));
            if validation(&a) || validation(&b) {
                prop_assert_eq!(
                    a,
                    b,
                    "{} {}: PostgreSQL and SQLite answer differently",
                    c.op,
                    request_text(&c, "<token>", "<wid>")
                );
            }
        }
        Ok(())
    });
    eprintln!(
        "bad_input: {} cases in {:.1}s (seed {seed}, {})",
        ran.get(),
        start.elapsed().as_secs_f64(),
        if peer.is_some() {
            "PostgreSQL and SQLite"
        } else {
            "SQLite"
        }
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        ran.get() > 20,
        "only {} cases ran in the time budget",
        ran.get()
    );
}

// ---- Regression tests: each bug of issue 13, on the store the suite runs on ----

fn code_of(db: &Db, op: &str, req: &str) -> (ErrorCode, String) {
    match db.tasker.call(op, req) {
        Ok(out) => panic!("{op} {req} should fail, got {out}"),
        Err(e) => (e.code, e.message),
    }
}

#[test]
fn a_huge_step_timeout_is_refused_and_claims_of_its_handler_keep_working() {
    let db = open(json!({}));
    let t = json!({"namespace": "t", "name": "slow", "version": "1",
                   "steps": [{"name": "a", "handler": "h", "timeout_s": 10_000_000_000_000_000u64}]});
    let e = db.call_err("register_template", json!({ "template": t }));
    assert_eq!(e.code, ErrorCode::InvalidTemplate, "{e}");
    assert_eq!(e.details.as_ref().unwrap()["problem"], "bad_timeout");
    assert!(e.message.contains("2592000"), "{e}");
    // The largest accepted timeout and priority create claimable steps.
    db.register(json!({"namespace": "t", "name": "long", "version": "1",
        "steps": [{"name": "a", "handler": "h", "timeout_s": 2_592_000, "priority": 1_000_000}]}));
    db.call(
        "create_task",
        json!({"namespace": "t", "name": "long", "priority": 1_000_000}),
    );
    let steps = db.claim(&["h", "other"], 10, 2_592_000_000);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["timeout_ms"], 2_592_000_000_i64);
    let e = db.call_err(
        "register_template",
        json!({"template": {"namespace": "t", "name": "p", "version": "1",
                "steps": [{"name": "a", "handler": "h", "priority": 2_147_483_647}]}}),
    );
    assert_eq!(
        e.details.as_ref().unwrap()["problem"],
        "bad_priority",
        "{e}"
    );
}

#[test]
fn requests_must_be_objects() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    db.create("one", json!({}));
    let before = db.fingerprint();
    for (op, req) in [
        ("cancel_task", "[1]"),
        ("get_task", "[1]"),
        ("worker_open", "[[\"h\"]]"),
        ("worker_stats", "[\"w1\"]"),
        ("list_tasks", "[]"),
        ("stats", "[]"),
        ("events", "[]"),
        ("sweep", "[]"),
        ("ping", "1"),
        ("claim", "\"h\""),
        ("get_task", "null"),
    ] {
        let (code, message) = code_of(&db, op, req);
        assert_eq!(code, ErrorCode::InvalidArgument, "{op} {req}: {message}");
        assert!(
            message.starts_with("request: expected a JSON object"),
            "{message}"
        );
    }
    assert_eq!(db.task(1)["state"], "pending");
    assert_eq!(db.fingerprint(), before);
}

#[test]
fn nul_characters_are_refused_by_name_on_every_store() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let cases = [
        (
            "create_task",
            r#"{"namespace":"t","name":"one","idempotency_key":"k\u0000"}"#,
            "idempotency_key",
        ),
        (
            "create_task",
            r#"{"namespace":"t\u0000","name":"one"}"#,
            "namespace",
        ),
        (
            "claim",
            r#"{"handlers":["a"],"worker_id":"w\u0000"}"#,
            "worker_id",
        ),
        ("claim", r#"{"handlers":["a\u0000"]}"#, "handlers[0]"),
        ("list_tasks", r#"{"namespace":"\u0000"}"#, "namespace"),
        ("list_tasks", r#"{"name":"n\u0000"}"#, "name"),
        (
            "get_template",
            r#"{"namespace":"t","name":"one","version":"\u0000"}"#,
            "version",
        ),
        (
            "cancel_task",
            r#"{"task_id":1,"reason":"\u0000"}"#,
            "reason",
        ),
        (
            "complete_steps",
            r#"{"items":[],"claim":{"handlers":["\u0000"]}}"#,
            "claim.handlers[0]",
        ),
        (
            "register_template",
            r#"{"template":{"namespace":"t","name":"n","version":"1","steps":[{"name":"a","handler":"h\u0000"}]}}"#,
            "bad_handler",
        ),
    ];
    let before = db.fingerprint();
    for (op, req, field) in cases {
        let e = db.tasker.call(op, req).unwrap_err();
        if field == "bad_handler" {
            assert_eq!(e.code, ErrorCode::InvalidTemplate, "{op} {req}: {e}");
            continue;
        }
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{op} {req}: {e}");
        assert!(
            e.message.starts_with(&format!("{field}: ")),
            "{op} {req}: {e}"
        );
        assert!(e.message.contains("NUL"), "{e}");
    }
    assert_eq!(db.fingerprint(), before);
}

#[test]
fn lone_surrogates_and_deep_values_are_invalid_arguments_not_internal() {
    let db = open(json!({}));
    let mut t = template("one", &[("a", &[])], fast_retry(1));
    t["input_schema"] = json!({"$defs": {"n": {"type": ["object", "array", "number"],
        "items": {"$ref": "#/$defs/n"}, "additionalProperties": {"$ref": "#/$defs/n"}}},
        "$ref": "#/$defs/n"});
    db.register(t);
    let deep = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
    let before = db.fingerprint();
    for (op, req) in [
        (
            "create_task",
            r#"{"namespace":"t","name":"one","context":{"s":"\ud800"}}"#.to_owned(),
        ),
        (
            "create_task",
            r#"{"namespace":"t","name":"one","context":{"\udc00":1}}"#.to_owned(),
        ),
        (
            "create_task",
            format!(r#"{{"namespace":"t","name":"one","context":{}}}"#, deep(65)),
        ),
        (
            "create_task",
            format!(
                r#"{{"namespace":"t","name":"one","context":{}}}"#,
                deep(200)
            ),
        ),
        (
            "create_task",
            format!(
                r#"{{"namespace":"t","name":"one","context":{}}}"#,
                deep(100_000)
            ),
        ),
        (
            "complete_step",
            format!(
                r#"{{"step_id":1,"claim_token":"1","result":{}}}"#,
                deep(129)
            ),
        ),
        (
            "resolve_step",
            format!(r#"{{"step_id":1,"result":{}}}"#, deep(65)),
        ),
        (
            "fail_step",
            format!(
                r#"{{"step_id":1,"claim_token":"1","error":{{"message":"m","details":{}}}}}"#,
                deep(64)
            ),
        ),
        (
            "complete_steps",
            format!(
                r#"{{"items":[{{"step_id":1,"claim_token":"1","result":{}}}]}}"#,
                deep(65)
            ),
        ),
    ] {
        let (code, message) = code_of(&db, op, &req);
        assert_eq!(code, ErrorCode::InvalidArgument, "{op}: {message}");
        assert!(
            message.contains("max_json_depth") || message.contains("lone surrogate"),
            "{op}: {message}"
        );
    }
    // At the limit, a deep context passes the recursive schema and reads back.
    let ok = format!(r#"{{"namespace":"t","name":"one","context":{}}}"#, deep(64));
    let created: Value =
        serde_json::from_str(&db.tasker.call("create_task", &ok).unwrap()).unwrap();
    let task = db.task(created["task_id"].as_i64().unwrap());
    assert!(task["context"].is_array());
    // A template's config and input_schema are held to the same depth.
    let mut t = template("deep", &[("a", &[])], fast_retry(1));
    t["steps"][0]["config"] = serde_json::from_str(&deep(65)).unwrap();
    let e = db.call_err("register_template", json!({ "template": t }));
    assert_eq!(e.details.as_ref().unwrap()["problem"], "too_deep", "{e}");
    let _ = before;
}

#[test]
fn wrong_types_name_the_field_the_range_and_the_value() {
    let db = open(json!({}));
    for (op, req, message) in [
        (
            "get_task",
            json!({"task_id": "one"}),
            r#"task_id: expected an integer between 1 and 9007199254740991, got "one""#,
        ),
        (
            "list_tasks",
            json!({"limit": "x"}),
            r#"limit: expected an integer between 1 and 1000 (list_page_max), got "x""#,
        ),
        (
            "complete_steps",
            json!({"items": 5}),
            "items: expected an array of at most 10000 objects, got 5",
        ),
        (
            "events",
            json!({"since": -1}),
            "since: expected an integer between 0 and 9007199254740991, got -1",
        ),
        (
            "claim",
            json!({"handlers": ["h"], "lease_ms": 0}),
            "lease_ms: expected an integer between 1 and 2592000000, got 0",
        ),
        (
            "get_task",
            json!({"task_id": 1.5}),
            "task_id: expected an integer between 1 and 9007199254740991, got 1.5",
        ),
        (
            "create_task",
            json!({"namespace": "t", "name": "n", "priority": 2_147_483_648u64}),
            "priority: expected an integer between -1000000 and 1000000, got 2147483648",
        ),
        (
            "complete_steps",
            json!({"items": [{"step_id": 1, "claim_token": 7}]}),
            "items[0].claim_token: expected a string of at most 64 bytes, got 7",
        ),
        (
            "cancel_task",
            json!({"task_id": 1, "why": "x"}),
            "unknown field `why` (expected one of: task_id, reason)",
        ),
        ("worker_open", json!({"handlers": ["h"], "lease_ms": "ten"}), r#"lease_ms: expected an integer between 10 and 86400000, got "ten""#),
        ("worker_open", json!({"handlers": ["h\u{0}"]}), "handlers[0]: expected a string of 1-256 bytes, got a string containing a NUL character (\\u0000)"),
        ("worker_report", json!({"worker_id": "w1", "outcomes": 5}), "outcomes: expected an array of at most 10000 objects, got 5"),
        ("worker_report", json!({"worker_id": "w1", "outcomes": [{"step_id": 0, "release": true}]}), "outcomes[0].step_id: expected an integer between 1 and 9007199254740991, got 0"),
        ("worker_next", json!({"worker_id": "w1", "wait_ms": -1}), "wait_ms: expected an integer between 0 and 2592000000, got -1"),
    ] {
        let e = db.call_err(op, req.clone());
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{op} {req}: {e}");
        assert_eq!(e.message, message, "{op} {req}");
    }
    let e =
        Tasker::open(&json!({"database_url": db.url, "lease_ms": "ten"}).to_string()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert_eq!(
        e.message,
        r#"lease_ms: expected a non-negative integer, got "ten""#
    );
    let e = Tasker::open(&json!({"database_url": db.url, "max_json_depth": 1000}).to_string())
        .unwrap_err();
    assert_eq!(
        e.message,
        "max_json_depth: expected an integer between 1 and 100, got 1000"
    );
}

#[test]
fn a_wait_in_flight_ends_with_closed_when_its_handle_closes() {
    let db = open(json!({}));
    let config = json!({"database_url": db.url,
                        "postgres_schema": db.schema.clone().unwrap_or_else(|| "tasker".into())})
    .to_string();
    for (op, req) in [
        ("claim", json!({"handlers": ["nothing"], "wait_ms": 20_000})),
        ("events", json!({"since": 1_000_000, "wait_ms": 20_000})),
    ] {
        let t = Tasker::open(&config).unwrap();
        let t2 = t.clone();
        let started = Instant::now();
        let waiter = std::thread::spawn(move || t2.call(op, &req.to_string()));
        std::thread::sleep(Duration::from_millis(300));
        t.close();
        let out = waiter.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{op} waited out its wait_ms"
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::Closed, "{op}");
        // Only that handle's calls end: the engine and its other handles keep working.
        assert!(db.tasker.call("ping", "{}").is_ok());
    }
}

#[test]
fn a_subscription_with_a_bad_cursor_or_event_name_is_refused_at_once() {
    let db = open(json!({}));
    let e = db.tasker.subscribe(-1, None, |_| {}).err().unwrap();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message
            .starts_with("since: expected an integer between 0 and"),
        "{e}"
    );
    let e = db
        .tasker
        .subscribe(0, Some(vec!["step.exploded".into()]), |_| {})
        .err()
        .unwrap();
    assert!(
        e.message
            .starts_with("unknown event type `step.exploded`; the event types are: task.created"),
        "{e}"
    );
}

/// Runs SQL on the test's own database, as an older engine (or an operator) could have.
fn raw_sql(db: &Db, sql: &str) {
    match &db.schema {
        None => {
            let path = db.url.trim_start_matches("sqlite://");
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute_batch(sql).unwrap();
        }
        Some(schema) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
                let sql = format!("SET search_path TO \"{schema}\"; {sql}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .unwrap();
            });
        }
    }
}

#[test]
fn steps_stored_with_an_overflowed_timeout_are_claimable_after_the_migration() {
    let db = open(json!({}));
    db.register(template("one", &[("a", &[])], fast_retry(1)));
    let id = db.create("one", json!({}));
    // What an older engine stored for `timeout_s: 10^16` (10^19 ms wrapped to i64), and
    // an unapplied bounded-timeouts migration.
    let version = if db.schema.is_some() { 7 } else { 2 };
    raw_sql(
        &db,
        &format!(
            "UPDATE tasker_steps SET timeout_ms = -8446744073709551616 WHERE task_id = {id};
             DELETE FROM tasker_migrations WHERE version = {version};"
        ),
    );
    assert_eq!(db.call("migrate", json!({}))["applied"], 1);
    let steps = db.claim(&["a", "other"], 10, 60_000);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["timeout_ms"], 2_592_000_000_i64);
}
