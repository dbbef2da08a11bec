//! Templates: parsing (YAML or JSON), environment overrides, and validation into the
//! resolved form the engine stores and instantiates.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::model::limits::{self, ConcurrencySpec, RateLimitSpec};
use crate::model::retry::{RetryPolicy, RetrySpec};

/// A template as written by a person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDoc {
    pub namespace: String,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub defaults: DefaultsDoc,
    #[serde(default)]
    pub steps: Vec<StepDoc>,
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsDoc {
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub concurrency: Option<ConcurrencySpec>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDoc {
    pub name: String,
    /// Required, except for a step that waits for a signal (`wait_for`), which has none.
    #[serde(default)]
    pub handler: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub concurrency: Option<ConcurrencySpec>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Makes the step wait for a signal instead of running a handler (see `wait_for`).
    #[serde(default)]
    pub wait_for: Option<WaitForDoc>,
    /// Makes the step run its handler once per item of a list, at run time.
    #[serde(default)]
    pub fan_out: Option<FanOutDoc>,
}

/// `fan_out:` of a step: where the list is, and how long it may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanOutDoc {
    pub items: String,
    #[serde(default)]
    pub max_items: Option<u64>,
}

/// A resolved `fan_out`: the step expands into one instance per item of `items`, each
/// running `handler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanOut {
    pub items: String,
    pub max_items: u64,
    pub handler: String,
}

/// `wait_for:` of a step: the signal it waits for and how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForDoc {
    pub signal: String,
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// The handler name of a step that waits for a signal. Names starting with `tasker.`
/// are reserved for the engine: no template may declare one and no worker may claim one.
pub const SIGNAL_HANDLER: &str = "tasker.signal";
/// The prefix of every handler name the engine reserves.
pub const RESERVED_HANDLER_PREFIX: &str = "tasker.";
/// How long a step waits for its signal when `wait_for.timeout_s` is not given (7 days).
pub const DEFAULT_SIGNAL_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// A resolved `wait_for`: the step waits in state `waiting` until `send_signal` names
/// this signal, or fails with kind `signal_timeout` after `timeout_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitFor {
    pub signal: String,
    pub timeout_s: u64,
}

/// Overrides applied when `TASKER_ENV` names this environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentDoc {
    #[serde(default)]
    pub defaults: Option<DefaultsDoc>,
    #[serde(default)]
    pub steps: Vec<StepOverride>,
}

/// A per-environment change to one step. `config` keys are merged over the step's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepOverride {
    pub name: String,
    #[serde(default)]
    pub handler: Option<String>,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub concurrency: Option<ConcurrencySpec>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A validated template with every default and override applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub namespace: String,
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Steps in a topological order: every step after all of its parents.
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub handler: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub depends_on: Vec<String>,
    pub retry: RetryPolicy,
    pub timeout_s: u64,
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitFor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOut>,
    pub concurrency: Option<ConcurrencySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// Longest step timeout, in seconds (30 days): a timeout in milliseconds added to any
/// time stays far inside every integer type a store uses.
pub const MAX_TIMEOUT_S: u64 = 30 * 24 * 3600;
/// Largest absolute step priority (the task's priority is added to it).
pub const MAX_PRIORITY: i32 = 1_000_000;

/// Defaults and limits that come from the engine configuration.
#[derive(Debug, Clone)]
pub struct TemplateLimits {
    pub default_retry: RetryPolicy,
    pub default_timeout_s: u64,
    pub max_steps: usize,
    /// Deepest nesting of `input_schema` and of each step `config` (`max_json_depth`).
    pub max_json_depth: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            default_retry: RetryPolicy::default(),
            default_timeout_s: 300,
            max_steps: 100_000,
            max_json_depth: 64,
        }
    }
}

/// Parses YAML or JSON text (JSON is YAML) into a document.
pub fn parse_text(text: &str) -> Result<TemplateDoc> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        Error::invalid_template(
            "syntax",
            format!("template is not valid YAML or JSON: {e}"),
            json!({}),
        )
    })?;
    parse_value(value)
}

/// Reads a document from an already-parsed JSON value.
pub fn parse_value(value: Value) -> Result<TemplateDoc> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let what = plain_shape_error(&e.inner().to_string());
        if field.is_empty() || field == "." {
            Error::invalid_template(
                "shape",
                format!("template has an invalid shape: {what}"),
                json!({}),
            )
        } else {
            Error::invalid_template(
                "shape",
                format!("template has an invalid shape: {field}: {what}"),
                json!({ "field": field }),
            )
        }
    })
}

/// Serde's wording for people: `invalid type: string "high", expected i32` becomes
/// `expected an integer, got the string "high"`.
fn plain_shape_error(serde: &str) -> String {
    let Some((got, expected)) = serde.split_once(", expected ") else {
        return serde.to_owned();
    };
    let expected = match expected.trim() {
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "a borrowed string" => "a string",
        "a sequence" => "a list",
        "a map" => "a mapping",
        other => other,
    };
    let shown = got
        .strip_prefix("invalid type: ")
        .or_else(|| got.strip_prefix("invalid value: "))
        .map(|g| match g.split_once(' ') {
            Some(("string" | "integer" | "floating" | "boolean" | "sequence" | "map", _)) => {
                format!("the {g}")
            }
            _ => g.to_owned(),
        });
    match shown {
        Some(g) => format!("expected {expected}, got {g}"),
        None => format!("{got}, expected {expected}"),
    }
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl TemplateDoc {
    /// Applies the environment's overrides, fills defaults and validates everything.
    pub fn resolve(self, environment: &str, limits: &TemplateLimits) -> Result<Template> {
        let TemplateDoc {
            namespace,
            name,
            version,
            description,
            input_schema,
            mut defaults,
            mut steps,
            environments,
        } = self;
        for (field, value) in [
            ("namespace", &namespace),
            ("name", &name),
            ("version", &version),
        ] {
            if !valid_identifier(value) {
                return Err(Error::invalid_template(
                    "bad_identifier",
                    format!("template {field} `{value}` must be 1-128 characters of letters, digits, `_`, `-` or `.`"),
                    json!({ "field": field }),
                ));
            }
        }
        for (name, env) in &environments {
            if let Some(o) = env
                .steps
                .iter()
                .find(|o| !steps.iter().any(|s| s.name == o.name))
            {
                return Err(Error::invalid_template(
                    "unknown_step",
                    format!("environment `{name}` overrides unknown step `{}`", o.name),
                    json!({ "step": o.name, "environment": name }),
                ));
            }
        }
        if let Some(env) = environments.get(environment) {
            if let Some(d) = &env.defaults {
                if let Some(r) = &d.retry {
                    defaults.retry =
                        Some(merge_retry(defaults.retry.take().unwrap_or_default(), r));
                }
                defaults.timeout_s = d.timeout_s.or(defaults.timeout_s);
                defaults.priority = d.priority.or(defaults.priority);
                if d.concurrency.is_some() {
                    defaults.concurrency = d.concurrency.clone();
                }
                if d.rate_limit.is_some() {
                    defaults.rate_limit = d.rate_limit.clone();
                }
            }
            for o in &env.steps {
                if let Some(step) = steps.iter_mut().find(|s| s.name == o.name) {
                    apply_override(step, o);
                }
            }
        }

        if steps.is_empty() {
            return Err(Error::invalid_template(
                "empty",
                format!("template {namespace}/{name} {version} has no steps"),
                json!({}),
            ));
        }
        if steps.len() > limits.max_steps {
            return Err(Error::invalid_template(
                "too_many_steps",
                format!(
                    "template has {} steps; the limit is {}",
                    steps.len(),
                    limits.max_steps
                ),
                json!({ "limit": limits.max_steps }),
            ));
        }
        let too_deep = |what: String, v: &Value, details: Value| -> Result<()> {
            let depth = crate::api::validate::value_depth(v);
            if depth > limits.max_json_depth {
                return Err(Error::invalid_template(
                    "too_deep",
                    format!(
                        "{what} is nested {depth} levels deep; at most {} levels are accepted (max_json_depth)",
                        limits.max_json_depth
                    ),
                    details,
                ));
            }
            Ok(())
        };
        if let Some(schema) = &input_schema {
            too_deep(
                "input_schema".into(),
                schema,
                json!({ "field": "input_schema" }),
            )?;
        }
        for s in &steps {
            if let Some(c) = &s.config {
                too_deep(
                    format!("step `{}` config", s.name),
                    c,
                    json!({ "step": s.name }),
                )?;
            }
        }
        if let Some(schema) = &input_schema {
            if let Err(e) = jsonschema::validator_for(schema) {
                return Err(Error::invalid_template(
                    "bad_input_schema",
                    format!("input_schema is not a valid JSON Schema: {e}"),
                    json!({}),
                ));
            }
        }

        let base_retry = match &defaults.retry {
            Some(spec) => spec.resolve(&limits.default_retry).map_err(|m| {
                Error::invalid_template(
                    "bad_retry_policy",
                    format!("defaults.retry: {m}"),
                    json!({}),
                )
            })?,
            None => limits.default_retry,
        };
        let base_timeout = defaults.timeout_s.unwrap_or(limits.default_timeout_s);
        let base_priority = defaults.priority.unwrap_or(0);
        if let Some(c) = &defaults.concurrency {
            limits::check_concurrency(c, "defaults", json!({ "field": "defaults.concurrency" }))?;
        }
        if let Some(r) = &defaults.rate_limit {
            limits::check_rate_limit(r, "defaults", json!({ "field": "defaults.rate_limit" }))?;
        }

        let mut index: HashMap<&str, usize> = HashMap::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            if !valid_identifier(&s.name) {
                return Err(Error::invalid_template(
                    "bad_identifier",
                    format!("step name `{}` must be 1-128 characters of letters, digits, `_`, `-` or `.`", s.name),
                    json!({ "step": s.name }),
                ));
            }
            check_wait_for(s)?;
            check_fan_out(s)?;
            if s.wait_for.is_none() && s.handler.starts_with(RESERVED_HANDLER_PREFIX) {
                return Err(Error::invalid_template(
                    "reserved_handler",
                    format!(
                        "step `{}` handler `{}`: names starting with `{RESERVED_HANDLER_PREFIX}` are reserved for the engine",
                        s.name, s.handler
                    ),
                    json!({ "step": s.name, "handler": s.handler }),
                ));
            }
            if s.wait_for.is_none()
                && (s.handler.is_empty() || s.handler.len() > 256 || s.handler.contains('\0'))
            {
                return Err(Error::invalid_template(
                    "bad_handler",
                    format!(
                        "step `{}` needs a handler name of 1-256 characters without NUL",
                        s.name
                    ),
                    json!({ "step": s.name }),
                ));
            }
            if index.insert(s.name.as_str(), i).is_some() {
                return Err(Error::invalid_template(
                    "duplicate_step",
                    format!("step name `{}` is used more than once", s.name),
                    json!({ "step": s.name }),
                ));
            }
        }
        let mut parents: Vec<Vec<usize>> = Vec::with_capacity(steps.len());
        for s in &steps {
            let mut ps = Vec::with_capacity(s.depends_on.len());
            for d in &s.depends_on {
                let Some(&p) = index.get(d.as_str()) else {
                    return Err(Error::invalid_template(
                        "unknown_dependency",
                        format!("step `{}` depends on unknown step `{d}`", s.name),
                        json!({ "step": s.name, "dependency": d }),
                    ));
                };
                if ps.contains(&p) {
                    return Err(Error::invalid_template(
                        "duplicate_dependency",
                        format!("step `{}` lists dependency `{d}` twice", s.name),
                        json!({ "step": s.name, "dependency": d }),
                    ));
                }
                ps.push(p);
            }
            parents.push(ps);
        }
        let order = topological_order(&parents).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
            Error::invalid_template(
                "cycle",
                format!("dependency cycle: {}", cycle_text(&names)),
                json!({ "steps": names }),
            )
        })?;

        let mut resolved = Vec::with_capacity(steps.len());
        for i in order {
            let s = &steps[i];
            let retry = match &s.retry {
                Some(spec) => spec.resolve(&base_retry).map_err(|m| {
                    Error::invalid_template(
                        "bad_retry_policy",
                        format!("step `{}` retry: {m}", s.name),
                        json!({ "step": s.name }),
                    )
                })?,
                None => base_retry,
            };
            let timeout_s = s.timeout_s.unwrap_or(base_timeout);
            if timeout_s == 0 || timeout_s > MAX_TIMEOUT_S {
                return Err(Error::invalid_template(
                    "bad_timeout",
                    format!(
                        "step `{}` timeout_s must be between 1 and {MAX_TIMEOUT_S} (30 days), got {timeout_s}",
                        s.name
                    ),
                    json!({ "step": s.name }),
                ));
            }
            let priority = s.priority.unwrap_or(base_priority);
            if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&priority) {
                return Err(Error::invalid_template(
                    "bad_priority",
                    format!(
                        "step `{}` priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}, got {priority}",
                        s.name
                    ),
                    json!({ "step": s.name }),
                ));
            }
            let concurrency = s
                .concurrency
                .clone()
                .or_else(|| defaults.concurrency.clone());
            if let Some(c) = &concurrency {
                limits::check_concurrency(
                    c,
                    &format!("step `{}`", s.name),
                    json!({ "step": s.name }),
                )?;
            }
            let rate_limit = s.rate_limit.clone().or_else(|| defaults.rate_limit.clone());
            if let Some(r) = &rate_limit {
                limits::check_rate_limit(
                    r,
                    &format!("step `{}`", s.name),
                    json!({ "step": s.name }),
                )?;
            }
            let mut spec = StepSpec {
                name: s.name.clone(),
                handler: s.handler.clone(),
                description: s.description.clone(),
                depends_on: s.depends_on.clone(),
                retry,
                timeout_s,
                priority,
                config: s.config.clone(),
                concurrency,
                rate_limit,
                wait_for: None,
                fan_out: None,
            };
            if let Some(w) = &s.wait_for {
                // A waiting step runs no handler: the engine holds it (handler
                // `tasker.signal`), its timeout is the wait's, and its stored config names
                // the signal, so the stores find it without the template.
                let wait_s = w.timeout_s.unwrap_or(DEFAULT_SIGNAL_TIMEOUT_S);
                spec.handler = SIGNAL_HANDLER.to_owned();
                spec.timeout_s = wait_s;
                spec.retry.max_attempts = 1;
                spec.config = Some(json!({ "signal": w.signal, "timeout_s": wait_s }));
                spec.wait_for = Some(WaitFor {
                    signal: w.signal.clone(),
                    timeout_s: wait_s,
                });
            }
            if let Some(f) = &s.fan_out {
                // The engine expands the step (handler `tasker.fan_out`); its stored config
                // holds what the expansion needs, the instances' handler and config.
                let max_items = f
                    .max_items
                    .unwrap_or(crate::model::fan_out::DEFAULT_MAX_ITEMS);
                spec.handler = crate::model::fan_out::FAN_OUT_HANDLER.to_owned();
                spec.config = Some(json!({
                    "items": f.items, "max_items": max_items, "handler": s.handler, "config": s.config,
                }));
                spec.fan_out = Some(FanOut {
                    items: f.items.clone(),
                    max_items,
                    handler: s.handler.clone(),
                });
            }
            resolved.push(spec);
        }
        Ok(Template {
            namespace,
            name,
            version,
            description,
            input_schema,
            steps: resolved,
        })
    }
}

/// The rules of `wait_for`: a signal name like a step name, a timeout in range, and
/// nothing that only a handler would use.
fn check_wait_for(s: &StepDoc) -> Result<()> {
    let Some(w) = &s.wait_for else {
        return Ok(());
    };
    let bad = |message: String| {
        Err(Error::invalid_template(
            "bad_wait_for",
            format!("step `{}` wait_for: {message}", s.name),
            json!({ "step": s.name }),
        ))
    };
    if !valid_identifier(&w.signal) {
        return bad(format!(
            "signal `{}` must be 1-128 characters of letters, digits, `_`, `-` or `.`",
            w.signal
        ));
    }
    if let Some(t) = w.timeout_s {
        if t == 0 || t > MAX_TIMEOUT_S {
            return bad(format!(
                "timeout_s must be between 1 and {MAX_TIMEOUT_S} (30 days), got {t}"
            ));
        }
    }
    if !s.handler.is_empty() {
        return bad("a step that waits for a signal has no handler; remove `handler`".into());
    }
    for (field, set) in [
        ("config", s.config.is_some()),
        ("retry", s.retry.is_some()),
        ("timeout_s", s.timeout_s.is_some()),
    ] {
        if set {
            return bad(format!(
                "a step that waits for a signal takes no `{field}` (its timeout is wait_for.timeout_s)"
            ));
        }
    }
    Ok(())
}

/// The rules of `fan_out`: an items path into the context or a parent's result, a
/// bound in range, a handler for the instances, and a config they can carry an item in.
fn check_fan_out(s: &StepDoc) -> Result<()> {
    use crate::model::fan_out::{check_path, INSTANCE_KEY, MAX_ITEMS_LIMIT};
    let Some(f) = &s.fan_out else {
        return Ok(());
    };
    let bad = |message: String| {
        Err(Error::invalid_template(
            "bad_fan_out",
            format!("step `{}` fan_out: {message}", s.name),
            json!({ "step": s.name }),
        ))
    };
    if s.wait_for.is_some() {
        return bad("a step cannot both fan out and wait for a signal".into());
    }
    if let Err(m) = check_path(&f.items, &s.depends_on) {
        return bad(format!("items {m}"));
    }
    if let Some(n) = f.max_items {
        if n == 0 || n > MAX_ITEMS_LIMIT {
            return bad(format!(
                "max_items must be between 1 and {MAX_ITEMS_LIMIT}, got {n}"
            ));
        }
    }
    match &s.config {
        None => {}
        Some(Value::Object(m)) if !m.contains_key(INSTANCE_KEY) => {}
        Some(Value::Object(_)) => {
            return bad(format!(
                "config key `{INSTANCE_KEY}` is reserved: each instance finds its item there"
            ))
        }
        Some(_) => {
            return bad("config must be an object (each instance's item is added to it)".into())
        }
    }
    Ok(())
}

fn apply_override(step: &mut StepDoc, o: &StepOverride) {
    if let Some(h) = &o.handler {
        step.handler = h.clone();
    }
    if let Some(r) = &o.retry {
        step.retry = Some(merge_retry(step.retry.take().unwrap_or_default(), r));
    }
    step.timeout_s = o.timeout_s.or(step.timeout_s);
    step.priority = o.priority.or(step.priority);
    if o.concurrency.is_some() {
        step.concurrency = o.concurrency.clone();
    }
    if o.rate_limit.is_some() {
        step.rate_limit = o.rate_limit.clone();
    }
    if let Some(cfg) = &o.config {
        step.config = Some(match (step.config.take(), cfg) {
            (Some(Value::Object(mut base)), Value::Object(layer)) => {
                for (k, v) in layer {
                    base.insert(k.clone(), v.clone());
                }
                Value::Object(base)
            }
            (_, other) => other.clone(),
        });
    }
}

/// Lays the fields set in `layer` over `base`.
fn merge_retry(base: RetrySpec, layer: &RetrySpec) -> RetrySpec {
    RetrySpec {
        max_attempts: layer.max_attempts.or(base.max_attempts),
        backoff: layer.backoff.clone().or(base.backoff),
        base_ms: layer.base_ms.or(base.base_ms),
        max_ms: layer.max_ms.or(base.max_ms),
        jitter: layer.jitter.or(base.jitter),
    }
}

fn cycle_text(names: &[&str]) -> String {
    let mut s = names.join(" -> ");
    if let Some(first) = names.first() {
        s.push_str(" -> ");
        s.push_str(first);
    }
    s
}

/// Kahn's algorithm over parent lists. On a cycle, returns the steps on one cycle in
/// dependency order (each step depends on the one after it... closed back to the first).
fn topological_order(parents: &[Vec<usize>]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let n = parents.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending: Vec<usize> = parents.iter().map(Vec::len).collect();
    for (c, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(c);
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut queue: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    // Keep declaration order among independent steps: process the queue front to back.
    let mut head = 0;
    while head < queue.len() {
        let i = queue[head];
        head += 1;
        order.push(i);
        for &c in &children[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                queue.push(c);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every leftover step has a leftover parent; walking parents must revisit a step.
    let start = (0..n).find(|&i| pending[i] > 0).unwrap_or(0);
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut cur = start;
    loop {
        if let Some(&pos) = seen.get(&cur) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        seen.insert(cur, path.len());
        path.push(cur);
        cur = match parents[cur].iter().copied().find(|&p| pending[p] > 0) {
            Some(p) => p,
            None => return Err(path),
        };
    }
}

impl Template {
    /// The resolved template as JSON (what `get_template` returns and the store keeps).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn key(&self) -> (String, String, String) {
        (
            self.namespace.clone(),
            self.name.clone(),
            self.version.clone(),
        )
    }

    pub fn summary(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("namespace".into(), json!(self.namespace));
        m.insert("name".into(), json!(self.name));
        m.insert("version".into(), json!(self.version));
        m.insert("steps".into(), json!(self.steps.len()));
        m
    }
}

/// Compares versions numerically part by part (`1.10.0` > `1.9.3`), falling back to
/// text comparison for non-numeric parts.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let mut ai = a.split('.');
    let mut bi = b.split('.');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULFILL: &str = r#"
namespace: orders
name: fulfill
version: 1.0.0
input_schema: { type: object, required: [order_id] }
defaults:
  retry: { max_attempts: 3, backoff: exponential, base_ms: 1000, max_ms: 60000, jitter: 0.1 }
  timeout_s: 300
steps:
  - name: ship
    handler: ship_order
    depends_on: [reserve, charge]
    config: { carrier: ups }
  - name: validate
    handler: validate_order
  - name: reserve
    handler: reserve_inventory
    depends_on: [validate]
    retry: { max_attempts: 5 }
  - name: charge
    handler: charge_payment
    depends_on: [validate]
environments:
  test:
    defaults: { retry: { max_attempts: 9 } }
    steps: [ { name: charge, config: { sandbox: true } }, { name: ship, config: { fast: true } } ]
"#;

    fn resolve(text: &str, env: &str) -> Result<Template> {
        parse_text(text)?.resolve(env, &TemplateLimits::default())
    }

    #[test]
    fn resolves_defaults_overrides_and_order() {
        let t = resolve(FULFILL, "test").unwrap();
        let names: Vec<&str> = t.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["validate", "reserve", "charge", "ship"]);
        let reserve = &t.steps[1];
        assert_eq!(reserve.retry.max_attempts, 5);
        assert_eq!(reserve.retry.base_ms, 1000);
        // The environment's defaults merge field by field over the template's.
        assert_eq!(t.steps[0].retry.max_attempts, 9);
        assert_eq!(t.steps[0].retry.base_ms, 1000);
        assert_eq!(t.steps[2].config, Some(json!({"sandbox": true})));
        assert_eq!(
            t.steps[3].config,
            Some(json!({"carrier": "ups", "fast": true}))
        );
        let prod = resolve(FULFILL, "production").unwrap();
        assert_eq!(prod.steps[2].config, None);
        assert_eq!(prod.steps[0].retry.max_attempts, 3);
    }

    #[test]
    fn json_templates_parse_too() {
        let t = resolve(
            r#"{"namespace":"a","name":"b","version":"1","steps":[{"name":"x","handler":"h"}]}"#,
            "test",
        )
        .unwrap();
        assert_eq!(t.steps[0].retry, RetryPolicy::default());
        assert_eq!(t.steps[0].timeout_s, 300);
    }

    fn problem(text: &str) -> (String, Error) {
        let e = resolve(text, "test").unwrap_err();
        let p = e.details.as_ref().unwrap()["problem"]
            .as_str()
            .unwrap()
            .to_owned();
        (p, e)
    }

    #[test]
    fn rejections_name_the_problem() {
        let head = "namespace: a\nname: b\nversion: '1'\n";
        let cases = [
            ("steps: []", "empty", "no steps"),
            ("steps: [{name: x, handler: h}, {name: x, handler: h}]", "duplicate_step", "`x`"),
            ("steps: [{name: x, handler: h, depends_on: [nope]}]", "unknown_dependency", "`nope`"),
            ("steps: [{name: x, handler: h, depends_on: [x]}]", "cycle", "x -> x"),
            (
                "steps: [{name: a, handler: h, depends_on: [c]}, {name: b, handler: h, depends_on: [a]}, {name: c, handler: h, depends_on: [b]}, {name: d, handler: h}]",
                "cycle",
                "->",
            ),
            ("steps: [{name: x, handler: h, retry: {max_attempts: 0}}]", "bad_retry_policy", "`x`"),
            ("defaults: {retry: {jitter: 2}}\nsteps: [{name: x, handler: h}]", "bad_retry_policy", "jitter"),
            ("steps: [{name: x, handler: ''}]", "bad_handler", "`x`"),
            ("steps: [{name: x, handler: h, timeout_s: 0}]", "bad_timeout", "`x`"),
            ("steps: [{name: x, handler: h, colour: red}]", "shape", "colour"),
            ("input_schema: {type: 12}\nsteps: [{name: x, handler: h}]", "bad_input_schema", "input_schema"),
            ("environments: {test: {steps: [{name: y, config: {}}]}}\nsteps: [{name: x, handler: h}]", "unknown_step", "`y`"),
            ("environments: {prod: {steps: [{name: y}]}}\nsteps: [{name: x, handler: h}]", "unknown_step", "`prod`"),
            ("steps: [{name: 'a b', handler: h}]", "bad_identifier", "a b"),
        ];
        for (body, want, word) in cases {
            let (p, e) = problem(&format!("{head}{body}"));
            assert_eq!(p, want, "{body}: {e}");
            assert!(e.message.contains(word), "{body}: {}", e.message);
        }
        let (p, e) = problem("namespace: a\nname: b\nversion: '1'\nsteps: [{name: a, handler: h, depends_on: [c]}, {name: b, handler: h, depends_on: [a]}, {name: c, handler: h, depends_on: [b]}]");
        assert_eq!(p, "cycle");
        let mut on_cycle: Vec<String> = e.details.unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        on_cycle.sort();
        assert_eq!(on_cycle, ["a", "b", "c"]);
        let (p, _) = problem("- not a mapping");
        assert_eq!(p, "shape");
        let (p, _) = problem("steps: [ {");
        assert_eq!(p, "syntax");
    }

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.10.0", "1.9.3"), Greater);
        assert_eq!(compare_versions("1.0", "1.0.0"), Less);
        assert_eq!(compare_versions("2.0.0", "2.0.0"), Equal);
    }
}
