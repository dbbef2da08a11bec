"""Order fulfilment end to end with Python handlers, on a fresh embedded SQLite database.

Registers examples/templates/orders/fulfill/1.0.0.yaml (a diamond: validate ->
reserve + charge -> ship), creates five orders (one of them twice with the same
idempotency key, and one bad order the input schema rejects), runs two workers whose
``charge_payment`` handler fails once per order and then succeeds, prints progress from
the event log as it happens, and ends with every task's state and steps.

Usage: ``python demo.py [DIR]``. The database is DIR/demo.db; DIR must not hold one yet
(default: a new directory under the system temp dir, kept for exploring). Run by
``scripts/demo``. Exit status 0 only when every task completed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import tasker

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "templates" / "orders" / "fulfill" / "1.0.0.yaml"
ORDERS = [1001, 1002, 1003, 1004, 1005]
WORKERS = 2


def cell(v: Any) -> str:
    """A value as a table cell: None is "-", strings as they are, the rest as JSON."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return tasker._native.to_json(v)


def duration(ms: Optional[int]) -> str:
    if ms is None:
        return "-"
    if ms < 1_000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms // 60_000}m{(ms % 60_000) // 1000:02d}s"


def table(headers: Sequence[str], rows: List[List[str]], right: Sequence[int] = ()) -> List[str]:
    widths = [max(len(r[i]) for r in [list(headers), *rows]) for i in range(len(headers))]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def order_context(order: int) -> Dict[str, Any]:
    return {"order_id": order, "items": ["book", "lamp"], "amount_cents": 4200 + order % 10 * 100}


def work(step: tasker.Step) -> None:
    """A short, deterministic amount of "work" so durations are visible."""
    time.sleep((5 + (step.context["order_id"] % 4) * 3) / 1000)


def make_worker(t: tasker.Tasker, worker_id: str) -> tasker.Worker:
    w = tasker.Worker(t, worker_id=worker_id, batch_size=2)

    @w.handler("validate_order")
    def validate(step: tasker.Step) -> Any:
        work(step)
        if "order_id" not in step.context:
            raise tasker.PermanentError("order_id is missing")
        return {"valid": True, "order_id": step.context["order_id"]}

    @w.handler("reserve_inventory")
    def reserve(step: tasker.Step) -> Any:
        work(step)
        return {"reserved": step.context["items"], "warehouse": step.config["warehouse"]}

    @w.handler("charge_payment")
    def charge(step: tasker.Step) -> Any:
        work(step)
        if step.attempt == 1:
            raise TimeoutError("payment gateway timed out (simulated; succeeds on retry)")
        return {"charged_cents": step.context["amount_cents"],
                "currency": step.config["currency"], "attempt": step.attempt}

    @w.handler("ship_order")
    def ship(step: tasker.Step) -> Any:
        work(step)
        if "charge" not in step.results or "reserve" not in step.results:
            raise tasker.PermanentError("ship ran before reserve and charge")
        return {"carrier": step.config["carrier"], "tracking": f"1Z{step.context['order_id']:08d}"}

    return w


def progress_line(e: Dict[str, Any]) -> Optional[str]:
    """A progress line for the events worth showing (None for the rest)."""
    task, step = cell(e.get("task_id")), cell(e.get("step_name"))
    attempt, worker = cell(e.get("attempt")), cell(e.get("worker"))
    error = (e.get("details") or {}).get("error") or {}
    kind = e["event"]
    if kind == "step.completed":
        return f"task {task}: {step} completed (attempt {attempt}, {worker})"
    if kind == "step.retry_scheduled":
        return (f"task {task}: {step} failed on attempt {attempt} ({worker}): "
                f"{error.get('kind')}: {error.get('message')}; retry scheduled")
    if kind == "step.failed":
        return f"task {task}: {step} FAILED for good: {error.get('message')}"
    if kind == "step.lease_expired":
        return f"task {task}: {step} lease expired; taken back"
    if kind == "task.completed":
        return f"task {task}: COMPLETE"
    if kind == "task.failed":
        return f"task {task}: FAILED"
    if kind == "task.cancelled":
        return f"task {task}: cancelled"
    return None


def main(argv: List[str]) -> int:
    started = time.monotonic()
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        print("usage: demo.py [DIR]   (runs the order-fulfilment demo on DIR/demo.db)")
        return 0
    directory = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="tasker-demo-"))
    db = directory / "demo.db"
    if db.exists():
        print(f"error: {db} exists already; the demo needs a fresh database", file=sys.stderr)
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite://{db}"
    print("Tasker demo: order fulfilment (Python handlers)")
    print(f"database: {url} (fresh)\n")

    with tasker.Tasker.open(url, migrate_on_open=True) as t:
        # 1. The template.
        reg = t.register_template(yaml=TEMPLATE.read_text())
        print(f"registered {reg['namespace']}/{reg['name']} {reg['version']} "
              f"from {TEMPLATE.relative_to(ROOT)}")
        print("  validate -> (reserve, charge) -> ship; charge fails once per order, then succeeds\n")

        # 2. The tasks.
        tasks = []
        for order in ORDERS:
            r = t.create_task("orders", "fulfill", "1.0.0", context=order_context(order),
                              idempotency_key=f"order-{order}")
            print(f"created task {r['task_id']} for order {order} (idempotency key order-{order})")
            tasks.append((r["task_id"], order))
        again = t.create_task("orders", "fulfill", "1.0.0", context=order_context(1003),
                              idempotency_key="order-1003")
        print(f"order 1003 submitted again with key order-1003: got task {again['task_id']} back, "
              f"created={cell(again['created'])} (deduplicated)")
        try:
            r = t.create_task("orders", "fulfill", context={"items": ["?"]})
            print(f"unexpected: an order without order_id was accepted: {r}")
        except tasker.SchemaViolationError as e:
            print(f"an order without order_id is refused: [{e.code}] {e.message}")

        # 3. Progress from the event log, from here on.
        t0 = time.monotonic()
        seen = [t.stats()["last_event_id"]]

        def show(e: Dict[str, Any]) -> None:
            line = progress_line(e)
            if line is not None:
                print(f"  [{int((time.monotonic() - t0) * 1000):>5} ms] {line}", flush=True)
            seen[0] = e["id"]

        unsubscribe = t.on("*", show, since=seen[0])

        # 4. The workers.
        print(f"\nrunning {WORKERS} workers:")
        workers = [make_worker(t, f"worker-{n}") for n in range(1, WORKERS + 1)]
        threads = [threading.Thread(target=w.run_until_idle) for w in workers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        # Let the subscription print everything the workers caused before summing up.
        last = t.stats()["last_event_id"]
        deadline = time.monotonic() + 5
        while seen[0] < last and time.monotonic() < deadline:
            time.sleep(0.01)
        unsubscribe()

        # 5. The outcome.
        print("\nresults:")
        count = len(t.list_tasks(limit=100)["tasks"])
        all_complete = count == len(ORDERS)
        if not all_complete:
            print(f"expected {len(ORDERS)} tasks, found {count}")
        for task_id, order in tasks:
            task = t.get_task(task_id)
            all_complete &= task["state"] == "complete"
            print(f"\ntask {task_id}  order {order}  {task['state']}  in {duration(task['duration_ms'])}")
            rows = [[cell(s["name"]), cell(s["state"]), cell(s["attempts"]),
                     cell(s["duration_ms"]), cell(s["worker"])] for s in task["steps"]]
            for line in table(["STEP", "STATE", "ATTEMPTS", "DURATION MS", "WORKER"], rows, right=(2, 3)):
                print(f"  {line}")
        charge_error = t.get_task(tasks[0][0])["steps"]
        failure = next(s["error"] for s in charge_error if s["name"] == "charge")
        print(f"\nthe first attempt of each charge is kept as the step's error document:\n"
              f"  kind {failure['kind']}, message {failure['message']!r}, "
              f"traceback of {len(failure['traceback'].splitlines())} lines")

    print()
    if all_complete:
        print(f"all {len(ORDERS)} tasks complete in {time.monotonic() - started:.2f}s")
    else:
        print("FAILED: not every task completed")
    cli = os.environ.get("TASKER_CLI") or shutil.which("tasker") or "tasker"
    first = tasks[0][0] if tasks else 1
    print(f"explore the database with the CLI:\n  {cli} --database-url {url} task list\n"
          f"  {cli} --database-url {url} task show {first}\n  {cli} --database-url {url} events")
    return 0 if all_complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
