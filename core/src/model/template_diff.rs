//! What differs between two definitions of one template version, for the `conflict`
//! a registration of edited content under an already registered version gets: the
//! message names the differences so the author sees what changed, and says to bump
//! the version (a task records the version it ran, so a version's steps never change
//! under it).

use serde_json::{json, Value};

use super::template::{StepSpec, Template};
use crate::error::{Error, ErrorCode};

/// Most differences named in the message (all of them are in `details`).
const MESSAGE_DIFFERENCES: usize = 5;

/// One difference: where (`steps.charge.handler`, `input_schema`, ...), the registered
/// value and the given one (`null` when absent).
pub fn differences(registered: &Template, given: &Template) -> Vec<Value> {
    let mut out = Vec::new();
    let mut field = |path: String, a: Value, b: Value| {
        if a != b {
            out.push(json!({ "path": path, "registered": a, "given": b }));
        }
    };
    field(
        "description".into(),
        json!(registered.description),
        json!(given.description),
    );
    field(
        "input_schema".into(),
        json!(registered.input_schema),
        json!(given.input_schema),
    );
    let names = |t: &Template| t.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let (before, after) = (names(registered), names(given));
    for s in &registered.steps {
        match given.steps.iter().find(|g| g.name == s.name) {
            None => field(format!("steps.{}", s.name), step_value(s), Value::Null),
            Some(g) => {
                let (a, b) = (step_value(s), step_value(g));
                if let (Value::Object(a), Value::Object(b)) = (&a, &b) {
                    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                    keys.sort();
                    keys.dedup();
                    for k in keys {
                        field(
                            format!("steps.{}.{k}", s.name),
                            a.get(k).cloned().unwrap_or(Value::Null),
                            b.get(k).cloned().unwrap_or(Value::Null),
                        );
                    }
                }
            }
        }
    }
    for g in &given.steps {
        if !before.contains(&g.name) {
            field(format!("steps.{}", g.name), Value::Null, step_value(g));
        }
    }
    // Same steps in another order is a difference only the order shows.
    let common = |v: &[String], other: &[String]| {
        v.iter()
            .filter(|n| other.contains(n))
            .cloned()
            .collect::<Vec<_>>()
    };
    if common(&before, &after) != common(&after, &before) {
        field("steps (order)".into(), json!(before), json!(after));
    }
    out
}

fn step_value(s: &StepSpec) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// The version after `version`: its last numeric part plus one (`1.0.0` -> `1.0.1`,
/// `v2` -> `v3`), or `None` when it has none.
pub fn next_version(version: &str) -> Option<String> {
    let end = version.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = version[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let n: u64 = version[start..end].parse().ok()?;
    Some(format!(
        "{}{}{}",
        &version[..start],
        n.checked_add(1)?,
        &version[end..]
    ))
}

fn short(v: &Value) -> String {
    let mut s = match v {
        Value::Null => "(absent)".to_owned(),
        other => other.to_string(),
    };
    if s.len() > 60 {
        let mut end = 57;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// The `conflict` for `given` against the different `registered` definition.
pub fn conflict(registered: &Template, given: &Template) -> Error {
    let diffs = differences(registered, given);
    let mut named: Vec<String> = diffs
        .iter()
        .take(MESSAGE_DIFFERENCES)
        .map(|d| {
            let path = d["path"].as_str().unwrap_or("");
            match (&d["registered"], &d["given"]) {
                (Value::Null, _) if path.starts_with("steps.") && !path[6..].contains('.') => {
                    format!("{path} added")
                }
                (_, Value::Null) if path.starts_with("steps.") && !path[6..].contains('.') => {
                    format!("{path} removed")
                }
                (a, b) => format!("{path}: {} -> {}", short(a), short(b)),
            }
        })
        .collect();
    if diffs.len() > MESSAGE_DIFFERENCES {
        named.push(format!("{} more", diffs.len() - MESSAGE_DIFFERENCES));
    }
    let next = next_version(&given.version);
    let bump = match &next {
        Some(v) => format!("register the edited template as a new version (e.g. version: {v})"),
        None => "register the edited template under a new version".to_owned(),
    };
    Error::new(
        ErrorCode::Conflict,
        format!(
            "template {}/{} {} is already registered with a different definition ({}); \
             {bump}, or pass replace: true to overwrite it (tasks already created keep their steps)",
            given.namespace,
            given.name,
            given.version,
            named.join("; ")
        ),
    )
    .with_details(json!({
        "namespace": given.namespace,
        "name": given.name,
        "version": given.version,
        "differences": diffs,
        "next_version": next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_versions() {
        assert_eq!(next_version("1.0.0").as_deref(), Some("1.0.1"));
        assert_eq!(next_version("v2").as_deref(), Some("v3"));
        assert_eq!(next_version("1.9-beta").as_deref(), Some("1.10-beta"));
        assert_eq!(next_version("beta"), None);
    }
}
