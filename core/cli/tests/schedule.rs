//! `tasker schedule ...` and `tasker task create --run-at/--delay/--timeout`, run as
//! the built binary against a temporary SQLite database.

use std::process::Command;

use serde_json::Value;

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
        db.ok(&["migrate"]);
        std::fs::write(
            db.dir.path().join("t.yaml"),
            "namespace: t\nname: one\nversion: '1'\nsteps:\n  - name: a\n    handler: a\n",
        )
        .unwrap();
        db.ok(&["template", "register", "t.yaml"]);
        db
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("TASKER_") {
                c.env_remove(k);
            }
        }
        let out = c
            .env("NO_COLOR", "1")
            .arg("--database-url")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "tasker {args:?}:\n{}\n{}", r.stdout, r.stderr);
        r
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let r = self.ok(&all);
        serde_json::from_str(r.stdout.trim()).unwrap()
    }
}

#[test]
fn schedule_commands_end_to_end() {
    let db = Db::new();
    let r = db.ok(&[
        "schedule",
        "create",
        "hourly",
        "t",
        "one",
        "--cron",
        "0 * * * *",
        "--timezone",
        "Europe/Berlin",
        "--context",
        r#"{"k": 1}"#,
        "--catch-up",
        "all",
        "--catch-up-limit",
        "5",
    ]);
    assert!(
        r.stdout.starts_with("created schedule hourly; next tick "),
        "{}",
        r.stdout
    );
    let list = db.ok(&["schedule", "list"]).stdout;
    assert!(list.contains("NAME") && list.contains("hourly"), "{list}");
    assert!(
        list.contains("Europe/Berlin") && list.contains("active"),
        "{list}"
    );
    let s = db.json(&["schedule", "show", "hourly"]);
    assert_eq!(s["schedule"]["catch_up"]["limit"], 5);
    assert_eq!(s["schedule"]["context"]["k"], 1);
    assert_eq!(
        db.ok(&["schedule", "pause", "hourly"]).stdout,
        "paused schedule hourly\n"
    );
    assert!(db.ok(&["schedule", "list"]).stdout.contains("paused"));
    assert!(db
        .ok(&["schedule", "resume", "hourly"])
        .stdout
        .starts_with("resumed schedule hourly; next tick "));
    assert_eq!(
        db.ok(&["schedule", "delete", "hourly"]).stdout,
        "deleted schedule hourly\n"
    );
    assert_eq!(db.ok(&["schedule", "list"]).stdout, "no schedules\n");
}

#[test]
fn bad_schedules_fail_with_the_code_and_store_nothing() {
    let db = Db::new();
    for (args, code) in [
        (vec!["--cron", "99 * * * *"], "invalid_argument"),
        (
            vec!["--cron", "* * * * *", "--timezone", "Nowhere"],
            "invalid_argument",
        ),
        (
            vec!["--cron", "* * * * *", "--catch-up", "maybe"],
            "invalid_argument",
        ),
    ] {
        let mut all = vec!["schedule", "create", "s", "t", "one"];
        all.extend(args);
        let r = db.run(&all);
        assert_eq!(r.code, 1, "{all:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("[{code}]")),
            "{all:?}: {}",
            r.stderr
        );
    }
    let r = db.run(&[
        "schedule",
        "create",
        "s",
        "t",
        "nope",
        "--cron",
        "* * * * *",
    ]);
    assert!(r.stderr.contains("[not_found]"), "{}", r.stderr);
    db.ok(&["schedule", "create", "s", "t", "one", "--cron", "* * * * *"]);
    let r = db.run(&["schedule", "create", "s", "t", "one", "--cron", "* * * * *"]);
    assert!(r.stderr.contains("[conflict]"), "{}", r.stderr);
    let r = db.run(&["schedule", "pause", "other"]);
    assert!(r.stderr.contains("[not_found]"), "{}", r.stderr);
    let list = db.json(&["schedule", "list"]);
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
}

#[test]
fn task_create_takes_a_delay_a_start_time_and_a_timeout() {
    let db = Db::new();
    let r = db.ok(&[
        "task",
        "create",
        "t",
        "one",
        "--delay",
        "5m",
        "--timeout",
        "60",
    ]);
    assert!(r.stdout.contains(", starting at "), "{}", r.stdout);
    let shown = db.ok(&["task", "show", "1"]).stdout;
    assert!(
        shown.contains("runs at") && shown.contains("(waiting)"),
        "{shown}"
    );
    assert!(shown.contains("timeout   60 s (until "), "{shown}");
    let t = db.json(&["task", "show", "1"]);
    assert_eq!(t["task"]["delayed"], true);
    assert_eq!(t["task"]["timeout_s"], 60);
    assert_eq!(t["task"]["steps"][0]["state"], "pending");
    db.ok(&[
        "task",
        "create",
        "t",
        "one",
        "--run-at",
        "2999-01-01T00:00:00Z",
    ]);
    let t = db.json(&["task", "show", "2"]);
    assert_eq!(t["task"]["run_at"], "2999-01-01T00:00:00.000Z");
    let r = db.run(&["task", "create", "t", "one", "--delay", "soon"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--delay soon"), "{}", r.stderr);
    let r = db.run(&["task", "create", "t", "one", "--run-at", "noon"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("[invalid_argument]"), "{}", r.stderr);
    let r = db.run(&[
        "task",
        "create",
        "t",
        "one",
        "--run-at",
        "2999-01-01T00:00:00Z",
        "--delay",
        "1s",
    ]);
    assert_eq!(r.code, 2, "clap refuses both: {}", r.stderr);
}
