"""The Python worker of the polyglot tests (tests/polyglot/README.md): serves the
handler named by POLY_HANDLER (default ``python``) and does what each step's config
``do`` says. Works until SIGTERM."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import tasker

LANG = "python"
LOG = os.environ["POLY_LOG"]


def log(step: tasker.Step, event: str, **extra: Any) -> None:
    line = {"lang": LANG, "pid": os.getpid(), "task_id": step.task_id, "step": step.step_name,
            "attempt": step.attempt, "event": event, **extra}
    with open(LOG, "a", encoding="utf-8") as f:  # one write per line: O_APPEND keeps lines whole
        f.write(json.dumps(line) + "\n")


def handle(step: tasker.Step) -> Any:
    cfg = step.config or {}
    log(step, "start")
    action = cfg.get("do", "emit")
    if action == "emit":
        out: Any = {"language": LANG, "value": cfg.get("value")}
    elif action == "echo":
        out = {"language": LANG, "parents": step.results}
    elif action == "sleep":
        time.sleep(cfg["ms"] / 1000)
        out = {"language": LANG, "pid": os.getpid()}
    elif action == "flaky":
        if step.attempt < cfg["succeed_on"]:
            log(step, "fail")
            raise tasker.RetryableError(f"attempt {step.attempt} fails", retry_after=0.01)
        out = {"language": LANG, "attempt": step.attempt}
    elif action == "permanent":
        log(step, "fail")
        raise tasker.PermanentError(cfg["message"])
    elif action == "wait_stop":
        stopped = step.cancelled.wait(cfg.get("max_ms", 30_000) / 1000)
        log(step, "stopped" if stopped else "not_stopped")
        return {"language": LANG, "stopped": stopped}
    else:
        raise tasker.PermanentError(f"unknown action {action}")
    log(step, "end")
    return out


def main() -> None:
    settings = json.loads(os.environ["POLY_SETTINGS"])
    lease = os.environ.get("POLY_LEASE_MS")
    with tasker.Tasker.open(settings) as t:
        worker = tasker.Worker(t, concurrency=4, worker_id=f"{LANG}-{os.getpid()}",
                               lease_ms=int(lease) if lease else None)
        worker.register(os.environ.get("POLY_HANDLER", LANG), handle)
        worker.run()


if __name__ == "__main__":
    main()
