"""Real OS processes: forked children using an inherited handle, and several worker
processes draining one database (SQLite file or PostgreSQL schema)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import tasker
from conftest import all_events, chain


def _child_works(t: tasker.Tasker, out: "multiprocessing.Queue[Any]") -> None:
    # Runs in a forked child: the handle was opened by the parent.
    try:
        created = t.create_task("t", "fork", context={"who": "child"})["task_id"]
        w = tasker.Worker(t, concurrency=2, handlers={"a": lambda s: {"by": "child", **s.context}})
        stats = w.run_until_idle()
        out.put({"created": created, "completed": stats.completed,
                 "state": t.get_task(created)["state"]})
    except BaseException as e:  # reported to the parent, which fails the test
        out.put({"error": repr(e)})


def test_a_forked_child_uses_the_inherited_handle(tk: tasker.Tasker) -> None:
    tk.register_template(chain("fork", [("a", [])]))
    before = tk.create_task("t", "fork", context={"who": "parent"})["task_id"]
    ctx = multiprocessing.get_context("fork")
    out: "multiprocessing.Queue[Any]" = ctx.Queue()
    p = ctx.Process(target=_child_works, args=(tk, out))
    p.start()
    got = out.get(timeout=60)
    p.join(30)
    assert "error" not in got, got["error"]
    assert p.exitcode == 0
    assert got["completed"] == 2 and got["state"] == "complete"
    # The parent's handle is untouched by the child and sees the child's work.
    assert tk.get_task(before)["steps"][0]["result"] == {"by": "child", "who": "parent"}
    assert tk.get_task(got["created"])["state"] == "complete"
    after = tk.create_task("t", "fork")["task_id"]
    assert tk.get_task(after)["state"] == "pending"


WORKER_SCRIPT = r"""
import json, os, sys, time, tasker
settings, go, log = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
t = tasker.Tasker.open(settings)
done = []

def h(step):
    done.append(step.step_id)
    time.sleep(0.002)
    return {"pid": os.getpid()}

w = tasker.Worker(t, concurrency=2, batch_size=8, handlers={"a": h, "b": h}, idle_wait_ms=200)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
stats = w.run_until_idle()
with open(log, "w") as f:
    json.dump({"steps": done, "completed": stats.completed, "lost": stats.lost}, f)
t.close()
"""


def test_worker_processes_drain_one_database(tk: tasker.Tasker, settings: Dict[str, Any],
                                             tmp_path: Path) -> None:
    tk.register_template(chain("many", [("a", []), ("b", ["a"])]))
    tasks = [tk.create_task("t", "many", context={"i": i})["task_id"] for i in range(200)]
    go = tmp_path / "go"
    logs = [tmp_path / f"worker-{i}.json" for i in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, json.dumps(settings), str(go),
                          str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for log in logs
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    reports = [json.loads(log.read_text()) for log in logs]
    ran: List[int] = [s for r in reports for s in r["steps"]]
    # Every step ran exactly once, in one of the processes, and was recorded.
    assert len(ran) == 400 and len(set(ran)) == 400
    assert sum(r["completed"] for r in reports) == 400
    assert all(r["lost"] == 0 for r in reports)
    assert sum(1 for r in reports if r["steps"]) >= 2, "only one process did any work"
    assert tk.stats()["tasks"] == {"complete": 200}
    pids = {s["result"]["pid"] for tid in tasks for s in tk.get_task(tid)["steps"]}
    assert pids <= {p.pid for p in procs}
    assert len(all_events(tk, types=["step.started"])) == 400
    completed = all_events(tk, types=["step.completed"])
    assert len(completed) == 400 and len({e["step_id"] for e in completed}) == 400


def _child_closes(t: tasker.Tasker) -> None:
    # The parent's subscription thread does not exist here: closing must not wait
    # for it, and the handle must still work before the close.
    t.ping()
    t.close()


def test_a_forked_child_closes_a_handle_with_subscriptions(tk: tasker.Tasker) -> None:
    tk.register_template(chain("subs", [("a", [])]))
    seen: List[int] = []
    off = tk.on("task.created", lambda e: seen.append(e["task_id"]))
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_child_closes, args=(tk,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    # The parent's subscription still delivers.
    tid = tk.create_task("t", "subs")["task_id"]
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [tid]
    off()


def _spawned_worker(t: tasker.Tasker, out: "multiprocessing.Queue[Any]") -> None:
    # Runs in a fresh interpreter: `t` arrived pickled and was opened again here.
    try:
        stats = tasker.Worker(t, handlers={"a": lambda s: {"spawned": True}}).run_until_idle()
        out.put({"completed": stats.completed})
    except BaseException as e:
        out.put({"error": repr(e)})
    finally:
        t.close()


def test_a_handle_passed_to_a_spawned_process_opens_there(tk: tasker.Tasker) -> None:
    tk.register_template(chain("spawn", [("a", [])]))
    tid = tk.create_task("t", "spawn")["task_id"]
    ctx = multiprocessing.get_context("spawn")
    out: "multiprocessing.Queue[Any]" = ctx.Queue()
    p = ctx.Process(target=_spawned_worker, args=(tk, out))
    p.start()
    got = out.get(timeout=60)
    p.join(30)
    assert got == {"completed": 1}
    assert tk.get_task(tid)["steps"][0]["result"] == {"spawned": True}
    assert not tk.closed  # the child's close closed only its own handle
