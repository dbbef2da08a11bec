'use strict';
// Errors: one class per engine error code, and the two a handler throws.
//
// Every engine failure is a TaskerError carrying the stable `code` (docs/api.md,
// "Errors"), a `message` for people and `details` for programs. Each code has its own
// subclass, so `err instanceof NotFoundError` and `err instanceof TaskerError` both
// work, and so does `err.code === 'not_found'`.

/** An error reported by the engine. */
class TaskerError extends Error {
  /**
   * @param {string} code the stable error code (for example `not_found`)
   * @param {string} message a sentence for people
   * @param {unknown} [details] structured data for programs, or null
   */
  constructor(code, message, details = null) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.details = details === undefined ? null : details;
  }

  /** Builds the error of the class that stands for `code`. */
  static fromCode(code, message, details = null) {
    const Cls = ERROR_CLASSES[code] || TaskerError;
    return new Cls(code, message, details);
  }
}
/** The code a class stands for ('' on the base class). */
TaskerError.CODE = '';

const CODES = [
  ['invalid_json', 'InvalidJsonError'],
  ['invalid_utf8', 'InvalidUtf8Error'],
  ['invalid_argument', 'InvalidArgumentError'],
  ['unknown_operation', 'UnknownOperationError'],
  ['invalid_template', 'InvalidTemplateError'],
  ['schema_violation', 'SchemaViolationError'],
  ['not_found', 'NotFoundError'],
  ['conflict', 'ConflictError'],
  ['lease_lost', 'LeaseLostError'],
  ['invalid_state', 'InvalidStateError'],
  ['too_large', 'TooLargeError'],
  ['unavailable', 'UnavailableError'],
  ['database', 'DatabaseError'],
  ['closed', 'ClosedError'],
  ['internal', 'InternalError'],
];

/** @type {Record<string, typeof TaskerError>} error code -> class, for every code. */
const ERROR_CLASSES = Object.create(null);
const classes = {};
for (const [code, name] of CODES) {
  // A named class per code (so stack traces and `err.name` say which).
  const Cls = { [name]: class extends TaskerError {} }[name];
  Cls.CODE = code;
  ERROR_CLASSES[code] = Cls;
  classes[name] = Cls;
}
Object.freeze(ERROR_CLASSES);

// Must match ENGINE_ERROR_PREFIX in src/errors.rs.
const ENGINE_ERROR_PREFIX = '\u0001tasker-error:';

/**
 * Turns a rejection of the native addon into the error users see: an engine error
 * becomes its TaskerError subclass; anything else (napi's own argument checks) is
 * returned as it is.
 * @param {unknown} e
 * @returns {unknown}
 */
function fromNative(e) {
  if (e instanceof Error && typeof e.message === 'string' && e.message.startsWith(ENGINE_ERROR_PREFIX)) {
    let doc;
    try {
      doc = JSON.parse(e.message.slice(ENGINE_ERROR_PREFIX.length));
    } catch (_) {
      return new classes.InternalError('internal', `unreadable engine error: ${e.message}`);
    }
    return TaskerError.fromCode(doc.code, doc.message, doc.details);
  }
  return e;
}

/** Base of the errors a handler throws to say how its step failed. */
class HandlerError extends Error {
  constructor(message, details) {
    super(message);
    this.name = new.target.name;
    this.details = details === undefined ? null : details;
  }
}

/**
 * Throw from a handler to fail the step for good: it is not retried, whatever attempts
 * are left, and goes to `error`.
 */
class PermanentError extends HandlerError {
  /**
   * @param {string} message stored as the failure's `message`
   * @param {{details?: unknown}} [options] `details`: JSON data stored with the failure
   */
  constructor(message, options = {}) {
    super(message, options && options.details);
  }
}

/**
 * Throw from a handler to fail this attempt and ask for a retry, after `retryAfterMs`
 * instead of the step's backoff when given. The step still goes to `error` when its
 * attempts are used up.
 */
class RetryableError extends HandlerError {
  /**
   * @param {string} message stored as the failure's `message`
   * @param {{retryAfterMs?: number, details?: unknown}} [options]
   */
  constructor(message, options = {}) {
    super(message, options && options.details);
    const after = options ? options.retryAfterMs : undefined;
    if (after !== undefined && after !== null) {
      if (typeof after !== 'number' || !Number.isFinite(after) || after < 0) {
        throw new RangeError('retryAfterMs must be a finite number of milliseconds >= 0');
      }
    }
    this.retryAfterMs = after === undefined ? null : after;
  }
}

module.exports = {
  TaskerError,
  ...classes,
  ERROR_CLASSES,
  ERROR_CODES: Object.freeze(CODES.map(([c]) => c)),
  HandlerError,
  PermanentError,
  RetryableError,
  fromNative,
};
