"""Signals from Python, on both stores: a step with ``wait_for`` waits until
``Tasker.send_signal``; its payload is the step's result for the worker's next handler;
bad signals raise the matching errors and change nothing."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

import tasker
from conftest import all_events, fingerprint


def approval() -> Dict[str, Any]:
    return {
        "namespace": "t",
        "name": "approval",
        "version": "1",
        "steps": [
            {"name": "fetch", "handler": "fetch"},
            {"name": "approve", "depends_on": ["fetch"], "wait_for": {"signal": "approved", "timeout_s": 60}},
            {"name": "ship", "handler": "ship", "depends_on": ["approve"]},
        ],
    }


def test_a_signal_releases_the_waiting_step_for_the_worker(tk: tasker.Tasker) -> None:
    tk.register_template(approval())
    task_id = tk.create_task("t", "approval", context={"order": 7})["task_id"]
    seen: List[Any] = []

    def ship(step: tasker.Step) -> Any:
        seen.append(step.results["approve"])
        return "shipped"

    handlers = {"fetch": lambda s: s.context["order"], "ship": ship}
    tasker.Worker(tk, handlers=handlers).run_until_idle()
    steps = {s["name"]: s for s in tk.get_task(task_id)["steps"]}
    assert steps["approve"]["state"] == "waiting"
    assert steps["approve"]["wait_until"]
    assert steps["ship"]["state"] == "pending"

    out = tk.send_signal(task_id, "approved", {"by": "ada"})
    assert out["steps"] == [{"step_id": steps["approve"]["id"], "step_name": "approve", "state": "complete"}]
    tasker.Worker(tk, handlers=handlers).run_until_idle()
    assert seen == [{"by": "ada"}]
    assert tk.get_task(task_id)["state"] == "complete"
    names = [e["event"] for e in all_events(tk, task_id=task_id)]
    assert "step.waiting" in names and "step.signalled" in names


def test_an_early_signal_is_kept_and_bad_signals_raise_and_change_nothing(tk: tasker.Tasker) -> None:
    tk.register_template(approval())
    task_id = tk.create_task("t", "approval")["task_id"]
    assert tk.send_signal(task_id, "approved")["steps"][0]["state"] == "pending"
    before = fingerprint(tk)
    with pytest.raises(tasker.ConflictError):
        tk.send_signal(task_id, "approved", 2)
    with pytest.raises(tasker.NotFoundError) as e:
        tk.send_signal(task_id, "aproved")
    assert "did you mean `approved`" in str(e.value)
    with pytest.raises(tasker.NotFoundError):
        tk.send_signal(999_999, "approved")
    with pytest.raises(tasker.InvalidArgumentError):
        tk.send_signal(task_id, "not a name")
    assert fingerprint(tk) == before
    tasker.Worker(tk, handlers={"fetch": lambda s: 1, "ship": lambda s: s.results["approve"]}).run_until_idle()
    task = tk.get_task(task_id)
    assert task["state"] == "complete"
    assert {s["name"]: s["result"] for s in task["steps"]}["ship"] is None
    with pytest.raises(tasker.InvalidStateError):
        tk.send_signal(task_id, "approved")
