use serde_json::{json, Value};
use tasker_core::api::Tasker;
use tasker_core::worker::{HandlerError, Worker};

#[test]
fn diamond_runs_to_completion_with_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let t = Tasker::open(&json!({"database_url": url}).to_string()).unwrap();
    let tpl = json!({"namespace":"orders","name":"fulfill","version":"1.0.0",
        "defaults": {"retry": {"base_ms": 10, "max_ms": 20}},
        "steps":[{"name":"validate","handler":"v"},{"name":"reserve","handler":"r","depends_on":["validate"]},
                 {"name":"charge","handler":"c","depends_on":["validate"]},{"name":"ship","handler":"s","depends_on":["reserve","charge"]}]});
    t.call("register_template", &json!({"template": tpl}).to_string())
        .unwrap();
    let created: Value = serde_json::from_str(
        &t.call(
            "create_task",
            r#"{"namespace":"orders","name":"fulfill","version":"1.0.0","context":{"n":2}}"#,
        )
        .unwrap(),
    )
    .unwrap();
    let id = created["task_id"].as_i64().unwrap();
    let w = Worker::new(&t, "w1")
        .handle("v", |s| Ok(json!(s.context["n"].as_i64().unwrap() * 10)))
        .handle("r", |s| {
            Ok(json!(s.results["validate"].as_i64().unwrap() + 1))
        })
        .handle("c", |s| {
            if s.attempt == 1 {
                Err(HandlerError::retryable("card declined"))
            } else {
                Ok(json!(s.results["validate"].as_i64().unwrap() + 2))
            }
        })
        .handle("s", |s| {
            Ok(json!(
                s.results["reserve"].as_i64().unwrap() + s.results["charge"].as_i64().unwrap()
            ))
        });
    let stats = w.run_until_idle().unwrap();
    assert_eq!(stats.completed, 4);
    assert_eq!(stats.failed, 1);
    let task: Value = serde_json::from_str(
        &t.call("get_task", &json!({"task_id": id}).to_string())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(task["task"]["state"], "complete", "{task:#}");
    let ship = task["task"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ship")
        .unwrap();
    assert_eq!(ship["result"], json!(43));
    let ev: Value = serde_json::from_str(&t.call("events", r#"{"limit": 1000}"#).unwrap()).unwrap();
    let names: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    println!("{names:?}");
    assert_eq!(names.last(), Some(&"task.completed"));
    t.close();
}
