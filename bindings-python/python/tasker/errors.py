"""Exceptions: one class per engine error code, and the two a handler raises.

Every engine failure is a :class:`TaskerError` carrying the stable ``code`` (see
docs/api.md, "Errors"), a ``message`` for people and ``details`` for programs. Each code
has its own subclass, so ``except tasker.NotFoundError`` and ``except tasker.TaskerError``
both work::

    try:
        tasker.get_task(99)
    except tasker.NotFoundError as e:
        print(e.code, e.message, e.details)
"""

from __future__ import annotations

import traceback
from typing import Any, ClassVar, Dict, Optional, Tuple, Type

from . import _native


class TaskerError(Exception):
    """An error reported by the engine.

    Attributes:
        code: The stable error code (for example ``"not_found"``). Match on it or on the
            subclass; never on the message.
        message: A sentence for people; it names the offending field, step or value.
        details: Structured data for programs (documented per code and operation), or
            None when there is nothing to add.
    """

    #: The code this class stands for ("" on the base class).
    CODE: ClassVar[str] = ""

    code: str
    message: str
    details: Optional[Any]

    def __init__(self, code: str, message: str, details: Optional[Any] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def __reduce__(self) -> Any:
        # Picklable (multiprocessing hands exceptions between processes).
        return (type(self), (self.code, self.message, self.details))

    @staticmethod
    def from_code(code: str, message: str, details: Optional[Any] = None) -> "TaskerError":
        """Builds the exception of the class that stands for ``code``."""
        cls = ERROR_CLASSES.get(code, TaskerError)
        return cls(code, message, details)


class InvalidJsonError(TaskerError):
    """``invalid_json``: a request or configuration is not syntactically valid JSON."""

    CODE = "invalid_json"


class InvalidUtf8Error(TaskerError):
    """``invalid_utf8``: a string crossing the C boundary is not valid UTF-8."""

    CODE = "invalid_utf8"


class InvalidArgumentError(TaskerError):
    """``invalid_argument``: a field is unknown, missing, mistyped or out of range; or a
    bad setting was given to ``Tasker.open``."""

    CODE = "invalid_argument"


class UnknownOperationError(TaskerError):
    """``unknown_operation``: the operation name is not one the engine knows
    (``details["operations"]`` lists the valid ones)."""

    CODE = "unknown_operation"


class InvalidTemplateError(TaskerError):
    """``invalid_template``: a template was rejected; ``details["problem"]`` says why
    (``cycle``, ``unknown_dependency``, ``syntax``, ...)."""

    CODE = "invalid_template"


class SchemaViolationError(TaskerError):
    """``schema_violation``: a task context does not satisfy the template's
    ``input_schema`` (``details["errors"]``: ``{path, message}`` items)."""

    CODE = "schema_violation"


class NotFoundError(TaskerError):
    """``not_found``: the task, step, template or template file does not exist."""

    CODE = "not_found"


class ConflictError(TaskerError):
    """``conflict``: a different template is already registered under the same
    namespace, name and version."""

    CODE = "conflict"


class LeaseLostError(TaskerError):
    """``lease_lost``: the claim token no longer holds the step; nothing was changed."""

    CODE = "lease_lost"


class InvalidStateError(TaskerError):
    """``invalid_state``: the operation is not allowed in the task's or step's current
    state (``details``: ``state``, ``task_state``, ids)."""

    CODE = "invalid_state"


class TooLargeError(TaskerError):
    """``too_large``: a request or payload exceeds its size limit
    (``details``: ``limit``, ``size``). Nothing was stored."""

    CODE = "too_large"


class UnavailableError(TaskerError):
    """``unavailable``: the database could not be reached in time. Safe to retry."""

    CODE = "unavailable"


class DatabaseError(TaskerError):
    """``database``: the database reported an error."""

    CODE = "database"


class ClosedError(TaskerError):
    """``closed``: the handle was closed."""

    CODE = "closed"


class InternalError(TaskerError):
    """``internal``: a bug in Tasker; please report it with the message."""

    CODE = "internal"


#: Error code -> exception class, for every code the engine has.
ERROR_CLASSES: Dict[str, Type[TaskerError]] = {
    cls.CODE: cls
    for cls in (
        InvalidJsonError,
        InvalidUtf8Error,
        InvalidArgumentError,
        UnknownOperationError,
        InvalidTemplateError,
        SchemaViolationError,
        NotFoundError,
        ConflictError,
        LeaseLostError,
        InvalidStateError,
        TooLargeError,
        UnavailableError,
        DatabaseError,
        ClosedError,
        InternalError,
    )
}


class HandlerError(Exception):
    """Base of the exceptions a handler raises to say how its step failed.

    Any other exception a handler raises is a retryable failure too; these two let it
    choose.
    """


class PermanentError(HandlerError):
    """Raise from a handler to fail the step for good: it is not retried, whatever
    attempts are left, and goes to ``error``.

    Args:
        message: Stored as the failure's ``message``.
        details: Optional JSON data stored as the failure's ``details``.
    """

    def __init__(self, message: str, details: Optional[Any] = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class RetryableError(HandlerError):
    """Raise from a handler to fail this attempt and ask for a retry.

    Args:
        message: Stored as the failure's ``message``.
        retry_after: Seconds to wait before the retry, instead of the step's backoff
            (sent as ``retry_after_ms``). None: the step's backoff decides.
        details: Optional JSON data stored as the failure's ``details``.

    The step still goes to ``error`` when its attempts are used up.
    """

    def __init__(
        self, message: str, retry_after: Optional[float] = None, details: Optional[Any] = None
    ) -> None:
        super().__init__(message)
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0 seconds")
        self.message = message
        self.retry_after = retry_after
        self.details = details


#: A handler's outcome as the worker reports it: ``(step_id, kind, text)`` (see
#: ``docs/workers.md``).
Outcome = Tuple[int, str, str]


class WaitForChildren:
    """What a handler returns to have its step wait for the child tasks it started
    (:meth:`tasker.Step.start_child`); made by :func:`tasker.wait_for_children`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "tasker.wait_for_children()"


_WAIT_FOR_CHILDREN = WaitForChildren()


def wait_for_children() -> WaitForChildren:
    """The handler's return value that makes its step wait for its child tasks instead
    of completing: the step completes, with ``{"children": [{"task_id", "key", "state",
    "results"}, ...]}`` in start order, once every child task is final (or fails with
    kind ``child_failed`` when one ends in ``error`` or ``cancelled``)."""
    return _WAIT_FOR_CHILDREN


def outcome_of(step_id: int, result: Any = None, error: Optional[BaseException] = None) -> Outcome:
    """The outcome of one handler run: its result as JSON, its exception as a failure
    document (class, message, traceback, ``retry_after``, ``details``), or, for a result
    that is not JSON-serialisable, the serialiser's reason (the engine fails the step
    for good as ``invalid_result``)."""
    if error is not None:
        cls = type(error)
        doc: Dict[str, Any] = {
            "message": str(error) or cls.__name__,
            "kind": cls.__name__,
            "exception": f"{cls.__module__}.{cls.__qualname__}",
            "retryable": not isinstance(error, PermanentError),
            "traceback": "".join(traceback.format_exception(cls, error, error.__traceback__)),
        }
        if isinstance(error, RetryableError) and error.retry_after is not None:
            doc["retry_after_ms"] = int(round(error.retry_after * 1000))
        details = getattr(error, "details", None)
        if details is not None:
            doc["details"] = details
        try:
            return (step_id, "error", _native.to_json(doc))
        except (TypeError, ValueError):  # details that are not JSON: keep the rest
            doc.pop("details", None)
            return (step_id, "error", _native.to_json(doc))
    if isinstance(result, WaitForChildren):
        return (step_id, "wait_for_children", "")
    try:
        return (step_id, "result", _native.to_json(result))
    except (TypeError, ValueError) as e:
        return (step_id, "invalid_result", f"{e} (a {type(result).__name__})")
