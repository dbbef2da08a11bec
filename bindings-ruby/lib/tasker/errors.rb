# frozen_string_literal: true

module Tasker
  # An error reported by the engine. Every engine failure is a +Tasker::Error+ carrying
  # the stable #code (see docs/api.md, "Errors"), a message for people and #details for
  # programs. Each code has its own subclass, so both
  #
  #   rescue Tasker::NotFoundError => e
  #   rescue Tasker::Error => e
  #
  # work; match on the class or on #code, never on the message.
  class Error < StandardError
    # The code this class stands for ("" on the base class).
    CODE = ""

    # The stable error code, for example "not_found".
    attr_reader :code
    # Structured data for programs (documented per code and operation), or nil.
    attr_reader :details

    def initialize(message = nil, code: nil, details: nil)
      @code = code || self.class::CODE
      @details = details
      super(message || @code)
    end

    # The exception of the class that stands for +code+ (used by the native extension).
    def self.build(code, message, details = nil)
      ERROR_CLASSES.fetch(code, Error).new(message, code: code, details: details)
    end
  end

  # invalid_json: a request or configuration is not syntactically valid JSON.
  class InvalidJsonError < Error; CODE = "invalid_json"; end
  # invalid_utf8: a string crossing the C boundary is not valid UTF-8.
  class InvalidUtf8Error < Error; CODE = "invalid_utf8"; end
  # invalid_argument: a field is unknown, missing, mistyped or out of range; or a bad
  # setting was given to Tasker.open.
  class InvalidArgumentError < Error; CODE = "invalid_argument"; end
  # unknown_operation: the operation name is not one the engine knows
  # (details["operations"] lists the valid ones).
  class UnknownOperationError < Error; CODE = "unknown_operation"; end
  # invalid_template: a template was rejected; details["problem"] says why (cycle,
  # unknown_dependency, syntax, ...).
  class InvalidTemplateError < Error; CODE = "invalid_template"; end
  # schema_violation: a task context does not satisfy the template's input_schema
  # (details["errors"]: {path, message} items).
  class SchemaViolationError < Error; CODE = "schema_violation"; end
  # not_found: the task, step, template, template file or worker does not exist.
  class NotFoundError < Error; CODE = "not_found"; end
  # conflict: a different template is already registered under the same namespace,
  # name and version.
  class ConflictError < Error; CODE = "conflict"; end
  # lease_lost: the claim token no longer holds the step; nothing was changed.
  class LeaseLostError < Error; CODE = "lease_lost"; end
  # invalid_state: the operation is not allowed in the task's or step's current state.
  class InvalidStateError < Error; CODE = "invalid_state"; end
  # too_large: a request or payload exceeds its size limit (details: limit, size).
  class TooLargeError < Error; CODE = "too_large"; end
  # unavailable: the database could not be reached in time. Safe to retry.
  class UnavailableError < Error; CODE = "unavailable"; end
  # database: the database reported an error.
  class DatabaseError < Error; CODE = "database"; end
  # closed: the handle was closed.
  class ClosedError < Error; CODE = "closed"; end
  # internal: a bug in Tasker; please report it with the message.
  class InternalError < Error; CODE = "internal"; end

  # Error code => exception class, for every code the engine has.
  ERROR_CLASSES = [
    InvalidJsonError, InvalidUtf8Error, InvalidArgumentError, UnknownOperationError,
    InvalidTemplateError, SchemaViolationError, NotFoundError, ConflictError,
    LeaseLostError, InvalidStateError, TooLargeError, UnavailableError, DatabaseError,
    ClosedError, InternalError
  ].to_h { |c| [c::CODE, c] }.freeze

  # Base of the exceptions a handler raises to say how its step failed. Any other
  # exception a handler raises is a retryable failure too; these two let it choose.
  class HandlerError < StandardError
    # Optional JSON data stored as the failure's "details".
    attr_reader :details

    def initialize(message = nil, details: nil)
      @details = details
      super(message)
    end
  end

  # Raise from a handler to fail the step for good: it is not retried, whatever attempts
  # are left, and goes to "error".
  #
  #   raise Tasker::PermanentError.new("card declined", details: { "code" => 51 })
  class PermanentError < HandlerError; end

  # Raise from a handler to fail this attempt and ask for a retry, optionally after
  # +retry_after+ seconds instead of the step's backoff. The step still goes to "error"
  # when its attempts are used up.
  #
  #   raise Tasker::RetryableError.new("rate limited", retry_after: 5)
  class RetryableError < HandlerError
    # Seconds to wait before the retry (nil: the step's backoff decides).
    attr_reader :retry_after

    def initialize(message = nil, retry_after: nil, details: nil)
      unless retry_after.nil?
        unless retry_after.is_a?(Numeric) && retry_after.real?
          raise TypeError, "retry_after must be a number of seconds, got #{retry_after.class}"
        end
        raise ArgumentError, "retry_after must be >= 0 seconds, got #{retry_after}" if retry_after.negative?
      end
      @retry_after = retry_after
      super(message, details: details)
    end
  end
end
