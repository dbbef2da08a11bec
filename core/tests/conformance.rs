//! Runs the cross-language conformance vectors in `tests/conformance/*.json` against
//! tasker-core through its JSON API only. The format is documented in
//! `tests/conformance/README.md`; `tests/c/conformance.c` implements the same semantics.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tasker_core::api::Tasker;

const MIN_VECTORS: usize = 20;
const MAX_LOOPS: usize = 2000;

type R<T> = Result<T, String>;

/// `TASKER_CONFORMANCE_DIR` when set, else the workspace's `tests/conformance`.
fn vectors_dir() -> PathBuf {
    match std::env::var_os("TASKER_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance"),
    }
}

#[test]
fn conformance_vectors() {
    let dir = vectors_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for file in &files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let outcome = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()))
            .and_then(|v| {
                let name = v["name"].as_str().unwrap_or(&stem).to_owned();
                run_vector(&v).map_err(|e| format!("{name}: {e}"))
            });
        record_in_ledger(&stem, outcome.is_ok());
        match outcome {
            Ok(()) => println!("ok   {stem}"),
            Err(e) => {
                println!("FAIL {stem}: {e}");
                failures.push(format!("{stem}: {e}"));
            }
        }
    }
    println!(
        "conformance(rust): {} passed, {} failed",
        files.len() - failures.len(),
        failures.len()
    );
    assert!(
        files.len() >= MIN_VECTORS,
        "only {} vectors found in {} (expected at least {MIN_VECTORS})",
        files.len(),
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Appends `rust <store> <vector> ok|FAIL` to the file `TASKER_CONFORMANCE_LEDGER` names
/// (tests/conformance/README.md): `scripts/conformance-coverage` checks there that every
/// runner ran every vector on both stores.
fn record_in_ledger(stem: &str, ok: bool) {
    use std::io::Write;
    let Some(path) = std::env::var_os("TASKER_CONFORMANCE_LEDGER") else {
        return;
    };
    let store = if common::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let line = format!(
        "rust\t{store}\t{stem}\t{}\n",
        if ok { "ok" } else { "FAIL" }
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot append to the ledger {}: {e}",
            Path::new(&path).display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// JSON helpers

/// JSON equality with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `expected` is a subset of `actual`: objects key by key, recursively; else equality.
fn json_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|w| json_subset(v, w))),
        _ => json_eq(expected, actual),
    }
}

fn lookup<'a>(root: &'a Value, path: &[&str], full: &str) -> R<&'a Value> {
    let mut cur = root;
    for seg in path {
        let next = match cur {
            Value::Object(m) => m.get(*seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        cur = next.ok_or_else(|| format!("expression `{full}`: no `{seg}` in {cur}"))?;
    }
    Ok(cur)
}

/// What a handler was handed: the scope of `$` references.
struct Scope<'a> {
    context: &'a Value,
    results: Option<&'a Value>,
    config: Option<&'a Value>,
    attempt: Option<&'a Value>,
}

fn eval(e: &Value, s: &Scope) -> R<Value> {
    match e {
        Value::String(text) if text.starts_with("$$") => Ok(Value::String(text[1..].to_owned())),
        Value::String(text) if text.starts_with('$') => {
            let mut parts = text[1..].split('.');
            let root = parts.next().unwrap_or("");
            let rest: Vec<&str> = parts.collect();
            let base = match root {
                "context" => Some(s.context),
                "results" => s.results,
                "config" => s.config,
                "attempt" => s.attempt,
                _ => return Err(format!("expression `{text}`: unknown reference")),
            }
            .ok_or_else(|| format!("expression `{text}`: not available here"))?;
            lookup(base, &rest, text).cloned()
        }
        Value::Array(items) => items.iter().map(|i| eval(i, s)).collect(),
        Value::Object(m) if m.len() == 1 && m.contains_key("sum") => {
            let items = m["sum"]
                .as_array()
                .ok_or_else(|| format!("`sum` needs an array, got {}", m["sum"]))?;
            let mut int: Option<i64> = Some(0);
            let mut float = 0.0f64;
            for item in items {
                let v = eval(item, s)?;
                let n = match &v {
                    Value::Number(n) => n,
                    other => return Err(format!("`sum` of a non-number {other}")),
                };
                float += n.as_f64().unwrap_or(f64::NAN);
                int = match (int, n.as_i64()) {
                    (Some(a), Some(b)) => a.checked_add(b),
                    _ => None,
                };
            }
            Ok(match int {
                Some(i) => json!(i),
                None => json!(float),
            })
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("literal") => Ok(m["literal"].clone()),
        Value::Object(m) if m.len() == 1 && m.contains_key("object") => match &m["object"] {
            Value::Object(inner) => eval_members(inner, s),
            other => Err(format!("`object` needs an object, got {other}")),
        },
        Value::Object(m) => eval_members(m, s),
        other => Ok(other.clone()),
    }
}

fn eval_members(m: &Map<String, Value>, s: &Scope) -> R<Value> {
    let mut out = Map::new();
    for (k, v) in m {
        out.insert(k.clone(), eval(v, s)?);
    }
    Ok(Value::Object(out))
}

/// Checks an error `{code, message, details}` against an expected error spec.
fn check_error(expected: &Value, code: &str, err: &Value, what: &str) -> R<()> {
    let (want_code, details, contains) = match expected {
        Value::String(c) => (c.as_str(), None, None),
        Value::Object(m) => (
            m.get("code")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{what}: expected error has no code"))?,
            m.get("details"),
            m.get("message_contains").and_then(Value::as_array),
        ),
        other => return Err(format!("{what}: bad expected error {other}")),
    };
    if code != want_code {
        return Err(format!(
            "{what}: expected error `{want_code}`, got `{code}`: {err}"
        ));
    }
    if let Some(d) = details {
        if !json_subset(d, &err["details"]) {
            return Err(format!(
                "{what}: error details {} do not contain {d}",
                err["details"]
            ));
        }
    }
    let message = err["message"].as_str().unwrap_or("");
    for s in contains.into_iter().flatten() {
        let s = s.as_str().unwrap_or("");
        if !message.contains(s) {
            return Err(format!(
                "{what}: error message `{message}` does not contain `{s}`"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The runner

struct Call {
    t: Tasker,
}

impl Call {
    /// Ok(response) or Err((code, error json)).
    fn call(&self, op: &str, req: &Value) -> Result<Value, (String, Value)> {
        match self.t.call(op, &req.to_string()) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                (
                    "runner".to_owned(),
                    json!({"message": format!("{op} returned invalid JSON: {e}")}),
                )
            }),
            Err(e) => Err((
                e.code.as_str().to_owned(),
                json!({"code": e.code.as_str(), "message": e.message, "details": e.details}),
            )),
        }
    }

    fn ok(&self, op: &str, req: &Value) -> R<Value> {
        self.call(op, req)
            .map_err(|(_, e)| format!("{op} {req} failed: {e}"))
    }

    /// The call must fail with `expected`.
    fn err(&self, op: &str, req: &Value, expected: &Value) -> R<()> {
        match self.call(op, req) {
            Ok(v) => Err(format!(
                "{op} succeeded ({v}) but was expected to fail with {expected}"
            )),
            Err((code, e)) => check_error(expected, &code, &e, op),
        }
    }

    /// Succeeds, or fails with `expected` when given.
    fn checked(&self, op: &str, req: &Value, expect_error: Option<&Value>) -> R<Option<Value>> {
        match expect_error {
            Some(expected) => self.err(op, req, expected).map(|_| None),
            None => self.ok(op, req).map(Some),
        }
    }
}

struct Run<'a> {
    v: &'a Value,
    c: Call,
    lease_ms: u64,
    task_id: i64,
    handlers: Vec<String>,
    /// Claims per step name so far.
    claims: HashMap<String, usize>,
    /// (step, claim number) -> (step_id, claim_token).
    tokens: HashMap<(String, usize), (i64, String)>,
    /// When each held lease has surely expired.
    held: Vec<Instant>,
    /// With `"via": "worker_session"`: the session the run claims and reports through.
    session: Option<String>,
    fired: Vec<bool>,
    /// Step -> (when the failing report started, retry_after_ms).
    not_before: HashMap<String, (Instant, u64)>,
}

fn run_vector(v: &Value) -> R<()> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The store under test: SQLite by default, PostgreSQL with TASKER_TEST_STORE=postgres.
    let (store, schema) = common::store_config(dir.path());
    let outcome = run_vector_on(v, &dir, store);
    if let Some(schema) = schema {
        common::drop_schema(&schema);
    }
    outcome
}

fn run_vector_on(v: &Value, dir: &tempfile::TempDir, store: Value) -> R<()> {
    let mut config = json!({
        "templates_dir": dir.path().join("templates").display().to_string(),
        "env": "conformance",
        "lease_ms": 30000,
        "sweep_interval_ms": 3_600_000,
        "claim_poll_ms": 20,
    });
    for (k, x) in store.as_object().into_iter().flatten() {
        config[k] = x.clone();
    }
    if let Some(Value::Object(extra)) = v.get("config") {
        for (k, x) in extra {
            config[k] = x.clone();
        }
    }
    let lease_ms = config["lease_ms"].as_u64().unwrap_or(30000);
    let t = Tasker::open(&config.to_string()).map_err(|e| format!("open failed: {e}"))?;
    let mut run = Run {
        v,
        c: Call { t: t.clone() },
        lease_ms,
        task_id: 0,
        handlers: Vec::new(),
        claims: HashMap::new(),
        tokens: HashMap::new(),
        held: Vec::new(),
        session: None,
        fired: vec![false; v["actions"].as_array().map_or(0, Vec::len)],
        not_before: HashMap::new(),
    };
    let out = run.run();
    t.close();
    out
}

impl Run<'_> {
    fn template(&self) -> &Value {
        &self.v["template"]
    }

    fn expect(&self) -> &Value {
        &self.v["expect"]
    }

    fn run(&mut self) -> R<()> {
        let tpl = self.template().clone();
        if !tpl.is_object() {
            return Err("the vector has no template".into());
        }
        let ns = tpl["namespace"].clone();
        let name = tpl["name"].clone();
        for s in tpl["steps"].as_array().into_iter().flatten() {
            if let Some(h) = s["handler"].as_str() {
                if !self.handlers.iter().any(|x| x == h) {
                    self.handlers.push(h.to_owned());
                }
            }
        }

        // Template.
        let reg = json!({ "template": tpl });
        if let Some(expected) = self.expect().get("register_error") {
            self.c.err("register_template", &reg, expected)?;
            self.c.err("validate_template", &reg, expected)?;
            self.c.err(
                "get_template",
                &json!({"namespace": ns, "name": name}),
                &json!("not_found"),
            )?;
            return Ok(());
        }
        self.c.ok("register_template", &reg)?;
        if self.v["via"] == "worker_session" {
            let opened = self.c.ok(
                "worker_open",
                &json!({"handlers": self.handlers, "batch": 1, "name": "conformance"}),
            )?;
            self.session = opened["worker_id"].as_str().map(str::to_owned);
        }

        // Task.
        let mut create = json!({
            "namespace": ns, "name": name, "version": tpl["version"],
            "context": self.v.get("context").cloned().unwrap_or(json!({})),
        });
        if let Some(p) = self.v.get("priority") {
            create["priority"] = p.clone();
        }
        // Scheduling vectors: more create_task fields (run_at, delay_ms, timeout_s).
        if let Some(Value::Object(extra)) = self.v.get("create") {
            for (k, x) in extra {
                create[k] = x.clone();
            }
        }
        let idem = self.v.get("idempotency");
        if let Some(key) = idem.map(|i| &i["key"]) {
            create["idempotency_key"] = key.clone();
        }
        if let Some(expected) = self.expect().get("create_error") {
            self.c.err("create_task", &create, expected)?;
            let listed = self
                .c
                .ok("list_tasks", &json!({"namespace": ns, "name": name}))?;
            if listed["tasks"].as_array().is_none_or(|a| !a.is_empty()) {
                return Err(format!(
                    "a rejected create_task left tasks behind: {listed}"
                ));
            }
            let ev = self.c.ok("events", &json!({"limit": 1000}))?;
            if ev["events"].as_array().is_none_or(|a| !a.is_empty()) {
                return Err(format!("a rejected create_task left events behind: {ev}"));
            }
            return Ok(());
        }
        let created = self.c.ok("create_task", &create)?;
        if created["created"] != json!(true) {
            return Err(format!("create_task did not create a task: {created}"));
        }
        self.task_id = created["task_id"]
            .as_i64()
            .ok_or_else(|| format!("create_task returned no task_id: {created}"))?;
        if let Some(idem) = idem {
            let mut again = create.clone();
            if let Some(c) = idem.get("context") {
                again["context"] = c.clone();
            }
            let second = self.c.ok("create_task", &again)?;
            if second["task_id"] != json!(self.task_id) || second["created"] != json!(false) {
                return Err(format!(
                    "repeated create_task with the same idempotency key returned {second}, expected task_id {} with created:false",
                    self.task_id
                ));
            }
        }

        // Drive it.
        self.fire(|a| a["when"] == "created")?;
        self.drive()?;
        let unfired: Vec<String> = self
            .actions()
            .iter()
            .zip(&self.fired)
            .filter(|(_, f)| !**f)
            .map(|(a, _)| a.to_string())
            .collect();
        if !unfired.is_empty() {
            return Err(format!("actions never fired: {}", unfired.join(", ")));
        }

        // Check.
        let task = self.c.ok("get_task", &json!({"task_id": self.task_id}))?["task"].clone();
        if idem.is_some() {
            let third = self.c.ok("create_task", &create)?;
            if third["task_id"] != json!(self.task_id)
                || third["created"] != json!(false)
                || third["state"] != task["state"]
            {
                return Err(format!(
                    "create_task with the idempotency key after the run returned {third}, expected task_id {} created:false state {}",
                    self.task_id, task["state"]
                ));
            }
            let listed = self
                .c
                .ok("list_tasks", &json!({"namespace": ns, "name": name}))?;
            let n = listed["tasks"].as_array().map_or(0, Vec::len);
            if n != 1 {
                return Err(format!(
                    "expected exactly one task for the idempotency key, list_tasks shows {n}"
                ));
            }
        }
        let mut problems = Vec::new();
        if let Some(Value::Object(want)) = self.expect().get("task") {
            for (k, w) in want {
                if !json_eq(w, &task[k]) {
                    problems.push(format!("task.{k}: expected {w}, got {}", task[k]));
                }
            }
        }
        if let Some(Value::Object(steps)) = self.expect().get("steps") {
            for (sname, want) in steps {
                let Some(step) = task["steps"]
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s["name"] == json!(sname)))
                else {
                    problems.push(format!("step {sname} is not in the task"));
                    continue;
                };
                for (k, w) in want.as_object().into_iter().flatten() {
                    let ok = if k == "error" {
                        json_subset(w, &step["error"])
                    } else {
                        json_eq(w, &step[k])
                    };
                    if !ok {
                        problems.push(format!("step {sname}.{k}: expected {w}, got {}", step[k]));
                    }
                }
            }
        }
        if let Some(want) = self.expect().get("events") {
            let got = self.events()?;
            let want: Vec<String> = want
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or("").to_owned())
                .collect();
            if got != want {
                problems.push(event_diff(&want, &got));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn actions(&self) -> &[Value] {
        self.v["actions"].as_array().map_or(&[], Vec::as_slice)
    }

    fn events(&self) -> R<Vec<String>> {
        let mut out = Vec::new();
        let mut since = 0i64;
        loop {
            let page = self.c.ok(
                "events",
                &json!({"task_id": self.task_id, "since": since, "limit": 1000}),
            )?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                return Ok(out);
            }
            for e in &events {
                let name = e["event"].as_str().unwrap_or("?");
                out.push(match e.get("step_name").and_then(Value::as_str) {
                    Some(s) => format!("{name}:{s}"),
                    None => name.to_owned(),
                });
            }
            since = page["next_cursor"]
                .as_i64()
                .ok_or_else(|| format!("events returned no next_cursor: {page}"))?;
        }
    }

    /// Fires every unfired action matching `pred`, in file order.
    fn fire(&mut self, pred: impl Fn(&Value) -> bool) -> R<()> {
        for i in 0..self.fired.len() {
            if !self.fired[i] && pred(&self.actions()[i]) {
                self.fired[i] = true;
                let a = self.actions()[i].clone();
                self.act(&a)?;
            }
        }
        Ok(())
    }

    fn fire_after(&mut self, step: &str, n: usize, phase: &str) -> R<()> {
        self.fire(|a| {
            let at = &a["after"];
            at["step"] == json!(step)
                && at["attempt"].as_u64() == Some(n as u64)
                && at["phase"].as_str().unwrap_or("reported") == phase
        })
    }

    fn act(&mut self, a: &Value) -> R<()> {
        let what = a["do"].as_str().unwrap_or("");
        let step = a["step"].clone();
        let (op, req) = match what {
            "cancel_task" => {
                let mut r = json!({"task_id": self.task_id});
                if let Some(x) = a.get("reason") {
                    r["reason"] = x.clone();
                }
                ("cancel_task", r)
            }
            "retry_step" => (
                "retry_step",
                json!({"task_id": self.task_id, "step_name": step}),
            ),
            "resolve_step" => {
                let mut r = json!({"task_id": self.task_id, "step_name": step});
                if let Some(x) = a.get("result") {
                    let ctx = self.v.get("context").cloned().unwrap_or(json!({}));
                    let scope = Scope {
                        context: &ctx,
                        results: None,
                        config: None,
                        attempt: None,
                    };
                    r["result"] = eval(x, &scope)?;
                }
                if let Some(x) = a.get("reason") {
                    r["reason"] = x.clone();
                }
                ("resolve_step", r)
            }
            "report_stale" => {
                let s = step.as_str().unwrap_or("").to_owned();
                let n = a["attempt"].as_u64().unwrap_or(0) as usize;
                let (step_id, token) = self
                    .tokens
                    .get(&(s.clone(), n))
                    .cloned()
                    .ok_or_else(|| format!("report_stale: no claim number {n} of step {s}"))?;
                match a["report"].as_str().unwrap_or("") {
                    "complete" => (
                        "complete_step",
                        json!({"step_id": step_id, "claim_token": token, "result": null}),
                    ),
                    "fail" => (
                        "fail_step",
                        json!({"step_id": step_id, "claim_token": token, "error": {"message": "stale"}}),
                    ),
                    "heartbeat" => (
                        "heartbeat",
                        json!({"step_id": step_id, "claim_token": token}),
                    ),
                    other => return Err(format!("report_stale: unknown report `{other}`")),
                }
            }
            // Scheduling vectors: move the manual clock (`config.clock: manual`).
            "advance_clock" => ("advance_clock", json!({"ms": a["ms"]})),
            "send_signal" => ("send_signal", self.signal_request(a)?),
            "explain_task" => return self.explain_action(a),
            other => return Err(format!("unknown action `{other}`")),
        };
        let resp = self
            .c
            .checked(op, &req, a.get("expect_error"))
            .map_err(|e| format!("action {a}: {e}"))?;
        if let (Some(resp), Some(Value::Object(want))) = (resp, a.get("expect")) {
            for (k, w) in want {
                if !json_eq(w, &resp[k]) {
                    return Err(format!("action {a}: expected {k} = {w}, got {}", resp[k]));
                }
            }
        }
        Ok(())
    }

    /// `send_signal {task_id, name: signal, payload?: EXPR}` (only `$context` in scope).
    fn signal_request(&self, a: &Value) -> R<Value> {
        let mut r = json!({"task_id": self.task_id, "name": a["signal"]});
        if let Some(x) = a.get("payload") {
            let ctx = self.v.get("context").cloned().unwrap_or(json!({}));
            let scope = Scope {
                context: &ctx,
                results: None,
                config: None,
                attempt: None,
            };
            r["payload"] = eval(x, &scope)?;
        }
        Ok(r)
    }

    /// `explain_task`: each step named in `expect_steps` must have these fields in the
    /// explanation (a step missing from it is a failure).
    fn explain_action(&mut self, a: &Value) -> R<()> {
        let resp = self
            .c
            .ok("explain_task", &json!({"task_id": self.task_id}))?;
        let want = a["expect_steps"].as_object().cloned().unwrap_or_default();
        for (name, fields) in want {
            let got = resp["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|x| x["name"] == json!(name)))
                .ok_or_else(|| {
                    format!("action {a}: step {name} is not in the explanation {resp}")
                })?;
            for (k, w) in fields.as_object().cloned().unwrap_or_default() {
                if !json_eq(&w, &got[&k]) {
                    return Err(format!(
                        "action {a}: step {name}: expected {k} = {w}, got {} ({resp})",
                        got[&k]
                    ));
                }
            }
        }
        Ok(())
    }

    fn claim(&self, wait_ms: u64) -> R<Value> {
        if let Some(w) = &self.session {
            let mut page = self.c.ok(
                "worker_next",
                &json!({"worker_id": w, "max": 1, "wait_ms": wait_ms}),
            )?;
            // A session that is not idle but got nothing has a retry scheduled.
            if page["steps"].as_array().is_none_or(Vec::is_empty) && page["idle"] == false {
                page["next_ready_at"] = json!("scheduled");
            }
            return Ok(page);
        }
        self.c.ok(
            "claim",
            &json!({"handlers": self.handlers, "limit": 1, "wait_ms": wait_ms, "worker_id": "conformance"}),
        )
    }

    fn drive(&mut self) -> R<()> {
        for _ in 0..MAX_LOOPS {
            // A scheduled retry is waited for (5 s at most); otherwise nothing is
            // claimable and the run is idle.
            let mut resp = self.claim(0)?;
            let empty = |r: &Value| r["steps"].as_array().is_none_or(Vec::is_empty);
            if empty(&resp) && resp.get("next_ready_at").is_some_and(|x| !x.is_null()) {
                resp = self.claim(5000)?;
            }
            if !empty(&resp) {
                let step = resp["steps"][0].clone();
                self.handle(&step)?;
                continue;
            }
            if let Some(&until) = self.held.iter().max() {
                let now = Instant::now();
                if until > now {
                    std::thread::sleep(until - now);
                }
                self.c.ok("sweep", &json!({}))?;
                self.held.clear();
                continue;
            }
            if let Some(i) = (0..self.fired.len())
                .find(|&i| !self.fired[i] && self.actions()[i]["when"] == "idle")
            {
                self.fired[i] = true;
                let a = self.actions()[i].clone();
                self.act(&a)?;
                continue;
            }
            return Ok(());
        }
        Err(format!("the run did not settle within {MAX_LOOPS} loops"))
    }

    fn handle(&mut self, step: &Value) -> R<()> {
        let name = step["step_name"].as_str().unwrap_or("").to_owned();
        if step["task_id"] != json!(self.task_id) {
            return Err(format!("claimed a step of another task: {step}"));
        }
        let n = {
            let c = self.claims.entry(name.clone()).or_insert(0);
            *c += 1;
            *c
        };
        let step_id = step["step_id"].as_i64().unwrap_or(0);
        let token = step["claim_token"].as_str().unwrap_or("").to_owned();
        self.tokens
            .insert((name.clone(), n), (step_id, token.clone()));
        if let Some((started, ms)) = self.not_before.remove(&name) {
            let waited = started.elapsed();
            if waited + Duration::from_millis(2) < Duration::from_millis(ms) {
                return Err(format!(
                    "step {name} was claimed again {} ms after a failure with retry_after_ms {ms}",
                    waited.as_millis()
                ));
            }
        }
        let scripted = self.v["outcomes"].get(&name);
        let outcome = match scripted {
            None if n == 1 => json!({"complete": null}),
            None => return Err(format!("unscripted attempt: claim {n} of step {name}")),
            Some(list) => list
                .as_array()
                .and_then(|l| l.get(n - 1))
                .cloned()
                .ok_or_else(|| format!("unscripted attempt: claim {n} of step {name}"))?,
        };
        if let Some(want) = outcome.get("claim_attempt") {
            if !json_eq(want, &step["attempt"]) {
                return Err(format!(
                    "claim {n} of step {name}: expected attempt {want}, the claim says {}",
                    step["attempt"]
                ));
            }
        }
        self.fire_after(&name, n, "claimed")?;
        let expect_error = outcome.get("expect_error");
        if let Some(expr) = outcome.get("complete") {
            let scope = Scope {
                context: &step["context"],
                results: Some(&step["results"]),
                config: Some(&step["config"]),
                attempt: Some(&step["attempt"]),
            };
            let result = eval(expr, &scope).map_err(|e| format!("step {name} claim {n}: {e}"))?;
            if self.session.is_some() {
                self.report(
                    &name,
                    n,
                    &outcome,
                    json!({"step_id": step_id, "result": result}),
                    "completed",
                )?;
                return self.fire_after(&name, n, "reported");
            }
            self.c
                .checked(
                    "complete_step",
                    &json!({"step_id": step_id, "claim_token": token, "result": result}),
                    expect_error,
                )
                .map_err(|e| format!("step {name} claim {n}: {e}"))?;
        } else if let Some(fail) = outcome.get("fail") {
            let mut doc = fail.clone();
            if doc.get("message").is_none() {
                doc["message"] = json!("scripted failure");
            }
            let started = Instant::now();
            if self.session.is_some() {
                self.report(
                    &name,
                    n,
                    &outcome,
                    json!({"step_id": step_id, "error": doc}),
                    "failed",
                )?;
            } else {
                self.c
                    .checked(
                        "fail_step",
                        &json!({"step_id": step_id, "claim_token": token, "error": doc}),
                        expect_error,
                    )
                    .map_err(|e| format!("step {name} claim {n}: {e}"))?;
            }
            if let Some(ms) = doc.get("retry_after_ms").and_then(Value::as_u64) {
                self.not_before.insert(name.clone(), (started, ms));
            }
        } else if let Some(why) = outcome
            .get("invalid_result")
            .filter(|_| self.session.is_some())
        {
            self.report(
                &name,
                n,
                &outcome,
                json!({"step_id": step_id, "invalid_result": why}),
                "failed",
            )?;
        } else if outcome.get("release").is_some() && self.session.is_some() {
            self.report(
                &name,
                n,
                &outcome,
                json!({"step_id": step_id, "release": true}),
                "released",
            )?;
        } else if outcome.get("hold").is_some() && self.session.is_none() {
            self.held
                .push(Instant::now() + Duration::from_millis(self.lease_ms + 30));
        } else {
            return Err(format!("step {name} claim {n}: bad outcome {outcome}"));
        }
        self.fire_after(&name, n, "reported")
    }
}

impl Run<'_> {
    /// `worker_report` with one outcome; its result must match `expect_report` (a
    /// subset), else have the `outcome` `default`.
    fn report(&self, name: &str, n: usize, outcome: &Value, item: Value, default: &str) -> R<()> {
        let w = self.session.as_deref().unwrap_or_default();
        let resp = self.c.ok(
            "worker_report",
            &json!({"worker_id": w, "outcomes": [item]}),
        )?;
        let got = &resp["results"][0];
        let want = outcome
            .get("expect_report")
            .cloned()
            .unwrap_or_else(|| json!({"outcome": default}));
        if !json_subset(&want, got) {
            return Err(format!(
                "step {name} claim {n}: worker_report gave {got}, expected {want}"
            ));
        }
        Ok(())
    }
}

fn event_diff(want: &[String], got: &[String]) -> String {
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    format!(
        "events differ at index {at}: expected {:?}, got {:?} (full log: {:?})",
        want.get(at),
        got.get(at),
        got
    )
}
