"""The worker runtime as Python users meet it: the bugs the engine-side runtime fixed
(an oversize result, a misspelt handler name, cancel and timeout never reaching a
handler), the concurrency limit, and a worker process killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import tasker
from conftest import all_events, chain


def test_an_oversize_result_fails_its_step_and_the_worker_goes_on(settings: Dict[str, Any]) -> None:
    with tasker.Tasker.open(settings) as t:
        t.register_template(chain("big", [("a", [])]))
        ids = [t.create_task("t", "big", context={"i": i})["task_id"] for i in range(4)]

        def a(step: tasker.Step) -> Any:
            return "x" * (2 * 1024 * 1024) if step.context["i"] == 1 else step.context["i"]

        stats = tasker.Worker(t, batch_size=4, handlers={"a": a}).run_until_idle()
        assert (stats.completed, stats.failed) == (3, 1)
        states = [t.get_task(i)["steps"][0] for i in ids]
        assert [s["state"] for s in states] == ["complete", "error", "complete", "complete"]
        assert states[1]["error"]["kind"] == "result_too_large"
        assert states[1]["error"]["retryable"] is False
        assert t.stats()["steps"].get("running", 0) == 0


def test_a_misspelt_handler_name_is_warned_about(tk: tasker.Tasker, caplog: pytest.LogCaptureFixture) -> None:
    tk.register_template(chain("typo", [("validate_order", [])]))
    caplog.set_level(logging.INFO, logger="tasker")
    tasker.Worker(tk, handlers={"valdate_order": lambda s: None}).run_until_idle()
    warnings = [r for r in caplog.records if r.name == "tasker.worker" and r.levelno == logging.WARNING]
    assert any("did you mean `validate_order`?" in r.getMessage() for r in warnings), caplog.text
    # The runtime says when a session opens and closes, with its handlers and counts.
    infos = [r.getMessage() for r in caplog.records if r.name == "tasker.worker"]
    assert any("worker session opened" in m and "valdate_order" in m and "concurrency=1" in m for m in infos)
    assert any("worker session closed" in m and "completed=0" in m for m in infos)


def test_a_cancel_reaches_a_running_handler(tk: tasker.Tasker, caplog: pytest.LogCaptureFixture) -> None:
    tk.register_template(chain("cancel", [("a", [])]))
    tid = tk.create_task("t", "cancel")["task_id"]
    entered = threading.Event()
    seen: List[float] = []

    def a(step: tasker.Step) -> Any:
        entered.set()
        # A long handler that checks its stop signal.
        if step.cancelled.wait(10):
            seen.append(time.monotonic())
        return "ignored"

    caplog.set_level(logging.INFO, logger="tasker")
    w = tasker.Worker(tk, handlers={"a": a}, lease_ms=600)
    w.start()
    assert entered.wait(10)
    asked = time.monotonic()
    tk.cancel_task(tid)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    assert seen, "the handler never saw the cancel"
    print(f"cancel reached the handler after {1000 * (seen[0] - asked):.0f} ms")
    assert w.stats.lost == 1 and w.stats.completed == 0
    assert tk.get_task(tid)["state"] == "cancelled"
    stops = [r for r in caplog.records if "stop signal" in r.getMessage()]
    assert len(stops) == 1, [r.getMessage() for r in stops]


def test_a_cancel_before_the_handler_starts_reaches_it(tk: tasker.Tasker) -> None:
    # Two steps in one page; the first handler to run cancels the other's task before
    # that handler starts: its stop signal must not be dropped.
    tk.register_template(chain("pair", [("a", [])]))
    ids = [tk.create_task("t", "pair")["task_id"] for _ in range(2)]
    order: List[int] = []
    saw: List[bool] = []

    def a(step: tasker.Step) -> Any:
        order.append(step.task_id)
        if len(order) == 1:
            tk.cancel_task(ids[1] if step.task_id == ids[0] else ids[0])
            time.sleep(0.3)  # the stop arrives while the other step waits its turn
        else:
            saw.append(step.cancelled.wait(5))
        return 1

    stats = tasker.Worker(tk, batch_size=2, handlers={"a": a}).run_until_idle()
    assert saw == [True]
    assert (stats.completed, stats.lost) == (1, 1)
    assert sorted(tk.get_task(i)["state"] for i in ids) == ["cancelled", "complete"]


def test_a_timeout_reaches_a_running_handler_and_is_a_failed_attempt(tk: tasker.Tasker) -> None:
    tk.register_template({**chain("slow", [("a", [])], defaults={"retry": {"max_attempts": 1}}),
                          "steps": [{"name": "a", "handler": "a", "timeout_s": 1}]})
    tid = tk.create_task("t", "slow")["task_id"]
    waited: List[bool] = []

    def a(step: tasker.Step) -> Any:
        waited.append(step.cancelled.wait(15))
        return "too late"

    stats = tasker.Worker(tk, handlers={"a": a}, lease_ms=600).run_until_idle()
    assert waited == [True]
    assert stats.lost == 1
    step = tk.get_task(tid)["steps"][0]
    assert step["state"] == "error" and step["error"]["kind"] == "timeout"


def test_an_async_handler_is_cancelled(tk: tasker.Tasker) -> None:
    tk.register_template(chain("acancel", [("a", [])]))
    tid = tk.create_task("t", "acancel")["task_id"]
    started = threading.Event()
    outcome: List[str] = []

    async def a(step: tasker.Step) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        return "slept"

    w = tasker.Worker(tk, concurrency=2, handlers={"a": a}, lease_ms=600)
    w.start()
    assert started.wait(10)
    tk.cancel_task(tid)
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    assert outcome == ["cancelled"]
    assert tk.get_task(tid)["state"] == "cancelled"


def test_never_more_than_concurrency_handlers_at_once(tk: tasker.Tasker) -> None:
    tk.register_template(chain("wide", [("a", [])]))
    for _ in range(12):
        tk.create_task("t", "wide")
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def a(step: tasker.Step) -> Any:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return None

    stats = tasker.Worker(tk, concurrency=3, batch_size=4, handlers={"a": a}).run_until_idle()
    assert stats.completed == 12
    assert 2 <= peak[0] <= 3, peak[0]


KILL_SCRIPT = r"""
import json, os, sys, time, tasker
t = tasker.Tasker.open(json.loads(sys.argv[1]))
marker = sys.argv[2]
w = tasker.Worker(t, batch_size=5, handlers={}, worker_id=sys.argv[3], lease_ms=1000)

@w.handler("a")
def a(step):
    with open(marker, "a") as f:
        f.write(f"{step.step_id}\n")
    if sys.argv[3] == "victim":
        time.sleep(60)  # killed in here
    return os.getpid()

w.run_until_idle()
t.close()
"""


def test_a_worker_killed_mid_batch_loses_nothing(settings: Dict[str, Any], tmp_path: Path) -> None:
    with tasker.Tasker.open({**settings, "sweep_interval_ms": 100}) as t:
        t.register_template(chain("kill", [("a", [])]))
        ids = [t.create_task("t", "kill")["task_id"] for _ in range(10)]
        marker = tmp_path / "started"
        victim = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(settings), str(marker), "victim"],
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), victim.stderr.read() if victim.poll() is not None else "no start"
        held = t.stats()["steps"].get("running", 0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert held >= 1
        survivor = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(settings), str(tmp_path / "s"),
                                   "survivor"], capture_output=True, text=True, timeout=120)
        assert survivor.returncode == 0, survivor.stderr
        # The victim's held steps came back after their lease; each step completed once.
        deadline = time.monotonic() + 30
        while t.stats()["tasks"] != {"complete": 10} and time.monotonic() < deadline:
            subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(settings), str(tmp_path / "s"),
                            "survivor"], capture_output=True, text=True, timeout=120)
        assert t.stats()["tasks"] == {"complete": 10}
        completed = all_events(t, types=["step.completed"])
        assert sorted(e["step_id"] for e in completed) == sorted(
            s["id"] for i in ids for s in t.get_task(i)["steps"])
        assert {e["worker"] for e in completed} == {"survivor"}
        assert len(all_events(t, types=["step.lease_expired"])) >= 1
        assert os.getpid() not in {s["result"] for i in ids for s in t.get_task(i)["steps"]}
