"""Dynamic fan-out from Python, on both stores: a ``fan_out`` step runs its handler once
per item of a parent's list (the item and index in ``step.config["fan_out"]``), and the
join gets every result in item order."""

from __future__ import annotations

from typing import Any, Dict

import tasker


def fan() -> Dict[str, Any]:
    return {
        "namespace": "t",
        "name": "fan",
        "version": "1",
        "defaults": {"retry": {"max_attempts": 2, "base_ms": 1, "max_ms": 5, "jitter": 0}},
        "steps": [
            {"name": "split", "handler": "split"},
            {"name": "square", "handler": "square", "depends_on": ["split"],
             "fan_out": {"items": "$results.split.numbers", "max_items": 50}},
            {"name": "total", "handler": "total", "depends_on": ["square"]},
        ],
    }


def test_a_fan_out_runs_once_per_item_and_the_join_gets_the_results_in_order(tk: tasker.Tasker) -> None:
    tk.register_template(fan())
    task_id = tk.create_task("t", "fan", context={"n": 5})["task_id"]
    seen = []

    def square(step: tasker.Step) -> Any:
        fo = step.config["fan_out"]
        seen.append((step.step_name, fo["index"], fo["count"]))
        return fo["item"] * fo["item"]

    handlers = {
        "split": lambda s: {"numbers": list(range(s.context["n"]))},
        "square": square,
        "total": lambda s: s.results["square"],
    }
    tasker.Worker(tk, handlers=handlers, concurrency=3).run_until_idle()
    task = tk.get_task(task_id)
    assert task["state"] == "complete"
    assert task["steps_total"] == 8
    steps = {s["name"]: s for s in task["steps"]}
    assert steps["total"]["result"] == [0, 1, 4, 9, 16]
    assert sorted(seen) == [(f"square[{i}]", i, 5) for i in range(5)]


def test_a_list_over_the_bound_fails_the_step_permanently(tk: tasker.Tasker) -> None:
    tk.register_template(fan())
    task_id = tk.create_task("t", "fan", context={"n": 51})["task_id"]
    handlers = {"split": lambda s: {"numbers": list(range(s.context["n"]))}, "square": lambda s: 0}
    tasker.Worker(tk, handlers=handlers).run_until_idle()
    task = tk.get_task(task_id)
    assert task["state"] == "error"
    square = {s["name"]: s for s in task["steps"]}["square"]
    assert square["error"]["kind"] == "fan_out_too_large"
    assert square["error"]["retryable"] is False
