//! Runs the built `tasker` binary against a temporary SQLite database: migrations,
//! templates, tasks made and worked through the core API, then every inspection and
//! operator command, with and without `--json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use tasker_core::api::Tasker;
use tasker_core::worker::{HandlerError, Worker};

const BIN: &str = env!("CARGO_BIN_EXE_tasker");

fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates/orders/fulfill/1.0.0.yaml")
}

struct Db {
    dir: tempfile::TempDir,
    url: String,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cli.db").display());
        Db { dir, url }
    }

    /// A `tasker` command in the temp dir, with no TASKER_* variables from outside.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("TASKER_") {
                c.env_remove(k);
            }
        }
        c.env("NO_COLOR", "1");
        c.arg("--database-url").arg(&self.url).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run tasker");
        Run::from(args, out)
    }

    /// Runs and expects success.
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "tasker {args:?} failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        r
    }

    /// Runs with `--json` and expects success and one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let r = self.ok(&all);
        serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("tasker {all:?} printed no JSON ({e}):\n{}", r.stdout))
    }

    fn open(&self) -> Tasker {
        Tasker::open(&json!({ "database_url": self.url }).to_string()).unwrap()
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(_args: &[&str], out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn call(t: &Tasker, op: &str, req: Value) -> Value {
    serde_json::from_str(&t.call(op, &req.to_string()).unwrap()).unwrap()
}

fn create(t: &Tasker, order: i64) -> i64 {
    let r = call(
        t,
        "create_task",
        json!({ "namespace": "orders", "name": "fulfill", "context": { "order_id": order } }),
    );
    r["task_id"].as_i64().unwrap()
}

/// The row of a text table whose first column is `first`.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row `{first}` in:\n{text}"))
}

#[test]
fn operator_commands_end_to_end() {
    let db = Db::new();
    let tpl = template_path();
    let tpl = tpl.to_str().unwrap();

    // Before migrate the database does not exist, and read commands do not create it.
    let r = db.run(&["task", "list"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error [not_found]: "), "{}", r.stderr);
    assert!(r.stderr.contains("tasker migrate"), "{}", r.stderr);
    assert!(!db.dir.path().join("cli.db").exists());

    let r = db.ok(&["migrate"]);
    assert!(r.stdout.starts_with("applied "), "{}", r.stdout);
    assert!(!r.stdout.starts_with("applied 0 "), "{}", r.stdout);
    assert_eq!(db.json(&["migrate"])["applied"], 0);

    // Templates: a good one, then a cyclic one.
    let r = db.ok(&["template", "validate", tpl]);
    assert!(
        r.stdout
            .contains("valid template orders/fulfill 1.0.0 (4 steps)"),
        "{}",
        r.stdout
    );
    assert_eq!(row(&r.stdout, "ship")[1], "ship_order");
    let v = db.json(&["template", "validate", tpl]);
    assert_eq!(v["valid"], true);

    let bad = db.dir.path().join("cyclic.yaml");
    std::fs::write(
        &bad,
        "namespace: x\nname: loop\nversion: 1.0.0\nsteps:\n\
         - {name: start, handler: h}\n\
         - {name: a, handler: h, depends_on: [start, c]}\n\
         - {name: b, handler: h, depends_on: [a]}\n\
         - {name: c, handler: h, depends_on: [b]}\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let r = db.run(&["template", "validate", bad]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let first = r.stderr.lines().next().unwrap();
    assert!(first.starts_with("error [invalid_template]: "), "{first}");
    assert!(
        first.contains("cyclic.yaml") && first.contains("cycle"),
        "{first}"
    );
    for step in ["a -> ", "b -> ", "c -> "] {
        assert!(first.contains(step), "{first}");
    }
    assert!(!first.contains("start"), "{first}");
    let r = db.run(&["--json", "template", "validate", bad]);
    assert_eq!(r.code, 1);
    let e: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(e["code"], "invalid_template");
    let mut on_cycle: Vec<&str> = e["details"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    on_cycle.sort();
    assert_eq!(on_cycle, ["a", "b", "c"]);
    // Validation stores nothing: the cyclic template cannot be found afterwards.
    assert_eq!(db.run(&["template", "show", "x", "loop"]).code, 1);

    let r = db.ok(&["template", "register", tpl]);
    assert_eq!(r.stdout.trim(), "registered orders/fulfill 1.0.0");
    let r = db.ok(&["template", "register", tpl]);
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
    assert_eq!(db.run(&["template", "register", bad]).code, 1);
    let r = db.ok(&["template", "show", "orders", "fulfill"]);
    assert_eq!(row(&r.stdout, "ship")[2], "reserve,");

    // Tasks through the core API: 1 completes, 2 fails at charge, 3 is untouched.
    let t = db.open();
    let t1 = create(&t, 1);
    let t2 = create(&t, 2);
    let w = Worker::new(&t, "cli-test-worker")
        .handle("validate_order", |_| Ok(json!({ "ok": true })))
        .handle("reserve_inventory", |_| Ok(json!("reserved")))
        .handle("charge_payment", |s| {
            if s.context["order_id"] == 2 {
                Err(HandlerError::permanent("card declined"))
            } else {
                Ok(json!("charged"))
            }
        })
        .handle("ship_order", |_| Ok(json!("shipped")));
    w.run_until_idle().unwrap();
    let t3 = create(&t, 3);

    // task list
    let r = db.ok(&["task", "list"]);
    let header: Vec<&str> = r
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header[..4], ["ID", "TEMPLATE", "VERSION", "STATE"]);
    assert_eq!(row(&r.stdout, &t1.to_string())[3], "complete");
    assert_eq!(row(&r.stdout, &t2.to_string())[3], "error");
    assert_eq!(row(&r.stdout, &t3.to_string())[3], "pending");
    let r = db.ok(&["task", "list", "--state", "error"]);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    let v = db.json(&["task", "list"]);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 3);
    let v = db.json(&["task", "list", "--limit", "2"]);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2);
    let cursor = v["next_cursor"].as_i64().unwrap().to_string();
    let r = db.ok(&["task", "list", "--limit", "2"]);
    assert!(
        r.stdout.contains(&format!("more: --cursor {cursor}")),
        "{}",
        r.stdout
    );
    let v = db.json(&["task", "list", "--limit", "2", "--cursor", &cursor]);
    assert_eq!(v["tasks"][0]["id"], t1);
    let v = db.json(&["task", "list", "--namespace", "nope"]);
    assert_eq!(v["tasks"], json!([]));
    assert!(db
        .ok(&["task", "list", "--name", "nope"])
        .stdout
        .contains("no tasks"));

    // task show
    let r = db.ok(&["task", "show", &t1.to_string()]);
    assert!(
        r.stdout
            .starts_with(&format!("task {t1}  orders/fulfill 1.0.0  complete")),
        "{}",
        r.stdout
    );
    let head = r.stdout.lines().find(|l| l.starts_with("STEP")).unwrap();
    let head: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(
        head,
        ["STEP", "HANDLER", "STATE", "ATTEMPTS", "DURATION", "WORKER"]
    );
    let charge = row(&r.stdout, "charge");
    assert_eq!(charge[2], "complete");
    assert_eq!(charge[3], "1/3");
    assert_eq!(charge[5], "cli-test-worker");
    let r = db.ok(&["task", "show", &t2.to_string()]);
    assert_eq!(row(&r.stdout, "charge")[2], "error");
    assert_eq!(row(&r.stdout, "ship")[2], "pending");
    assert!(r.stdout.contains("failed attempts:"), "{}", r.stdout);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("charge attempt 1 at "))
        .unwrap();
    assert!(line.contains(": card declined"), "{line}");
    assert!(line.ends_with("<- why it is in error"), "{line}");
    let v = db.json(&["task", "show", &t2.to_string()]);
    assert_eq!(v["task"]["state"], "error");
    assert_eq!(v["task"]["steps"].as_array().unwrap().len(), 4);
    let r = db.run(&["task", "show", "999"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error [not_found]: "), "{}", r.stderr);
    let r = db.run(&["--json", "task", "show", "999"]);
    assert_eq!(
        serde_json::from_str::<Value>(r.stdout.trim()).unwrap()["code"],
        "not_found"
    );

    // task explain
    let r = db.ok(&["task", "explain", &t2.to_string()]);
    assert_eq!(row(&r.stdout, "charge")[2], "failed");
    assert_eq!(row(&r.stdout, "ship")[2], "blocked");
    assert!(r.stdout.contains("card declined"), "{}", r.stdout);
    // The way out, as the commands to type (not API operations).
    assert!(r.stdout.contains("to fix:"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("  tasker step retry {t2} charge\n")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("retry_step"), "{}", r.stdout);
    let r = db.ok(&["task", "explain", &t3.to_string()]);
    assert_eq!(row(&r.stdout, "validate")[2], "waiting_for_worker");
    assert_eq!(row(&r.stdout, "ship")[2], "waiting_on_parents");
    let r = db.ok(&["task", "explain", &t1.to_string()]);
    assert!(r.stdout.contains("every step is done"), "{}", r.stdout);
    let v = db.json(&["task", "explain", &t3.to_string()]);
    assert_eq!(v["steps"].as_array().unwrap().len(), 4);

    // step retry and resolve
    let r = db.ok(&["step", "retry", &t2.to_string(), "charge"]);
    assert!(
        r.stdout.contains("is now ready; the task is running"),
        "{}",
        r.stdout
    );
    // After the operator's retry the step's attempts count from the new run.
    let r = db.ok(&["task", "show", &t2.to_string()]);
    assert_eq!(
        row(&r.stdout, "charge")[3..6],
        ["0/3,", "run", "2"],
        "{}",
        r.stdout
    );
    let charge_id = db.json(&["task", "show", &t2.to_string()])["task"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "charge")
        .unwrap()["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let v = db.json(&[
        "step",
        "resolve",
        "--step-id",
        &charge_id,
        "--result",
        r#"{"charged": "by hand"}"#,
        "--reason",
        "paid by phone",
    ]);
    assert_eq!(v["state"], "resolved_manually");
    let r = db.ok(&["task", "explain", &t2.to_string()]);
    assert_eq!(row(&r.stdout, "ship")[2], "waiting_for_worker");
    let r = db.run(&["step", "retry", "--step-id", &charge_id]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error [invalid_state]: "),
        "{}",
        r.stderr
    );

    // task cancel
    let r = db.ok(&[
        "task",
        "cancel",
        &t3.to_string(),
        "--reason",
        "customer changed their mind",
    ]);
    assert_eq!(r.stdout.trim(), format!("task {t3} cancelled"));
    let v = db.json(&["task", "cancel", &t3.to_string()]);
    assert_eq!(v["changed"], false);
    let r = db.ok(&["task", "cancel", &t3.to_string()]);
    assert!(r.stdout.contains("already cancelled"), "{}", r.stdout);
    let r = db.run(&["task", "cancel", &t1.to_string()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error [invalid_state]: "),
        "{}",
        r.stderr
    );

    // stats
    let r = db.ok(&["stats"]);
    assert_eq!(row(&r.stdout, "complete")[1], "1");
    assert_eq!(row(&r.stdout, "cancelled")[1], "1");
    assert!(r.stdout.contains("last event id:"), "{}", r.stdout);
    let v = db.json(&["stats"]);
    assert_eq!(v["tasks"]["complete"], 1);
    assert_eq!(v["tasks"]["running"], 1);
    let last = v["last_event_id"].as_i64().unwrap();
    assert!(last > 0);

    // events
    let r = db.ok(&["events", "--limit", "1000"]);
    assert_eq!(r.stdout.lines().count() as i64, last, "{}", r.stdout);
    assert!(r.stdout.lines().next().unwrap().contains("task.created"));
    assert!(r.stdout.contains("step.resolved_manually"), "{}", r.stdout);
    assert!(
        r.stdout.contains("reason: customer changed their mind"),
        "{}",
        r.stdout
    );
    let r = db.ok(&["events", "--task", &t1.to_string(), "--limit", "1000"]);
    assert!(
        r.stdout.lines().all(|l| l.contains(&format!("task {t1} "))),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("task.completed"));
    let r = db.ok(&["events", "--type", "step.failed"]);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.contains("error: card declined"), "{}", r.stdout);
    let v = db.json(&["events", "--since", &(last - 2).to_string()]);
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["next_cursor"], last);
    let r = db.ok(&["events", "--since", &last.to_string()]);
    assert!(r.stdout.contains("no events"), "{}", r.stdout);
    let r = db.ok(&["events", "--limit", "3"]);
    assert!(r.stdout.contains("more: --since 3"), "{}", r.stdout);

    // events --follow prints what exists, then new events as they happen.
    let mut child = db
        .command(&[
            "--json",
            "events",
            "--follow",
            "--since",
            &(last - 1).to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = Duration::from_secs(20);
    let first: Value = serde_json::from_str(&rx.recv_timeout(wait).unwrap()).unwrap();
    assert_eq!(first["id"], last);
    let t4 = create(&t, 4);
    let created = loop {
        let e: Value = serde_json::from_str(&rx.recv_timeout(wait).unwrap()).unwrap();
        if e["event"] == "task.created" {
            break e;
        }
    };
    assert_eq!(created["task_id"], t4);
    child.kill().unwrap();
    child.wait().unwrap();
    t.close();
}

#[test]
fn usage_errors_exit_2() {
    let db = Db::new();
    for args in [
        &["step", "retry"][..],
        &["step", "retry", "--step-id", "1", "2", "charge"],
        &["step", "retry", "7"],
        &["task", "show", "seven"],
        &["task", "frobnicate"],
        &["step", "resolve", "1", "charge", "--result", "{not json"],
        &[],
    ] {
        let r = db.run(args);
        assert_eq!(r.code, 2, "tasker {args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("error"), "tasker {args:?}: {}", r.stderr);
    }
    let r = db.ok(&["--help"]);
    for cmd in ["migrate", "template", "task", "step", "stats", "events"] {
        assert!(r.stdout.contains(cmd), "{}", r.stdout);
    }
    // A usage error touches no database.
    assert!(!db.dir.path().join("cli.db").exists());
}

#[test]
fn validate_needs_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("TASKER_DATABASE_URL")
        .env_remove("TASKER_CONFIG")
        .args(["template", "validate"])
        .arg(template_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn task_create_template_list_and_completion() {
    let db = Db::new();
    let tpl = template_path();
    db.ok(&["migrate"]);
    let r = db.ok(&["template", "list"]);
    assert!(
        r.stdout.contains("no templates are registered"),
        "{}",
        r.stdout
    );
    db.ok(&["template", "register", tpl.to_str().unwrap()]);
    let r = db.ok(&["template", "list"]);
    assert_eq!(
        row(&r.stdout, "orders")[..4],
        ["orders", "fulfill", "1.0.0", "4"],
        "{}",
        r.stdout
    );
    let v = db.json(&["template", "list", "--namespace", "nope"]);
    assert_eq!(v["templates"], json!([]));

    // task create: the context is validated by the engine, the result printed.
    let r = db.ok(&[
        "task",
        "create",
        "orders",
        "fulfill",
        "--context",
        r#"{"order_id": 7}"#,
        "--idempotency-key",
        "order-7",
    ]);
    assert!(
        r.stdout.starts_with("created task 1 (orders/fulfill)"),
        "{}",
        r.stdout
    );
    let r = db.ok(&[
        "task",
        "create",
        "orders",
        "fulfill",
        "--context",
        r#"{"order_id": 7}"#,
        "--idempotency-key",
        "order-7",
    ]);
    assert!(r.stdout.contains("already exists"), "{}", r.stdout);
    let file = db.dir.path().join("ctx.json");
    std::fs::write(&file, r#"{"order_id": 8}"#).unwrap();
    let v = db.json(&[
        "task",
        "create",
        "orders",
        "fulfill",
        "--context-file",
        file.to_str().unwrap(),
        "--priority",
        "-5",
    ]);
    assert_eq!(v["created"], true);
    let shown = db.json(&["task", "show", &v["task_id"].to_string()]);
    assert_eq!(shown["task"]["context"], json!({"order_id": 8}));
    assert_eq!(shown["task"]["priority"], -5);
    let r = db.run(&["task", "create", "orders", "fulfill", "--context", "{}"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error [schema_violation]: "),
        "{}",
        r.stderr
    );
    let r = db.run(&["task", "create", "orders", "fulfill", "--context", "{oops"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--context is not valid JSON"),
        "{}",
        r.stderr
    );
    let r = db.run(&["task", "create", "orders", "fulfill", "--version", "2.0.0"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("the registered versions are: 1.0.0"),
        "{}",
        r.stderr
    );
    assert_eq!(
        db.json(&["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Shell completion scripts, generated from the parser's own definitions.
    for shell in ["bash", "zsh", "fish"] {
        let r = db.ok(&["completion", shell]);
        assert!(r.stdout.contains("tasker"), "{shell}: {}", r.stdout);
        assert!(r.stdout.contains("create"), "{shell}: {}", r.stdout);
    }
    assert_eq!(db.run(&["completion", "tcsh"]).code, 2);
    let r = db.ok(&["--help"]);
    assert!(r.stdout.contains("postgres://"), "{}", r.stdout);
}

#[test]
fn signal_send_completes_a_waiting_step() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let t = db.open();
    call(
        &t,
        "register_template",
        json!({ "template": { "namespace": "ops", "name": "approve", "version": "1", "steps": [
            { "name": "approve", "wait_for": { "signal": "approved" } },
            { "name": "pay", "handler": "pay", "depends_on": ["approve"] }
        ] } }),
    );
    let id = call(
        &t,
        "create_task",
        json!({ "namespace": "ops", "name": "approve" }),
    )["task_id"]
        .as_i64()
        .unwrap()
        .to_string();
    t.close();
    let r = db.ok(&["signal", "send", &id, "approved", r#"{"by": "ada"}"#]);
    assert!(
        r.stdout.contains("signal approved sent to task"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("step approve"), "{}", r.stdout);
    assert!(r.stdout.contains("took it"), "{}", r.stdout);
    let shown = db.json(&["task", "show", &id]);
    let approve = shown["task"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "approve")
        .unwrap()
        .clone();
    assert_eq!(approve["result"], json!({ "by": "ada" }));
    // The same signal again: the engine's conflict, exit 1; bad JSON: a usage error.
    let again = db.run(&["signal", "send", &id, "approved"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("error [conflict]"),
        "{}",
        again.stderr
    );
    let bad = db.run(&["signal", "send", &id, "approved", "{nope"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let missing = db.run(&["--json", "signal", "send", &id, "nothing"]);
    assert_eq!(missing.code, 1);
    let err: Value = serde_json::from_str(missing.stdout.trim()).unwrap();
    assert_eq!(err["code"], "not_found", "{err}");
}

#[test]
fn explain_says_which_limit_holds_a_step_back() {
    let db = Db::new();
    {
        let t = db.open();
        call(
            &t,
            "register_template",
            json!({ "template": { "namespace": "billing", "name": "invoice", "version": "1",
                "steps": [{ "name": "send", "handler": "send",
                            "concurrency": { "key": "$context.customer", "max": 1 } }] } }),
        );
        for _ in 0..2 {
            call(
                &t,
                "create_task",
                json!({ "namespace": "billing", "name": "invoice", "context": { "customer": "acme" } }),
            );
        }
        let got = call(
            &t,
            "claim",
            json!({ "handlers": ["send"], "limit": 2, "worker_id": "cli-test" }),
        );
        assert_eq!(got["steps"].as_array().unwrap().len(), 1, "{got}");
        assert_eq!(got["steps"][0]["task_id"], 1);
        t.close();
    }
    let r = db.ok(&["task", "explain", "2"]);
    assert_eq!(row(&r.stdout, "send")[2], "held_by_limit", "{}", r.stdout);
    assert!(
        r.stdout
            .contains("concurrency key `global:acme` has 1 of 1 running"),
        "{}",
        r.stdout
    );
}
