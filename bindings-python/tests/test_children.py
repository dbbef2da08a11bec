"""Child tasks from Python, on both stores: a handler starts child tasks with
``step.start_child`` and returns ``tasker.wait_for_children()``; one worker runs the
children, and the parent step completes with their results in start order."""

from __future__ import annotations

from typing import Any, Dict, List

import tasker

RETRY = {"max_attempts": 2, "base_ms": 1, "max_ms": 5, "jitter": 0}


def family() -> Dict[str, Any]:
    return {"namespace": "t", "name": "family", "version": "1", "defaults": {"retry": RETRY},
            "steps": [{"name": "spawn", "handler": "spawn"},
                      {"name": "after", "handler": "after", "depends_on": ["spawn"]}]}


def kid() -> Dict[str, Any]:
    return {"namespace": "t", "name": "kid", "version": "1", "defaults": {"retry": RETRY},
            "steps": [{"name": "work", "handler": "work"}]}


def test_a_handler_starts_children_waits_for_them_and_gets_their_results(tk: tasker.Tasker) -> None:
    tk.register_template(family())
    tk.register_template(kid())
    task_id = tk.create_task("t", "family", context={"n": 3})["task_id"]
    started: List[int] = []

    def spawn(step: tasker.Step) -> Any:
        for i in range(step.context["n"]):
            started.append(step.start_child("t", "kid", {"i": i}, key=f"kid-{i}"))
        # Starting one again with the same key gives the same task back.
        assert step.start_child("t", "kid", {"i": 0}, key="kid-0") == started[0]
        return tasker.wait_for_children()

    handlers = {
        "spawn": spawn,
        "work": lambda s: s.context["i"] * 10,
        "after": lambda s: [c["results"]["work"] for c in s.results["spawn"]["children"]],
    }
    tasker.Worker(tk, handlers=handlers, concurrency=2).run_until_idle()
    task = tk.get_task(task_id)
    assert task["state"] == "complete", task
    steps = {s["name"]: s for s in task["steps"]}
    assert steps["spawn"]["children"] == started[:3]
    assert [c["key"] for c in steps["spawn"]["result"]["children"]] == ["kid-0", "kid-1", "kid-2"]
    assert steps["after"]["result"] == [0, 10, 20]
    child = tk.get_task(started[1])
    assert child["parent"] == {"task_id": task_id, "step_id": steps["spawn"]["id"], "step_name": "spawn"}


def test_a_failed_child_fails_the_parent_step_for_good(tk: tasker.Tasker) -> None:
    tk.register_template(family())
    tk.register_template(kid())
    task_id = tk.create_task("t", "family")["task_id"]

    def spawn(step: tasker.Step) -> Any:
        step.start_child("t", "kid", key="only")
        return tasker.wait_for_children()

    def work(step: tasker.Step) -> Any:
        raise tasker.PermanentError("no")

    tasker.Worker(tk, handlers={"spawn": spawn, "work": work, "after": lambda s: 0}).run_until_idle()
    spawned = {s["name"]: s for s in tk.get_task(task_id)["steps"]}["spawn"]
    assert spawned["state"] == "error"
    assert spawned["error"]["kind"] == "child_failed"

