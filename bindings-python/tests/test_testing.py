"""tasker.testing: the harness's manual clock, run_until_idle over retries, timeouts,
and the documented example kept in step with docs/testing.md."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import tasker
from tasker.testing import harness

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_example_is_the_one_in_the_docs() -> None:
    example = (Path(__file__).parent / "test_testing_example.py").read_text()
    body = example.split("\n", 1)[1]  # below the first comment line
    assert body.strip() in (ROOT / "docs" / "testing.md").read_text()


def test_the_clock_moves_only_when_advanced() -> None:
    with harness() as t:
        before = t.now()
        time.sleep(0.02)
        assert t.now() == before
        later = t.advance(3600)
        assert later > before
        assert t.next_ready_at() == {"next_ready_at": None, "in_ms": None, "now": later,
                                     "clock": "manual"}
        with pytest.raises(tasker.InvalidArgumentError):
            t.advance(-1)
        with pytest.raises(TypeError):
            t.advance("soon")  # type: ignore[arg-type]
        assert t.now() == later


def test_retry_after_is_honoured_on_the_clock_and_the_database_is_removed() -> None:
    with harness() as t:
        directory = t._dir
        assert directory is not None and os.path.isdir(directory)
        t.register_template({"namespace": "t", "name": "r", "version": "1",
                             "steps": [{"name": "a", "handler": "a"}]})
        task = t.create_task("t", "r")
        worker = tasker.Worker(t)
        seen = []

        @worker.handler("a")
        def a(step: tasker.Step) -> object:
            seen.append(t.now())
            if step.attempt < 3:
                raise tasker.RetryableError("later", retry_after=7200)
            return "ok"

        # One round alone leaves the retry waiting for the clock.
        assert worker.run_until_idle().failed == 1
        assert t.next_ready_at(["a"])["in_ms"] == 7_200_000
        assert t.next_ready_at(["other"])["in_ms"] is None
        stats = t.run_until_idle(worker)
        assert (stats.completed, stats.failed) == (1, 1)
        assert t.get_task(task["task_id"])["state"] == "complete"
        assert len(seen) == 3
    assert not os.path.exists(directory)


def test_a_step_timeout_passes_on_the_clock() -> None:
    with harness() as t:
        t.register_template({"namespace": "t", "name": "slow", "version": "1",
                             "steps": [{"name": "a", "handler": "a", "timeout_s": 60,
                                        "retry": {"max_attempts": 1}}]})
        task = t.create_task("t", "slow")
        worker = tasker.Worker(t)

        @worker.handler("a")
        def a(step: tasker.Step) -> object:
            t.advance(61)  # the handler "takes" a minute and a second
            deadline = time.monotonic() + 10
            while not step.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
            return "too late"

        t.run_until_idle(worker)
        step = t.get_task(task["task_id"])["steps"][0]
        assert step["state"] == "error"
        assert step["error"]["kind"] == "timeout"


def test_a_system_clock_handle_cannot_be_advanced(settings: dict) -> None:
    with tasker.Tasker.open(settings) as t:
        with pytest.raises(tasker.InvalidStateError) as e:
            t.call("advance_clock", {"ms": 1000})
        assert e.value.details == {"clock": "system"}
    with pytest.raises(ValueError):
        harness(clock="system")
