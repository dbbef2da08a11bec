"""Hostile input through the Python package (issue 13): every bad request is a
TaskerError that names the field, the same on SQLite and PostgreSQL, and every value
the engine ever stored reads back."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict

import pytest

import tasker
from conftest import PG_URL, fingerprint


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def seed(tk: tasker.Tasker) -> int:
    tk.register_template(
        {
            "namespace": "t",
            "name": "p",
            "version": "1",
            "input_schema": {"type": ["object", "array"]},
            "steps": [{"name": "a", "handler": "h"}],
        }
    )
    return tk.create_task("t", "p", context={"k": 1})["task_id"]


def test_requests_must_be_json_objects(tk: tasker.Tasker) -> None:
    task_id = seed(tk)
    before = fingerprint(tk)
    for op, text in [("cancel_task", "[1]"), ("list_tasks", "[]"), ("stats", "[]"), ("get_task", "1")]:
        with pytest.raises(tasker.InvalidArgumentError) as e:
            tk.call_json(op, text)
        assert e.value.message.startswith("request: expected a JSON object"), e.value.message
    assert tk.get_task(task_id)["state"] == "pending"
    assert fingerprint(tk) == before


def test_wrong_types_name_the_field(tk: tasker.Tasker, settings: Dict[str, Any]) -> None:
    cases = [
        (lambda: tk.get_task("one"), 'task_id: expected an integer between 1 and 9007199254740991, got "one"'),
        (lambda: tk.list_tasks(limit="x"), 'limit: expected an integer between 1 and 1000 (list_page_max), got "x"'),
        (lambda: tk.call("complete_steps", {"items": 5}), "items: expected an array of at most 10000 objects, got 5"),
        (lambda: tk.events(since=-1), "since: expected an integer between 0 and 9007199254740991, got -1"),
        (lambda: tk.claim(["h"], lease_ms=0), "lease_ms: expected an integer between 1 and 2592000000, got 0"),
    ]
    for call, message in cases:
        with pytest.raises(tasker.InvalidArgumentError) as e:
            call()
        assert e.value.message == message
        assert e.value.details["field"] == message.split(":")[0]
    with pytest.raises(tasker.InvalidArgumentError) as e:
        tasker.Tasker.open({**settings, "lease_ms": "ten"})
    assert e.value.message == 'lease_ms: expected a non-negative integer, got "ten"'


def test_nul_characters_get_the_same_answer_on_every_store(tk: tasker.Tasker) -> None:
    seed(tk)
    before = fingerprint(tk)
    cases = [
        ("idempotency_key", lambda: tk.create_task("t", "p", context={}, idempotency_key="k\0")),
        ("namespace", lambda: tk.create_task("t\0", "p")),
        ("worker_id", lambda: tk.claim(["h"], worker_id="w\0")),
        ("handlers[0]", lambda: tk.claim(["h\0"])),
        ("namespace", lambda: tk.list_tasks(namespace="\0")),
        ("state", lambda: tk.list_tasks(state="running\0")),
    ]
    for field, call in cases:
        with pytest.raises(tasker.InvalidArgumentError) as e:
            call()
        assert e.value.message.startswith(f"{field}: "), e.value.message
        assert "NUL" in e.value.message
    assert fingerprint(tk) == before


def test_lone_surrogates_and_deep_values_are_refused_not_internal(tk: tasker.Tasker) -> None:
    seed(tk)
    before = fingerprint(tk)
    with pytest.raises(tasker.InvalidArgumentError) as e:
        tk.call_json("create_task", '{"namespace": "t", "name": "p", "context": {"s": "\\ud800"}}')
    assert "lone surrogate" in e.value.message
    with pytest.raises(tasker.InvalidArgumentError) as e:
        tk.create_task("t", "p", context=nested(65))
    assert e.value.message.startswith("context: nested 65 levels deep")
    assert e.value.details == {"field": "context", "depth": 65, "limit": 64}
    assert fingerprint(tk) == before
    # At the limit a context is stored, and it reads back through every path.
    task_id = tk.create_task("t", "p", context=nested(64))["task_id"]
    assert tk.get_task(task_id)["context"] == nested(64)
    steps = tk.claim(["h"], limit=10)["steps"]
    assert [s["context"] for s in steps if s["task_id"] == task_id] == [nested(64)]


def _write_context(settings: Dict[str, Any], store: str, task_id: int, text: str) -> None:
    """Stores a context as an older engine could have (it took up to 127 levels)."""
    if store == "sqlite":
        import sqlite3

        path = settings["database_url"][len("sqlite://") :]
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE tasker_tasks SET context = ? WHERE id = ?", (text, task_id))
        return
    import psycopg

    assert PG_URL is not None
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        schema = settings["postgres_schema"]
        conn.execute(f'UPDATE "{schema}".tasker_tasks SET context = %s WHERE id = %s', (text, task_id))


def test_a_deep_value_stored_by_an_older_engine_reads_back(
    tk: tasker.Tasker, settings: Dict[str, Any], store: str
) -> None:
    task_id = seed(tk)
    deep = nested(127)
    import json

    _write_context(settings, store, task_id, json.dumps(deep))
    assert tk.get_task(task_id)["context"] == deep


def test_a_wait_in_flight_ends_with_closed_at_close(settings: Dict[str, Any]) -> None:
    for op in ("claim", "events"):
        t = tasker.Tasker.open(settings)
        out: Dict[str, Any] = {}

        def wait() -> None:
            try:
                if op == "claim":
                    out["value"] = t.claim(["nothing"], wait_ms=20000)
                else:
                    out["value"] = t.events(since=10**9, wait_ms=20000)
            except tasker.TaskerError as e:
                out["error"] = e

        started = time.monotonic()
        th = threading.Thread(target=wait)
        th.start()
        time.sleep(0.3)
        t.close()
        th.join(15)
        assert not th.is_alive(), f"{op} still waiting after close()"
        assert time.monotonic() - started < 15
        assert isinstance(out.get("error"), tasker.ClosedError), out
