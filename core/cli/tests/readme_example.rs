//! Runs the README's Rust example (`examples/readme.rs`, kept identical to the README by
//! `demo.rs`) end to end, in a scratch directory laid out like the repository.

mod readme {
    include!("../examples/readme.rs");

    pub fn run() -> Result<(), tasker_core::Error> {
        main()
    }
}

#[test]
fn the_readme_example_runs_and_completes_its_task() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scratch = tempfile::tempdir().unwrap();
    let dest = scratch.path().join("examples/templates/orders/fulfill");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(
        root.join("examples/templates/orders/fulfill/1.0.0.yaml"),
        dest.join("1.0.0.yaml"),
    )
    .unwrap();
    // The example uses paths relative to the repository root (its own working directory);
    // this test binary holds only this test, so changing directory affects nothing else.
    std::env::set_current_dir(scratch.path()).unwrap();
    readme::run().unwrap();

    let t = tasker_core::api::Tasker::open(r#"{"database_url": "sqlite://app.db"}"#).unwrap();
    let tasks: serde_json::Value =
        serde_json::from_str(&t.call("list_tasks", "{}").unwrap()).unwrap();
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["state"], "complete");
    assert_eq!(tasks[0]["idempotency_key"], "order-42");
}
