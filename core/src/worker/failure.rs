//! Failure documents built by the worker runtime: the ones core writes itself (a result
//! too large, a result the host could not serialise, a timeout), and any host's
//! document cut down to the payload limit so that the failure is never lost.

use serde_json::{json, Map, Value};

use crate::engine::StepFailure;

/// Fields a document keeps when everything else has to go.
const CORE_FIELDS: &[&str] = &[
    "message",
    "kind",
    "retryable",
    "retry_after_ms",
    "exception",
];

fn failure(message: String, kind: &str, retryable: bool, details: Option<Value>) -> StepFailure {
    let mut doc = Map::new();
    doc.insert("message".into(), json!(message));
    doc.insert("kind".into(), json!(kind));
    doc.insert("retryable".into(), json!(retryable));
    if let Some(d) = details {
        doc.insert("details".into(), d);
    }
    StepFailure {
        message,
        kind: kind.to_owned(),
        retryable,
        retry_after_ms: None,
        document: Value::Object(doc),
    }
}

/// A result over `max_payload_bytes`: the step fails for good (a retry would produce
/// the same result).
pub fn result_too_large(handler: &str, size: usize, limit: usize) -> StepFailure {
    failure(
        format!(
            "handler `{handler}` returned a result of {size} bytes; the limit is {limit} (max_payload_bytes)"
        ),
        "result_too_large",
        false,
        Some(json!({ "size": size, "limit": limit })),
    )
}

/// A result the host could not turn into JSON: the step fails for good.
pub fn invalid_result(handler: &str, why: &str) -> StepFailure {
    let why: String = why.chars().take(2000).collect();
    failure(
        format!("handler `{handler}` returned a result that cannot be stored as JSON: {why}"),
        "invalid_result",
        false,
        None,
    )
}

/// The step ran past its timeout: a failed attempt, retried under the step's policy.
pub fn timed_out(timeout_ms: i64) -> StepFailure {
    failure(
        format!("the step ran past its timeout of {timeout_ms} ms"),
        "timeout",
        true,
        Some(json!({ "timeout_ms": timeout_ms })),
    )
}

fn size(doc: &Map<String, Value>) -> usize {
    serde_json::to_string(doc).map_or(usize::MAX, |s| s.len())
}

/// Keeps the last `keep` bytes of `s` (on a character boundary), marked as cut.
fn tail(s: &str, keep: usize) -> String {
    let mut start = s.len().saturating_sub(keep);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[{} bytes cut] {}", start, &s[start..])
}

/// Keeps the first `keep` bytes of `s` (on a character boundary), marked as cut.
fn head(s: &str, keep: usize) -> String {
    let mut end = keep.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [{} bytes cut]", &s[..end], s.len() - end)
}

/// Cuts the longest strings other than the message and kind (keeping their end) until
/// the document fits; returns whether it does.
fn cut_strings(doc: &mut Map<String, Value>, limit: usize) -> bool {
    let mut long: Vec<(String, usize)> = doc
        .iter()
        .filter(|(k, _)| k.as_str() != "message" && k.as_str() != "kind")
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.len())))
        .collect();
    long.sort_by_key(|b| std::cmp::Reverse(b.1));
    for (key, _) in long {
        // Cut again while still over (the marker adds a few bytes).
        for _ in 0..4 {
            let over = size(doc).saturating_sub(limit);
            if over == 0 {
                return true;
            }
            let Some(Value::String(s)) = doc.get(&key) else {
                break;
            };
            if s.is_empty() {
                break;
            }
            // Escapes make a string's JSON longer than its text: scale the cut.
            let json_len = serde_json::to_string(s).map_or(s.len(), |j| j.len()).max(1);
            let budget = json_len.saturating_sub(over + 32);
            let cut = tail(s, s.len() * budget / json_len);
            doc.insert(key.clone(), Value::String(cut));
        }
    }
    size(doc) <= limit
}

/// Cuts a failure document to at most `limit` bytes of JSON: the longest strings other
/// than the message and kind keep their end first (a traceback's last frames say the
/// most), then every field but the core ones is dropped, then the message is cut.
/// The document then says `"truncated": true`.
pub fn fit(mut f: StepFailure, limit: usize) -> StepFailure {
    let Value::Object(doc) = &mut f.document else {
        return f;
    };
    if size(doc) <= limit {
        return f;
    }
    doc.insert("truncated".into(), json!(true));
    // 1. Long strings keep their end, longest first; 2. the same without `details`.
    if cut_strings(doc, limit) {
        return f;
    }
    if doc.remove("details").is_some() && cut_strings(doc, limit) {
        return f;
    }
    // 2. Only the core fields.
    doc.retain(|k, _| CORE_FIELDS.contains(&k.as_str()) || k == "truncated");
    let over = size(doc).saturating_sub(limit);
    if over == 0 {
        return f;
    }
    // 3. The message.
    let message = doc
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let cut = head(&message, message.len().saturating_sub(over + 32));
    f.message = cut.clone();
    doc.insert("message".into(), json!(cut));
    if size(doc) > limit {
        // A limit too small for even the core fields: keep message and kind only.
        doc.retain(|k, _| k == "message" || k == "kind");
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_doc(traceback: &str, message: &str) -> StepFailure {
        StepFailure {
            message: message.into(),
            kind: "ValueError".into(),
            retryable: true,
            retry_after_ms: None,
            document: json!({ "message": message, "kind": "ValueError", "retryable": true,
                              "traceback": traceback, "details": { "x": "y".repeat(50) } }),
        }
    }

    #[test]
    fn a_document_within_the_limit_is_unchanged() {
        let f = host_doc("short", "m");
        let before = f.document.clone();
        assert_eq!(fit(f, 10_000).document, before);
    }

    #[test]
    fn a_long_traceback_keeps_its_end() {
        let tb = format!("{}LAST FRAME", "frame\n".repeat(1000));
        let f = fit(host_doc(&tb, "boom"), 400);
        let doc = f.document.as_object().unwrap();
        assert!(serde_json::to_string(doc).unwrap().len() <= 400);
        assert!(
            doc["traceback"].as_str().unwrap().ends_with("LAST FRAME"),
            "{doc:?}"
        );
        assert_eq!(doc["message"], "boom");
        assert_eq!(doc["truncated"], true);
    }

    #[test]
    fn a_huge_message_is_cut_and_extras_dropped() {
        let f = fit(host_doc("tb", &"é".repeat(5000)), 300);
        let doc = f.document.as_object().unwrap();
        assert!(serde_json::to_string(doc).unwrap().len() <= 300, "{doc:?}");
        assert!(!doc.contains_key("details"));
        assert!(doc["message"].as_str().unwrap().starts_with('é'));
        assert_eq!(f.message, doc["message"].as_str().unwrap());
    }
}
