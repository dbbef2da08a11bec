"""The Tasker handle: every operation through the package, and its errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import tasker
from conftest import chain, fingerprint

ORDER = chain("order", [("validate", []), ("charge", ["validate"]), ("ship", ["charge"])])


def test_open_ping_close(settings: Dict[str, Any]) -> None:
    t = tasker.Tasker.open(settings)
    assert t.ping() == {"ok": True, "version": tasker.__version__}
    assert not t.closed
    t.close()
    assert t.closed
    t.close()  # idempotent
    with pytest.raises(tasker.ClosedError) as e:
        t.ping()
    assert e.value.code == "closed"
    assert isinstance(e.value, tasker.TaskerError)


def test_context_manager_closes(settings: Dict[str, Any]) -> None:
    with tasker.Tasker.open(settings) as t:
        t.register_template(ORDER)
    with pytest.raises(tasker.ClosedError):
        t.create_task("t", "order")


def test_open_with_url_and_keyword_settings(tmp_path: Path) -> None:
    with tasker.Tasker.open(f"sqlite://{tmp_path}/a.db", lease_ms=1234) as t:
        assert t.native.lease_ms == 1234
        assert t.ping()["ok"] is True


def test_open_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(tasker.InvalidArgumentError) as e:
        tasker.Tasker.open(f"sqlite://{tmp_path}/a.db", lease_msec=5)
    assert "lease_msec" in e.value.message
    with pytest.raises(tasker.InvalidArgumentError):
        tasker.Tasker.open("mysql://nope")


def test_a_handle_is_made_only_by_open() -> None:
    with pytest.raises(TypeError):
        tasker.Tasker("sqlite://x.db")  # type: ignore[arg-type]


def test_register_from_dict_yaml_and_path(tk: tasker.Tasker, tmp_path: Path) -> None:
    r = tk.register_template(ORDER)
    assert r == {"namespace": "t", "name": "order", "version": "1", "steps": 3, "registered": True,
                 "unchanged": False}
    again = tk.register_template(ORDER)
    assert (again["registered"], again["unchanged"]) == (False, True)
    assert "nothing changed" in again["note"]
    yaml = "namespace: t\nname: one\nversion: '1'\nsteps:\n  - {name: a, handler: a}\n"
    assert tk.register_template(yaml=yaml)["name"] == "one"
    # A positional string is a path, never guessed to be YAML text.
    with pytest.raises(TypeError, match="yaml="):
        tk.register_template(yaml)
    f = tmp_path / "two.yaml"
    f.write_text(yaml.replace("name: one", "name: two"))
    assert tk.register_template(f)["name"] == "two"
    assert tk.register_template(str(f))["registered"] is False
    assert tk.register_template(path=f)["registered"] is False
    assert tk.get_template("t", "two")["steps"][0]["handler"] == "a"


def test_register_conflict_and_replace(tk: tasker.Tasker) -> None:
    tk.register_template(ORDER)
    other = chain("order", [("validate", [])])
    with pytest.raises(tasker.ConflictError) as e:
        tk.register_template(other)
    assert {k: e.value.details[k] for k in ("namespace", "name", "version", "next_version")} == {
        "namespace": "t", "name": "order", "version": "1", "next_version": "2"}
    assert "steps.charge removed; steps.ship removed" in e.value.message
    assert "new version (e.g. version: 2)" in e.value.message
    assert all({"path", "registered", "given"} <= set(d) for d in e.value.details["differences"])
    assert tk.register_template(other, replace=True)["registered"] is True
    assert len(tk.get_template("t", "order")["steps"]) == 1


def test_bad_templates_are_refused_and_store_nothing(tk: tasker.Tasker, tmp_path: Path) -> None:
    before = fingerprint(tk)
    cyc = chain("loop", [("a", ["b"]), ("b", ["a"])])
    with pytest.raises(tasker.InvalidTemplateError) as e:
        tk.register_template(cyc)
    assert e.value.details["problem"] == "cycle"
    with pytest.raises(tasker.InvalidTemplateError) as e:
        tk.register_template(yaml="steps: [ {\n")
    assert e.value.details["problem"] == "syntax"
    bad = chain("typed", [("a", [])])
    bad["steps"][0]["priority"] = "high"
    with pytest.raises(tasker.InvalidTemplateError) as e:
        tk.register_template(bad)
    assert e.value.message.endswith('steps[0].priority: expected an integer, got the string "high"')
    assert e.value.details == {"problem": "shape", "field": "steps[0].priority"}
    with pytest.raises(tasker.NotFoundError):
        tk.register_template(tmp_path / "missing.yaml")
    with pytest.raises(tasker.NotFoundError):
        tk.get_template("t", "loop")
    with pytest.raises(TypeError):
        tk.register_template(ORDER, yaml="x: 1\n")
    with pytest.raises(TypeError):
        tk.register_template(42)  # type: ignore[arg-type]
    assert fingerprint(tk) == before


def test_validate_template_resolves_defaults(tk: tasker.Tasker) -> None:
    out = tk.validate_template(chain("v", [("a", [])]))
    assert out["valid"] is True
    assert out["template"]["steps"][0]["retry"]["max_attempts"] == 3
    with pytest.raises(tasker.NotFoundError):
        tk.get_template("t", "v")


def test_create_task_idempotency(tk: tasker.Tasker) -> None:
    tk.register_template(ORDER)
    a = tk.create_task("t", "order", context={"n": 1}, idempotency_key="k-1")
    assert a["created"] is True and a["state"] == "pending"
    b = tk.create_task("t", "order", "1", context={"n": 2}, idempotency_key="k-1")
    assert b == {"task_id": a["task_id"], "created": False, "state": "pending"}
    assert tk.get_task(a["task_id"])["context"] == {"n": 1}
    assert len(tk.list_tasks(namespace="t", name="order")["tasks"]) == 1


def test_create_tasks_batch_with_keys(tk: tasker.Tasker) -> None:
    tk.register_template(ORDER)
    first = tk.create_task("t", "order", context={"n": 0}, idempotency_key="k-0")
    out = tk.create_tasks(
        [
            {"namespace": "t", "name": "order", "context": {"n": 0}, "idempotency_key": "k-0"},
            {"namespace": "t", "name": "order", "context": {"n": 1}, "idempotency_key": "k-1"},
            {"namespace": "t", "name": "order", "context": {"n": 2}, "idempotency_key": "k-1"},
            {"namespace": "t", "name": "order", "version": "1", "priority": 3},
        ]
    )
    assert [t["created"] for t in out] == [False, True, False, True]
    assert out[0]["task_id"] == first["task_id"]
    assert out[1]["task_id"] == out[2]["task_id"]
    assert tk.get_task(out[1]["task_id"])["context"] == {"n": 1}
    assert tk.get_task(out[3]["task_id"])["context"] == {}
    assert len(tk.list_tasks(namespace="t", name="order")["tasks"]) == 3
    assert tk.create_tasks([]) == []


def test_create_tasks_bad_item_stores_nothing(tk: tasker.Tasker) -> None:
    tk.register_template(ORDER)
    before = fingerprint(tk)
    with pytest.raises(tasker.NotFoundError) as e:
        tk.create_tasks([{"namespace": "t", "name": "order"}, {"namespace": "t", "name": "nope"}])
    assert e.value.message.startswith("tasks[1]")
    assert e.value.details["index"] == 1
    with pytest.raises(tasker.InvalidArgumentError) as e:
        tk.create_tasks([{"namespace": "t", "name": "order", "priority": "high"}])
    assert "tasks[0].priority" in e.value.message
    assert fingerprint(tk) == before


def test_create_task_bad_context_and_unknown_template(tk: tasker.Tasker) -> None:
    tk.register_template(
        chain("typed", [("a", [])], input_schema={"type": "object", "required": ["order_id"]})
    )
    before = fingerprint(tk)
    with pytest.raises(tasker.SchemaViolationError) as e:
        tk.create_task("t", "typed", context={"items": []})
    assert e.value.details["errors"][0]["message"] == '"order_id" is a required property'
    with pytest.raises(tasker.NotFoundError):
        tk.create_task("t", "nope")
    with pytest.raises(TypeError):
        tk.create_task("t", "typed", context={"when": object()})
    with pytest.raises(ValueError):
        tk.create_task("t", "typed", context={"x": float("nan")})
    with pytest.raises(tasker.InvalidArgumentError):
        tk.create_task("t", "typed", context={"order_id": 1}, idempotency_key="")
    assert fingerprint(tk) == before
    assert tk.list_tasks()["tasks"] == []


def test_context_round_trips_unchanged(tk: tasker.Tasker) -> None:
    tk.register_template(chain("rt", [("a", [])]))
    ctx = {"z": 1, "a": [1, 2.5, "x", None, True, {"nested": {"k": -7}}], "big": 2**63 - 1,
           "u": "snowman \u2603", "tuple": (1, 2)}
    tid = tk.create_task("t", "rt", context=ctx)["task_id"]
    got = tk.get_task(tid)["context"]
    assert got == {**ctx, "tuple": [1, 2]}


def test_get_list_explain(tk: tasker.Tasker) -> None:
    tk.register_template(ORDER)
    ids = [tk.create_task("t", "order", context={"i": i})["task_id"] for i in range(3)]
    task = tk.get_task(ids[0])
    assert [s["name"] for s in task["steps"]] == ["validate", "charge", "ship"]
    assert task["steps"][0]["state"] == "ready"
    page = tk.list_tasks(limit=2)
    assert [x["id"] for x in page["tasks"]] == [ids[2], ids[1]]
    rest = tk.list_tasks(limit=2, cursor=page["next_cursor"])
    assert [x["id"] for x in rest["tasks"]] == [ids[0]]
    ex = tk.explain_task(ids[0])
    assert ex["steps"][0]["status"] == "waiting_for_worker"
    assert ex["steps"][1]["waiting_on"] == ["validate"]
    with pytest.raises(tasker.InvalidArgumentError):
        tk.list_tasks(state="done")
    with pytest.raises(tasker.NotFoundError):
        tk.explain_task(999)


def test_cancel_retry_resolve(tk: tasker.Tasker) -> None:
    tk.register_template(chain("ops", [("a", []), ("b", ["a"])],
                               defaults={"retry": {"max_attempts": 1}}))
    tid = tk.create_task("t", "ops")["task_id"]
    step = tk.claim(["a"], worker_id="w")["steps"][0]
    out = tk.fail_step(step["step_id"], step["claim_token"], {"message": "boom", "retryable": False})
    assert out["state"] == "error" and out["task_state"] == "error"
    with pytest.raises(tasker.InvalidStateError) as e:
        tk.retry_step(task_id=tid, step_name="b")
    assert e.value.details["state"] == "pending"
    r = tk.retry_step(task_id=tid, step_name="a")
    assert r["state"] == "ready" and r["task_state"] == "running"
    r = tk.resolve_step(r["step_id"], result={"by": "operator"}, reason="fixed by hand")
    assert tk.get_task(tid)["steps"][0]["state"] == "resolved_manually"
    b = tk.claim(["b"])["steps"][0]
    assert b["results"] == {"a": {"by": "operator"}}
    assert tk.cancel_task(tid, reason="enough")["changed"] is True
    assert tk.cancel_task(tid)["changed"] is False
    with pytest.raises(tasker.LeaseLostError) as e:
        tk.complete_step(b["step_id"], b["claim_token"], {"late": True})
    assert e.value.details["state"] == "cancelled"
    with pytest.raises(tasker.NotFoundError):
        tk.cancel_task(12345)
    with pytest.raises(tasker.InvalidArgumentError):
        tk.retry_step(1, task_id=tid)


def test_stats_and_events(tk: tasker.Tasker) -> None:
    tk.register_template(chain("ev", [("a", [])]))
    tid = tk.create_task("t", "ev")["task_id"]
    page = tk.events(0, limit=10)
    assert [e["event"] for e in page["events"]] == ["task.created", "step.ready"]
    assert page["events"][0]["from"] is None
    assert tk.events(page["next_cursor"])["events"] == []
    only = tk.events(0, task_id=tid, types=["step.ready"])
    assert [e["step_name"] for e in only["events"]] == ["a"]
    with pytest.raises(tasker.InvalidArgumentError):
        tk.events(types=["step.exploded"])
    s = tk.stats()
    assert s["tasks"] == {"pending": 1}
    assert s["last_event_id"] == page["next_cursor"]


def test_events_wait_for_new_ones(tk: tasker.Tasker) -> None:
    tk.register_template(chain("w", [("a", [])]))
    cursor = tk.stats()["last_event_id"]
    threading.Timer(0.2, lambda: tk.create_task("t", "w")).start()
    page = tk.events(cursor, wait_ms=5000, types=["task.created"])
    assert [e["event"] for e in page["events"]] == ["task.created"]


def test_on_delivers_events_and_unsubscribes(tk: tasker.Tasker) -> None:
    tk.register_template(chain("sub", [("a", [])]))
    tk.create_task("t", "sub")  # before subscribing: not delivered
    seen: List[Dict[str, Any]] = []
    everything: List[str] = []
    got = threading.Event()

    def on_created(ev: Dict[str, Any]) -> None:
        seen.append(ev)
        got.set()

    def bad(ev: Dict[str, Any]) -> None:
        everything.append(ev["event"])
        raise RuntimeError("a failing callback does not stop delivery")

    off = tk.on("task.created", on_created)
    off_all = tk.on("*", bad)
    tid = tk.create_task("t", "sub")["task_id"]
    assert got.wait(10)
    deadline = time.monotonic() + 10
    while len(everything) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert everything[:2] == ["task.created", "step.ready"]
    off()
    off()  # idempotent
    tk.create_task("t", "sub")
    time.sleep(0.3)
    assert [e["task_id"] for e in seen] == [tid]
    off_all()
    with pytest.raises(tasker.InvalidArgumentError):
        tk.on("task.exploded", on_created)


def test_every_error_code_has_a_class() -> None:
    codes = ["invalid_json", "invalid_utf8", "invalid_argument", "unknown_operation",
             "invalid_template", "schema_violation", "not_found", "conflict", "lease_lost",
             "invalid_state", "too_large", "unavailable", "database", "closed", "internal"]
    assert sorted(tasker.ERROR_CLASSES) == sorted(codes)
    for code in codes:
        e = tasker.TaskerError.from_code(code, "m", {"k": 1})
        assert type(e) is tasker.ERROR_CLASSES[code] and isinstance(e, tasker.TaskerError)
        assert (e.code, e.message, e.details) == (code, "m", {"k": 1})
        assert e.__doc__


def test_raw_calls_and_their_errors(tk: tasker.Tasker) -> None:
    assert tk.call("ping")["ok"] is True
    assert '"ok":true' in tk.call_json("ping", "{}")
    with pytest.raises(tasker.UnknownOperationError) as e:
        tk.call("frobnicate", {})
    assert "ping" in e.value.details["operations"]
    with pytest.raises(tasker.InvalidJsonError):
        tk.call_json("get_task", '{"task_id": 1,}')
    with pytest.raises(tasker.InvalidArgumentError) as e:
        tk.call("get_task", {"task_id": "one"})


def test_too_large_context(settings: Dict[str, Any]) -> None:
    with tasker.Tasker.open({**settings, "max_payload_bytes": 256}) as t:
        t.register_template(chain("big", [("a", [])]))
        before = fingerprint(t)
        with pytest.raises(tasker.TooLargeError) as e:
            t.create_task("t", "big", context={"note": "x" * 300})
        assert e.value.details["limit"] == 256
        assert fingerprint(t) == before


def test_to_json_errors_name_the_place() -> None:
    with pytest.raises(TypeError, match=r"set at \$\.a\[1\]"):
        tasker._native.to_json({"a": [1, {2}]})
    with pytest.raises(TypeError, match="dict keys must be str"):
        tasker._native.to_json({1: 2})
    loop: List[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested"):
        tasker._native.to_json(loop)
    assert tasker._native.from_json(tasker._native.to_json({"b": 1, "a": [True, None]})) == {
        "b": 1, "a": [True, None]}
