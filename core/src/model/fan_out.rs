//! Dynamic fan-out: a step with `fan_out: {items: PATH}` expands, when its parents are
//! done, into one instance step per item of the list at PATH (`process[0]`,
//! `process[1]`, ...), each running the step's handler with its item and index in its
//! config (`config.fan_out = {item, index, count}`); the step then waits on its
//! instances as on parents and completes with their results, in item order. Pure code:
//! the stores call these while they expand or collect a step in one transaction.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The handler name the engine stores a fan-out step under (no worker claims it).
pub const FAN_OUT_HANDLER: &str = "tasker.fan_out";
/// Instances one step makes when `fan_out.max_items` is not given.
pub const DEFAULT_MAX_ITEMS: u64 = 1_000;
/// The most `fan_out.max_items` may say.
pub const MAX_ITEMS_LIMIT: u64 = 10_000;
/// The key of an instance's config that holds its item and index.
pub const INSTANCE_KEY: &str = "fan_out";

/// Why an expansion failed: the step fails permanently with this kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

impl Refusal {
    /// The stored error document.
    pub fn error_json(&self) -> String {
        json!({ "message": self.message, "kind": self.kind, "retryable": false }).to_string()
    }
}

/// The name of instance `i` of step `step`.
pub fn instance_name(step: &str, i: usize) -> String {
    format!("{step}[{i}]")
}

/// The index of `name` when it names an instance of `step`.
pub fn index_of(step: &str, name: &str) -> Option<usize> {
    name.strip_prefix(step)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether `path` is an items path a template may give: `$context[.a.b]` or
/// `$results.PARENT[.a.b]` with PARENT one of `parents`. Returns the problem if not.
pub fn check_path(path: &str, parents: &[String]) -> Result<(), String> {
    let mut parts = path.split('.');
    match parts.next() {
        Some("$context") => Ok(()),
        Some("$results") => match parts.next() {
            Some(p) if parents.iter().any(|x| x == p) => Ok(()),
            Some(p) => Err(format!(
                "`{path}` names `{p}`, which is not among the step's depends_on"
            )),
            None => Err(format!(
                "`{path}` must name a parent: `$results.STEP[.path]`"
            )),
        },
        _ => Err(format!(
            "`{path}` must start with `$context` or `$results.STEP` (a parent)"
        )),
    }
}

/// Follows a dotted path (a segment of digits indexes an array).
fn follow<'a>(mut v: &'a Value, segments: &[&str]) -> Option<&'a Value> {
    for s in segments {
        v = match v {
            Value::Object(m) => m.get(*s)?,
            Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The items of an expansion: the list at the stored `items` path of the step's config,
/// read from the task context or a parent's result; at most `max_items` of them.
pub fn items(
    config: &Value,
    context: &Value,
    results: &BTreeMap<String, Value>,
) -> Result<Vec<Value>, Refusal> {
    let path = config.get("items").and_then(Value::as_str).unwrap_or("");
    let max = config
        .get("max_items")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_ITEMS);
    let segments: Vec<&str> = path.split('.').collect();
    let found = match segments.as_slice() {
        ["$context", rest @ ..] => follow(context, rest),
        ["$results", parent, rest @ ..] => results.get(*parent).and_then(|r| follow(r, rest)),
        _ => None,
    };
    let Some(found) = found else {
        return Err(Refusal {
            kind: "fan_out_missing",
            message: format!("fan_out.items `{path}` names nothing"),
        });
    };
    let Value::Array(list) = found else {
        return Err(Refusal {
            kind: "fan_out_not_a_list",
            message: format!("fan_out.items `{path}` is {}, not a list", kind_of(found)),
        });
    };
    if list.len() as u64 > max {
        return Err(Refusal {
            kind: "fan_out_too_large",
            message: format!(
                "fan_out.items `{path}` has {} items; the step allows at most {max} (fan_out.max_items)",
                list.len()
            ),
        });
    }
    Ok(list.clone())
}

/// Whether `count` instances fit a task of `n_total` steps under `max_steps`
/// (`max_steps_per_task`).
pub fn check_task_size(n_total: i64, count: usize, max_steps: i64) -> Result<(), Refusal> {
    let after = n_total.saturating_add(count as i64);
    if after > max_steps {
        return Err(Refusal {
            kind: "fan_out_too_large",
            message: format!(
                "{count} instances would make the task {after} steps; the limit is {max_steps} (max_steps_per_task)"
            ),
        });
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The config of instance `index` of `count`: the step's own config (an object, or
/// none) with `fan_out: {item, index, count}` added.
pub fn instance_config(step_config: &Value, item: Value, index: usize, count: usize) -> Value {
    let mut m = match step_config.get("config") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    m.insert(
        INSTANCE_KEY.into(),
        json!({ "item": item, "index": index, "count": count }),
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_read_from_a_parent_or_the_context_and_checked() {
        let cfg = json!({ "items": "$results.split.items", "max_items": 2 });
        let mut results = BTreeMap::new();
        results.insert("split".to_owned(), json!({ "items": [1, 2] }));
        assert_eq!(
            items(&cfg, &json!({}), &results).unwrap(),
            vec![json!(1), json!(2)]
        );
        results.insert("split".to_owned(), json!({ "items": [1, 2, 3] }));
        assert_eq!(
            items(&cfg, &json!({}), &results).unwrap_err().kind,
            "fan_out_too_large"
        );
        results.insert("split".to_owned(), json!({ "items": "x" }));
        assert_eq!(
            items(&cfg, &json!({}), &results).unwrap_err().kind,
            "fan_out_not_a_list"
        );
        results.insert("split".to_owned(), json!({}));
        assert_eq!(
            items(&cfg, &json!({}), &results).unwrap_err().kind,
            "fan_out_missing"
        );
        let cfg = json!({ "items": "$context.list.0" });
        assert_eq!(
            items(&cfg, &json!({ "list": [[]] }), &BTreeMap::new()).unwrap(),
            Vec::<Value>::new()
        );
    }

    #[test]
    fn instance_names_round_trip_and_paths_are_checked() {
        assert_eq!(index_of("p", &instance_name("p", 12)), Some(12));
        assert_eq!(index_of("p", "p[x]"), None);
        assert_eq!(index_of("p", "q[1]"), None);
        let parents = vec!["split".to_owned()];
        assert!(check_path("$results.split.items", &parents).is_ok());
        assert!(check_path("$context", &parents).is_ok());
        assert!(check_path("$results.other", &parents).is_err());
        assert!(check_path("items", &parents).is_err());
        assert!(check_task_size(3, 7, 10).is_ok());
        assert_eq!(
            check_task_size(3, 8, 10).unwrap_err().kind,
            "fan_out_too_large"
        );
    }
}
