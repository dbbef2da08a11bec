"""Type stubs for ``tasker._native``, the native half of the package (Rust, pyo3).

Use the documented API in :mod:`tasker` (``Tasker``, ``Worker``); this module is its
engine-facing layer.
"""

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

def version() -> str:
    """The version of tasker-core this module was built with."""

def to_json(obj: Any) -> str:
    """Encodes Python data as JSON text (dict with str keys, list, tuple, str, int,
    finite float, bool, None). Raises TypeError/ValueError naming the offending value's
    type and place (``$.items[2]``)."""

def from_json(text: str) -> Any:
    """Parses JSON text into Python data (key order kept)."""

def _set_error_classes(base: type, by_code: Dict[str, type]) -> None:
    """Registers the exception class of every error code (done by ``tasker`` at import)."""

def _set_logger_factory(factory: Callable[["Step"], Any]) -> None:
    """Registers the function that makes ``Step.logger`` (done by ``tasker`` at import)."""

class Handle:
    """An open engine handle; wrapped by ``tasker.Tasker``."""

    @staticmethod
    def open(config_json: str) -> "Handle":
        """Opens a handle from a JSON object of settings ("" for the defaults)."""
    def call(self, op: str, request: str) -> str:
        """Runs an operation with JSON request text; returns JSON response text."""
    def call_obj(self, op: str, request: Optional[Any] = None) -> Any:
        """Runs an operation with a request as Python data; returns Python data."""
    def claim(self, claim_json: str, wait_ms: int) -> Tuple[List["Step"], Optional[str]]:
        """Claims steps (``claim_json``: a claim request without ``wait_ms``). Returns
        the steps and, when none was claimed, when the next retry is due."""
    def worker_next(self, worker_id: str, max: int, wait_ms: int) -> Tuple[List["Step"], List[Tuple[int, str]], bool]:
        """``worker_next``: up to ``max`` claimed steps (waiting up to ``wait_ms``), the
        stop signals ``(step_id, reason)`` raised meanwhile, and whether the session is idle."""
    def worker_report(
        self, worker_id: str, outcomes: List[Tuple[int, str, str]], next_max: Optional[int] = None
    ) -> Tuple[Tuple[int, int, int, int], List["Step"], List[Tuple[int, str]]]:
        """``worker_report``: ``(step_id, kind, text)`` outcomes (kind ``result``,
        ``error``, ``invalid_result`` or ``release``); returns ``((completed, failed,
        released, lost), next steps, stop signals)``."""
    def subscribe(
        self, since: int, types: Optional[List[str]], callback: Callable[[Dict[str, Any]], Any]
    ) -> "Subscription":
        """Delivers events after cursor ``since`` to ``callback`` on a background thread."""
    def close(self) -> None:
        """Closes the handle (idempotent)."""
    @property
    def lease_ms(self) -> int:
        """The engine's ``lease_ms`` setting."""
    @property
    def closed(self) -> bool:
        """True once closed."""

class Subscription:
    """A running event subscription."""

    def stop(self) -> None:
        """Stops delivery and waits for the delivery thread (idempotent)."""
    @property
    def active(self) -> bool:
        """True while events are being delivered."""

class Step:
    """A claimed step, as a handler receives it."""

    @property
    def step_id(self) -> int:
        """The step's id."""
    @property
    def task_id(self) -> int:
        """The id of the step's task."""
    @property
    def step_name(self) -> str:
        """The step's name in its template."""
    @property
    def handler(self) -> str:
        """The handler name the step was claimed for."""
    @property
    def claim_token(self) -> str:
        """The token proving this claim."""
    @property
    def attempt(self) -> int:
        """1 on the first attempt (counted since the last operator retry)."""
    @property
    def max_attempts(self) -> int:
        """The step's retry budget."""
    @property
    def timeout_ms(self) -> Optional[int]:
        """The step's timeout in milliseconds."""
    @property
    def cancelled(self) -> threading.Event:
        """Set when this run should stop (task cancelled, timeout passed, lease lost)."""
    def start_child(self, namespace: str, name: str, context: Any = None, *, key: str,
                    version: Optional[str] = None, priority: Optional[int] = None) -> int:
        """Starts a child task of this step (``key`` names it among the step's children:
        a retried handler gets the same task back); returns its id. Return
        ``tasker.wait_for_children()`` to have the step wait for its children."""
    def _attach(self, client: Any) -> None:
        """Binds the step to the client its worker claimed it with."""
    @property
    def lease_expires_at(self) -> Optional[str]:
        """When the lease runs out unless renewed (RFC 3339)."""
    @property
    def context(self) -> Any:
        """The task's context (its input)."""
    @property
    def config(self) -> Any:
        """The step's ``config`` from the template, or None."""
    @property
    def results(self) -> Dict[str, Any]:
        """The parents' results, by step name."""
    @property
    def logger(self) -> Any:
        """A ``logging.LoggerAdapter`` (logger ``tasker.handler``) carrying the task id,
        step name and attempt."""

def drain_logs(max: int) -> List[Tuple[str, str, str]]:
    """Takes up to ``max`` engine log records as ``(level, target, message)``."""
