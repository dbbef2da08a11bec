//! The JSON text of the worker session requests, built around text JavaScript already
//! encoded (the outcomes), so nothing is parsed and encoded twice.

/// `{"worker_id":ID,"max":MAX,"wait_ms":WAIT}`: a `worker_next` request.
pub fn next_request(worker_id: &str, max: u32, wait_ms: u32) -> String {
    let mut out = String::with_capacity(48 + worker_id.len());
    out.push_str("{\"worker_id\":");
    push_str_json(&mut out, worker_id);
    push_next_fields(&mut out, max, wait_ms);
    out.push('}');
    out
}

/// `{"worker_id":ID,"outcomes":OUTCOMES,"next":{"max":MAX,"wait_ms":WAIT}}`: a
/// `worker_report` request; `outcomes_json` is a JSON array made by JavaScript, and
/// `next` is left out when not given.
pub fn report_request(worker_id: &str, outcomes_json: &str, next: Option<(u32, u32)>) -> String {
    let mut out = String::with_capacity(64 + worker_id.len() + outcomes_json.len());
    out.push_str("{\"worker_id\":");
    push_str_json(&mut out, worker_id);
    out.push_str(",\"outcomes\":");
    out.push_str(outcomes_json);
    if let Some((max, wait_ms)) = next {
        out.push_str(",\"next\":{");
        push_next_fields(&mut out, max, wait_ms);
        out.push('}');
    }
    out.push('}');
    out
}

/// `{"worker_id":ID,"grace_ms":GRACE}` (`worker_close`) or `{"worker_id":ID}`.
pub fn session_request(worker_id: &str, grace_ms: Option<u32>) -> String {
    let mut out = String::with_capacity(40 + worker_id.len());
    out.push_str("{\"worker_id\":");
    push_str_json(&mut out, worker_id);
    if let Some(g) = grace_ms {
        out.push_str(",\"grace_ms\":");
        out.push_str(&g.to_string());
    }
    out.push('}');
    out
}

fn push_next_fields(out: &mut String, max: u32, wait_ms: u32) {
    if !out.ends_with('{') {
        out.push(',');
    }
    out.push_str("\"max\":");
    out.push_str(&max.to_string());
    out.push_str(",\"wait_ms\":");
    out.push_str(&wait_ms.to_string());
}

fn push_str_json(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}
