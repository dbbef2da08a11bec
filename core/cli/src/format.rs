//! Small formatting helpers for values that come out of the JSON API.

use serde_json::Value;

/// A duration in milliseconds for people: `850ms`, `2.4s`, `3m05s`, `2h07m`; `-` when
/// unknown.
pub fn duration(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A JSON scalar as a table cell: strings without quotes, `-` for null or missing.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 timestamp as `YYYY-MM-DD HH:MM:SS` (UTC), or `-`.
pub fn time(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() >= 19 => s[..19].replace('T', " "),
        Some(s) => s.to_owned(),
        None => "-".into(),
    }
}

/// The `message` of a stored step error document, if any.
pub fn error_message(error: &Value) -> Option<String> {
    match error {
        Value::Null => None,
        Value::Object(m) => m
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| Some(error.to_string())),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(850)), "850ms");
        assert_eq!(duration(Some(2_400)), "2.4s");
        assert_eq!(duration(Some(185_000)), "3m05s");
        assert_eq!(duration(Some(7_620_000)), "2h07m");
    }

    #[test]
    fn cells_and_times() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("w1")), "w1");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(
            time(&json!("2025-01-02T03:04:05.678Z")),
            "2025-01-02 03:04:05"
        );
        assert_eq!(
            error_message(&json!({"message": "boom"})),
            Some("boom".into())
        );
        assert_eq!(error_message(&json!(null)), None);
    }
}
