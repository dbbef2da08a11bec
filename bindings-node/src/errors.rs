//! Engine errors cross to JavaScript as rejections whose message is
//! [`ENGINE_ERROR_PREFIX`] followed by the error's JSON (`{code, message, details}`);
//! `lib/errors.js` turns them into the `TaskerError` subclass of the code. Errors made
//! by napi itself (a bad argument type) keep napi's message and are `TypeError`s.

use napi::{Error as NapiError, Status};
use tasker_core::Error;

/// Marks a rejection that carries an engine error. Never shown to users: the
/// JavaScript half replaces the error before it reaches them.
pub const ENGINE_ERROR_PREFIX: &str = "\u{1}tasker-error:";

/// The napi error that carries engine error `e` to JavaScript.
pub fn to_napi(e: Error) -> NapiError {
    let mut reason = String::with_capacity(ENGINE_ERROR_PREFIX.len() + 64 + e.message.len());
    reason.push_str(ENGINE_ERROR_PREFIX);
    reason.push_str(&e.to_json());
    NapiError::new(Status::GenericFailure, reason)
}

/// An `internal` engine error (an engine response this addon could not read).
pub fn internal(message: impl Into<String>) -> NapiError {
    to_napi(Error::internal(message))
}
