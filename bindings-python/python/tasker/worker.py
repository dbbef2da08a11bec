"""``Worker``: runs Python handlers for the steps of Tasker tasks.

How it works (and why it is fast): each of ``concurrency`` threads runs its own loop —
claim a batch of steps, run their handlers inline, report every success in one
``complete_steps`` call that also claims the next batch (one transaction per batch).
The GIL is released during every engine call, so one thread's handlers run while
another thread's batch is being committed. ``async def`` handlers run on an asyncio
loop in a thread of their own, up to ``concurrency`` at once. A heartbeat thread renews
the leases of every step the worker holds, so long handlers keep their steps.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple, TypeVar, Union

from . import _native
from .client import Tasker
from .errors import (
    ClosedError,
    DatabaseError,
    LeaseLostError,
    PermanentError,
    RetryableError,
    TaskerError,
    TooLargeError,
    UnavailableError,
)

__all__ = ["Worker", "WorkerStats", "Step", "Handler"]

log = logging.getLogger("tasker.worker")

#: The step object a handler receives (see ``tasker._native.Step``).
Step = _native.Step

#: A handler: ``def h(step) -> result`` or ``async def h(step) -> result``; the result
#: must be JSON-serialisable (dict, list, str, int, float, bool, None).
Handler = Union[Callable[[Step], Any], Callable[[Step], Awaitable[Any]]]

# A batch whose handlers took longer than this per step makes the next claim take one
# step: steps waiting in a batch count against their timeout.
_SLOW_STEP_S = 0.005
_T = TypeVar("_T")

# A report refused with `unavailable` (the database is out of reach for a moment) is
# retried with growing pauses this many times before the worker gives up.
_UNAVAILABLE_RETRIES = 8
# Tracebacks longer than this are cut (keeping the end) when the whole error document
# would exceed max_payload_bytes.
_TRACEBACK_TAIL = 4000


@dataclass
class WorkerStats:
    """What a worker did so far.

    Attributes:
        completed: Steps whose result was recorded.
        failed: Failed attempts reported (each may be retried by the engine).
        lost: Reports the engine refused with ``lease_lost`` (the step had been taken
            back, cancelled or resolved meanwhile).
        released: Claimed steps handed back unrun while stopping.
    """

    completed: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0


class _Idle:
    """Decides when every lane of a worker is idle at once.

    A lane records the progress count it saw *before* a claim that came back empty (and
    with no retry scheduled). When every lane's record equals the current count, every
    lane claimed after the last completion and found nothing: the worker is idle.
    """

    def __init__(self, lanes: int) -> None:
        self.lock = threading.Lock()
        self.progress = 0
        self.seen: List[Optional[int]] = [None] * lanes
        self.done = threading.Event()

    def progressed(self) -> None:
        with self.lock:
            self.progress += 1

    def busy(self, lane: int) -> None:
        self.seen[lane] = None

    def idle(self, lane: int, seen: int) -> None:
        with self.lock:
            self.seen[lane] = seen
            if all(s == self.progress for s in self.seen):
                self.done.set()


class Worker:
    """Runs handlers for claimed steps.

    Args:
        tasker: An open :class:`tasker.Tasker`.
        concurrency: Threads running sync handlers (each with its own claim loop), and
            the most ``async def`` handlers running at once.
        handlers: Handler name -> function, as if registered with :meth:`handler`.
        worker_id: Recorded on steps and events (default ``host-pid``).
        batch_size: Steps a thread claims at once (1-1000). Large batches are fastest
            for short handlers; a thread whose handlers are slow claims one at a time.
        lease_ms: Lease asked for each claim (default: the engine's ``lease_ms``).
        idle_wait_ms: How long a claim waits for work in :meth:`run_until_idle` before
            the thread counts itself idle.
        poll_ms: How long a claim waits for work in :meth:`start`/:meth:`run` before
            checking for :meth:`stop` (work created in this process wakes it at once).

    A handler gets a :class:`tasker.Step` (``context``, ``config``, ``results``,
    ``attempt``, ``task_id``, ``step_name``, ``logger``, ...) and returns the step's
    result. Raising :class:`tasker.PermanentError` fails the step for good;
    :class:`tasker.RetryableError` asks for a retry (``retry_after`` seconds); any other
    exception is a retryable failure recorded with its class, message and traceback.
    A result that is not JSON-serialisable fails the step for good with a message
    naming the offending value.
    """

    def __init__(
        self,
        tasker: Tasker,
        concurrency: int = 1,
        handlers: Optional[Mapping[str, Handler]] = None,
        *,
        worker_id: Optional[str] = None,
        batch_size: int = 64,
        lease_ms: Optional[int] = None,
        idle_wait_ms: int = 50,
        poll_ms: int = 500,
    ) -> None:
        if not isinstance(tasker, Tasker):
            raise TypeError("Worker needs a tasker.Tasker")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        self.tasker = tasker
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.lease_ms = lease_ms
        self.idle_wait_ms = idle_wait_ms
        self.poll_ms = poll_ms
        self._worker_id = worker_id
        self._sync: Dict[str, Callable[[Step], Any]] = {}
        self._async: Dict[str, Callable[[Step], Awaitable[Any]]] = {}
        self._stats = WorkerStats()
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._held: Dict[int, List[Step]] = {}
        # Steps of held batches already reported as failed: no more heartbeats for them.
        self._reported: Set[int] = set()
        self._errors: List[BaseException] = []
        self._idle: Optional[_Idle] = None
        self._hb_stop = threading.Event()
        self._hb_thread: Optional[threading.Thread] = None
        for name, fn in (handlers or {}).items():
            self.register(name, fn)

    # -- handlers ------------------------------------------------------------------

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
        """The id recorded on claimed steps and their events."""
        return self._worker_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def stats(self) -> WorkerStats:
        """A copy of the counts so far (completed, failed, lost, released)."""
        with self._stats_lock:
            return WorkerStats(**vars(self._stats))

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` (or a signal in :meth:`run`) asked the worker to stop,
        until it is started again."""
        return self._stopping.is_set()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop`."""
        return any(t.is_alive() for t in self._threads)

    # -- running ---------------------------------------------------------------------

    def run_until_idle(self) -> WorkerStats:
        """Works until nothing is claimable for these handlers and no retry of them is
        scheduled, then returns the counts of this run. Steps that other processes
        may create later are not waited for."""
        before = self.stats
        self._launch(until_idle=True)
        try:
            self._join()
        except KeyboardInterrupt:
            # Ctrl-C in the waiting thread: stop gracefully, then let it propagate.
            self.stop()
            raise
        after = self.stats
        return WorkerStats(
            completed=after.completed - before.completed,
            failed=after.failed - before.failed,
            lost=after.lost - before.lost,
            released=after.released - before.released,
        )

    def start(self) -> None:
        """Starts working in background threads; returns at once. Call :meth:`stop`."""
        self._launch(until_idle=False)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops gracefully: no more claims; handlers already running finish and are
        reported; claimed steps not yet started are handed back with ``release_step``
        (their attempt does not count). Waits for the threads (up to ``timeout``)."""
        self._stopping.set()
        self._join(timeout)

    def run(self) -> None:
        """Works until SIGINT or SIGTERM (or :meth:`stop` from another thread), then
        stops gracefully as :meth:`stop` does. Signal handlers are installed only when
        called from the main thread; the previous ones are restored on return."""
        previous: Dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self._stopping.wait(0.2):
                if not self.running:
                    break
        finally:
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("worker %s: signal %s, stopping gracefully", self.worker_id, signum)
        self._stopping.set()

    def _launch(self, until_idle: bool) -> None:
        if self.running:
            raise RuntimeError("the worker is already running")
        if not self._sync and not self._async:
            raise RuntimeError("register at least one handler before running the worker")
        self._stopping.clear()
        self._hb_stop.clear()
        self._errors = []
        h = self.tasker.native
        lanes: List[Callable[[int, _native.Handle], None]] = []
        if self._sync:
            lanes.extend([self._sync_lane] * self.concurrency)
        if self._async:
            lanes.append(self._async_lane)
        self._idle = _Idle(len(lanes)) if until_idle else None
        wid = self.worker_id
        self._threads = []
        for i, target in enumerate(lanes):
            t = threading.Thread(
                target=self._guard, args=(target, i, h), name=f"tasker-worker-{wid}-{i}", daemon=True
            )
            self._threads.append(t)
        self._hb_thread = threading.Thread(
            target=self._heartbeat_loop, args=(h,), name=f"tasker-heartbeat-{wid}", daemon=True
        )
        self._hb_thread.start()
        for t in self._threads:
            t.start()

    def _join(self, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not self.running:
            self._hb_stop.set()
            if self._hb_thread is not None:
                self._hb_thread.join()
        if self._errors:
            err = self._errors[0]
            self._errors = []
            raise err

    def _guard(self, target: Callable[[int, _native.Handle], None], lane: int, h: _native.Handle) -> None:
        try:
            target(lane, h)
        except BaseException as e:  # reported by run_until_idle / stop
            log.exception("worker %s: thread failed", self.worker_id)
            self._errors.append(e)
            self._stopping.set()
            if self._idle is not None:
                self._idle.done.set()

    def _finished(self) -> bool:
        return self._stopping.is_set() or (self._idle is not None and self._idle.done.is_set())

    def _claim_json(self, names: List[str], limit: int) -> str:
        req: Dict[str, Any] = {"handlers": names, "limit": limit, "worker_id": self.worker_id}
        if self.lease_ms is not None:
            req["lease_ms"] = self.lease_ms
        return _native.to_json(req)

    def _count(self, completed: int = 0, failed: int = 0, lost: int = 0, released: int = 0) -> None:
        with self._stats_lock:
            s = self._stats
            s.completed += completed
            s.failed += failed
            s.lost += lost
            s.released += released

    # -- sync lanes -------------------------------------------------------------------

    def _sync_lane(self, lane: int, h: _native.Handle) -> None:
        names = sorted(self._sync)
        full = self._claim_json(names, self.batch_size)
        single = self._claim_json(names, 1) if self.batch_size > 1 else full
        claim_json = full
        idle = self._idle
        wait_ms = self.idle_wait_ms if idle is not None else self.poll_ms
        steps: List[Step] = []
        while True:
            if not steps:
                if self._finished():
                    return
                seen = idle.progress if idle is not None else 0
                try:
                    steps, next_ready = h.claim(claim_json, wait_ms)
                except (UnavailableError, DatabaseError) as e:
                    # Passing trouble with the database: try again. Anything else (a
                    # closed handle, a bad request) ends the worker with that error.
                    log.warning("worker %s: claim failed (%s); retrying", self.worker_id, e)
                    self._stopping.wait(self.poll_ms / 1000)
                    continue
                if not steps:
                    if next_ready is None:
                        if idle is not None:
                            idle.idle(lane, seen)
                        wait_ms = self.idle_wait_ms if idle is not None else self.poll_ms
                    else:
                        # A retry is scheduled: the claim wakes when it comes due.
                        wait_ms = max(self.idle_wait_ms, self.poll_ms)
                    continue
                if idle is not None:
                    idle.busy(lane)
            started = time.perf_counter()
            n = len(steps)
            steps = self._run_batch(h, steps, claim_json)
            per_step = (time.perf_counter() - started) / n
            claim_json = full if per_step < _SLOW_STEP_S else single

    def _run_batch(self, h: _native.Handle, steps: List[Step], claim_json: str) -> List[Step]:
        """Runs one batch's handlers, reports them, and returns the next batch (claimed
        in the same transaction; empty when stopping)."""
        handlers = self._sync
        encode = _native.to_json
        items: List[Tuple[int, str, str]] = []
        key = id(steps)
        self._held[key] = steps
        failed = lost = released = 0
        try:
            for i, step in enumerate(steps):
                if self._stopping.is_set():
                    released = self._release(steps[i:])
                    break
                fn = handlers.get(step.handler)
                if fn is None:  # not ours (cannot happen: we claim only our names)
                    released += self._release([step])
                    continue
                try:
                    result = fn(step)
                except Exception as e:
                    self._reported.add(step.step_id)
                    if self._fail(step, self._error_doc(step, e)):
                        failed += 1
                    else:
                        lost += 1
                    continue
                try:
                    text = encode(result)
                except (TypeError, ValueError) as e:
                    self._reported.add(step.step_id)
                    if self._fail(step, self._unserialisable(step, result, e)):
                        failed += 1
                    else:
                        lost += 1
                    continue
                items.append((step.step_id, step.claim_token, text))
            nxt: Optional[str] = None if self._finished() else claim_json
            ok, refused, next_steps = self._patiently(h.complete_steps, items, nxt)
        finally:
            del self._held[key]
            if self._reported:
                self._reported.difference_update(s.step_id for s in steps)
        for step_id, code, message in refused:
            log.warning("worker %s: result of step %s refused: %s: %s", self.worker_id, step_id, code, message)
        self._count(completed=ok, failed=failed, lost=lost + len(refused), released=released)
        if self._idle is not None:
            self._idle.progressed()
        return next_steps

    def _patiently(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Calls ``fn``, retrying while the database is ``unavailable`` (a restart, a
        full pool): the steps are still held, and the heartbeat keeps them."""
        for attempt in range(_UNAVAILABLE_RETRIES):
            try:
                return fn(*args)
            except UnavailableError as e:
                pause = min(0.1 * 2**attempt, 5.0)
                log.warning("worker %s: %s; retrying in %.1fs", self.worker_id, e, pause)
                time.sleep(pause)
        return fn(*args)

    def _release(self, steps: List[Step]) -> int:
        n = 0
        for step in steps:
            self._reported.add(step.step_id)
            try:
                reason = f"worker {self.worker_id} stopping"
                self._patiently(
                    lambda: self.tasker.release_step(step.step_id, step.claim_token, reason=reason)
                )
                n += 1
            except LeaseLostError:
                pass
        return n

    # -- failures ---------------------------------------------------------------------

    def _error_doc(self, step: Step, e: BaseException) -> Dict[str, Any]:
        cls = type(e)
        doc: Dict[str, Any] = {
            "message": str(e) or cls.__name__,
            "kind": cls.__name__,
            "exception": f"{cls.__module__}.{cls.__qualname__}",
            "retryable": not isinstance(e, PermanentError),
            "traceback": "".join(traceback.format_exception(cls, e, e.__traceback__)),
        }
        if isinstance(e, RetryableError) and e.retry_after is not None:
            doc["retry_after_ms"] = int(round(e.retry_after * 1000))
        details = getattr(e, "details", None) if isinstance(e, (PermanentError, RetryableError)) else None
        if details is not None:
            doc["details"] = details
        return doc

    def _unserialisable(self, step: Step, result: Any, e: BaseException) -> Dict[str, Any]:
        return {
            "message": f"handler `{step.handler}` returned a result that is not JSON-serialisable: {e}",
            "kind": "ResultNotSerializable",
            "exception": f"{type(e).__module__}.{type(e).__qualname__}",
            "result_type": type(result).__name__,
            "retryable": False,
        }

    def _fail(self, step: Step, doc: Dict[str, Any]) -> bool:
        """Reports a failed attempt; False when the lease was lost meanwhile."""
        for attempt in range(3):
            try:
                self._patiently(self.tasker.fail_step, step.step_id, step.claim_token, doc)
                return True
            except LeaseLostError:
                return False
            except TooLargeError:
                # Too big for max_payload_bytes: keep the end of the traceback, then
                # drop the extras, rather than lose the failure.
                if attempt == 0 and "traceback" in doc:
                    doc = {**doc, "traceback": doc["traceback"][-_TRACEBACK_TAIL:]}
                else:
                    doc = {k: doc[k] for k in ("message", "kind", "retryable") if k in doc}
                    doc["message"] = doc["message"][:200]
            except TypeError:
                # Details the handler attached are not JSON: store the failure without.
                doc = {k: v for k, v in doc.items() if k != "details"}
        return False

    # -- async lane -------------------------------------------------------------------

    def _async_lane(self, lane: int, h: _native.Handle) -> None:
        asyncio.run(self._async_main(lane, h))

    async def _async_main(self, lane: int, h: _native.Handle) -> None:
        """Keeps up to ``concurrency`` async handlers running. Results of finished
        handlers are reported together, in one ``complete_steps`` call that also claims
        steps for the free slots; a plain claim (waiting for work) runs only when
        nothing finished meanwhile."""
        loop = asyncio.get_running_loop()
        names = sorted(self._async)
        idle = self._idle
        base_wait = self.idle_wait_ms if idle is not None else self.poll_ms
        wait_ms = base_wait
        claims: Dict[int, str] = {}

        def claim_json(limit: int) -> str:
            if limit not in claims:
                claims[limit] = self._claim_json(names, limit)
            return claims[limit]

        running: Set["asyncio.Future[None]"] = set()
        done: List[Tuple[int, str, str]] = []
        while True:
            finished = self._finished()
            if finished and not running and not done:
                return
            free = 0 if finished else self.concurrency - len(running)
            steps: List[Step] = []
            if done:
                items = done[:]
                done.clear()
                try:
                    ok, refused, steps = await loop.run_in_executor(
                        None, self._patiently, h.complete_steps, items, claim_json(free) if free else None
                    )
                finally:
                    for step_id, _, _ in items:
                        self._held.pop(step_id, None)
                for step_id, code, message in refused:
                    log.warning("worker %s: result of step %s refused: %s: %s",
                                self.worker_id, step_id, code, message)
                self._count(completed=ok, lost=len(refused))
                if idle is not None:
                    idle.progressed()
            elif free:
                seen = idle.progress if idle is not None else 0
                try:
                    steps, next_ready = await loop.run_in_executor(
                        None, h.claim, claim_json(free), 0 if running else wait_ms
                    )
                except (UnavailableError, DatabaseError) as e:
                    log.warning("worker %s: claim failed (%s); retrying", self.worker_id, e)
                    await asyncio.sleep(self.poll_ms / 1000)
                    continue
                if not steps and not running:
                    if next_ready is None:
                        if idle is not None:
                            idle.idle(lane, seen)
                        wait_ms = base_wait
                    else:
                        # A retry is scheduled: the claim wakes when it comes due.
                        wait_ms = max(base_wait, self.poll_ms)
                    continue
            if steps:
                if idle is not None:
                    idle.busy(lane)
                for step in steps:
                    self._held[step.step_id] = [step]
                    running.add(asyncio.ensure_future(self._run_async(loop, step, done)))
            if running and not done:
                _, running = await asyncio.wait(
                    running, timeout=base_wait / 1000, return_when=asyncio.FIRST_COMPLETED
                )

    async def _run_async(
        self, loop: asyncio.AbstractEventLoop, step: Step, done: List[Tuple[int, str, str]]
    ) -> None:
        """Runs one async handler; a result goes to ``done`` for the lane to report
        (the step stays held until then), a failure is reported here."""
        fn = self._async[step.handler]
        try:
            result = await fn(step)
        except Exception as e:
            doc = self._error_doc(step, e)
        else:
            try:
                done.append((step.step_id, step.claim_token, _native.to_json(result)))
                return
            except (TypeError, ValueError) as e:
                doc = self._unserialisable(step, result, e)
        self._reported.add(step.step_id)
        try:
            ok = await loop.run_in_executor(None, self._fail, step, doc)
            self._count(failed=int(ok), lost=int(not ok))
        finally:
            self._held.pop(step.step_id, None)
            self._reported.discard(step.step_id)
            if self._idle is not None:
                self._idle.progressed()

    # -- heartbeats -------------------------------------------------------------------

    def _heartbeat_loop(self, h: _native.Handle) -> None:
        lease_ms = self.lease_ms or h.lease_ms
        every = max(lease_ms / 3000, 0.01)
        while not self._hb_stop.wait(every):
            for batch in list(self._held.values()):
                for step in batch:
                    if step.step_id in self._reported:
                        continue
                    try:
                        self.tasker.heartbeat(step.step_id, step.claim_token, lease_ms)
                    except LeaseLostError:
                        log.warning(
                            "worker %s: step %s (%s) was taken back; its result will be refused",
                            self.worker_id, step.step_id, step.step_name,
                        )
                    except ClosedError:
                        return
                    except TaskerError as e:
                        log.warning("worker %s: heartbeat failed: %s", self.worker_id, e)
