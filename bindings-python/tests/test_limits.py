"""Concurrency and rate limits (docs/scheduling.md) with real worker processes: four
Python processes using the installed ``tasker`` package drain one database (SQLite
file or PostgreSQL schema). The handlers themselves count how many steps of each key
run at once (a counter file under ``flock``) and when each step starts."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import tasker
from conftest import fingerprint

WORKER = r"""
import fcntl, json, os, sys, time, tasker
settings, go, stop, counters, log = json.loads(sys.argv[1]), *sys.argv[2:6]
t = tasker.Tasker.open(settings)
starts = []

def bump(key, by):
    # The counter file is shared by the four processes: flock makes each update atomic.
    with open(counters, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        c = json.load(f)
        now = c["now"].get(key, 0) + by
        c["now"][key] = now
        c["most"][key] = max(c["most"].get(key, 0), now)
        f.seek(0)
        f.truncate()
        json.dump(c, f)
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)

def guarded(step):
    key = str(step.context["k"])
    bump(key, 1)
    time.sleep(0.02)
    bump(key, -1)
    return {"pid": os.getpid()}

def call(step):
    starts.append(time.time())
    return {"pid": os.getpid()}

w = tasker.Worker(t, concurrency=4, batch_size=4, handlers={"guarded": guarded, "call": call},
                  idle_wait_ms=100)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
while not os.path.exists(stop):
    w.run_until_idle()
with open(log, "w") as f:
    json.dump({"starts": starts}, f)
t.close()
"""


def _run_workers(tk: tasker.Tasker, settings: Dict[str, Any], tmp_path: Path,
                 tasks: List[int], timeout_s: float = 120) -> List[Dict[str, Any]]:
    go, stop, counters = tmp_path / "go", tmp_path / "stop", tmp_path / "counters.json"
    counters.write_text(json.dumps({"now": {}, "most": {}}))
    logs = [tmp_path / f"worker-{i}.json" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(settings), str(go), str(stop),
                          str(counters), str(log)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for log in logs
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        go.touch()
        deadline = time.time() + timeout_s
        while any(tk.get_task(t)["state"] != "complete" for t in tasks):
            assert time.time() < deadline, "the workers did not finish"
            time.sleep(0.1)
        stop.touch()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
    pids = {s["result"]["pid"] for t in tasks for s in tk.get_task(t)["steps"]}
    assert len(pids) >= 2, "only one process did any work"
    out = [json.loads(log.read_text()) for log in logs]
    out.append(json.loads(counters.read_text()))
    return out


def test_four_processes_never_run_more_than_max_steps_of_a_key(
        tk: tasker.Tasker, settings: Dict[str, Any], tmp_path: Path) -> None:
    tk.register_template({
        "namespace": "t", "name": "guarded", "version": "1",
        "steps": [{"name": "work", "handler": "guarded",
                   "concurrency": {"key": "$context.k", "max": 2}}],
    })
    tasks = [tk.create_task("t", "guarded", context={"k": i % 3})["task_id"] for i in range(90)]
    *_, counters = _run_workers(tk, settings, tmp_path, tasks)
    # 16 handler threads over 3 keys: only the limits keep each key at 2.
    assert counters["most"] == {"0": 2, "1": 2, "2": 2}, counters
    assert counters["now"] == {"0": 0, "1": 0, "2": 0}


def test_a_rate_limit_holds_within_ten_percent_under_four_processes(
        tk: tasker.Tasker, settings: Dict[str, Any], tmp_path: Path) -> None:
    limit, per_ms = 10, 500
    tk.register_template({
        "namespace": "t", "name": "rated", "version": "1",
        "steps": [{"name": "work", "handler": "call",
                   "rate_limit": {"limit": limit, "per_ms": per_ms}}],
    })
    n = 70
    tasks = [tk.create_task("t", "rated")["task_id"] for _ in range(n)]
    reports = _run_workers(tk, settings, tmp_path, tasks)
    # The engine's start times (claims) never put more than `limit` in any window.
    claimed = sorted(
        int(calendar.timegm(time.strptime(s["first_started_at"][:19], "%Y-%m-%dT%H:%M:%S")) * 1000)
        + int(s["first_started_at"][20:23])
        for t in tasks for s in tk.get_task(t)["steps"])
    for i in range(len(claimed)):
        j = i
        while j < len(claimed) and claimed[j] < claimed[i] + per_ms:
            j += 1
        assert j - i <= limit, f"{j - i} starts within {per_ms} ms from {claimed[i]}"
    # Measured inside the handlers, over the whole run (6 windows after the first
    # burst): the rate achieved is the limit's, within 10 %.
    starts = sorted(s for r in reports[:4] for s in r["starts"])
    assert len(starts) == n
    rate = (n - limit) / (starts[-1] - starts[0])
    want = limit / (per_ms / 1000)
    assert abs(rate - want) <= 0.1 * want, f"{rate:.1f} steps/s, the limit is {want}"


def test_bad_limits_are_refused_and_store_nothing(tk: tasker.Tasker) -> None:
    before = fingerprint(tk)
    with pytest.raises(tasker.InvalidTemplateError) as e:
        tk.register_template({"namespace": "t", "name": "bad", "version": "1",
                              "steps": [{"name": "a", "handler": "a",
                                         "concurrency": {"key": "$ctx.k", "max": 1}}]})
    assert "not a context path" in str(e.value)
    tk.register_template({"namespace": "t", "name": "ok", "version": "1",
                          "steps": [{"name": "a", "handler": "a",
                                     "concurrency": {"key": "$context.k", "max": 1}}]})
    before = fingerprint(tk)
    with pytest.raises(tasker.InvalidArgumentError) as e2:
        tk.create_task("t", "ok", context={"other": 1})
    assert "context.k" in str(e2.value)
    assert fingerprint(tk) == before


def test_the_testing_harness_advances_its_clock_through_a_rate_limit() -> None:
    from tasker.testing import harness

    with harness() as t:
        t.register_template({
            "namespace": "t", "name": "slow_api", "version": "1",
            "steps": [{"name": "call", "handler": "call",
                       "rate_limit": {"limit": 1, "per_ms": 60_000}}],
        })
        for _ in range(3):
            t.create_task("t", "slow_api")
        start = t.call("advance_clock", {"ms": 0})["now_ms"]
        seen: List[int] = []
        w = tasker.Worker(t, handlers={"call": lambda s: seen.append(1)})
        stats = t.run_until_idle(w)
        assert stats.completed == 3 and len(seen) == 3
        # One start a minute: the harness moved its clock to each window's end.
        assert t.call("advance_clock", {"ms": 0})["now_ms"] - start == 120_000
        assert t.next_ready_at()["next_ready_at"] is None
