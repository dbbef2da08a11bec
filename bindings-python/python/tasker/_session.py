"""One worker session of the engine's worker runtime (``docs/workers.md``), as the
:class:`tasker.Worker`'s threads use it: claims (``worker_next``), reports
(``worker_report``), the stop signals and idleness they bring back, and the counts."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _native
from .client import Tasker, forward_logs
from .errors import Outcome
from .types import WorkerStats

Step = _native.Step


class Session:
    """Opens a session for ``names``; ``on_steps(steps)`` is called for every page of
    steps before ``on_stop(step_id)`` for each of its stop signals (a page can carry a
    step and its stop), ``stats`` is added to under ``lock``."""

    def __init__(self, tasker: Tasker, request: Dict[str, Any], on_stop: Callable[[int], None],
                 stats: WorkerStats, lock: threading.Lock,
                 on_steps: Callable[[List[Step]], None]) -> None:
        self.tasker, self.on_stop, self.stats, self.lock = tasker, on_stop, stats, lock
        self.on_steps = on_steps
        try:
            self.id: Optional[str] = tasker.call("worker_open", request)["worker_id"]
        finally:
            forward_logs()
        #: True when the last claim said the session is idle (holds nothing, nothing
        #: claimable, no retry scheduled).
        self.idle = False
        #: Threads still using the session; the last one out closes it.
        self.lanes = 0

    def _took(self, stops: List[Tuple[int, str]], steps: List[Step], idle: bool) -> None:
        for step in steps:  # for step.start_child
            step._attach(self.tasker)
        self.on_steps(steps)
        for step_id, _reason in stops:
            self.on_stop(step_id)
        self.idle = idle and not steps
        forward_logs()

    def next(self, max_: int, wait_ms: int) -> List[Step]:
        """Claims up to ``max_`` steps, waiting up to ``wait_ms`` (0: stop signals only)."""
        if self.id is None:
            return []
        steps, stops, idle = self.tasker.native.worker_next(self.id, max_, wait_ms)
        self._took(stops, steps, idle or (max_ == 0 and self.idle))
        return steps

    def report(self, outcomes: List[Outcome], next_max: Optional[int]) -> List[Step]:
        """Reports outcomes and, with ``next_max``, claims the next batch."""
        if self.id is None or (not outcomes and not next_max):
            return []
        (ok, failed, released, lost), steps, stops = self.tasker.native.worker_report(self.id, outcomes, next_max)
        with self.lock:
            s = self.stats
            s.completed, s.failed, s.released, s.lost = (
                s.completed + ok, s.failed + failed, s.released + released, s.lost + lost)
        self._took(stops, steps, False)
        return steps

    def watch(self, finished: Callable[[], bool]) -> None:
        """Waits for stop signals while the handlers are busy (woken by close)."""
        while not finished() and self.id is not None:
            self.next(0, 1000)

    def close(self) -> None:
        """Closes the session: what it still holds is handed back unrun."""
        with self.lock:
            session, self.id = self.id, None
        if session is not None:
            try:
                self.tasker.call("worker_close", {"worker_id": session, "grace_ms": 0})
            finally:
                forward_logs()
