//! Engine errors become instances of the Ruby exception classes the gem defines in
//! `lib/tasker/errors.rb`: `Tasker::Error` and one subclass per code, each with `#code`
//! and `#details`. `Tasker::Error.build(code, message, details)` picks the subclass.

use magnus::value::ReprValue;
use magnus::{Error, Module, RClass, RModule, Ruby, Value};

use crate::convert::decode;

/// The Ruby exception for an engine error.
pub fn to_rb(ruby: &Ruby, e: tasker_core::Error) -> Error {
    let base = match error_class(ruby) {
        Some(c) => c,
        // The native library was loaded without lib/tasker/errors.rb.
        None => return Error::new(ruby.exception_runtime_error(), e.to_json()),
    };
    let details = match &e.details {
        Some(d) => match decode(ruby, &d.to_string()) {
            Ok(v) => v,
            Err(err) => return err,
        },
        None => ruby.qnil().as_value(),
    };
    match base.funcall::<_, _, Value>("build", (e.code.as_str(), e.message, details)) {
        Ok(exc) => match magnus::Exception::from_value(exc) {
            Some(exc) => Error::from(exc),
            None => Error::new(
                ruby.exception_type_error(),
                "Tasker::Error.build did not return an exception",
            ),
        },
        Err(err) => err,
    }
}

fn error_class(ruby: &Ruby) -> Option<RClass> {
    let tasker: RModule = ruby.class_object().const_get("Tasker").ok()?;
    tasker.const_get("Error").ok()
}

/// Every code the engine can return, for the gem to check it has a class for each.
pub fn codes() -> Vec<&'static str> {
    tasker_core::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect()
}
