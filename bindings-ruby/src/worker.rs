//! The native half of `Tasker::Worker`: core's worker session operations
//! (`worker_next`, `worker_report`) with their steps handed to Ruby lean. A step comes
//! back as a flat Array with its context, config and parent results still JSON text;
//! `Tasker::Step` parses each of them only when a handler first reads it. Outcomes go
//! out as JSON written straight from the handlers' return values.
//!
//! Everything else about a session (claiming, leases, retries, timeouts, releases) is
//! core's: these functions only translate.

use magnus::value::ReprValue;
use magnus::{Error, Integer, RArray, RHash, RString, Ruby, Value};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::{decode, encode_into};
use crate::errors::to_rb;
use crate::handle::{call_interruptible, CancelToken, Handle};

/// One claimed step as core's worker operations return it.
#[derive(Deserialize)]
struct WireStep<'a> {
    step_id: i64,
    task_id: i64,
    #[serde(borrow)]
    step_name: &'a RawValue,
    #[serde(borrow)]
    handler: &'a RawValue,
    attempt: i64,
    max_attempts: i64,
    #[serde(default)]
    timeout_ms: Option<i64>,
    #[serde(default, borrow)]
    lease_expires_at: Option<&'a RawValue>,
    #[serde(default, borrow)]
    context: Option<&'a RawValue>,
    #[serde(default, borrow)]
    config: Option<&'a RawValue>,
    #[serde(default, borrow)]
    results: Option<&'a RawValue>,
    #[serde(borrow)]
    claim_token: &'a RawValue,
}

#[derive(Deserialize)]
struct WireResult<'a> {
    #[serde(default, borrow)]
    outcome: Option<&'a str>,
}

/// The parts of a `worker_next` / `worker_report` response a driver needs.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(default, borrow)]
    steps: Vec<WireStep<'a>>,
    #[serde(default, borrow)]
    stop: Option<&'a RawValue>,
    #[serde(default)]
    idle: bool,
    #[serde(default, borrow)]
    results: Vec<&'a RawValue>,
}

/// A JSON string token as Ruby text (names and timestamps are short strings).
fn json_str(ruby: &Ruby, raw: &RawValue) -> Result<Value, Error> {
    match serde_json::from_str::<std::borrow::Cow<'_, str>>(raw.get()) {
        Ok(s) => Ok(ruby.str_new(&s).as_value()),
        Err(_) => decode(ruby, raw.get()),
    }
}

fn raw_text(ruby: &Ruby, raw: Option<&RawValue>) -> Value {
    match raw {
        Some(r) => ruby.str_new(r.get()).as_value(),
        None => ruby.qnil().as_value(),
    }
}

/// `[steps, stop, idle, results]`: each step a flat Array (see `Tasker::Step.from_wire`),
/// stop signals as Hashes, and the report results whose outcome is not `completed`.
fn page_to_ruby(ruby: &Ruby, text: &str) -> Result<RArray, Error> {
    let page: Page = serde_json::from_str(text).map_err(|e| {
        Error::new(
            ruby.exception_runtime_error(),
            format!("unexpected worker response from the engine: {e}"),
        )
    })?;
    let steps = ruby.ary_new_capa(page.steps.len());
    for s in &page.steps {
        let row = ruby.ary_new_capa(12);
        row.push(s.step_id)?;
        row.push(s.task_id)?;
        row.push(json_str(ruby, s.step_name)?)?;
        row.push(json_str(ruby, s.handler)?)?;
        row.push(s.attempt)?;
        row.push(s.max_attempts)?;
        row.push(s.timeout_ms)?;
        row.push(match s.lease_expires_at {
            Some(r) if r.get() != "null" => json_str(ruby, r)?,
            _ => ruby.qnil().as_value(),
        })?;
        row.push(raw_text(ruby, s.context))?;
        row.push(raw_text(ruby, s.config))?;
        row.push(raw_text(ruby, s.results))?;
        row.push(json_str(ruby, s.claim_token)?)?;
        steps.push(row)?;
    }
    let stop = match page.stop {
        Some(r) => decode(ruby, r.get())?,
        None => ruby.ary_new().as_value(),
    };
    let unusual = ruby.ary_new();
    for r in &page.results {
        let outcome: WireResult =
            serde_json::from_str(r.get()).unwrap_or(WireResult { outcome: None });
        if outcome.outcome != Some("completed") {
            unusual.push(decode(ruby, r.get())?)?;
        }
    }
    let out = ruby.ary_new_capa(4);
    out.push(steps)?;
    out.push(stop)?;
    out.push(page.idle)?;
    out.push(unusual)?;
    Ok(out)
}

fn int_arg(ruby: &Ruby, v: Value, what: &str) -> Result<i64, Error> {
    match Integer::from_value(v) {
        Some(i) => i.to_i64(),
        None => Err(Error::new(
            ruby.exception_type_error(),
            format!(
                "{what} must be an Integer, got {}",
                crate::convert::class_name(v)
            ),
        )),
    }
}

fn push_worker_id(ruby: &Ruby, req: &mut Vec<u8>, worker_id: Value) -> Result<(), Error> {
    req.extend_from_slice(b"{\"worker_id\":");
    encode_into(ruby, worker_id, "worker_id", req)
}

impl Handle {
    /// `#worker_next(worker_id, max, wait_ms, cancel)`: `[steps, stop, idle, []]`, or
    /// nil when the wait was cut short by `cancel` (a `Tasker::Native::Cancel` or nil).
    pub fn worker_next(
        ruby: &Ruby,
        rb_self: &Self,
        worker_id: Value,
        max: Value,
        wait_ms: Value,
        cancel: Value,
    ) -> Result<Value, Error> {
        let max = int_arg(ruby, max, "max")?;
        let wait_ms = int_arg(ruby, wait_ms, "wait_ms")?;
        let mut req = Vec::with_capacity(64);
        push_worker_id(ruby, &mut req, worker_id)?;
        req.extend_from_slice(format!(",\"max\":{max},\"wait_ms\":{wait_ms}}}").as_bytes());
        let req = String::from_utf8(req)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        let out = if wait_ms > 0 {
            let token: Option<&CancelToken> = if cancel.is_nil() {
                None
            } else {
                Some(magnus::TryConvert::try_convert(cancel)?)
            };
            match call_interruptible(ruby, rb_self.tasker(), "worker_next", &req, token)? {
                Some(r) => r.map_err(|e| to_rb(ruby, e))?,
                None => return Ok(ruby.qnil().as_value()),
            }
        } else {
            rb_self.run(ruby, "worker_next", &req)?
        };
        Ok(page_to_ruby(ruby, &out)?.as_value())
    }

    /// `#worker_report(worker_id, outcomes, next_max)`: records outcomes and, when
    /// `next_max` is a positive Integer, claims up to that many steps in the same round
    /// trip. Each outcome is `[step_id, :ok, result]`, `[step_id, :error, error_hash]` or
    /// `[step_id, :release]` or `[step_id, :wait_for_children]`; a result that is not JSON data is reported as
    /// `invalid_result` with the reason, failing only that step. Returns
    /// `[steps, stop, idle, results]` (results: those not `completed`).
    pub fn worker_report(
        ruby: &Ruby,
        rb_self: &Self,
        worker_id: Value,
        outcomes: RArray,
        next_max: Value,
    ) -> Result<Value, Error> {
        let mut req = Vec::with_capacity(48 + outcomes.len() * 40);
        push_worker_id(ruby, &mut req, worker_id)?;
        req.extend_from_slice(b",\"outcomes\":[");
        let ok = ruby.to_symbol("ok");
        let error = ruby.to_symbol("error");
        let release = ruby.to_symbol("release");
        let wait = ruby.to_symbol("wait_for_children");
        for i in 0..outcomes.len() {
            let item: RArray = outcomes.entry(i as isize)?;
            let step_id = int_arg(ruby, item.entry(0)?, "step_id")?;
            let kind: Value = item.entry(1)?;
            if i > 0 {
                req.push(b',');
            }
            req.extend_from_slice(format!("{{\"step_id\":{step_id},").as_bytes());
            if kind.eql(ok)? {
                let mark = req.len();
                req.extend_from_slice(b"\"result\":");
                if let Err(e) = encode_into(ruby, item.entry(2)?, "result", &mut req) {
                    req.truncate(mark);
                    req.extend_from_slice(b"\"invalid_result\":");
                    let why = exception_message(e);
                    let _ = serde_json::to_writer(&mut req, &why);
                }
            } else if kind.eql(error)? {
                req.extend_from_slice(b"\"error\":");
                let doc: RHash = item.entry(2)?;
                encode_into(ruby, doc.as_value(), "error", &mut req)?;
            } else if kind.eql(release)? {
                req.extend_from_slice(b"\"release\":true");
            } else if kind.eql(wait)? {
                req.extend_from_slice(b"\"wait_for_children\":true");
            } else {
                return Err(Error::new(
                    ruby.exception_arg_error(),
                    format!(
                        "outcome kind must be :ok, :error, :release or :wait_for_children, got {}",
                        kind.inspect()
                    ),
                ));
            }
            req.push(b'}');
        }
        req.push(b']');
        if !next_max.is_nil() {
            let n = int_arg(ruby, next_max, "next_max")?;
            if n > 0 {
                req.extend_from_slice(
                    format!(",\"next\":{{\"max\":{n},\"wait_ms\":0}}").as_bytes(),
                );
            }
        }
        req.push(b'}');
        let req = String::from_utf8(req)
            .map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
        let out = rb_self.run(ruby, "worker_report", &req)?;
        Ok(page_to_ruby(ruby, &out)?.as_value())
    }
}

/// The message of an exception (`e.message`), for reports.
fn exception_message(e: Error) -> String {
    match e.value() {
        Some(v) => v
            .funcall::<_, _, RString>("message", ())
            .ok()
            .and_then(|m| m.to_string().ok())
            .unwrap_or_else(|| e.to_string()),
        None => e.to_string(),
    }
}

/// `Tasker::Native.drain_logs(max)`: up to `max` log lines the engine wrote since the
/// last call, oldest first, as `[level, target, message]` (see `tasker_core::logs`).
pub fn drain_logs(max: usize) -> Vec<(&'static str, String, String)> {
    tasker_core::logs::drain(max)
        .into_iter()
        .map(|r| (r.level, r.target, r.message))
        .collect()
}
