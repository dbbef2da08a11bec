"""The cross-language conformance vectors (tests/conformance/*.json, format in its
README.md) run through the Python package: claims come back as ``tasker.Step`` objects,
a Python handler per handler name computes each scripted outcome from the step's
``context``, ``results``, ``config`` and ``attempt``, and every call goes through
``tasker.Tasker``; expected errors are matched on the exception class and its
``code``, ``message`` and ``details``. Same semantics as core/tests/conformance.rs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import tasker

ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = Path(os.environ.get("TASKER_CONFORMANCE_DIR", ROOT / "tests" / "conformance"))
VECTORS = sorted(VECTORS_DIR.glob("*.json"))
MIN_VECTORS = 20
MAX_LOOPS = 2000


class VectorFailure(AssertionError):
    """The package did not behave as the vector says."""


def test_the_vectors_are_there() -> None:
    assert len(VECTORS) >= MIN_VECTORS, f"only {len(VECTORS)} vectors in {VECTORS_DIR}"


# -- JSON comparison and expressions -------------------------------------------------


def json_eq(a: Any, b: Any) -> bool:
    """JSON equality, numbers by value; a bool is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_eq(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def json_subset(expected: Any, actual: Any) -> bool:
    """``expected`` is a subset of ``actual``: objects key by key, recursively."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(k in actual and json_subset(v, actual[k]) for k, v in expected.items())
    return json_eq(expected, actual)


_ABSENT = object()


def evaluate(expr: Any, scope: Dict[str, Any]) -> Any:
    """The value of a result expression (see the README's Expressions)."""
    if isinstance(expr, str) and expr.startswith("$$"):
        return expr[1:]
    if isinstance(expr, str) and expr.startswith("$"):
        root, *path = expr[1:].split(".")
        if root not in ("context", "results", "config", "attempt"):
            raise VectorFailure(f"expression `{expr}`: unknown reference")
        cur = scope.get(root, _ABSENT)
        if cur is _ABSENT:
            raise VectorFailure(f"expression `{expr}`: not available here")
        for seg in path:
            if isinstance(cur, dict) and seg in cur:
                cur = cur[seg]
            elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
                cur = cur[int(seg)]
            else:
                raise VectorFailure(f"expression `{expr}`: no `{seg}` in {cur!r}")
        return cur
    if isinstance(expr, list):
        return [evaluate(x, scope) for x in expr]
    if isinstance(expr, dict):
        if len(expr) == 1 and "sum" in expr:
            values = [evaluate(x, scope) for x in expr["sum"]]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise VectorFailure(f"`sum` of a non-number {v!r}")
            if all(isinstance(v, int) for v in values):
                return sum(values)
            return float(sum(values))
        if len(expr) == 1 and "literal" in expr:
            return expr["literal"]
        if len(expr) == 1 and "object" in expr:
            return {k: evaluate(v, scope) for k, v in expr["object"].items()}
        return {k: evaluate(v, scope) for k, v in expr.items()}
    return expr


def check_error(expected: Any, err: tasker.TaskerError, what: str) -> None:
    if isinstance(expected, str):
        code, details, contains = expected, None, []
    else:
        code, details = expected["code"], expected.get("details")
        contains = expected.get("message_contains", [])
    if err.code != code:
        raise VectorFailure(f"{what}: expected error `{code}`, got `{err.code}`: {err}")
    if type(err) is not tasker.ERROR_CLASSES[code]:
        raise VectorFailure(f"{what}: `{code}` raised as {type(err).__name__}")
    if details is not None and not json_subset(details, err.details):
        raise VectorFailure(f"{what}: error details {err.details} do not contain {details}")
    for s in contains:
        if s not in err.message:
            raise VectorFailure(f"{what}: error message `{err.message}` does not contain `{s}`")


# -- the runner ----------------------------------------------------------------------


class Run:
    def __init__(self, v: Dict[str, Any], t: tasker.Tasker, lease_ms: int) -> None:
        self.v = v
        self.t = t
        self.lease_ms = lease_ms
        self.task_id = 0
        self.handlers: List[str] = []
        self.claims: Dict[str, int] = {}
        self.tokens: Dict[Tuple[str, int], Tuple[int, str]] = {}
        self.held: List[float] = []
        # With "via": "worker_session": the session the run claims and reports through.
        self.session: Optional[str] = None
        self.actions: List[Dict[str, Any]] = v.get("actions", [])
        self.fired = [False] * len(self.actions)
        self.not_before: Dict[str, Tuple[float, int]] = {}

    # calls through the package

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except tasker.TaskerError as e:
            raise VectorFailure(f"{fn.__name__} {args} {kw} failed: {e}") from e

    def expect_failure(self, expected: Any, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        try:
            out = fn(*args, **kw)
        except tasker.TaskerError as e:
            check_error(expected, e, fn.__name__)
            return
        raise VectorFailure(f"{fn.__name__} succeeded ({out}) but was expected to fail with {expected}")

    def checked(self, expect_error: Any, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if expect_error is not None:
            self.expect_failure(expect_error, fn, *args, **kw)
            return None
        return self.call(fn, *args, **kw)

    # the vector

    def run(self) -> None:
        v, t = self.v, self.t
        tpl = v["template"]
        ns, name = tpl["namespace"], tpl["name"]
        for s in tpl.get("steps", []):
            # A step with wait_for has no handler (the engine runs it).
            if s.get("handler") is not None and s["handler"] not in self.handlers:
                self.handlers.append(s["handler"])
        expect = v["expect"]
        if "register_error" in expect:
            self.expect_failure(expect["register_error"], t.register_template, tpl)
            self.expect_failure(expect["register_error"], t.validate_template, tpl)
            self.expect_failure("not_found", t.get_template, ns, name)
            return
        self.call(t.register_template, tpl)
        if v.get("via") == "worker_session":
            opened = self.call(t.call, "worker_open", {"handlers": self.handlers, "batch": 1, "name": "conformance"})
            self.session = opened["worker_id"]

        create: Dict[str, Any] = {"context": v.get("context", {}), "version": tpl["version"]}
        if "priority" in v:
            create["priority"] = v["priority"]
        # Scheduling vectors: more create_task fields (run_at, delay_ms, timeout_s).
        create.update(v.get("create", {}))
        idem = v.get("idempotency")
        if idem is not None:
            create["idempotency_key"] = idem["key"]
        if "create_error" in expect:
            self.expect_failure(expect["create_error"], t.create_task, ns, name, **create)
            listed = t.list_tasks(namespace=ns, name=name)
            if listed["tasks"]:
                raise VectorFailure(f"a rejected create_task left tasks behind: {listed}")
            ev = t.events(0, limit=1000)
            if ev["events"]:
                raise VectorFailure(f"a rejected create_task left events behind: {ev}")
            return
        created = self.call(t.create_task, ns, name, **create)
        if created["created"] is not True:
            raise VectorFailure(f"create_task did not create a task: {created}")
        self.task_id = created["task_id"]
        if idem is not None:
            again = {**create, "context": idem.get("context", create["context"])}
            second = self.call(t.create_task, ns, name, **again)
            if second["task_id"] != self.task_id or second["created"] is not False:
                raise VectorFailure(f"repeated create_task returned {second}")

        self.fire(lambda a: a.get("when") == "created")
        self.drive()
        unfired = [a for a, f in zip(self.actions, self.fired) if not f]
        if unfired:
            raise VectorFailure(f"actions never fired: {unfired}")

        task = self.call(t.get_task, self.task_id)
        if idem is not None:
            third = self.call(t.create_task, ns, name, **create)
            if (third["task_id"], third["created"], third["state"]) != (self.task_id, False, task["state"]):
                raise VectorFailure(f"create_task after the run returned {third}")
            n = len(t.list_tasks(namespace=ns, name=name)["tasks"])
            if n != 1:
                raise VectorFailure(f"expected one task for the idempotency key, list_tasks shows {n}")
        problems: List[str] = []
        for k, want in expect.get("task", {}).items():
            if not json_eq(want, task.get(k)):
                problems.append(f"task.{k}: expected {want}, got {task.get(k)}")
        steps = {s["name"]: s for s in task["steps"]}
        for sname, want in expect.get("steps", {}).items():
            if sname not in steps:
                problems.append(f"step {sname} is not in the task")
                continue
            for k, w in want.items():
                got = steps[sname].get(k)
                ok = json_subset(w, got) if k == "error" else json_eq(w, got)
                if not ok:
                    problems.append(f"step {sname}.{k}: expected {w}, got {got}")
        if "events" in expect:
            got_events = self.events()
            if got_events != expect["events"]:
                problems.append(f"events: expected {expect['events']}, got {got_events}")
        if problems:
            raise VectorFailure("; ".join(problems))

    def events(self) -> List[str]:
        out: List[str] = []
        since = 0
        while True:
            page = self.call(self.t.events, since, task_id=self.task_id, limit=1000)
            if not page["events"]:
                return out
            for e in page["events"]:
                out.append(f"{e['event']}:{e['step_name']}" if "step_name" in e else e["event"])
            since = page["next_cursor"]

    def fire(self, pred: Callable[[Dict[str, Any]], bool]) -> None:
        for i, a in enumerate(self.actions):
            if not self.fired[i] and pred(a):
                self.fired[i] = True
                self.act(a)

    def fire_after(self, step: str, n: int, phase: str) -> None:
        def matches(a: Dict[str, Any]) -> bool:
            at = a.get("after") or {}
            return at.get("step") == step and at.get("attempt") == n and at.get("phase", "reported") == phase

        self.fire(matches)

    def explain_action(self, a: Dict[str, Any]) -> None:
        """`explain_task`: each step named in `expect_steps` must have these fields in
        the explanation (a step missing from it is a failure)."""
        resp = self.t.explain_task(self.task_id)
        for name, fields in a.get("expect_steps", {}).items():
            got = next((s for s in resp["steps"] if s["name"] == name), None)
            if got is None:
                raise VectorFailure(f"action {a}: step {name} is not in the explanation {resp}")
            for k, w in fields.items():
                if not json_eq(w, got.get(k)):
                    raise VectorFailure(f"action {a}: step {name}: expected {k} = {w}, got {got.get(k)} ({resp})")

    def act(self, a: Dict[str, Any]) -> None:
        t, what, step = self.t, a.get("do"), a.get("step")
        if what == "explain_task":
            self.explain_action(a)
            return
        if what == "cancel_task":
            fn, args, kw = t.cancel_task, (self.task_id,), {"reason": a.get("reason")}
        elif what == "retry_step":
            fn, args, kw = t.retry_step, (), {"task_id": self.task_id, "step_name": step}
        elif what == "resolve_step":
            kw = {"task_id": self.task_id, "step_name": step, "reason": a.get("reason")}
            if "result" in a:
                kw["result"] = evaluate(a["result"], {"context": self.v.get("context", {})})
            fn, args = t.resolve_step, ()
        elif what == "report_stale":
            key = (step, a["attempt"])
            if key not in self.tokens:
                raise VectorFailure(f"report_stale: no claim number {a['attempt']} of step {step}")
            step_id, token = self.tokens[key]
            report = a["report"]
            if report == "complete":
                fn, args, kw = t.complete_step, (step_id, token, None), {}
            elif report == "fail":
                fn, args, kw = t.fail_step, (step_id, token, {"message": "stale"}), {}
            elif report == "heartbeat":
                fn, args, kw = t.heartbeat, (step_id, token), {}
            else:
                raise VectorFailure(f"report_stale: unknown report `{report}`")
        elif what == "advance_clock":
            # Scheduling vectors: move the manual clock (config.clock: manual).
            fn, args, kw = t.call, ("advance_clock", {"ms": a["ms"]}), {}
        elif what == "send_signal":
            fn, args, kw = self.signal_call(a)
        else:
            raise VectorFailure(f"unknown action `{what}`")
        resp = self.checked(a.get("expect_error"), fn, *args, **kw)
        if resp is not None:
            for k, w in a.get("expect", {}).items():
                if not json_eq(w, resp.get(k)):
                    raise VectorFailure(f"action {a}: expected {k} = {w}, got {resp.get(k)}")

    def signal_call(self, a: Dict[str, Any]) -> Tuple[Any, Tuple[Any, ...], Dict[str, Any]]:
        """send_signal {task_id, name: signal, payload?: EXPR} (only $context in scope)."""
        payload = None
        if "payload" in a:
            payload = evaluate(a["payload"], {"context": self.v.get("context", {})})
        return self.t.send_signal, (self.task_id, a["signal"], payload), {}

    def claim(self, wait_ms: int) -> Tuple[List[tasker.Step], Optional[str]]:
        if self.session is not None:
            try:
                steps, _stops, idle = self.t.native.worker_next(self.session, 1, wait_ms)
            except tasker.TaskerError as e:
                raise VectorFailure(f"worker_next failed: {e}") from e
            # A session that is not idle but got nothing has a retry scheduled.
            return steps, None if steps or idle else "scheduled"
        req = tasker._native.to_json(
            {"handlers": self.handlers, "limit": 1, "worker_id": "conformance"})
        try:
            return self.t.native.claim(req, wait_ms)
        except tasker.TaskerError as e:
            raise VectorFailure(f"claim failed: {e}") from e

    def drive(self) -> None:
        for _ in range(MAX_LOOPS):
            steps, next_ready = self.claim(0)
            if not steps and next_ready is not None:
                steps, next_ready = self.claim(5000)
            if steps:
                self.handle(steps[0])
                continue
            if self.held:
                delay = max(self.held) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.call(self.t.sweep)
                self.held.clear()
                continue
            idle = [i for i, a in enumerate(self.actions) if not self.fired[i] and a.get("when") == "idle"]
            if idle:
                self.fired[idle[0]] = True
                self.act(self.actions[idle[0]])
                continue
            return
        raise VectorFailure(f"the run did not settle within {MAX_LOOPS} loops")

    def handler(self, step: tasker.Step) -> Dict[str, Any]:
        """The Python handler every step is given to: the vector's scripted outcome
        for this claim, with `complete` expressions evaluated over the step object."""
        n = self.claims[step.step_name]
        outcomes = self.v.get("outcomes", {})
        if step.step_name not in outcomes:
            if n != 1:
                raise VectorFailure(f"unscripted attempt: claim {n} of step {step.step_name}")
            return {"complete": None}
        script = outcomes[step.step_name]
        if n > len(script):
            raise VectorFailure(f"unscripted attempt: claim {n} of step {step.step_name}")
        outcome = dict(script[n - 1])
        if "complete" in outcome:
            scope = {"context": step.context, "results": step.results, "config": step.config,
                     "attempt": step.attempt}
            outcome["complete"] = evaluate(outcome["complete"], scope)
        return outcome

    def report(self, name: str, n: int, step: tasker.Step, outcome: Dict[str, Any]) -> None:
        """`worker_report` with the scripted outcome; its result must match
        `expect_report` (a subset), else have the outcome the kind implies."""
        if "complete" in outcome:
            item, default = {"step_id": step.step_id, "result": outcome["complete"]}, "completed"
        elif "fail" in outcome:
            item, default = {"step_id": step.step_id, "error": {"message": "scripted failure", **outcome["fail"]}}, "failed"
        elif "invalid_result" in outcome:
            item, default = {"step_id": step.step_id, "invalid_result": outcome["invalid_result"]}, "failed"
        elif "release" in outcome:
            item, default = {"step_id": step.step_id, "release": True}, "released"
        else:
            raise VectorFailure(f"step {name} claim {n}: bad outcome for a worker session {outcome}")
        resp = self.call(self.t.call, "worker_report", {"worker_id": self.session, "outcomes": [item]})
        got = resp["results"][0]
        want = outcome.get("expect_report", {"outcome": default})
        if not json_subset(want, got):
            raise VectorFailure(f"step {name} claim {n}: worker_report gave {got}, expected {want}")

    def handle(self, step: tasker.Step) -> None:
        name = step.step_name
        if step.task_id != self.task_id:
            raise VectorFailure(f"claimed a step of another task: {step!r}")
        self.claims[name] = n = self.claims.get(name, 0) + 1
        self.tokens[(name, n)] = (step.step_id, step.claim_token)
        if name in self.not_before:
            started, ms = self.not_before.pop(name)
            waited_ms = (time.monotonic() - started) * 1000
            if waited_ms + 2 < ms:
                raise VectorFailure(
                    f"step {name} was claimed again {waited_ms:.0f} ms after a failure with retry_after_ms {ms}")
        outcome = self.handler(step)
        if "claim_attempt" in outcome and not json_eq(outcome["claim_attempt"], step.attempt):
            raise VectorFailure(
                f"claim {n} of step {name}: expected attempt {outcome['claim_attempt']}, got {step.attempt}")
        self.fire_after(name, n, "claimed")
        expect_error = outcome.get("expect_error")
        if self.session is not None:
            self.report(name, n, step, outcome)
        elif "complete" in outcome:
            self.checked(expect_error, self.t.complete_step, step.step_id, step.claim_token,
                         outcome["complete"])
        elif "fail" in outcome:
            doc = {"message": "scripted failure", **outcome["fail"]}
            started = time.monotonic()
            self.checked(expect_error, self.t.fail_step, step.step_id, step.claim_token, doc)
            if "retry_after_ms" in doc:
                self.not_before[name] = (started, doc["retry_after_ms"])
        elif "hold" in outcome:
            self.held.append(time.monotonic() + (self.lease_ms + 30) / 1000)
        else:
            raise VectorFailure(f"step {name} claim {n}: bad outcome {outcome}")
        self.fire_after(name, n, "reported")


def record_in_ledger(store: str, vector: str, ok: bool) -> None:
    """Appends ``python <store> <vector> ok|FAIL`` to the file ``TASKER_CONFORMANCE_LEDGER``
    names: ``scripts/conformance-coverage`` checks there that every runner ran every
    vector on both stores (tests/conformance/README.md)."""
    ledger = os.environ.get("TASKER_CONFORMANCE_LEDGER")
    if ledger:
        with open(ledger, "a", encoding="utf-8") as f:
            f.write(f"python\t{store}\t{vector}\t{'ok' if ok else 'FAIL'}\n")


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path, store: str, settings: Dict[str, Any]) -> None:
    ok = False
    try:
        v = json.loads(path.read_text())
        config = {**settings, "env": "conformance", "lease_ms": 30000,
                  "sweep_interval_ms": 3_600_000, "claim_poll_ms": 20, **v.get("config", {})}
        with tasker.Tasker.open(config) as t:
            Run(v, t, int(config["lease_ms"])).run()
        ok = True
    finally:
        record_in_ledger(store, path.stem, ok)
