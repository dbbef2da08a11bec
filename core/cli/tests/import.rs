//! `tasker task import FILE|-`: tasks from JSON lines through `create_tasks`, run as the
//! built binary against a temporary SQLite database. A bad line names its line number and
//! stores nothing of its batch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tasker_core::api::Tasker;

const BIN: &str = env!("CARGO_BIN_EXE_tasker");

struct Db {
    dir: tempfile::TempDir,
    url: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cli.db").display());
        let db = Db { dir, url };
        let template = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/templates/orders/fulfill/1.0.0.yaml");
        assert_eq!(db.run(&["migrate"], None).code, 0);
        let r = db.run(&["template", "register", template.to_str().unwrap()], None);
        assert_eq!(r.code, 0, "{}", r.stderr);
        db
    }

    /// Runs `tasker` in the temp dir with no TASKER_* variables from outside, `stdin`
    /// piped in when given.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("TASKER_") {
                c.env_remove(k);
            }
        }
        c.arg("--database-url").arg(&self.url).args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run tasker");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every task's context, oldest first.
    fn contexts(&self) -> Vec<Value> {
        let t = Tasker::open(&json!({ "database_url": self.url }).to_string()).unwrap();
        let page: Value =
            serde_json::from_str(&t.call("list_tasks", r#"{"limit": 1000}"#).unwrap()).unwrap();
        let mut out = Vec::new();
        for task in page["tasks"].as_array().unwrap().iter().rev() {
            let req = json!({ "task_id": task["id"] }).to_string();
            let full: Value = serde_json::from_str(&t.call("get_task", &req).unwrap()).unwrap();
            out.push(full["task"]["context"].clone());
        }
        t.close();
        out
    }
}

fn line(order: i64, key: Option<&str>) -> String {
    let mut v =
        json!({ "namespace": "orders", "name": "fulfill", "context": { "order_id": order } });
    if let Some(k) = key {
        v["idempotency_key"] = json!(k);
    }
    v.to_string()
}

#[test]
fn imports_json_lines_from_a_file_and_from_stdin() {
    let db = Db::new();
    let text = format!(
        "{}\n\n{}\n{}\n",
        line(1, Some("o-1")),
        line(2, None),
        line(3, Some("o-3"))
    );
    let file = db.file("tasks.jsonl", &text);
    let r = db.run(&["task", "import", file.to_str().unwrap()], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "imported 3 tasks: 3 created, 0 existing (same idempotency key)\n"
    );
    // Again: the keyed lines find their tasks, the unkeyed one is a new task.
    let r = db.run(
        &["task", "import", file.to_str().unwrap(), "--batch", "2"],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "imported 3 tasks: 1 created, 2 existing (same idempotency key)\n"
    );
    let r = db.run(&["task", "import", "-"], Some(&line(4, None)));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("imported 1 tasks: 1 created"),
        "{}",
        r.stdout
    );
    let orders: Vec<i64> = db
        .contexts()
        .iter()
        .map(|c| c["order_id"].as_i64().unwrap())
        .collect();
    assert_eq!(orders, [1, 2, 3, 2, 4]);
    // --json prints each batch's response.
    let r = db.run(
        &["--json", "task", "import", "-"],
        Some(&line(1, Some("o-1"))),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["tasks"][0]["created"], false);
}

#[test]
fn a_bad_line_is_named_and_nothing_of_its_batch_is_stored() {
    let db = Db::new();
    // Not JSON on line 3: nothing is sent at all.
    let bad_json = db.file(
        "bad.jsonl",
        &format!("{}\n{}\n{{oops\n", line(1, None), line(2, None)),
    );
    let path = bad_json.to_str().unwrap();
    let r = db.run(&["task", "import", path], None);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("[invalid_json]") && r.stderr.contains(&format!("{path}:3:")),
        "{}",
        r.stderr
    );
    let not_object = db.file("array.jsonl", &format!("{}\n[1]\n", line(1, None)));
    let r = db.run(&["task", "import", not_object.to_str().unwrap()], None);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(":2: expected a JSON object"),
        "{}",
        r.stderr
    );
    assert!(db.contexts().is_empty());

    // The engine refuses line 4 (its context lacks order_id): with batches of 2, lines
    // 1-2 are stored, nothing of lines 3-4.
    let text = format!(
        "{}\n{}\n{}\n{}\n",
        line(1, None),
        line(2, None),
        line(3, None),
        r#"{"namespace": "orders", "name": "fulfill", "context": {"items": []}}"#
    );
    let refused = db.file("refused.jsonl", &text);
    let path = refused.to_str().unwrap();
    let r = db.run(&["task", "import", path, "--batch", "2"], None);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("[schema_violation]") && r.stderr.contains(&format!("{path}:4:")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("lines before 3 were imported; nothing of lines 3-4 is stored"),
        "{}",
        r.stderr
    );
    let orders: Vec<i64> = db
        .contexts()
        .iter()
        .map(|c| c["order_id"].as_i64().unwrap())
        .collect();
    assert_eq!(orders, [1, 2]);
    // A field of the wrong type is named by line too.
    let typed = db.file(
        "typed.jsonl",
        r#"{"namespace": "orders", "name": "fulfill", "priority": "high"}"#,
    );
    let r = db.run(&["task", "import", typed.to_str().unwrap()], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(":1: priority"), "{}", r.stderr);
    let r = db.run(&["task", "import", "/no/such/file.jsonl"], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("[not_found]"), "{}", r.stderr);
    assert_eq!(db.contexts().len(), 2);
}
