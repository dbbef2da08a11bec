//! JSON text <-> Ruby objects, done in Rust so a call makes no Ruby-level JSON round
//! trip: requests are written straight from Hashes/Arrays/scalars into JSON text, and
//! responses are parsed straight into Ruby objects (one pass, key order kept).
//!
//! Ruby to JSON: `Hash` (String or Symbol keys), `Array`, `String` (UTF-8, or any
//! encoding Ruby can convert to UTF-8), `Symbol` (its name), `Integer` (64 bits),
//! finite `Float`, `true`, `false`, `nil`. Anything else is a `TypeError` naming the
//! class and where it was (`context.items[2].price`).
//!
//! JSON to Ruby: objects become Hashes with String keys, as `JSON.parse` gives them.

use std::fmt;

use magnus::encoding::EncodingCapable;
use magnus::value::ReprValue;
use magnus::{r_hash::ForEach, Error, Float, Integer, RArray, RHash, RString, Ruby, Symbol, Value};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deeper nesting than this is refused (a self-containing Array would recurse forever).
const MAX_DEPTH: u32 = 256;

/// Where in the value being encoded an error was found, for messages:
/// `context.items[2].price`.
enum Seg {
    Key(String),
    Index(usize),
}

struct Path<'a> {
    root: &'a str,
    segs: Vec<Seg>,
}

impl Path<'_> {
    fn text(&self) -> String {
        let mut s = String::from(self.root);
        for seg in &self.segs {
            match seg {
                Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        if s.is_empty() {
            s.push_str("the request");
        }
        s
    }
}

/// Encodes a Ruby value as JSON text. `what` names the value in error messages (an
/// argument name such as `"result"`; `""` for a request Hash, whose keys then name the
/// arguments).
pub fn encode(ruby: &Ruby, value: Value, what: &str) -> Result<String, Error> {
    let mut out = Vec::with_capacity(64);
    encode_into(ruby, value, what, &mut out)?;
    // Only valid UTF-8 was written (checked string contents and ASCII punctuation).
    String::from_utf8(out).map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))
}

/// As [`encode`], appending to `out`.
pub fn encode_into(ruby: &Ruby, value: Value, what: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut path = Path {
        root: what,
        segs: Vec::new(),
    };
    write_value(ruby, value, out, 0, &mut path)
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The text of a Ruby String as UTF-8, converting other encodings.
fn string_text(ruby: &Ruby, s: RString, path: &Path) -> Result<String, Error> {
    // SAFETY: the slice is copied before any Ruby code can run.
    if let Some(t) = unsafe { s.test_as_str() } {
        return Ok(t.to_owned());
    }
    if s.enc_get() == ruby.ascii8bit_encindex() {
        // Binary strings: accepted when their bytes are UTF-8.
        // SAFETY: as above.
        let bytes = unsafe { s.as_slice() };
        return std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
            Error::new(
                ruby.exception_arg_error(),
                format!("binary string at {} is not valid UTF-8 text", path.text()),
            )
        });
    }
    let converted = s.conv_enc(ruby.utf8_encoding())?;
    // SAFETY: as above.
    match unsafe { converted.test_as_str() } {
        Some(t) => Ok(t.to_owned()),
        None => Err(Error::new(
            ruby.exception_arg_error(),
            format!(
                "string at {} is not valid text in its encoding ({}) or cannot be converted to UTF-8",
                path.text(),
                encoding_name(s)
            ),
        )),
    }
}

fn encoding_name(s: RString) -> String {
    s.funcall::<_, _, Value>("encoding", ())
        .map(|e| e.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A Hash key as text: String or Symbol.
fn key_text(ruby: &Ruby, k: Value, path: &Path) -> Result<String, Error> {
    if let Some(s) = RString::from_value(k) {
        return string_text(ruby, s, path);
    }
    if let Some(sym) = Symbol::from_value(k) {
        return Ok(sym.name()?.into_owned());
    }
    Err(Error::new(
        ruby.exception_type_error(),
        format!(
            "Hash keys must be String or Symbol, got {} at {}",
            class_name(k),
            path.text()
        ),
    ))
}

fn write_value(
    ruby: &Ruby,
    v: Value,
    out: &mut Vec<u8>,
    depth: u32,
    path: &mut Path,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ruby.exception_arg_error(),
            format!(
                "value is nested more than {MAX_DEPTH} levels deep at {} (a circular reference?)",
                path.text()
            ),
        ));
    }
    if v.is_nil() {
        out.extend_from_slice(b"null");
    } else if let Some(s) = RString::from_value(v) {
        let text = string_text(ruby, s, path)?;
        write_str(&text, out);
    } else if let Some(i) = Integer::from_value(v) {
        if let Ok(n) = i.to_i64() {
            out.extend_from_slice(n.to_string().as_bytes());
        } else if let Ok(n) = i.to_u64() {
            out.extend_from_slice(n.to_string().as_bytes());
        } else {
            return Err(Error::new(
                ruby.exception_range_error(),
                format!("integer at {} does not fit in 64 bits", path.text()),
            ));
        }
    } else if v.as_value().is_kind_of(ruby.class_true_class()) {
        out.extend_from_slice(b"true");
    } else if v.as_value().is_kind_of(ruby.class_false_class()) {
        out.extend_from_slice(b"false");
    } else if let Some(h) = RHash::from_value(v) {
        out.push(b'{');
        let mut first = true;
        let mut failure: Option<Error> = None;
        h.foreach(|k: Value, val: Value| {
            let step = (|| -> Result<(), Error> {
                let key = key_text(ruby, k, path)?;
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(&key, out);
                out.push(b':');
                path.segs.push(Seg::Key(key));
                write_value(ruby, val, out, depth + 1, path)?;
                path.segs.pop();
                Ok(())
            })();
            match step {
                Ok(()) => Ok(ForEach::Continue),
                Err(e) => {
                    failure = Some(e);
                    Ok(ForEach::Stop)
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        out.push(b'}');
    } else if let Some(a) = RArray::from_value(v) {
        out.push(b'[');
        // Indexed reads: the Array may change while it is read (a to_s of an element).
        let mut i = 0;
        while i < a.len() {
            let item: Value = a.entry(i as isize)?;
            if i > 0 {
                out.push(b',');
            }
            path.segs.push(Seg::Index(i));
            write_value(ruby, item, out, depth + 1, path)?;
            path.segs.pop();
            i += 1;
        }
        out.push(b']');
    } else if let Some(sym) = Symbol::from_value(v) {
        write_str(&sym.name()?, out);
    } else if let Some(f) = Float::from_value(v) {
        let x = f.to_f64();
        if !x.is_finite() {
            return Err(Error::new(
                ruby.exception_arg_error(),
                format!("Float {x} at {} is not valid JSON", path.text()),
            ));
        }
        let _ = serde_json::to_writer(&mut *out, &x);
    } else {
        return Err(Error::new(
            ruby.exception_type_error(),
            format!(
                "{} at {} is not JSON data (use Hash, Array, String, Symbol, Integer, Float, true, false or nil)",
                class_name(v),
                path.text()
            ),
        ));
    }
    Ok(())
}

/// The class name of a value, for messages.
pub fn class_name(v: Value) -> String {
    // SAFETY: the name is copied at once.
    unsafe { v.classname() }.into_owned()
}

/// Parses JSON text into Ruby objects.
pub fn decode(ruby: &Ruby, text: &str) -> Result<Value, Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = RbSeed { ruby };
    match seed.deserialize(&mut de).and_then(|v| de.end().map(|_| v)) {
        Ok(v) => Ok(v),
        Err(e) => Err(Error::new(
            ruby.exception_runtime_error(),
            format!("invalid JSON from the engine: {e}"),
        )),
    }
}

/// Builds Ruby objects while serde_json parses. Every object made is reachable from
/// the stack (the value being built, its parents) until it is returned, so Ruby's GC
/// sees all of them.
struct RbSeed<'r> {
    ruby: &'r Ruby,
}

impl<'de> DeserializeSeed<'de> for RbSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(RbVisitor { ruby: self.ruby })
    }
}

struct RbVisitor<'r> {
    ruby: &'r Ruby,
}

fn rb_err<E: serde::de::Error>(e: Error) -> E {
    E::custom(e.to_string())
}

impl<'de> Visitor<'de> for RbVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(if v {
            self.ruby.qtrue().as_value()
        } else {
            self.ruby.qfalse().as_value()
        })
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(self.ruby.integer_from_i64(v).as_value())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(self.ruby.integer_from_u64(v).as_value())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(self.ruby.float_from_f64(v).as_value())
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(self.ruby.str_new(v).as_value())
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(self.ruby.qnil().as_value())
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(self.ruby.qnil().as_value())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let ary = self.ruby.ary_new_capa(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(RbSeed { ruby: self.ruby })? {
            ary.push(v).map_err(rb_err)?;
        }
        Ok(ary.as_value())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let hash = self.ruby.hash_new();
        while let Some(k) = map.next_key_seed(KeySeed { ruby: self.ruby })? {
            let v = map.next_value_seed(RbSeed { ruby: self.ruby })?;
            hash.aset(k, v).map_err(rb_err)?;
        }
        Ok(hash.as_value())
    }
}

struct KeySeed<'r> {
    ruby: &'r Ruby,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = RString;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RString, D::Error> {
        d.deserialize_str(KeyVisitor { ruby: self.ruby })
    }
}

struct KeyVisitor<'r> {
    ruby: &'r Ruby,
}

impl<'de> Visitor<'de> for KeyVisitor<'_> {
    type Value = RString;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<RString, E> {
        // Hash#[]= freezes and deduplicates String keys itself.
        Ok(self.ruby.str_new(v))
    }
}
