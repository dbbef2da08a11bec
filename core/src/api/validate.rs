//! The one request validator every operation goes through, before any SQL runs.
//!
//! A request is read into its fields (each kept as the exact JSON text given), then each
//! operation takes the fields it knows with a typed, bounded accessor; a field left over
//! is refused as unknown. The rules are the same for every operation and every store:
//!
//! - the request is a JSON object (an array is never read positionally), each field given
//!   once;
//! - integers are JSON integers inside a documented range ([`MAX_ID`] for ids and
//!   cursors, [`MAX_DURATION_MS`] for durations, the `*_max` settings for page sizes);
//! - strings have a bounded length and no NUL character (PostgreSQL cannot store one in
//!   text, so SQLite refuses it too);
//! - a payload (`context`, `result`, an error document, a template) is nested at most
//!   `max_json_depth` levels and holds no escaped lone surrogate (which is not a Unicode
//!   character, so no binding could read it back); its text is kept byte for byte.
//!
//! Errors are `invalid_argument` and name the field, what was expected and what was given:
//! `task_id: expected an integer between 1 and 9007199254740991, got "one"`.

use std::fmt::{self, Display, Write as _};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::{Error, ErrorCode, Result};

/// The largest id or cursor: the largest integer every binding's JSON reads exactly
/// (2^53 - 1, JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const MAX_ID: i64 = 9_007_199_254_740_991;
/// The longest duration a request may give in milliseconds (`lease_ms`, `delay_ms`,
/// `retry_after_ms`, `wait_ms`): 30 days.
pub const MAX_DURATION_MS: i64 = 30 * 24 * 3600 * 1000;
/// Largest absolute priority (a task's, a template step's): their sum stays far inside
/// every integer type a store uses.
pub const MAX_PRIORITY: i64 = 1_000_000;
/// Longest free-text string a request may give (`reason`, `worker_id`...), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Largest `max_json_depth` setting: a payload at the limit plus the response around it
/// stays well inside the 128 levels JSON parsers (serde_json, the bindings) accept.
pub const MAX_JSON_DEPTH_LIMIT: usize = 100;

/// Nesting depth and Unicode soundness of a JSON text, found in one pass without
/// building a value (so arbitrarily deep text is measured without recursion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Deepest nesting of arrays and objects (`1` for `{}` or `[1]`, `0` for a scalar).
    pub depth: usize,
    /// Byte offset of the first escaped lone surrogate (`"\ud800"`), if any.
    pub lone_surrogate: Option<usize>,
}

/// Measures `text`, which must be syntactically valid JSON (a `RawValue`'s text).
pub fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut lone = None;
    let mut i = 0;
    let hex4 = |at: usize| -> Option<u32> {
        let s = text.get(at..at + 4)?;
        u32::from_str_radix(s, 16).ok()
    };
    while i < b.len() {
        match b[i] {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        if b.get(i + 1) == Some(&b'u') {
                            let start = i;
                            let unit = hex4(i + 2).unwrap_or(0);
                            i += 6;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate must be followed by an escaped low one.
                                let low = if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u')
                                {
                                    hex4(i + 2)
                                } else {
                                    None
                                };
                                match low {
                                    Some(l) if (0xDC00..0xE000).contains(&l) => i += 6,
                                    _ => {
                                        lone.get_or_insert(start);
                                    }
                                }
                            } else if (0xDC00..0xE000).contains(&unit) {
                                lone.get_or_insert(start);
                            }
                            continue;
                        }
                        i += 2;
                        continue;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Scan {
        depth: deepest,
        lone_surrogate: lone,
    }
}

/// A short rendering of what was given, for error messages.
fn shown(raw: &str) -> String {
    const MAX: usize = 40;
    let raw = raw.trim();
    if raw.len() <= MAX {
        return raw.to_owned();
    }
    let mut end = MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &raw[..end])
}

fn kind_of(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The error for a field: `invalid_argument` with `details.field`.
pub fn field_error(field: &(impl Display + ?Sized), message: impl Display) -> Error {
    let field = field.to_string();
    Error::invalid_argument(format!("{field}: {message}")).with_details(json!({ "field": field }))
}

/// A field's full name in messages (`items[3].context`), written out only when a message
/// is made: reading a valid request builds no string for it (a batch of 100 tasks has
/// about a thousand fields).
#[derive(Debug, Clone, Copy)]
pub struct FieldPath<'a> {
    prefix: &'a str,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> FieldPath<'a> {
    /// Element `index` of the array field `name` (`handlers[2]`).
    pub fn item(name: &'a str, index: usize) -> FieldPath<'a> {
        FieldPath {
            prefix: "",
            name,
            index: Some(index),
        }
    }
}

impl Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix)?;
        f.write_str(self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

/// The fields of one JSON object, each as its raw text, in the order given.
pub struct Fields {
    /// Prefix naming this object in messages (`""` for the request, `"claim."`...).
    prefix: String,
    fields: Vec<(String, Box<RawValue>)>,
    max_depth: usize,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = std::result::Result<Vec<(String, Box<RawValue>)>, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut fields: Vec<(String, Box<RawValue>)> = Vec::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: Box<RawValue> = map.next_value()?;
            if fields.iter().any(|(k, _)| *k == key) {
                duplicate.get_or_insert(key);
            } else {
                fields.push((key, value));
            }
        }
        Ok(match duplicate {
            Some(k) => Err(k),
            None => Ok(fields),
        })
    }
}

impl Fields {
    /// Reads a whole request. Malformed JSON is `invalid_json`; anything but an object
    /// is `invalid_argument`.
    pub fn parse_request(text: &str, max_depth: usize) -> Result<Fields> {
        let syntax = |e: serde_json::Error| {
            Error::new(
                ErrorCode::InvalidJson,
                format!("request is not valid JSON: {e}"),
            )
        };
        // Syntax first (iterative, any depth): broken JSON is reported as broken JSON
        // whatever its shape.
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(syntax)?;
        Self::from_raw("", "request", &raw, max_depth)
    }

    /// Reads an object field (`name` is how messages call it).
    fn from_raw(prefix: &str, name: &str, raw: &RawValue, max_depth: usize) -> Result<Fields> {
        let text = raw.get();
        if !text.trim_start().starts_with('{') {
            let message = format!("expected a JSON object, got {}", kind_of(text));
            return Err(if prefix.is_empty() && name == "request" {
                Error::invalid_argument(format!("request: {message}"))
            } else {
                field_error(name, message)
            });
        }
        let mut de = serde_json::Deserializer::from_str(text);
        // The syntax is already checked: what can fail here is a field name that is not
        // a string of characters (an escaped lone surrogate).
        let fields = de.deserialize_map(FieldsVisitor).map_err(|e| {
            field_error(
                name,
                format!("a field name is not valid Unicode (an escaped lone surrogate?): {e}"),
            )
        })?;
        match fields {
            Ok(fields) => Ok(Fields {
                prefix: prefix.to_owned(),
                fields,
                max_depth,
            }),
            Err(dup) => Err(field_error(
                &format!("{prefix}{dup}"),
                "given more than once",
            )),
        }
    }

    /// The full name of field `name` in messages.
    pub fn path(&self, name: &str) -> String {
        self.at(name).to_string()
    }

    /// The same name, written out only if a message needs it.
    pub fn at<'a>(&'a self, name: &'a str) -> FieldPath<'a> {
        FieldPath {
            prefix: &self.prefix,
            name,
            index: None,
        }
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Removes and returns a field's raw text; JSON `null` counts as absent.
    pub fn take_raw(&mut self, name: &str) -> Option<Box<RawValue>> {
        let i = self.fields.iter().position(|(k, _)| k == name)?;
        let (_, raw) = self.fields.remove(i);
        if raw.get().trim() == "null" {
            None
        } else {
            Some(raw)
        }
    }

    fn missing(&self, name: &str, expected: &str) -> Error {
        field_error(&self.at(name), format!("missing (expected {expected})"))
    }

    fn wrong(&self, name: &str, expected: &str, raw: &RawValue) -> Error {
        field_error(
            &self.at(name),
            format!("expected {expected}, got {}", shown(raw.get())),
        )
    }

    /// An integer field in `[min, max]`.
    pub fn int(&mut self, name: &str, min: i64, max: i64) -> Result<Option<i64>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        if let Ok(Value::Number(n)) = serde_json::from_str::<Value>(raw.get()) {
            if let Some(v) = n.as_i64().filter(|v| (min..=max).contains(v)) {
                return Ok(Some(v));
            }
        }
        let expected = format!("an integer between {min} and {max}");
        Err(self.wrong(name, &expected, &raw))
    }

    /// A required integer field in `[min, max]`.
    pub fn req_int(&mut self, name: &str, min: i64, max: i64) -> Result<i64> {
        match self.int(name, min, max)? {
            Some(v) => Ok(v),
            None => Err(self.missing(name, &format!("an integer between {min} and {max}"))),
        }
    }

    /// An id (`task_id`, `step_id`): 1 to [`MAX_ID`].
    pub fn id(&mut self, name: &str) -> Result<Option<i64>> {
        self.int(name, 1, MAX_ID)
    }

    pub fn req_id(&mut self, name: &str) -> Result<i64> {
        self.req_int(name, 1, MAX_ID)
    }

    /// A duration in milliseconds, `min` to [`MAX_DURATION_MS`].
    pub fn duration_ms(&mut self, name: &str, min: i64) -> Result<Option<u64>> {
        Ok(self.int(name, min, MAX_DURATION_MS)?.map(|v| v as u64))
    }

    /// A page size, 1 to `max` (the `*_max` setting named `setting`).
    pub fn limit(&mut self, name: &str, max: u32, setting: &str) -> Result<Option<u32>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        if let Ok(Value::Number(n)) = serde_json::from_str::<Value>(raw.get()) {
            if let Some(v) = n.as_u64().filter(|v| (1..=u64::from(max)).contains(v)) {
                return Ok(Some(v as u32));
            }
        }
        let expected = format!("an integer between 1 and {max} ({setting})");
        Err(self.wrong(name, &expected, &raw))
    }

    pub fn bool(&mut self, name: &str) -> Result<Option<bool>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        match raw.get().trim() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(self.wrong(name, "a boolean", &raw)),
        }
    }

    /// A string of `min`..=`max` bytes without NUL characters.
    pub fn string(&mut self, name: &str, min: usize, max: usize) -> Result<Option<String>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        check_string(&self.at(name), &raw, min, max).map(Some)
    }

    pub fn req_string(&mut self, name: &str, min: usize, max: usize) -> Result<String> {
        match self.string(name, min, max)? {
            Some(s) => Ok(s),
            None => Err(self.missing(name, &string_expected(min, max))),
        }
    }

    /// An array of `min_items`..=`max_items` strings, each checked as by [`Fields::string`].
    pub fn strings(
        &mut self,
        name: &str,
        items: (usize, usize),
        len: (usize, usize),
    ) -> Result<Option<Vec<String>>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        let expected = || {
            format!(
                "an array of {} to {} strings ({} each)",
                items.0,
                items.1,
                len_text(len.0, len.1)
            )
        };
        let elements: Vec<Box<RawValue>> =
            serde_json::from_str(raw.get()).map_err(|_| self.wrong(name, &expected(), &raw))?;
        if elements.len() < items.0 || elements.len() > items.1 {
            return Err(field_error(
                &self.at(name),
                format!("expected {}, got {} items", expected(), elements.len()),
            ));
        }
        elements
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let path = FieldPath {
                    index: Some(i),
                    ..self.at(name)
                };
                check_string(&path, e, len.0, len.1)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A JSON payload stored as given: any JSON value, at most `max_json_depth` deep,
    /// with no lone surrogate. The text is returned unchanged.
    pub fn payload(&mut self, name: &str) -> Result<Option<Box<RawValue>>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        check_payload(&self.at(name), &raw, self.max_depth)?;
        Ok(Some(raw))
    }

    /// Like [`Fields::payload`] but keeps an explicit JSON `null` (a result may be null).
    pub fn payload_or_null(&mut self, name: &str) -> Result<Option<Box<RawValue>>> {
        let Some(i) = self.fields.iter().position(|(k, _)| k == name) else {
            return Ok(None);
        };
        let (_, raw) = self.fields.remove(i);
        check_payload(&self.at(name), &raw, self.max_depth)?;
        Ok(Some(raw))
    }

    /// A JSON value read structurally (a template given as an object), nested at most
    /// `depth` levels.
    pub fn value(&mut self, name: &str, depth: usize) -> Result<Option<Value>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        check_payload_depth(&self.at(name), &raw, depth)?;
        serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| field_error(&self.at(name), format!("not a JSON value: {e}")))
    }

    /// An object field, read as nested fields (`claim`, `error`, `next`).
    pub fn object(&mut self, name: &str) -> Result<Option<Fields>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        let path = self.path(name);
        Fields::from_raw(&format!("{path}."), &path, &raw, self.max_depth).map(Some)
    }

    /// An object stored as a whole (an error document): held to the payload rules, then
    /// read as nested fields.
    pub fn error_document(&mut self, name: &str) -> Result<Option<Fields>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        let path = self.path(name);
        check_payload(&path, &raw, self.max_depth)?;
        Fields::from_raw(&format!("{path}."), &path, &raw, self.max_depth).map(Some)
    }

    /// An array of objects (`items`, `outcomes`), each read as nested fields.
    pub fn objects(&mut self, name: &str, max_items: usize) -> Result<Option<Vec<Fields>>> {
        let Some(raw) = self.take_raw(name) else {
            return Ok(None);
        };
        let expected = || format!("an array of at most {max_items} objects");
        let elements: Vec<Box<RawValue>> =
            serde_json::from_str(raw.get()).map_err(|_| self.wrong(name, &expected(), &raw))?;
        if elements.len() > max_items {
            return Err(field_error(
                &self.at(name),
                format!("expected {}, got {} items", expected(), elements.len()),
            ));
        }
        elements
            .iter()
            .enumerate()
            .map(|(i, e)| {
                // `items[3].`: the element's own fields are named under it.
                let prefix = format!("{}[{i}].", self.at(name));
                let item = &prefix[..prefix.len() - 1];
                Fields::from_raw(&prefix, item, e, self.max_depth)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Whether a field is present (even as `null`).
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }

    /// Refuses whatever field was not taken.
    pub fn finish(self, known: &[&str]) -> Result<()> {
        if let Some((k, _)) = self.fields.first() {
            let mut message = format!("unknown field `{}{k}`", self.prefix);
            if known.is_empty() {
                message.push_str(" (this request takes no fields)");
            } else {
                let _ = write!(message, " (expected one of: {})", known.join(", "));
            }
            return Err(Error::invalid_argument(message)
                .with_details(json!({ "field": format!("{}{k}", self.prefix) })));
        }
        Ok(())
    }

    /// The fields not taken, for objects that keep extra fields (an error document).
    pub fn into_rest(self) -> Vec<(String, Box<RawValue>)> {
        self.fields
    }
}

fn len_text(min: usize, max: usize) -> String {
    if min == 0 {
        format!("at most {max} bytes")
    } else {
        format!("{min}-{max} bytes")
    }
}

fn string_expected(min: usize, max: usize) -> String {
    format!("a string of {}", len_text(min, max))
}

/// A string field: `min`..=`max` bytes, no NUL, valid Unicode.
pub fn check_string(
    path: &(impl Display + ?Sized),
    raw: &RawValue,
    min: usize,
    max: usize,
) -> Result<String> {
    let text = raw.get();
    if !text.trim_start().starts_with('"') {
        return Err(field_error(
            path,
            format!(
                "expected {}, got {}",
                string_expected(min, max),
                shown(text)
            ),
        ));
    }
    let s: String = serde_json::from_str(text).map_err(|_| {
        field_error(
            path,
            format!(
                "expected {}, got {} (an escaped lone surrogate is not a character)",
                string_expected(min, max),
                shown(text)
            ),
        )
    })?;
    check_str(path, &s, min, max)?;
    Ok(s)
}

/// Length and NUL rules for a string already read.
pub fn check_str(path: &(impl Display + ?Sized), s: &str, min: usize, max: usize) -> Result<()> {
    if s.contains('\0') {
        return Err(field_error(
            path,
            format!(
                "expected {}, got a string containing a NUL character (\\u0000)",
                string_expected(min, max)
            ),
        ));
    }
    if s.len() < min || s.len() > max {
        return Err(field_error(
            path,
            format!(
                "expected {}, got {} bytes",
                string_expected(min, max),
                s.len()
            ),
        ));
    }
    Ok(())
}

fn check_payload_depth(
    path: &(impl Display + ?Sized),
    raw: &RawValue,
    max_depth: usize,
) -> Result<Scan> {
    let s = scan(raw.get());
    if s.depth > max_depth {
        return Err(field_error(
            path,
            format!(
                "nested {} levels deep; at most {max_depth} levels are accepted (max_json_depth)",
                s.depth
            ),
        )
        .with_details(json!({ "field": path.to_string(), "depth": s.depth, "limit": max_depth })));
    }
    if let Some(at) = s.lone_surrogate {
        let text = raw.get();
        let end = (at + 6).min(text.len());
        return Err(field_error(
            path,
            format!(
                "holds an escaped lone surrogate ({}), which is not a Unicode character",
                text.get(at..end).unwrap_or("\\u....")
            ),
        ));
    }
    Ok(s)
}

/// A stored payload's rules (depth, Unicode) for the text of one field.
pub fn check_payload(
    path: &(impl Display + ?Sized),
    raw: &RawValue,
    max_depth: usize,
) -> Result<()> {
    check_payload_depth(path, raw, max_depth).map(|_| ())
}

/// Depth of a JSON value already built (templates read from YAML).
pub fn value_depth(v: &Value) -> usize {
    // Iterative: a value built by a parser is bounded, but keep the stack flat anyway.
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(m) => {
                deepest = deepest.max(d + 1);
                stack.extend(m.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Whether a JSON value holds a NUL character in any string or key.
pub fn value_has_nul(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => {
                if m.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(m.values());
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_measures_depth_and_finds_lone_surrogates() {
        assert_eq!(scan("1").depth, 0);
        assert_eq!(scan("{}").depth, 1);
        assert_eq!(scan(r#"{"a":[1,{"b":"]]]]"}]}"#).depth, 3);
        assert_eq!(scan(&("[".repeat(5000) + &"]".repeat(5000))).depth, 5000);
        assert_eq!(scan(r#""\ud83d\ude00""#).lone_surrogate, None);
        assert_eq!(scan(r#""a\ud800""#).lone_surrogate, Some(2));
        assert_eq!(scan(r#""\udc00x""#).lone_surrogate, Some(1));
        assert_eq!(scan(r#""\\ud800""#).lone_surrogate, None);
        assert_eq!(scan(r#"{"\ud800":1}"#).lone_surrogate, Some(2));
        assert_eq!(scan(r#""\ud800\u0041""#).lone_surrogate, Some(1));
    }

    #[test]
    fn fields_name_what_was_wrong() {
        let mut f = Fields::parse_request(r#"{"task_id": "one"}"#, 64).unwrap();
        let e = f.req_id("task_id").unwrap_err();
        assert_eq!(
            e.message,
            r#"task_id: expected an integer between 1 and 9007199254740991, got "one""#
        );
        let e = Fields::parse_request("[1]", 64).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(
            e.message.contains("expected a JSON object, got an array"),
            "{e}"
        );
        let e = Fields::parse_request(r#"{"a":1,"a":2}"#, 64).err().unwrap();
        assert!(e.message.starts_with("a: given more than once"), "{e}");
        let e = Fields::parse_request("{", 64).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let mut f = Fields::parse_request(r#"{"s": "a\u0000b"}"#, 64).unwrap();
        assert!(f.string("s", 1, 10).unwrap_err().message.contains("NUL"));
        let mut f = Fields::parse_request(r#"{"x": [[[1]]]}"#, 2).unwrap();
        assert!(f
            .payload("x")
            .unwrap_err()
            .message
            .contains("max_json_depth"));
    }
}
