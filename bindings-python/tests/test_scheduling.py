"""Scheduling through the Python package, on both stores: delayed tasks
(``run_at``/``delay_ms``), task timeouts (``timeout_s``) and cron schedules, driven by
a manual clock; and the testing harness firing schedules and running delayed tasks."""

from __future__ import annotations

import datetime
import threading
from typing import Any, Dict, List

import pytest

import tasker
from tasker.testing import harness

from conftest import chain


@pytest.fixture
def clocked(settings: Dict[str, Any]) -> Any:
    with tasker.Tasker.open({**settings, "clock": "manual"}) as t:
        t.register_template(chain("c", [("a", []), ("b", ["a"])]))
        yield t


def advance(t: tasker.Tasker, ms: int) -> Dict[str, Any]:
    return dict(t.call("advance_clock", {"ms": ms}))


def test_a_delayed_task_waits_for_its_time(clocked: tasker.Tasker) -> None:
    t = clocked
    now = advance(t, 0)["now_ms"]
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    at = epoch + datetime.timedelta(milliseconds=now + 90_000)
    made = t.create_task("t", "c", run_at=at)
    info = t.get_task(made["task_id"])
    assert info["delayed"] is True
    assert info["run_at"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert info["steps"][0]["state"] == "pending"
    assert t.claim(["a"])["steps"] == []
    assert t.call("next_ready_at", {})["in_ms"] == 90_000
    advance(t, 90_000)
    assert len(t.claim(["a"])["steps"]) == 1
    with pytest.raises(ValueError):
        t.create_task("t", "c", run_at=datetime.datetime(2030, 1, 1))
    with pytest.raises(tasker.InvalidArgumentError, match="not both"):
        t.create_task("t", "c", run_at="2030-01-01T00:00:00Z", delay_ms=5)
    batch = t.create_tasks([{"namespace": "t", "name": "c", "delay_ms": 1000},
                            {"namespace": "t", "name": "c", "run_at": at}])
    assert [t.get_task(b["task_id"])["steps"][0]["state"] for b in batch] == ["pending", "ready"]


def test_a_task_timeout_stops_the_running_handler(clocked: tasker.Tasker) -> None:
    t = clocked
    made = t.create_task("t", "c", timeout_s=30)
    assert t.get_task(made["task_id"])["timeout_s"] == 30
    worker = tasker.Worker(t, lease_ms=600_000)
    started = threading.Event()
    stopped: List[bool] = []

    @worker.handler("a")
    def a(step: tasker.Step) -> object:
        started.set()
        stopped.append(step.cancelled.wait(20))
        return "late"

    runner = threading.Thread(target=worker.run_until_idle)
    runner.start()
    assert started.wait(20)
    advance(t, 30_000)
    runner.join(30)
    assert stopped == [True]
    info = t.get_task(made["task_id"])
    assert info["state"] == "error"
    assert [s["state"] for s in info["steps"]] == ["cancelled", "cancelled"]
    failed = t.events(0, task_id=made["task_id"], types=["task.failed"])["events"]
    assert failed[0]["reason"] == "task_timeout"


def test_a_schedule_fires_once_per_tick(clocked: tasker.Tasker) -> None:
    t = clocked
    s = t.create_schedule("minutely", "t", "c", cron="* * * * *", context={"k": 1})
    assert s["catch_up"] == {"policy": "skip"} and s["paused"] is False
    for _ in range(3):
        advance(t, 60_000)
    tasks = t.list_tasks(namespace="t", name="c")["tasks"]
    assert len(tasks) == 3
    assert len({x["idempotency_key"] for x in tasks}) == 3
    assert t.pause_schedule("minutely")["next_fire_at"] is None
    advance(t, 600_000)
    assert len(t.list_tasks()["tasks"]) == 3
    assert t.resume_schedule("minutely")["paused"] is False
    assert [x["name"] for x in t.list_schedules()] == ["minutely"]
    t.delete_schedule("minutely")
    with pytest.raises(tasker.NotFoundError):
        t.get_schedule("minutely")


def test_bad_schedules_raise_and_store_nothing(clocked: tasker.Tasker) -> None:
    t = clocked
    with pytest.raises(tasker.InvalidArgumentError, match="cron"):
        t.create_schedule("s", "t", "c", cron="61 * * * *")
    with pytest.raises(tasker.InvalidArgumentError, match="timezone"):
        t.create_schedule("s", "t", "c", cron="* * * * *", timezone="Nowhere/Land")
    with pytest.raises(tasker.InvalidArgumentError, match="policy"):
        t.create_schedule("s", "t", "c", cron="* * * * *", catch_up="sometimes")
    with pytest.raises(tasker.NotFoundError):
        t.create_schedule("s", "t", "nope", cron="* * * * *")
    t.create_schedule("s", "t", "c", cron="* * * * *")
    with pytest.raises(tasker.ConflictError):
        t.create_schedule("s", "t", "c", cron="0 * * * *")
    assert len(t.list_schedules()) == 1


def test_the_harness_runs_delayed_tasks_and_fires_schedules_on_advance() -> None:
    with harness() as t:
        t.register_template(chain("c", [("a", [])]))
        t.create_task("t", "c", delay_ms=3_600_000)
        worker = tasker.Worker(t)
        ran: List[str] = []

        @worker.handler("a")
        def a(step: tasker.Step) -> object:
            ran.append(t.now())
            return None

        # run_until_idle moves the clock to the delayed task's time and runs it.
        stats = t.run_until_idle(worker)
        assert stats.completed == 1 and len(ran) == 1
        t.create_schedule("hourly", "t", "c", cron="0 * * * *")
        t.advance(2 * 3600)  # two ticks missed in one move: skip fires the latest
        assert t.run_until_idle(worker).completed == 1
        t.advance(3600)
        assert t.run_until_idle(worker).completed == 1
        assert len(ran) == 3
