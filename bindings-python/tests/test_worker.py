"""The Worker: real workflows through Python handlers, failures, heartbeats, stopping."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

import tasker
from conftest import chain

DIAMOND = chain("diamond", [("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])])


def steps_by_name(t: tasker.Tasker, task_id: int) -> Dict[str, Dict[str, Any]]:
    return {s["name"]: s for s in t.get_task(task_id)["steps"]}


def test_a_diamond_runs_with_results_handed_down(tk: tasker.Tasker) -> None:
    tk.register_template(DIAMOND)
    ids = [tk.create_task("t", "diamond", context={"n": n})["task_id"] for n in range(5)]
    calls: Counter = Counter()
    w = tasker.Worker(tk, concurrency=3)

    @w.handler("a")
    def a(step: tasker.Step) -> Any:
        calls[(step.task_id, "a")] += 1
        return {"n": step.context["n"]}

    @w.handler("b")
    def b(step: tasker.Step) -> Any:
        calls[(step.task_id, "b")] += 1
        return step.results["a"]["n"] + 1

    @w.handler("c")
    def c(step: tasker.Step) -> Any:
        calls[(step.task_id, "c")] += 1
        return step.results["a"]["n"] * 10

    @w.handler("d")
    def d(step: tasker.Step) -> Any:
        calls[(step.task_id, "d")] += 1
        return {"sum": step.results["b"] + step.results["c"], "seen": sorted(step.results)}

    stats = w.run_until_idle()
    assert stats == tasker.WorkerStats(completed=20, failed=0, lost=0, released=0)
    assert set(calls.values()) == {1} and len(calls) == 20
    for n, tid in enumerate(ids):
        task = tk.get_task(tid)
        assert task["state"] == "complete"
        d_step = steps_by_name(tk, tid)["d"]
        assert d_step["result"] == {"sum": n + 1 + n * 10, "seen": ["b", "c"]}
        assert d_step["attempts"] == 1


def test_the_step_object(tk: tasker.Tasker, caplog: pytest.LogCaptureFixture) -> None:
    tk.register_template(
        {"namespace": "t", "name": "obj", "version": "1",
         "steps": [{"name": "first", "handler": "h1"},
                   {"name": "second", "handler": "h2", "depends_on": ["first"],
                    "config": {"carrier": "ups"}}]}
    )
    tid = tk.create_task("t", "obj", context={"order": 7})["task_id"]
    seen: Dict[str, Any] = {}

    def h1(step: tasker.Step) -> Any:
        step.logger.info("working on %s", step.step_name)
        return {"from": "first"}

    def h2(step: tasker.Step) -> Any:
        seen.update(context=step.context, config=step.config, results=step.results,
                    attempt=step.attempt, task_id=step.task_id, step_name=step.step_name,
                    max_attempts=step.max_attempts, handler=step.handler)
        return None

    with caplog.at_level(logging.INFO, logger="tasker.handler"):
        tasker.Worker(tk, handlers={"h1": h1, "h2": h2}).run_until_idle()
    assert seen == {"context": {"order": 7}, "config": {"carrier": "ups"},
                    "results": {"first": {"from": "first"}}, "attempt": 1, "task_id": tid,
                    "step_name": "second", "max_attempts": 3, "handler": "h2"}
    rec = [r for r in caplog.records if r.name == "tasker.handler"][0]
    assert rec.getMessage() == "working on first"
    assert (rec.task_id, rec.step_name, rec.attempt) == (tid, "first", 1)  # type: ignore[attr-defined]
    assert tk.get_task(tid)["state"] == "complete"


def test_retries_then_success(tk: tasker.Tasker) -> None:
    tk.register_template(chain("flaky", [("a", []), ("b", ["a"])]))
    tid = tk.create_task("t", "flaky")["task_id"]
    attempts: List[int] = []
    w = tasker.Worker(tk)

    @w.handler("a")
    def a(step: tasker.Step) -> Any:
        attempts.append(step.attempt)
        if step.attempt < 3:
            raise ConnectionError(f"try {step.attempt} failed")
        return "ok"

    w.register("b", lambda step: step.results["a"])
    stats = w.run_until_idle()
    assert attempts == [1, 2, 3]
    assert (stats.completed, stats.failed) == (2, 2)
    s = steps_by_name(tk, tid)
    assert s["a"]["attempts"] == 3 and s["a"]["state"] == "complete"
    assert s["b"]["result"] == "ok"
    # The latest failure stays on the step, with its class and traceback.
    err = s["a"]["error"]
    assert err["kind"] == "ConnectionError"
    assert err["exception"] == "builtins.ConnectionError"
    assert err["message"] == "try 2 failed"
    assert err["retryable"] is True
    assert "in a" in err["traceback"] and "ConnectionError: try 2 failed" in err["traceback"]


def test_any_exception_is_retried_per_policy_then_errors(tk: tasker.Tasker) -> None:
    tk.register_template(chain("bad", [("a", []), ("b", ["a"])],
                               defaults={"retry": {"max_attempts": 2, "base_ms": 1, "max_ms": 2}}))
    tid = tk.create_task("t", "bad")["task_id"]

    class CustomFailure(Exception):
        pass

    def a(step: tasker.Step) -> Any:
        raise CustomFailure("always")

    ran_b: List[int] = []
    stats = tasker.Worker(tk, handlers={"a": a, "b": lambda s: ran_b.append(1)}).run_until_idle()
    assert stats.failed == 2 and stats.completed == 0
    task = tk.get_task(tid)
    assert task["state"] == "error"
    a_step = steps_by_name(tk, tid)["a"]
    assert a_step["state"] == "error" and a_step["attempts"] == 2
    assert a_step["error"]["kind"] == "CustomFailure"
    assert a_step["error"]["exception"].endswith("test_any_exception_is_retried_per_policy_then_errors.<locals>.CustomFailure")
    assert "raise CustomFailure" in a_step["error"]["traceback"]
    assert ran_b == []
    ev = tk.events(0, task_id=tid, types=["step.retry_scheduled", "step.failed"])["events"]
    assert [e["event"] for e in ev] == ["step.retry_scheduled", "step.failed"]
    assert ev[1]["details"]["error"]["kind"] == "CustomFailure"


def test_permanent_error_fails_at_once(tk: tasker.Tasker) -> None:
    tk.register_template(chain("perm", [("a", [])],
                               defaults={"retry": {"max_attempts": 5, "base_ms": 1, "max_ms": 2}}))
    tid = tk.create_task("t", "perm")["task_id"]

    def a(step: tasker.Step) -> Any:
        raise tasker.PermanentError("card reported stolen", details={"card": "4242"})

    stats = tasker.Worker(tk, handlers={"a": a}).run_until_idle()
    assert stats.failed == 1
    step = steps_by_name(tk, tid)["a"]
    assert step["state"] == "error" and step["attempts"] == 1
    assert step["error"]["retryable"] is False
    assert step["error"]["kind"] == "PermanentError"
    assert step["error"]["message"] == "card reported stolen"
    assert step["error"]["details"] == {"card": "4242"}
    assert tk.get_task(tid)["state"] == "error"


def test_retryable_error_carries_retry_after(tk: tasker.Tasker) -> None:
    tk.register_template(chain("later", [("a", [])]))
    tid = tk.create_task("t", "later")["task_id"]

    def a(step: tasker.Step) -> Any:
        if step.attempt == 1:
            raise tasker.RetryableError("rate limited", retry_after=0.25)
        return step.attempt

    tasker.Worker(tk, handlers={"a": a}).run_until_idle()
    ev = tk.events(0, task_id=tid, types=["step.retry_scheduled"])["events"]
    assert ev[0]["details"]["error"]["retry_after_ms"] == 250
    assert ev[0]["details"]["error"]["kind"] == "RetryableError"
    assert steps_by_name(tk, tid)["a"]["result"] == 2


def test_a_result_that_is_not_json_is_a_failure(tk: tasker.Tasker) -> None:
    tk.register_template(chain("nojson", [("a", []), ("b", ["a"])]))
    tid = tk.create_task("t", "nojson")["task_id"]
    stats = tasker.Worker(tk, handlers={"a": lambda s: {"when": object()},
                                        "b": lambda s: None}).run_until_idle()
    assert stats.failed == 1 and stats.completed == 0
    a = steps_by_name(tk, tid)["a"]
    assert a["state"] == "error" and a["result"] is None
    assert a["error"]["kind"] == "invalid_result"
    assert "cannot be stored as JSON" in a["error"]["message"]
    assert "$.when" in a["error"]["message"]
    assert steps_by_name(tk, tid)["b"]["state"] == "pending"


def test_sync_and_async_handlers_in_one_worker(tk: tasker.Tasker) -> None:
    tk.register_template(chain("mixed", [("fetch", []), ("parse", ["fetch"]), ("store", ["parse"])]))
    ids = [tk.create_task("t", "mixed", context={"i": i})["task_id"] for i in range(10)]
    loops: List[bool] = []
    w = tasker.Worker(tk, concurrency=4)

    @w.handler("fetch")
    async def fetch(step: tasker.Step) -> Any:
        await asyncio.sleep(0.01)
        loops.append(asyncio.get_running_loop().is_running())
        return {"body": f"page {step.context['i']}"}

    @w.handler("parse")
    def parse(step: tasker.Step) -> Any:
        return step.results["fetch"]["body"].split()

    @w.handler("store")
    async def store(step: tasker.Step) -> Any:
        if step.attempt == 1 and step.context["i"] == 3:
            raise RuntimeError("async failure")
        return len(step.results["parse"])

    stats = w.run_until_idle()
    assert stats.completed == 30 and stats.failed == 1
    assert loops == [True] * 10
    for tid in ids:
        s = steps_by_name(tk, tid)
        assert tk.get_task(tid)["state"] == "complete"
        assert s["store"]["result"] == 2
    failed = steps_by_name(tk, ids[3])["store"]
    assert failed["attempts"] == 2 and failed["error"]["kind"] == "RuntimeError"


def test_many_threads_complete_each_step_once(tk: tasker.Tasker) -> None:
    tk.register_template(chain("wide", [("a", []), ("b", ["a"])]))
    for i in range(150):
        tk.create_task("t", "wide", context={"i": i})
    seen: Counter = Counter()
    lock = threading.Lock()

    def h(step: tasker.Step) -> Any:
        with lock:
            seen[step.step_id] += 1
        return step.context["i"]

    stats = tasker.Worker(tk, concurrency=4, batch_size=8, handlers={"a": h, "b": h}).run_until_idle()
    assert stats.completed == 300
    assert len(seen) == 300 and set(seen.values()) == {1}
    assert tk.stats()["tasks"] == {"complete": 150}


def test_heartbeats_keep_a_long_handler_s_lease(settings: Dict[str, Any]) -> None:
    # A 600 ms lease swept every 50 ms: without heartbeats the 2 s handler would lose
    # its step to the sweep (step.lease_expired, a second attempt).
    with tasker.Tasker.open({**settings, "lease_ms": 600, "sweep_interval_ms": 50}) as t:
        t.register_template(chain("long", [("a", [])]))
        tid = t.create_task("t", "long")["task_id"]

        def slow(step: tasker.Step) -> Any:
            time.sleep(2.0)
            return "done"

        stats = tasker.Worker(t, handlers={"a": slow}).run_until_idle()
        assert stats.completed == 1 and stats.lost == 0
        a = steps_by_name(t, tid)["a"]
        assert a["state"] == "complete" and a["attempts"] == 1
        assert t.events(0, task_id=tid, types=["step.lease_expired"])["events"] == []


def test_stop_finishes_the_running_step_and_releases_the_rest(tk: tasker.Tasker) -> None:
    tk.register_template(chain("batch", [("a", [])]))
    ids = [tk.create_task("t", "batch")["task_id"] for _ in range(5)]
    entered = threading.Event()
    proceed = threading.Event()
    ran: List[int] = []

    def a(step: tasker.Step) -> Any:
        ran.append(step.task_id)
        entered.set()
        assert proceed.wait(10)
        return "finished"

    w = tasker.Worker(tk, concurrency=1, batch_size=10, handlers={"a": a})
    w.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=w.stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while not w.stopping and time.monotonic() < deadline:  # stop() asked while it runs
        time.sleep(0.001)
    assert w.stopping
    proceed.set()
    stopper.join(10)
    assert not w.running
    assert ran == [ids[0]]
    assert w.stats == tasker.WorkerStats(completed=1, failed=0, lost=0, released=4)
    states = [steps_by_name(tk, tid)["a"] for tid in ids]
    assert states[0]["state"] == "complete" and states[0]["result"] == "finished"
    for s in states[1:]:
        assert s["state"] == "ready"
    released = tk.events(0, types=["step.released"])["events"]
    assert sorted(e["task_id"] for e in released) == ids[1:]
    # Handed back without spending an attempt: the next worker runs them as attempt 1.
    attempts: List[int] = []
    tasker.Worker(tk, handlers={"a": lambda s: attempts.append(s.attempt)}).run_until_idle()
    assert attempts == [1, 1, 1, 1]


RUN_SCRIPT = r"""
import sys, time, tasker
t = tasker.Tasker.open(sys.argv[1])
w = tasker.Worker(t, batch_size=10, poll_ms=100)

@w.handler("a")
def a(step):
    open(sys.argv[2], "a").write(f"{step.task_id}\n")
    time.sleep(0.5)
    return "survived"

w.run()
print("stopped", w.stats.completed, w.stats.released, flush=True)
t.close()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_gracefully_on_a_signal(tmp_path: Path, sig: int) -> None:
    url = f"sqlite://{tmp_path}/tasker.db"
    with tasker.Tasker.open(url) as t:
        t.register_template(chain("sig", [("a", [])]))
        ids = [t.create_task("t", "sig")["task_id"] for _ in range(4)]
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, url, str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no start"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == ["stopped", "1", "3"]
    with tasker.Tasker.open(url) as t:
        states = [t.get_task(tid)["steps"][0] for tid in ids]
        assert [s["state"] for s in states] == ["complete", "ready", "ready", "ready"]
        assert states[0]["result"] == "survived"


def test_worker_argument_errors(tk: tasker.Tasker) -> None:
    with pytest.raises(TypeError):
        tasker.Worker("not a tasker")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tasker.Worker(tk, concurrency=0)
    w = tasker.Worker(tk)
    with pytest.raises(RuntimeError, match="at least one handler"):
        w.run_until_idle()
    with pytest.raises(TypeError):
        w.register("x", 42)  # type: ignore[arg-type]


def test_a_closed_handle_stops_the_worker_with_closed_error(settings: Dict[str, Any]) -> None:
    t = tasker.Tasker.open(settings)
    t.register_template(chain("c", [("a", [])]))
    t.close()
    with pytest.raises(tasker.ClosedError):
        tasker.Worker(t, handlers={"a": lambda s: None}).run_until_idle()


LOCK_SCRIPT = r"""
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


def test_reports_are_retried_while_the_database_is_unavailable(tmp_path: Path) -> None:
    # Another process's exclusive lock on the SQLite file makes the engine's writes fail
    # with `unavailable` (busy timeout 100 ms); the worker keeps the step and reports it
    # once the lock is gone. (The lock is taken in another process: POSIX file locks
    # of one process do not exclude each other.)
    db = tmp_path / "tasker.db"
    with tasker.Tasker.open(f"sqlite://{db}", sqlite_busy_timeout_ms=100) as t:
        t.register_template(chain("busy", [("a", [])]))
        tid = t.create_task("t", "busy")["task_id"]
        lockers: List[subprocess.Popen] = []

        def a(step: tasker.Step) -> Any:
            p = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, str(db), "0.8"],
                                 stdout=subprocess.PIPE, text=True)
            lockers.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "locked"
            with pytest.raises(tasker.UnavailableError):
                t.create_task("t", "busy")  # the lock holds: writes are refused
            return "reported late"

        stats = tasker.Worker(t, handlers={"a": a}).run_until_idle()
        assert lockers[0].wait(30) == 0
        assert stats == tasker.WorkerStats(completed=1, failed=0, lost=0, released=0)
        step = steps_by_name(t, tid)["a"]
        assert step["state"] == "complete" and step["result"] == "reported late"
        assert step["attempts"] == 1
        assert t.stats()["tasks"] == {"complete": 1}


def test_a_claim_the_engine_refuses_ends_the_run_with_its_error(tk: tasker.Tasker) -> None:
    # The engine takes at most 64 handler names per claim: the worker must not retry a
    # request that can never succeed.
    w = tasker.Worker(tk, handlers={f"h{i}": (lambda s: None) for i in range(65)})
    with pytest.raises(tasker.InvalidArgumentError):
        w.run_until_idle()
    assert not w.running


def test_async_handlers_run_concurrently(tk: tasker.Tasker) -> None:
    # Four handlers that each wait until all four are running: they finish only if the
    # worker runs them at the same time (concurrency=4) on its event loop.
    tk.register_template(chain("together", [("a", [])]))
    for _ in range(4):
        tk.create_task("t", "together")
    arrived: List[int] = []
    state: Dict[str, Any] = {}

    async def a(step: tasker.Step) -> Any:
        if "all_in" not in state:
            state["all_in"] = asyncio.Event()
        arrived.append(step.task_id)
        if len(arrived) == 4:
            state["all_in"].set()
        await asyncio.wait_for(state["all_in"].wait(), timeout=10)
        return len(arrived)

    stats = tasker.Worker(tk, concurrency=4, handlers={"a": a}).run_until_idle()
    assert stats.completed == 4 and stats.failed == 0
    results = [t_["steps"][0]["result"] for t_ in (tk.get_task(i) for i in range(1, 5))]
    assert results == [4, 4, 4, 4]


def test_async_handler_failures_are_told_apart(tk: tasker.Tasker) -> None:
    tk.register_template(chain("asyncbad", [("raises", []), ("nojson", [])],
                               defaults={"retry": {"max_attempts": 1}}))
    tid = tk.create_task("t", "asyncbad")["task_id"]

    async def raises(step: tasker.Step) -> Any:
        raise TypeError("the handler's own TypeError")

    async def nojson(step: tasker.Step) -> Any:
        return {"bytes": b"\x00"}

    stats = tasker.Worker(tk, concurrency=2, handlers={"raises": raises, "nojson": nojson}).run_until_idle()
    assert stats.failed == 2 and stats.completed == 0
    s = steps_by_name(tk, tid)
    assert s["raises"]["error"]["kind"] == "TypeError"
    assert "the handler's own TypeError" in s["raises"]["error"]["traceback"]
    assert s["nojson"]["error"]["kind"] == "invalid_result"
    assert s["nojson"]["result"] is None and s["nojson"]["state"] == "error"
