//! `docs/configuration.md` documents every `Config` field with its exact default and its
//! working `TASKER_*` variable, and lists nothing `Config` does not have.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use tasker_core::config::Config;

const DOC: &str = include_str!("../../docs/configuration.md");

/// The rows of the first table under the heading `heading`, as trimmed cells.
fn table_under(heading: &str) -> Vec<Vec<String>> {
    let mut lines = DOC.lines().skip_while(|l| l.trim() != heading);
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has no `{heading}` heading"
    );
    let rows: Vec<Vec<String>> = lines
        .take_while(|l| !l.starts_with('#'))
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            let l = l.trim();
            l[1..l.len() - 1]
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "no table under `{heading}`");
    // Drop the header and the `|---|` separator.
    rows.into_iter().skip(2).collect()
}

/// The text of a cell that is exactly one code span.
fn code(cell: &str) -> &str {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .filter(|c| !c.contains('`'))
        .unwrap_or_else(|| panic!("cell `{cell}` is not one code span"))
}

fn defaults() -> Map<String, Value> {
    match serde_json::to_value(Config::default()).unwrap() {
        Value::Object(m) => m,
        other => panic!("Config serializes to {other}"),
    }
}

struct Row {
    ty: String,
    default: String,
    var: String,
}

fn settings() -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for cells in table_under("## Settings") {
        assert_eq!(cells.len(), 5, "row {cells:?} does not have 5 columns");
        let field = code(&cells[0]).to_owned();
        let row = Row {
            ty: code(&cells[1]).to_owned(),
            default: code(&cells[2]).to_owned(),
            var: cells[3].clone(),
        };
        assert!(!cells[4].is_empty(), "`{field}` has no meaning documented");
        assert!(
            out.insert(field.clone(), row).is_none(),
            "`{field}` is listed twice"
        );
    }
    out
}

#[test]
fn every_field_is_documented_and_nothing_else() {
    let documented: BTreeSet<String> = settings().into_keys().collect();
    let fields: BTreeSet<String> = defaults().into_iter().map(|(k, _)| k).collect();
    let missing: Vec<_> = fields.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&fields).collect();
    assert!(
        missing.is_empty(),
        "Config fields missing from docs/configuration.md: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/configuration.md lists settings Config does not have: {extra:?}"
    );
}

#[test]
fn documented_defaults_and_types_are_exact() {
    let rows = settings();
    for (field, value) in defaults() {
        let Some(row) = rows.get(&field) else {
            continue;
        };
        match &value {
            Value::String(s) => assert_eq!(&row.default, s, "default of `{field}`"),
            other => {
                let doc: Value = serde_json::from_str(&row.default).unwrap_or_else(|e| {
                    panic!("default of `{field}` ({}) is not JSON: {e}", row.default)
                });
                assert_eq!(&doc, other, "default of `{field}`");
            }
        }
        let kind_ok = match &value {
            Value::String(_) => row.ty == "String",
            Value::Bool(_) => row.ty == "bool",
            Value::Number(n) => n.is_u64() && matches!(row.ty.as_str(), "u64" | "u32" | "usize"),
            Value::Object(_) => row.ty == "RetryPolicy",
            _ => false,
        };
        assert!(
            kind_ok,
            "type of `{field}` is documented as `{}` but its value is {value}",
            row.ty
        );
    }
}

/// Each documented variable really sets its field.
#[test]
fn documented_environment_variables_work() {
    let rows = settings();
    for (field, value) in defaults() {
        let Some(row) = rows.get(&field) else {
            continue;
        };
        let var = format!("TASKER_{}", field.to_ascii_uppercase());
        assert!(
            row.var.starts_with(&format!("`{var}`")),
            "`{field}` should name the variable `{var}`, not {}",
            row.var
        );
        let (raw, expected) = match &value {
            Value::Bool(b) => ((!b).to_string(), json!(!b)),
            Value::Number(n) => {
                let v = n.as_u64().unwrap() + 1;
                (v.to_string(), json!(v))
            }
            Value::String(_) => {
                let v = match field.as_str() {
                    "sqlite_synchronous" => "full",
                    "database_url" => "sqlite://elsewhere.db",
                    "clock" => "manual",
                    _ => "staging",
                };
                (v.to_owned(), json!(v))
            }
            Value::Object(m) => {
                let mut m = m.clone();
                m.insert("max_attempts".into(), json!(7));
                (Value::Object(m.clone()).to_string(), Value::Object(m))
            }
            other => panic!("unexpected default {other}"),
        };
        let env = |k: &str| (k == var).then(|| raw.clone());
        let config =
            Config::load_from(&Value::Null, &env).unwrap_or_else(|e| panic!("{var}={raw}: {e}"));
        let got = serde_json::to_value(config).unwrap()[&field].clone();
        assert_eq!(got, expected, "{var}={raw} did not set `{field}`");
    }
}

#[test]
fn retry_policy_fields_are_documented() {
    let documented: BTreeSet<String> = table_under("### Retry policy fields")
        .iter()
        .map(|cells| code(&cells[0]).to_owned())
        .collect();
    let fields: BTreeSet<String> = match &defaults()["default_retry"] {
        Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("default_retry is {other}"),
    };
    assert_eq!(documented, fields);
}

#[test]
fn precedence_is_documented_in_order() {
    let order = [
        "**Defaults**",
        "**`tasker.yaml`**",
        "**`environments.<TASKER_ENV>`**",
        "**`TASKER_*` environment variables**",
        "**The JSON object given to `open`**",
    ];
    let mut at = 0;
    for item in order {
        let pos = DOC[at..]
            .find(item)
            .unwrap_or_else(|| panic!("`{item}` missing or out of order"));
        at += pos + item.len();
    }
}

/// The example `tasker.yaml` in docs/configuration.md loads, and its environment
/// blocks apply as the page says.
#[test]
fn the_example_tasker_yaml_loads() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let start = doc.find("```yaml\n").expect("the page has a yaml example") + "```yaml\n".len();
    let len = doc[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasker.yaml");
    std::fs::write(&file, &doc[start..start + len]).unwrap();
    let path = file.to_str().unwrap().to_owned();
    for (env, synchronous) in [
        ("development", "normal"),
        ("test", "normal"),
        ("production", "full"),
    ] {
        let vars = |k: &str| match k {
            "TASKER_CONFIG" => Some(path.clone()),
            "TASKER_ENV" => Some(env.to_owned()),
            _ => None,
        };
        let c = tasker_core::config::Config::load_from(&serde_json::Value::Null, &vars)
            .unwrap_or_else(|e| panic!("the example does not load for {env}: {e}"));
        assert_eq!(c.lease_ms, 60_000, "{env}");
        assert_eq!(c.sqlite_synchronous, synchronous, "{env}");
        if env == "test" {
            assert_eq!(c.database_url, "sqlite::memory:");
            assert_eq!(c.default_retry.max_attempts, 1);
        }
    }
}
