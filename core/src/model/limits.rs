//! Concurrency and rate limits of steps: the template shapes (`concurrency`,
//! `rate_limit`, on a step or in `defaults`), their validation, and the key each step
//! gets from its task's context when the task is created (stored on the step row; the
//! claim path of each store enforces the limits, see docs/scheduling.md).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Largest `concurrency.max` and `rate_limit.limit`.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Longest rate-limit window: one day.
pub const MAX_PER_MS: u64 = 24 * 3600 * 1000;
/// Longest key a step may get (a literal, or a context value).
pub const MAX_KEY_LEN: usize = 512;

/// Whose steps share a key: every template's (`global`, the default) or only this
/// template's (`template`; any version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Global,
    Template,
}

/// At most `max` steps with the same key run at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    pub key: String,
    pub max: u32,
    #[serde(default)]
    pub scope: Scope,
}

/// At most `limit` steps with the same key start in any `per_ms` window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Default: the step's handler name (as a literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub limit: u32,
    pub per_ms: u64,
    #[serde(default)]
    pub scope: Scope,
}

/// A key as written: a literal, or a path into the task's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyExpr {
    Literal(String),
    /// `$context.a.b`: the segments after `$context`.
    Context(Vec<String>),
}

impl KeyExpr {
    /// `$context.<field>[.<field>...]` reads the task's context (a numeric segment
    /// also indexes a list); `$$text` is the literal `$text`; any other string not
    /// starting with `$` is a literal.
    pub fn parse(text: &str) -> std::result::Result<KeyExpr, String> {
        if let Some(rest) = text.strip_prefix("$$") {
            return literal(format!("${rest}"));
        }
        if let Some(rest) = text.strip_prefix('$') {
            let Some(path) = rest.strip_prefix("context.") else {
                return Err(format!(
                    "key `{text}` starts with `$` but is not a context path: write `$context.<field>` \
                     to read the task's context, or `$${}` for a literal starting with `$`",
                    rest
                ));
            };
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(|s| s.is_empty()) {
                return Err(format!(
                    "key `{text}` has an empty segment; a context path is `$context.<field>[.<field>...]`"
                ));
            }
            return Ok(KeyExpr::Context(segments));
        }
        literal(text.to_owned())
    }

    /// The key for a task with `context`; `Err` names what is missing or unusable.
    pub fn resolve(&self, context: &Value) -> std::result::Result<String, String> {
        match self {
            KeyExpr::Literal(s) => Ok(s.clone()),
            KeyExpr::Context(path) => {
                let mut at = context;
                for seg in path {
                    let next = match at {
                        Value::Object(m) => m.get(seg),
                        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                        _ => None,
                    };
                    at = next.ok_or_else(|| "the task's context has no value there".to_owned())?;
                }
                let key = match at {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => return Err("the value there is null".into()),
                    _ => {
                        return Err(
                            "the value there is a list or mapping; a key must be a string, number or boolean"
                                .into(),
                        )
                    }
                };
                if key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('\0') {
                    return Err(format!(
                        "the value there must be 1-{MAX_KEY_LEN} bytes without NUL"
                    ));
                }
                Ok(key)
            }
        }
    }

    /// How the path is written in errors: `context.a.b`.
    pub fn field(&self) -> Option<String> {
        match self {
            KeyExpr::Literal(_) => None,
            KeyExpr::Context(p) => Some(format!("context.{}", p.join("."))),
        }
    }
}

fn literal(s: String) -> std::result::Result<KeyExpr, String> {
    if s.is_empty() || s.len() > MAX_KEY_LEN || s.contains('\0') {
        return Err(format!("a key must be 1-{MAX_KEY_LEN} bytes without NUL"));
    }
    Ok(KeyExpr::Literal(s))
}

/// Checks a step's (or the defaults') `concurrency`; `at` names where it was written.
pub fn check_concurrency(c: &ConcurrencySpec, at: &str, details: Value) -> Result<()> {
    KeyExpr::parse(&c.key).map_err(|m| {
        Error::invalid_template(
            "bad_concurrency",
            format!("{at} concurrency: {m}"),
            details.clone(),
        )
    })?;
    if c.max == 0 || c.max > MAX_LIMIT {
        return Err(Error::invalid_template(
            "bad_concurrency",
            format!(
                "{at} concurrency: max must be between 1 and {MAX_LIMIT}, got {}",
                c.max
            ),
            details,
        ));
    }
    Ok(())
}

/// Checks a step's (or the defaults') `rate_limit`.
pub fn check_rate_limit(r: &RateLimitSpec, at: &str, details: Value) -> Result<()> {
    if let Some(k) = &r.key {
        KeyExpr::parse(k).map_err(|m| {
            Error::invalid_template(
                "bad_rate_limit",
                format!("{at} rate_limit: {m}"),
                details.clone(),
            )
        })?;
    }
    if r.limit == 0 || r.limit > MAX_LIMIT {
        return Err(Error::invalid_template(
            "bad_rate_limit",
            format!(
                "{at} rate_limit: limit must be between 1 and {MAX_LIMIT}, got {}",
                r.limit
            ),
            details,
        ));
    }
    if r.per_ms == 0 || r.per_ms > MAX_PER_MS {
        return Err(Error::invalid_template(
            "bad_rate_limit",
            format!(
                "{at} rate_limit: per_ms must be between 1 and {MAX_PER_MS} (one day), got {}",
                r.per_ms
            ),
            details,
        ));
    }
    Ok(())
}

/// The limits one step of one task is created with (keys resolved and scoped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepLimits {
    pub concurrency: Option<(String, u32)>,
    /// Key, limit, window.
    pub rate: Option<(String, u32, u64)>,
}

impl StepLimits {
    pub fn is_limited(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some()
    }
}

/// The stored form of a key: `global:<key>` or `template:<namespace>/<name>:<key>`.
fn scoped(scope: Scope, namespace: &str, name: &str, key: &str) -> String {
    match scope {
        Scope::Global => format!("global:{key}"),
        Scope::Template => format!("template:{namespace}/{name}:{key}"),
    }
}

/// The limits of every step of `template` (in template order) for a task with
/// `context`; `None` when no step has one. A context path that the context lacks is an
/// `invalid_argument` naming the path and the step.
pub fn resolve_task(
    template: &crate::model::template::Template,
    context: &str,
) -> Result<Option<Vec<StepLimits>>> {
    if !template
        .steps
        .iter()
        .any(|s| s.concurrency.is_some() || s.rate_limit.is_some())
    {
        return Ok(None);
    }
    let ctx: Value = serde_json::from_str(context).map_err(|e| {
        Error::invalid_argument(format!("context: not readable JSON: {e}"))
            .with_details(json!({ "field": "context" }))
    })?;
    let (ns, name) = (&template.namespace, &template.name);
    let key_of = |step: &str, what: &str, text: &str| -> Result<String> {
        let expr = KeyExpr::parse(text)
            .map_err(|m| Error::invalid_argument(format!("step `{step}` {what} key: {m}")))?;
        expr.resolve(&ctx).map_err(|m| {
            let field = expr.field().unwrap_or_default();
            Error::invalid_argument(format!(
                "step `{step}` {what} key `{text}`: {m} (`{field}`); the task's context must give every limit key"
            ))
            .with_details(json!({ "field": field, "step": step }))
        })
    };
    let mut out = Vec::with_capacity(template.steps.len());
    for s in &template.steps {
        let concurrency = match &s.concurrency {
            Some(c) => Some((
                scoped(c.scope, ns, name, &key_of(&s.name, "concurrency", &c.key)?),
                c.max,
            )),
            None => None,
        };
        let rate = match &s.rate_limit {
            Some(r) => {
                let key = match &r.key {
                    Some(k) => key_of(&s.name, "rate_limit", k)?,
                    // A fan-out step's instances run the handler it names (the step
                    // itself is the engine's).
                    None => s
                        .fan_out
                        .as_ref()
                        .map_or(&s.handler, |f| &f.handler)
                        .clone(),
                };
                Some((scoped(r.scope, ns, name, &key), r.limit, r.per_ms))
            }
            None => None,
        };
        out.push(StepLimits { concurrency, rate });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_resolve() {
        let ctx = json!({"customer": {"id": 42, "tags": ["a", "b"]}, "name": "x", "none": null});
        let get = |t: &str| KeyExpr::parse(t).unwrap().resolve(&ctx);
        assert_eq!(get("$context.customer.id").unwrap(), "42");
        assert_eq!(get("$context.customer.tags.1").unwrap(), "b");
        assert_eq!(get("$context.name").unwrap(), "x");
        assert_eq!(get("stripe").unwrap(), "stripe");
        assert_eq!(get("$$literal").unwrap(), "$literal");
        assert!(get("$context.missing").is_err());
        assert!(get("$context.none").is_err());
        assert!(get("$context.customer").is_err());
        assert!(KeyExpr::parse("$ctx.a").is_err());
        assert!(KeyExpr::parse("$context").is_err());
        assert!(KeyExpr::parse("$context.a..b").is_err());
        assert!(KeyExpr::parse("").is_err());
    }
}
