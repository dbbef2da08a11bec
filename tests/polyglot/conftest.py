"""Fixtures of the polyglot suite (tests/polyglot/README.md): a fresh database on each
store, worker processes of each language started against it, and the C program's
``call`` mode for operations issued from C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import tasker

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"
PG_URL = os.environ.get("TASKER_TEST_DATABASE_URL", "")
C_PROGRAM = os.environ.get("TASKER_POLYGLOT_C", "")
LANGUAGES = ["python", "node", "ruby", "c"]


def command(lang: str) -> List[str]:
    """How to start the test worker of ``lang`` (scripts/polyglot-tests sets NODE_PATH,
    GEM_PATH and TASKER_POLYGLOT_C so the installed packages are found)."""
    if lang == "python":
        return [sys.executable, str(WORKERS / "worker.py")]
    if lang == "node":
        return ["node", str(WORKERS / "worker.js")]
    if lang == "ruby":
        return ["ruby", str(WORKERS / "worker.rb")]
    if lang == "c":
        assert C_PROGRAM, "TASKER_POLYGLOT_C must name the built tests/polyglot/workers/worker.c"
        return [C_PROGRAM]
    raise ValueError(lang)


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Polls ``pred`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def template(name: str, steps: List[Dict[str, Any]], max_attempts: int = 3) -> Dict[str, Any]:
    return {"namespace": "poly", "name": name, "version": "1.0.0",
            "defaults": {"retry": {"max_attempts": max_attempts, "backoff": "exponential",
                                   "base_ms": 1, "max_ms": 5, "jitter": 0}},
            "steps": steps}


class Poly:
    """One test's database and the processes working on it."""

    def __init__(self, store: str, tmp: Path, settings: Dict[str, Any]) -> None:
        self.store, self.tmp, self.settings = store, tmp, settings
        self.log_path = tmp / "runs.log"
        self.log_path.touch()
        self.procs: List[subprocess.Popen] = []
        self.t = tasker.Tasker.open(settings)

    def env(self, **extra: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
        env.update(POLY_SETTINGS=json.dumps(self.settings), POLY_LOG=str(self.log_path), **extra)
        return env

    def start(self, lang: str, lease_ms: Optional[int] = None, **extra: str) -> subprocess.Popen:
        env = self.env(**extra)
        if lease_ms is not None:
            env["POLY_LEASE_MS"] = str(lease_ms)
        proc = subprocess.Popen(command(lang), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> str:
        """SIGTERM, then the process's output; it must exit 0."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out}"
        return out

    def runs(self) -> List[Dict[str, Any]]:
        """The lines the handlers logged, in the order they were written."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def c_call(self, op: str, request: Dict[str, Any]) -> Dict[str, Any]:
        """Runs one operation from the C program; its response (fails on an error)."""
        out = subprocess.run(command("c") + ["call", op, json.dumps(request)], env=self.env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"C {op} failed: {out.stdout}{out.stderr}"
        return json.loads(out.stdout)

    def finished(self, task_id: int) -> Optional[Dict[str, Any]]:
        task = self.t.get_task(task_id)
        return task if task["state"] in ("complete", "error", "cancelled") else None

    def events(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        cursor = 0
        while True:
            page = self.t.events(cursor, limit=1000)
            out.extend(page["events"])
            if page["next_cursor"] == cursor:
                return out
            cursor = page["next_cursor"]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.t.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not PG_URL:
        pytest.fail("TASKER_TEST_DATABASE_URL is not set: the polyglot suite runs on both stores")
    return str(request.param)


@pytest.fixture
def poly(store: str, tmp_path: Path) -> Iterator[Poly]:
    # A short sweep so a killed worker's steps come back within a second or two.
    base: Dict[str, Any] = {"templates_dir": str(tmp_path / "templates"), "sweep_interval_ms": 200}
    schema = None
    if store == "sqlite":
        settings = {**base, "database_url": f"sqlite://{tmp_path}/poly.db"}
    else:
        schema = f"poly_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        settings = {**base, "database_url": PG_URL, "postgres_schema": schema, "postgres_pool_size": 4}
    p = Poly(store, tmp_path, settings)
    try:
        yield p
    finally:
        p.close()
        if schema is not None:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
