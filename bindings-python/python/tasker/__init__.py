"""Tasker: workflow orchestration on a Rust engine, with Python handlers.

Open a handle, register a template, create tasks, and run a worker::

    import tasker

    with tasker.Tasker.open("sqlite://app.db") as t:
        t.register_template("templates/orders.yaml")
        t.create_task("orders", "fulfill", context={"order_id": 42})

        worker = tasker.Worker(t, concurrency=4)

        @worker.handler("validate_order")
        def validate(step):
            return {"valid": step.context["order_id"] > 0}

        worker.run_until_idle()

The engine's operations, errors and events are documented in docs/api.md; every
method of :class:`Tasker` is one of them.
"""

from __future__ import annotations

import logging
from typing import Any

from . import _native
from .client import Tasker
from .errors import (
    ERROR_CLASSES,
    ClosedError,
    ConflictError,
    DatabaseError,
    HandlerError,
    InternalError,
    InvalidArgumentError,
    InvalidJsonError,
    InvalidStateError,
    InvalidTemplateError,
    InvalidUtf8Error,
    LeaseLostError,
    NotFoundError,
    PermanentError,
    RetryableError,
    SchemaViolationError,
    TaskerError,
    TooLargeError,
    UnavailableError,
    UnknownOperationError,
    WaitForChildren,
    wait_for_children,
)
from .worker import Handler, Step, Worker, WorkerStats

#: The version of the engine (tasker-core) this package was built with.
__version__: str = _native.version()

__all__ = [
    "ERROR_CLASSES",
    "ClosedError",
    "ConflictError",
    "DatabaseError",
    "Handler",
    "HandlerError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidJsonError",
    "InvalidStateError",
    "InvalidTemplateError",
    "InvalidUtf8Error",
    "LeaseLostError",
    "NotFoundError",
    "PermanentError",
    "RetryableError",
    "SchemaViolationError",
    "Step",
    "Tasker",
    "TaskerError",
    "TooLargeError",
    "UnavailableError",
    "UnknownOperationError",
    "WaitForChildren",
    "Worker",
    "WorkerStats",
    "__version__",
    "wait_for_children",
]


def _step_logger(step: Any) -> "logging.LoggerAdapter[logging.Logger]":
    # Every record a handler logs names its task, step and attempt.
    return logging.LoggerAdapter(
        logging.getLogger("tasker.handler"),
        {"task_id": step.task_id, "step_name": step.step_name, "attempt": step.attempt},
    )


_native._set_error_classes(TaskerError, ERROR_CLASSES)
_native._set_logger_factory(_step_logger)
