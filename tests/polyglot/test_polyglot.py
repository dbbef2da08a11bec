"""One task, several languages: results, failures, cancels, events and crashes crossing
between Python, Node.js, Ruby and C worker processes on one database, on SQLite and on
PostgreSQL (tests/polyglot/README.md)."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any, Dict, List

import pytest

from conftest import LANGUAGES, WORKERS, Poly, template, wait_for

# Every JSON type, and the values a careless binding gets wrong: integers beyond 2^53
# (JavaScript numbers) up to the ends of the 64-bit ranges, unicode outside the BMP,
# escapes, deep nesting, empty containers, null, and floats.
TYPED: Dict[str, Any] = {
    "big": 9007199254740993,
    "u64_max": 18446744073709551615,
    "i64_min": -9223372036854775808,
    "safe": 9007199254740991,
    "negative": -42,
    "unicode": "Ünïcödé ✓ 日本語 🎉 \u00e9\u0301",
    "escapes": "quote \" backslash \\ newline \n tab \t \u0001",
    "nested": {"a": [1, {"b": [None, True, False, {"c": {"d": [[[]]]}}]}], "empty": {}},
    "empty_list": [],
    "null": None,
    "floats": [0.1, -2.5, 1e-300, 6.02214076e23, 3.141592653589793, -1.5e-7],
}


def same(a: Any, b: Any, where: str = "value") -> None:
    """Equality that tells int from float from bool, recursively, naming the spot."""
    assert type(a) is type(b), f"{where}: {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def steps_of(task: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {s["name"]: s for s in task["steps"]}


def test_results_cross_ruby_to_node_to_python_with_json_types_kept(poly: Poly) -> None:
    poly.t.register_template(template("types", [
        {"name": "from_ruby", "handler": "ruby", "config": {"do": "emit", "value": TYPED}},
        {"name": "via_node", "handler": "node", "depends_on": ["from_ruby"], "config": {"do": "echo"}},
        {"name": "via_python", "handler": "python", "depends_on": ["via_node"], "config": {"do": "echo"}},
    ]))
    for lang in ("ruby", "node", "python"):
        poly.start(lang)
    task_id = poly.t.create_task("poly", "types", context={})["task_id"]
    task = wait_for("the task", lambda: poly.finished(task_id))
    assert task["state"] == "complete", task
    steps = steps_of(task)
    assert [steps[n]["result"]["language"] for n in ("from_ruby", "via_node", "via_python")] == ["ruby", "node", "python"]
    same(steps["from_ruby"]["result"]["value"], TYPED, "ruby's result")
    # What Node.js read as its parent's result and wrote back...
    same(steps["via_node"]["result"]["parents"]["from_ruby"]["value"], TYPED, "node's echo")
    # ...and what Python read from Node.js.
    same(steps["via_python"]["result"]["parents"]["via_node"]["parents"]["from_ruby"]["value"], TYPED, "python's echo")
    # The same document read through the C ABI, parsed here.
    from_c = poly.c_call("get_task", {"task_id": task_id})["task"]
    same(steps_of(from_c)["via_python"]["result"], steps["via_python"]["result"], "get_task from C")


def test_retry_thrown_in_node_succeeds_and_permanent_error_in_ruby_ends_the_task(poly: Poly) -> None:
    poly.t.register_template(template("flaky", [
        {"name": "call_api", "handler": "node", "config": {"do": "flaky", "succeed_on": 3}}]))
    poly.t.register_template(template("doomed", [
        {"name": "charge", "handler": "ruby", "config": {"do": "permanent", "message": "card reported stolen"}},
        {"name": "ship", "handler": "python", "depends_on": ["charge"]}]))
    poly.start("node")
    poly.start("ruby")
    poly.start("python")
    flaky = poly.t.create_task("poly", "flaky", context={})["task_id"]
    doomed = poly.t.create_task("poly", "doomed", context={})["task_id"]

    done = wait_for("the flaky task", lambda: poly.finished(flaky))
    assert done["state"] == "complete", done
    call_api = steps_of(done)["call_api"]
    assert call_api["attempts"] == 3 and call_api["result"] == {"language": "node", "attempt": 3}
    fails = [r for r in poly.runs() if r["task_id"] == flaky and r["event"] == "fail"]
    assert [(r["lang"], r["attempt"]) for r in fails] == [("node", 1), ("node", 2)]

    failed = wait_for("the doomed task", lambda: poly.finished(doomed))
    from_c = poly.c_call("get_task", {"task_id": doomed})["task"]
    for seen_by, task in (("python", failed), ("c", from_c)):
        assert task["state"] == "error", f"{seen_by}: {task}"
        charge, ship = steps_of(task)["charge"], steps_of(task)["ship"]
        assert charge["state"] == "error" and charge["attempts"] == 1, f"{seen_by}: {charge}"
        assert charge["error"]["message"] == "card reported stolen", f"{seen_by}: {charge}"
        assert charge["error"]["retryable"] is False, f"{seen_by}: {charge}"
        assert ship["state"] == "pending" and ship["attempts"] == 0, f"{seen_by}: {ship}"
    same(from_c["steps"], failed["steps"], "get_task from C and from Python")
    assert not [r for r in poly.runs() if r["task_id"] == doomed and r["step"] == "ship"]


def test_cancel_issued_from_c_reaches_a_running_python_handler(poly: Poly) -> None:
    poly.t.register_template(template("long", [
        {"name": "crunch", "handler": "python", "config": {"do": "wait_stop", "max_ms": 30000}}]))
    # A short lease: core renews it every 500 ms, and a renewal is where a cancel made by
    # another process is seen.
    poly.start("python", lease_ms=1500)
    task_id = poly.t.create_task("poly", "long", context={})["task_id"]
    wait_for("the handler to start", lambda: [r for r in poly.runs() if r["event"] == "start"])
    cancelled = poly.c_call("cancel_task", {"task_id": task_id, "reason": "operator from C"})
    assert cancelled["state"] == "cancelled" and cancelled["changed"] is True, cancelled
    stopped = wait_for("the Python handler to see the stop signal",
                       lambda: [r for r in poly.runs() if r["event"] in ("stopped", "not_stopped")], timeout=15)
    assert [r["event"] for r in stopped] == ["stopped"], stopped
    task = poly.c_call("get_task", {"task_id": task_id})["task"]
    assert task["state"] == "cancelled" and steps_of(task)["crunch"]["state"] == "cancelled", task
    assert steps_of(task)["crunch"]["result"] is None, task


def test_node_subscriber_sees_every_event_of_a_ruby_worker_in_order(poly: Poly) -> None:
    tasks = 8
    poly.t.register_template(template("chain", [
        {"name": "a", "handler": "ruby", "config": {"do": "emit", "value": 1}},
        {"name": "b", "handler": "ruby", "depends_on": ["a"], "config": {"do": "echo"}},
        {"name": "c", "handler": "ruby", "depends_on": ["b"], "config": {"do": "echo"}}]))
    env = poly.env(POLY_EXPECT_COMPLETED=str(tasks), POLY_TIMEOUT_MS="60000")
    sub = subprocess.Popen(["node", str(WORKERS / "subscriber.js")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poly.procs.append(sub)
    assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
    ruby = poly.start("ruby")
    ids = [poly.t.create_task("poly", "chain", context={"n": i})["task_id"] for i in range(tasks)]
    out, err = sub.communicate(timeout=90)
    assert sub.returncode == 0, f"subscriber exited {sub.returncode}: {err}\n{out[-2000:]}"
    seen = [json.loads(line) for line in out.splitlines() if line.strip()]
    poly.stop(ruby)

    stored = poly.events()
    last = seen[-1]["id"]
    expected = [e for e in stored if e["id"] <= last]
    # The same events, in the same order, none missing and none twice.
    assert [e["id"] for e in seen] == [e["id"] for e in expected]
    assert [(e["event"], e.get("step_name")) for e in seen] == [(e["event"], e.get("step_name")) for e in expected]
    completions = [e for e in seen if e["event"] == "step.completed"]
    assert len(completions) == 3 * tasks
    assert all(e["worker"].startswith("ruby-") for e in completions), completions
    for task_id in ids:
        mine = [e["step_name"] for e in completions if e["task_id"] == task_id]
        assert mine == ["a", "b", "c"], (task_id, mine)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_kill_9_of_a_worker_its_steps_come_back_and_finish_once(poly: Poly, lang: str) -> None:
    n = 12
    poly.t.register_template(template(f"slow_{lang}", [
        {"name": "work", "handler": lang, "config": {"do": "sleep", "ms": 300}}]))
    ids = [poly.t.create_task("poly", f"slow_{lang}", context={"i": i})["task_id"] for i in range(n)]
    victim = poly.start(lang, lease_ms=1000)

    def in_flight() -> List[int]:
        runs = poly.runs()
        ended = {r["task_id"] for r in runs if r["event"] == "end"}
        started = [r["task_id"] for r in runs if r["event"] == "start" and r["pid"] == victim.pid]
        return [t for t in started if t not in ended] if len(ended) >= 2 else []

    wait_for("two finished steps and one running", in_flight)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # What was recorded at the kill: completed steps must never run again.
    completed_at_kill = {t for t in ids if poly.t.get_task(t)["state"] == "complete"}
    runs_at_kill = len(poly.runs())

    poly.start(lang, lease_ms=1000)
    tasks = [wait_for(f"task {t}", lambda t=t: poly.finished(t), timeout=60) for t in ids]
    assert all(t["state"] == "complete" for t in tasks), [t for t in tasks if t["state"] != "complete"]

    later = poly.runs()[runs_at_kill:]
    rerun = {r["task_id"] for r in later if r["event"] == "start"}
    assert not rerun & completed_at_kill, f"completed steps ran again: {rerun & completed_at_kill}"
    completions = [e for e in poly.events() if e["event"] == "step.completed"]
    assert sorted(e["task_id"] for e in completions) == sorted(ids), "each step completed exactly once"
    expired = {e["task_id"] for e in poly.events() if e["event"] == "step.lease_expired"}
    assert expired, "the killed worker held steps: their leases expired"
    for t in tasks:
        step = t["steps"][0]
        # A step taken back after the lease spent one attempt on the killed worker.
        assert step["attempts"] == (2 if t["id"] in expired else 1), step
        assert step["result"]["language"] == lang, step
