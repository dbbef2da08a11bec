use serde_json::{json, Value};
use tasker_core::api::{ops::parse_json, Tasker};
use tasker_core::worker::{HandlerError, Worker};

fn main() -> Result<(), tasker_core::Error> {
    let tasker = Tasker::open(r#"{"database_url": "sqlite://app.db"}"#)?;
    let template = json!({ "path": "examples/templates/orders/fulfill/1.0.0.yaml" });
    tasker.call("register_template", &template.to_string())?;
    let request = json!({ "namespace": "orders", "name": "fulfill", "version": "1.0.0",
                          "context": { "order_id": 42 }, "idempotency_key": "order-42" });
    let created: Value = parse_json(&tasker.call("create_task", &request.to_string())?)?;

    Worker::new(&tasker, "worker-1")
        .handle("validate_order", |s| Ok(s.context.clone())) // the task context
        .handle("reserve_inventory", |s| Ok(s.config.clone())) // step config from the template
        .handle("charge_payment", |s| match s.attempt {
            1 => Err(HandlerError::retryable("gateway timeout")), // retried after a backoff
            _ => Ok(json!({ "charged": true })),
        })
        .handle("ship_order", |s| Ok(json!({ "by": s.config["carrier"] })))
        .run_until_idle()?;

    let task = json!({ "task_id": created["task_id"] });
    println!("{}", tasker.call("get_task", &task.to_string())?); // state "complete", steps, results
    Ok(())
}
