//! JSON text <-> Python objects, done in Rust so a call makes no Python-level JSON round
//! trip: requests are written straight from dicts/lists/scalars into JSON text, responses
//! are parsed straight into Python objects (one pass, key order kept).

use std::fmt;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deeper nesting than this is refused (a self-containing list would recurse forever).
const MAX_DEPTH: u32 = 256;

/// Encodes a Python value as JSON text: dict (str keys), list, tuple, str, int, float
/// (finite), bool, None. Anything else is a `TypeError` naming the type and where it was.
pub fn encode(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let mut out = Vec::with_capacity(64);
    write_value(obj, &mut out, 0, &mut Vec::new())?;
    // Only valid UTF-8 was written (str contents and ASCII punctuation).
    String::from_utf8(out).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A path into the value being encoded, for error messages (`$.items[2].price`).
enum Seg {
    Key(String),
    Index(usize),
}

fn path_text(path: &[Seg]) -> String {
    let mut s = String::from("$");
    for seg in path {
        match seg {
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A list or a tuple: a JSON array.
fn write_array<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut Vec<u8>,
    depth: u32,
    path: &mut Vec<Seg>,
) -> PyResult<()> {
    out.push(b'[');
    for (i, v) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        path.push(Seg::Index(i));
        write_value(&v, out, depth + 1, path)?;
        path.pop();
    }
    out.push(b']');
    Ok(())
}

fn write_value(
    obj: &Bound<'_, PyAny>,
    out: &mut Vec<u8>,
    depth: u32,
    path: &mut Vec<Seg>,
) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "value is nested more than {MAX_DEPTH} levels deep at {} (a circular reference?)",
            path_text(path)
        )));
    }
    if obj.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(s) = obj.cast::<PyString>() {
        write_str(s.to_str()?, out);
    } else if let Ok(b) = obj.cast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
    } else if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            out.extend_from_slice(v.to_string().as_bytes());
        } else if let Ok(v) = i.extract::<u64>() {
            out.extend_from_slice(v.to_string().as_bytes());
        } else {
            return Err(PyValueError::new_err(format!(
                "integer at {} does not fit in 64 bits",
                path_text(path)
            )));
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return Err(PyValueError::new_err(format!(
                "float {v} at {} is not valid JSON",
                path_text(path)
            )));
        }
        let _ = serde_json::to_writer(&mut *out, &v);
    } else if let Ok(d) = obj.cast::<PyDict>() {
        out.push(b'{');
        let mut first = true;
        for (k, v) in d.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(PyTypeError::new_err(format!(
                    "dict keys must be str, got {} at {}",
                    type_name(&k),
                    path_text(path)
                )));
            };
            if !first {
                out.push(b',');
            }
            first = false;
            let key = key.to_str()?;
            write_str(key, out);
            out.push(b':');
            path.push(Seg::Key(key.to_owned()));
            write_value(&v, out, depth + 1, path)?;
            path.pop();
        }
        out.push(b'}');
    } else if let Ok(l) = obj.cast::<PyList>() {
        write_array(l.iter(), out, depth, path)?;
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        write_array(t.iter(), out, depth, path)?;
    } else {
        return Err(PyTypeError::new_err(format!(
            "object of type {} at {} is not JSON serializable",
            type_name(obj),
            path_text(path)
        )));
    }
    Ok(())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Deepest response this module reads. The engine refuses values nested deeper than its
/// `max_json_depth` (at most 100), but values stored by older versions may be nested up
/// to serde_json's 128 levels, and a response adds a few levels around them: this guard
/// replaces serde_json's limit so every stored value reads back, while still bounding the
/// recursion (and the stack) of the parse.
const DECODE_DEPTH: u32 = 512;

/// Parses JSON text into Python objects.
pub fn decode<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = PySeed(py, 0)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| PyValueError::new_err(format!("invalid JSON from the engine: {e}")))?;
    Ok(value)
}

/// Builds Python objects while serde_json parses; the second field is the nesting depth.
pub struct PySeed<'py>(pub Python<'py>, pub u32);

impl<'de, 'py> DeserializeSeed<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.1 > DECODE_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "nested more than {DECODE_DEPTH} levels deep"
            )));
        }
        d.deserialize_any(PyVisitor(self.0, self.1))
    }
}

struct PyVisitor<'py>(Python<'py>, u32);

fn py_err<E: serde::de::Error>(e: PyErr) -> E {
    E::custom(e.to_string())
}

impl<'de, 'py> Visitor<'de> for PyVisitor<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, v).to_owned().into_any())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into_pyobject(self.0)
            .map(|o| o.into_any())
            .unwrap_or_else(|e| match e {}))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into_pyobject(self.0)
            .map(|o| o.into_any())
            .unwrap_or_else(|e| match e {}))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.0, v).into_any())
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v).into_any())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(v) = seq.next_element_seed(PySeed(self.0, self.1 + 1))? {
            list.append(v).map_err(py_err)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(k) = map.next_key_seed(KeySeed(self.0))? {
            let v = map.next_value_seed(PySeed(self.0, self.1 + 1))?;
            dict.set_item(k, v).map_err(py_err)?;
        }
        Ok(dict.into_any())
    }
}

struct KeySeed<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for KeySeed<'py> {
    type Value = Bound<'py, PyString>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor(self.0))
    }
}

struct KeyVisitor<'py>(Python<'py>);

impl<'de, 'py> Visitor<'de> for KeyVisitor<'py> {
    type Value = Bound<'py, PyString>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v))
    }
}
