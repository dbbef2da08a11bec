"""Testing helpers: run workflows in a test without waiting real time.

:func:`harness` opens a :class:`Harness`: a :class:`tasker.Tasker` on a fresh SQLite
database in a temporary directory (removed on close) whose engine runs on a *manual
clock* (the ``clock: manual`` setting, docs/configuration.md). The clock starts at the
real time and moves only through :meth:`Harness.advance`, so retries, backoffs,
release delays, lease expiries and step timeouts come due when the test says so.
:meth:`Harness.run_until_idle` runs workers until nothing is left: it runs them until
idle, moves the clock to the next step that becomes claimable (the engine's
``next_ready_at``), and repeats::

    import tasker
    from tasker.testing import harness

    def test_payment_is_retried():
        with harness() as t:
            t.register_template(yaml=TEMPLATE)
            task = t.create_task("orders", "pay", context={"order_id": 1})
            worker = tasker.Worker(t)

            @worker.handler("charge")
            def charge(step):
                if step.attempt == 1:
                    raise tasker.RetryableError("gateway timeout", retry_after=600)
                return {"charged": True}

            t.run_until_idle(worker)      # runs attempt 2 ten minutes later, at once
            assert t.get_task(task["task_id"])["state"] == "complete"

The engine decides; this module only drives it (``advance_clock`` and
``next_ready_at`` in docs/api.md).
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Dict, List, Optional, Union

from . import _native
from .client import Tasker
from .worker import Worker, WorkerStats

__all__ = ["Harness", "harness"]


class Harness(Tasker):
    """A :class:`tasker.Tasker` on a temporary SQLite database with a manual clock.
    Open it with :func:`harness`; closing it removes the database."""

    _dir: Optional[str] = None

    def close(self) -> None:
        super().close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def now(self) -> str:
        """The engine's time (RFC 3339)."""
        return str(self.call("advance_clock", {"ms": 0})["now"])

    def advance(self, seconds: float) -> str:
        """Moves the clock forward by ``seconds`` (0 to 30 days) and returns the new
        time (RFC 3339). Steps whose retry or delay came due are claimable at once;
        delayed tasks that came due start, task timeouts that passed fire, and cron
        schedule ticks that came due create their tasks before this returns."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
        return str(self.call("advance_clock", {"ms": round(seconds * 1000)})["now"])

    def next_ready_at(self, handlers: Optional[List[str]] = None) -> Dict[str, Any]:
        """When the next step (of ``handlers``) becomes claimable:
        ``{"next_ready_at": time or None, "in_ms": int or None, "now": time, ...}``."""
        req: Dict[str, Any] = {}
        if handlers is not None:
            req["handlers"] = handlers
        return dict(self.call("next_ready_at", req))

    def run_until_idle(self, *workers: Worker, max_rounds: int = 10_000) -> WorkerStats:
        """Runs ``workers`` until none has anything left to run, moving the clock to
        each retry or delay as it comes: run every worker until idle; if a step of
        their handlers becomes claimable later, advance the clock to it and repeat.
        Returns the counts summed over the workers and rounds.

        Raises:
            RuntimeError: still not done after ``max_rounds`` rounds.
        """
        if not workers:
            raise TypeError("run_until_idle needs at least one tasker.Worker")
        handlers = sorted({h for w in workers for h in w.handler_names})
        total = WorkerStats()
        for _ in range(max_rounds):
            for w in workers:
                got = w.run_until_idle()
                for field in vars(total):
                    setattr(total, field, getattr(total, field) + getattr(got, field))
            due = self.next_ready_at(handlers)
            if due["in_ms"] is None:
                return total
            self.call("advance_clock", {"ms": due["in_ms"]})
        raise RuntimeError(f"workers were still busy after {max_rounds} rounds")


def harness(database_url: Optional[str] = None, **settings: Any) -> Harness:
    """Opens a :class:`Harness`: a fresh SQLite database in a temporary directory
    (or ``database_url``, which must then be one no other test uses) on a manual
    clock. ``settings`` are laid over (docs/configuration.md); ``clock`` is always
    ``manual``."""
    if settings.get("clock", "manual") != "manual":
        raise ValueError("a testing harness runs on the manual clock (leave out clock=)")
    directory: Optional[str] = None
    if database_url is None:
        directory = tempfile.mkdtemp(prefix="tasker-test-")
        database_url = f"sqlite://{directory}/tasker.db"
    merged: Dict[str, Union[str, Any]] = {"database_url": database_url,
                                          "templates_dir": directory or "templates"}
    merged.update(settings)
    merged["clock"] = "manual"
    text = _native.to_json(merged)
    try:
        t = Harness(_native.Handle.open(text), text)
    except BaseException:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    t._dir = directory
    return t
