"""``Worker``: runs Python handlers for Tasker steps. It drives the engine's worker
runtime (``docs/workers.md``, through :mod:`tasker._session`): claiming, leases,
retries, timeouts, outages and failure documents are the engine's business; this
module only runs handlers, sync ones on threads and ``async def`` ones on a loop."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

from ._session import Session
from .client import Tasker
from .errors import Outcome, outcome_of
from .types import Handler, Step, WorkerStats

__all__ = ["Worker", "WorkerStats", "Step", "Handler"]

log = logging.getLogger("tasker.worker")

# Handlers slower than this per step make their thread claim one step at a time.
_SLOW_STEP_S = 0.005


class Worker:
    """Runs handlers for claimed steps.

    Args:
        tasker: An open :class:`tasker.Tasker`.
        concurrency: Sync handler threads; the most ``async def`` handlers at once.
        handlers: Handler name -> function, as if registered with :meth:`handler`.
        worker_id: Recorded on steps and events (default ``host-pid``).
        batch_size: Steps a thread claims at once (1-1000; slow handlers claim one).
        lease_ms: The lease the session's claims ask for (default: the engine's).
        idle_wait_ms: How long a claim waits for work in :meth:`run_until_idle`.
        poll_ms: The same in :meth:`start`/:meth:`run` (new work wakes it at once).

    A handler gets a :class:`tasker.Step` and returns the step's result.
    :class:`tasker.PermanentError` fails the step for good, :class:`tasker.RetryableError`
    asks for a retry after ``retry_after`` seconds, any other exception is a retryable
    failure; a result that is not JSON fails the step for good. ``step.cancelled`` is
    set when the run should stop (cancel, timeout, lost lease); async handlers are
    cancelled then.
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
        self._stopping, self._done = threading.Event(), threading.Event()
        self._threads: List[threading.Thread] = []
        self._running: Dict[int, Step] = {}
        self._tasks: Dict[int, "asyncio.Task[Any]"] = {}
        self._errors: List[BaseException] = []
        self._sessions: Dict[str, Session] = {}
        for name, fn in (handlers or {}).items():
            self.register(name, fn)

    def register(self, name: str, fn: Handler) -> None:
        """Registers ``fn`` as the handler for steps whose template names ``name``."""
        if not callable(fn):
            raise TypeError(f"handler {name!r} is not callable")
        if self.running:
            raise RuntimeError("register handlers before starting the worker")
        for kind in (self._sync, self._async):
            kind.pop(name, None)
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
        return WorkerStats(*(getattr(self.stats, f) - getattr(before, f) for f in vars(before)))

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

    # -- running: one session per kind of handler (sync on threads, async on a loop) --
    def _launch(self, until_idle: bool) -> None:
        if self.running:
            raise RuntimeError("the worker is already running")
        if not self._sync and not self._async:
            raise RuntimeError("register at least one handler before running the worker")
        self._stopping.clear()
        self._done.clear()
        self._errors, self._until_idle, self._sessions = [], until_idle, {}
        targets: List[Tuple[Session, Callable[[Session], None], bool]] = []  # (session, run, is a lane)
        for kind, names, batch in (("sync", self._sync, self.batch_size * self.concurrency),
                                   ("async", self._async, self.concurrency)):
            if not names:
                continue
            req: Dict[str, Any] = {"handlers": sorted(names), "name": self.worker_id,
                                   "concurrency": self.concurrency, "batch": min(1000, batch)}
            if self.lease_ms is not None:
                req["lease_ms"] = self.lease_ms
            try:
                s = self._sessions[kind] = Session(self.tasker, req, self._on_stop, self._stats, self._lock,
                                                   self._on_steps)
            except BaseException:
                for other in self._sessions.values():
                    other.close()
                raise
            lanes = [self._sync_lane] * self.concurrency if kind == "sync" else [self._async_loop]
            s.lanes = len(lanes)
            targets += [(s, lane, True) for lane in lanes] + [(s, lambda s: s.watch(self._finished), False)]
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

    def _guard(self, session: Session, target: Callable[[Session], None], lane: bool) -> None:
        try:
            target(session)
        except BaseException as e:  # raised again by run_until_idle / stop
            log.error("worker %s: %s", self.worker_id, e)
            self._errors.append(e)
            self._done.set()
        finally:
            if lane:
                with self._lock:
                    session.lanes -= 1
                    last = session.lanes == 0
                if last:  # the last thread of a session closes it (waking its watcher)
                    self._done.set()
                    session.close()

    def _finished(self) -> bool:
        if self._until_idle and all(s.idle for s in self._sessions.values()):
            self._done.set()
        return self._done.is_set() or self._stopping.is_set()

    def _on_steps(self, steps: List[Step]) -> None:
        # Handed to a lane, not started yet: a stop signal for them must not be lost.
        for step in steps:
            self._running[step.step_id] = step

    def _on_stop(self, step_id: int) -> None:
        step = self._running.get(step_id)
        if step is not None:
            step.cancelled.set()
        task = self._tasks.get(step_id)
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)

    def _sync_lane(self, session: Session) -> None:
        size = 1 if self.concurrency > 1 else self.batch_size
        wait_ms = self.idle_wait_ms if self._until_idle else self.poll_ms
        steps: List[Step] = []
        while True:
            if not steps:
                if self._finished():
                    return
                steps = session.next(size, wait_ms)
                continue
            started, outcomes = time.perf_counter(), []  # type: Tuple[float, List[Outcome]]
            for i, step in enumerate(steps):
                if self._stopping.is_set():
                    for s in steps[i:]:
                        self._running.pop(s.step_id, None)
                        outcomes.append((s.step_id, "release", ""))
                    break
                fn = self._sync[step.handler]
                try:
                    outcomes.append(outcome_of(step.step_id, result=fn(step)))
                except Exception as e:
                    outcomes.append(outcome_of(step.step_id, error=e))
                finally:
                    self._running.pop(step.step_id, None)
            fast = (time.perf_counter() - started) / len(steps) < _SLOW_STEP_S
            size = min(size * 2, self.batch_size) if fast else 1
            steps = session.report(outcomes, None if self._finished() else size)

    def _async_loop(self, session: Session) -> None:
        asyncio.run(self._async_lane(session))

    async def _async_lane(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        wait_ms = self.idle_wait_ms if self._until_idle else self.poll_ms
        running: Set["asyncio.Task[Outcome]"] = set()
        done: List[Outcome] = []
        while True:
            finished = self._finished()
            if finished and not running and not done:
                return
            free = 0 if finished else self.concurrency - len(running)
            steps: List[Step] = []
            if done:
                batch, done[:] = done[:], []
                steps = await loop.run_in_executor(None, session.report, batch, free or None)
            elif free:
                steps = await loop.run_in_executor(None, session.next, free, 0 if running else wait_ms)
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
            self._running.pop(step.step_id, None)
