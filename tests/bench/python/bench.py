"""The Python package's numbers: per-call cost and a worker of no-op Python handlers.

    python bench.py [--quick] [--sync normal|full] [--pg-url URL]
                    [--concurrency N] [--batch-size N]

Run by scripts/bench-python (from scripts/bench) with a release build of the package
installed in target/bench/py-venv. Prints one JSON object of named numbers on stdout
(progress on stderr):

- ``ffi_noop_call_ns_python``: median over rounds of the mean ns per
  ``Tasker.call_json("ping", "{}")`` (the same call the C and Rust numbers make);
  ``ffi_noop_call_ns_python_ping`` the same for ``Tasker.ping()`` (dict in, dict out).
- ``steps_per_s_python_sqlite`` / ``_postgres``: single-step tasks created beforehand
  (not timed, as in the Rust bench), drained by one ``tasker.Worker`` of no-op sync
  handlers in this process with ``run_until_idle()``, as an application would; the
  clock covers the whole call. The worker's settings are recorded beside the numbers.

The engine opens the same way the Rust bench opens it: a fresh SQLite file (WAL,
``sqlite_synchronous`` as given) or a fresh PostgreSQL schema, dropped after.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, List

import tasker

TEMPLATE = {
    "namespace": "bench",
    "name": "single",
    "version": "1.0.0",
    "steps": [{"name": "only", "handler": "noop"}],
}
CREATE = json.dumps({"namespace": "bench", "name": "single", "version": "1.0.0", "context": {"n": 1}})


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def noop(step: tasker.Step) -> None:
    return None


def ffi(out: Dict[str, Any], db: str, sync: str, calls: int, batch: int) -> None:
    """Per-call cost of the cheapest operation, through the package's public API."""
    with tasker.Tasker.open({"database_url": f"sqlite://{db}", "sqlite_synchronous": sync}) as t:
        for key, fn, args in (
            ("ffi_noop_call_ns_python", t.call_json, ("ping", "{}")),
            ("ffi_noop_call_ns_python_ping", t.ping, ()),
        ):
            for _ in range(2_000):
                fn(*args)
            means: List[float] = []
            clock = time.perf_counter_ns
            for _ in range(calls // batch):
                start = clock()
                for _ in range(batch):
                    fn(*args)
                means.append((clock() - start) / batch)
            out[key] = round(statistics.median(means), 1)
            say(f"  {key}: {out[key]:.0f} ns/call (median of {len(means)} rounds of {batch})")
        out["ffi_noop_calls_python"] = calls


def create_many(t: tasker.Tasker, n: int, threads: int) -> None:
    """Creates n single-step tasks on `threads` threads (every engine call releases the
    GIL, so on PostgreSQL the threads' round trips overlap)."""

    def some(count: int) -> None:
        for _ in range(count):
            t.call_json("create_task", CREATE)

    counts = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(some, c) for c in counts]:
            f.result()


def steps(out: Dict[str, Any], store: str, config: Dict[str, Any], n: int, concurrency: int, batch: int) -> None:
    """A Worker of no-op handlers drains n single-step tasks."""
    with tasker.Tasker.open(config) as t:
        t.register_template(TEMPLATE)
        threads = 1 if store == "sqlite" else 4
        start = time.perf_counter()
        create_many(t, n, threads)
        create_s = time.perf_counter() - start

        worker = tasker.Worker(t, concurrency=concurrency, batch_size=batch, handlers={"noop": noop})
        start = time.perf_counter()
        stats = worker.run_until_idle()
        drain_s = time.perf_counter() - start

        complete = t.stats()["tasks"]["complete"]
        if stats.completed != n or complete != n:
            raise SystemExit(
                f"python bench ({store}): worker completed {stats.completed}, "
                f"{complete} of {n} tasks complete ({stats})"
            )
    rate = n / drain_s
    out[f"steps_per_s_python_{store}"] = round(rate)
    out[f"steps_python_tasks_{store}"] = n
    out[f"steps_python_concurrency_{store}"] = concurrency
    out[f"steps_python_batch_size_{store}"] = batch
    out[f"create_tasks_per_s_python_{store}"] = round(n / create_s)
    say(
        f"  steps (python, {store}): {rate:.0f} steps/s drained by Worker(concurrency={concurrency}, "
        f"batch_size={batch}) ({n} tasks, created at {n / create_s:.0f}/s on {threads} threads)"
    )


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sync", default="normal")
    p.add_argument("--pg-url")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()

    out: Dict[str, Any] = {
        "python_version": platform.python_version(),
        "python_package_version": tasker.__version__,
    }
    calls, batch = (50_000, 5_000) if args.quick else (200_000, 10_000)
    n = 5_000 if args.quick else 20_000
    scratch = tempfile.mkdtemp(prefix="tasker-bench-py-")
    try:
        say("python (ffi):")
        ffi(out, os.path.join(scratch, "ffi.db"), args.sync, calls, batch)
        say("python (steps):")
        cfg = {"database_url": f"sqlite://{os.path.join(scratch, 'steps.db')}", "sqlite_synchronous": args.sync}
        steps(out, "sqlite", cfg, n, args.concurrency, args.batch_size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.pg_url:
        schema = f"tasker_bench_py_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            cfg = {"database_url": args.pg_url, "postgres_schema": schema}
            steps(out, "postgres", cfg, n, args.concurrency, args.batch_size)
        finally:
            drop_schema(args.pg_url, schema)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
