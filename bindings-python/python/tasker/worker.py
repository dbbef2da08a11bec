"""``Worker``: runs Python handlers for the steps of Tasker tasks.

The worker is a driver of the engine's worker runtime (``docs/workers.md``): it opens a
session, and its threads ask the session for steps (``worker_next``), run the handlers
and report the outcomes (``worker_report``, which claims the next batch in the same
transaction). Leases, retries, timeouts, outages and failure documents are the engine's
business. Sync handlers run on ``concurrency`` threads; ``async def`` handlers on an
asyncio loop in a thread of its own, up to ``concurrency`` at once. The GIL is released
during every engine call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

from . import _native
from .client import Tasker, forward_logs
from .errors import Outcome, outcome_of
from .types import WorkerStats

__all__ = ["Worker", "WorkerStats", "Step", "Handler"]

log = logging.getLogger("tasker.worker")

#: The step object a handler receives (see ``tasker._native.Step``).
Step = _native.Step

#: A handler: ``def h(step) -> result`` or ``async def h(step) -> result``; the result
#: must be JSON-serialisable (dict, list, str, int, float, bool, None).
Handler = Union[Callable[[Step], Any], Callable[[Step], Awaitable[Any]]]

# A batch whose handlers took longer than this per step makes the thread claim one
# step at a time (steps waiting in a batch count against their timeout).
_SLOW_STEP_S = 0.005


class Worker:
    """Runs handlers for claimed steps.

    Args:
        tasker: An open :class:`tasker.Tasker`.
        concurrency: Threads running sync handlers, and the most ``async def``
            handlers running at once.
        handlers: Handler name -> function, as if registered with :meth:`handler`.
        worker_id: Recorded on steps and events (default ``host-pid``).
        batch_size: Steps a thread claims at once (1-1000). Large batches are fastest
            for short handlers; a thread whose handlers are slow claims one at a time.
        lease_ms: The lease the session's claims ask for (default: the engine's).
        idle_wait_ms: How long a claim waits for work in :meth:`run_until_idle`.
        poll_ms: How long a claim waits for work in :meth:`start`/:meth:`run` before
            asking again (new work wakes it at once).

    A handler gets a :class:`tasker.Step` (``context``, ``config``, ``results``,
    ``attempt``, ``cancelled``, ``logger``, ...) and returns the step's result. Raising
    :class:`tasker.PermanentError` fails the step for good;
    :class:`tasker.RetryableError` asks for a retry (``retry_after`` seconds); any other
    exception is a retryable failure recorded with its class, message and traceback. A
    result that is not JSON-serialisable fails the step for good (``invalid_result``).
    ``step.cancelled`` is set when the task is cancelled, the step's timeout passes or
    its lease is lost; an ``async def`` handler is cancelled then.
    """

    def __init__(self, tasker: Tasker, concurrency: int = 1, handlers: Optional[Mapping[str, Handler]] = None, *,
                 worker_id: Optional[str] = None, batch_size: int = 64, lease_ms: Optional[int] = None,
                 idle_wait_ms: int = 50, poll_ms: int = 500) -> None:
        if not isinstance(tasker, Tasker):
            raise TypeError("Worker needs a tasker.Tasker")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        self.tasker, self.concurrency, self.batch_size = tasker, concurrency, batch_size
        self.lease_ms, self.idle_wait_ms, self.poll_ms = lease_ms, idle_wait_ms, poll_ms
        self._worker_id = worker_id
        self._sync: Dict[str, Callable[[Step], Any]] = {}
        self._async: Dict[str, Callable[[Step], Awaitable[Any]]] = {}
        self._stats = WorkerStats()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._threads: List[threading.Thread] = []
        self._running: Dict[int, Step] = {}
        self._tasks: Dict[int, "asyncio.Task[Any]"] = {}
        self._errors: List[BaseException] = []
        self._sessions: Dict[str, str] = {}
        self._idle: Dict[str, bool] = {}
        self._lanes: Dict[str, int] = {}
        for name, fn in (handlers or {}).items():
            self.register(name, fn)

    def register(self, name: str, fn: Handler) -> None:
        """Registers ``fn`` as the handler for steps whose template names ``name``."""
        if not callable(fn):
            raise TypeError(f"handler {name!r} is not callable")
        if self.running:
            raise RuntimeError("register handlers before starting the worker")
        self._sync.pop(name, None)
        self._async.pop(name, None)
        if inspect.iscoroutinefunction(fn):
            self._async[name] = fn
        else:
            self._sync[name] = fn

    def handler(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@worker.handler("charge_card")`` registers the function."""
        def register(fn: Handler) -> Handler:
            self.register(name, fn)
            return fn
        return register

    @property
    def handler_names(self) -> List[str]:
        """Every registered handler name, sorted."""
        return sorted([*self._sync, *self._async])

    @property
    def worker_id(self) -> str:
        """The name recorded on claimed steps and their events."""
        return self._worker_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def stats(self) -> WorkerStats:
        """A copy of the counts so far (completed, failed, lost, released)."""
        with self._lock:
            return WorkerStats(**vars(self._stats))

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` (or a signal in :meth:`run`) asked the worker to stop."""
        return self._stopping.is_set()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop`."""
        return any(t.is_alive() for t in self._threads)

    def run_until_idle(self) -> WorkerStats:
        """Works until the session holds nothing, nothing is claimable for these
        handlers and no retry of them is scheduled; returns the counts of this run."""
        before = self.stats
        self._launch(until_idle=True)
        try:
            self._join()
        except KeyboardInterrupt:
            self.stop()
            raise
        after = self.stats
        return WorkerStats(*(getattr(after, f) - getattr(before, f) for f in vars(after)))

    def start(self) -> None:
        """Starts working in background threads; returns at once. Call :meth:`stop`."""
        self._launch(until_idle=False)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops gracefully: no more claims; running handlers finish and are reported;
        claimed steps not yet started are handed back (their attempt does not count)."""
        self._stopping.set()
        self._join(timeout)

    def run(self) -> None:
        """Works until SIGINT or SIGTERM (or :meth:`stop` from another thread), then
        stops gracefully. Signal handlers are installed only from the main thread."""
        previous: Dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, frame: self._stopping.set())
        try:
            self.start()
            while not self._stopping.wait(0.2) and self.running:
                pass
        finally:
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    # -- the session ------------------------------------------------------------------

    def _launch(self, until_idle: bool) -> None:
        if self.running:
            raise RuntimeError("the worker is already running")
        if not self._sync and not self._async:
            raise RuntimeError("register at least one handler before running the worker")
        self._stopping.clear()
        self._done.clear()
        self._errors, self._until_idle = [], until_idle
        # One session per kind of handler: sync steps go to threads, async to the loop.
        kinds = {"sync": (sorted(self._sync), self.batch_size * self.concurrency),
                 "async": (sorted(self._async), self.concurrency)}
        targets: List[Tuple[str, Callable[[], None], bool]] = []  # (kind, run, is a lane)
        self._sessions, self._idle, self._lanes = {}, {}, {}
        for kind, (names, batch) in kinds.items():
            if not names:
                continue
            req: Dict[str, Any] = {"handlers": names, "name": self.worker_id, "concurrency": self.concurrency,
                                   "batch": min(1000, batch)}
            if self.lease_ms is not None:
                req["lease_ms"] = self.lease_ms
            try:
                self._sessions[kind] = self.tasker.call("worker_open", req)["worker_id"]
            except BaseException:
                self._close_sessions()
                raise
            finally:
                forward_logs()
            self._idle[kind] = False
            lanes = [self._sync_lane] * self.concurrency if kind == "sync" else [self._async_thread]
            self._lanes[kind] = len(lanes)
            targets += [(kind, lane, True) for lane in lanes] + [(kind, functools.partial(self._watch, kind), False)]
        self._threads = [threading.Thread(target=self._guard, args=t, daemon=True,
                                          name=f"tasker-worker-{self.worker_id}-{i}") for i, t in enumerate(targets)]
        for t in self._threads:
            t.start()

    def _join(self, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._errors:
            err, self._errors = self._errors[0], []
            raise err

    def _guard(self, kind: str, target: Callable[[], None], lane: bool) -> None:
        try:
            target()
        except BaseException as e:  # raised again by run_until_idle / stop
            log.error("worker %s: %s", self.worker_id, e)
            self._errors.append(e)
            self._done.set()
        finally:
            if lane:
                self._lane_out(kind)

    def _lane_out(self, kind: str) -> None:
        """The last thread of a session closes it (which wakes its watcher)."""
        with self._lock:
            self._lanes[kind] -= 1
            last = self._lanes[kind] == 0
        if last:
            self._done.set()
            self._close_sessions(kind)

    def _close_sessions(self, only: Optional[str] = None) -> None:
        for kind in [only] if only else list(self._sessions):
            session = self._sessions.pop(kind, None)
            if session is not None:
                try:
                    self.tasker.call("worker_close", {"worker_id": session, "grace_ms": 0})
                finally:
                    forward_logs()

    def _finished(self) -> bool:
        return self._done.is_set() or self._stopping.is_set()

    def _apply(self, kind: str, stops: List[Tuple[int, str]], steps: List[Step], idle: bool = False) -> None:
        for step_id, _reason in stops:
            step = self._running.get(step_id)
            if step is not None:
                step.cancelled.set()
            task = self._tasks.get(step_id)
            if task is not None:
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._idle[kind] = idle and not steps
        if self._until_idle and all(self._idle.values()):
            self._done.set()
        forward_logs()

    def _next(self, kind: str, max_: int, wait_ms: int) -> List[Step]:
        session = self._sessions.get(kind)
        if session is None:
            return []
        steps, stops, idle = self.tasker.native.worker_next(session, max_, wait_ms)
        self._apply(kind, stops, steps, idle or (max_ == 0 and self._idle[kind]))
        return steps

    def _report(self, kind: str, outcomes: List[Outcome], next_max: Optional[int]) -> List[Step]:
        session = self._sessions.get(kind)
        if session is None or (not outcomes and not next_max):
            return []
        (ok, failed, released, lost), steps, stops = self.tasker.native.worker_report(session, outcomes, next_max)
        with self._lock:
            s = self._stats
            s.completed, s.failed, s.released, s.lost = s.completed + ok, s.failed + failed, s.released + released, s.lost + lost
        self._apply(kind, stops, steps)
        return steps

    def _watch(self, kind: str) -> None:
        """Waits for stop signals while the session's handlers are busy."""
        while not self._finished():
            self._next(kind, 0, 1000)

    def _sync_lane(self) -> None:
        size = 1 if self.concurrency > 1 else self.batch_size
        wait_ms = self.idle_wait_ms if self._until_idle else self.poll_ms
        steps: List[Step] = []
        while True:
            if not steps:
                if self._finished():
                    return
                steps = self._next("sync", size, wait_ms)
                continue
            started, outcomes = time.perf_counter(), []  # type: Tuple[float, List[Outcome]]
            for i, step in enumerate(steps):
                if self._stopping.is_set():
                    outcomes.extend((s.step_id, "release", "") for s in steps[i:])
                    break
                fn = self._sync[step.handler]
                self._running[step.step_id] = step
                try:
                    outcomes.append(outcome_of(step.step_id, result=fn(step)))
                except Exception as e:
                    outcomes.append(outcome_of(step.step_id, error=e))
                finally:
                    del self._running[step.step_id]
            fast = (time.perf_counter() - started) / len(steps) < _SLOW_STEP_S
            size = min(size * 2, self.batch_size) if fast else 1
            steps = self._report("sync", outcomes, None if self._finished() else size)

    def _async_thread(self) -> None:
        asyncio.run(self._async_lane())

    async def _async_lane(self) -> None:
        loop = asyncio.get_running_loop()
        wait_ms = self.idle_wait_ms if self._until_idle else self.poll_ms
        running: Set["asyncio.Task[Outcome]"] = set()
        done: List[Outcome] = []
        while True:
            finished = self._finished()
            if finished and not running and not done:
                return
            free = 0 if finished else self.concurrency - len(running)
            if done:
                batch, done[:] = done[:], []
                steps = await loop.run_in_executor(None, self._report, "async", batch, free or None)
            elif free:
                steps = await loop.run_in_executor(None, self._next, "async", free, 0 if running else wait_ms)
            else:
                steps = []
            for step in steps:
                task = asyncio.ensure_future(self._run_async(step))
                self._tasks[step.step_id] = task
                running.add(task)
            if running and not done:
                finished_now, running = await asyncio.wait(running, timeout=wait_ms / 1000,
                                                           return_when=asyncio.FIRST_COMPLETED)
                done.extend(t.result() for t in finished_now)

    async def _run_async(self, step: Step) -> Outcome:
        fn = self._async[step.handler]
        try:
            return outcome_of(step.step_id, result=await fn(step))
        except (Exception, asyncio.CancelledError) as e:
            return outcome_of(step.step_id, error=e)
        finally:
            self._tasks.pop(step.step_id, None)
