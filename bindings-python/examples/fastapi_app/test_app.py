"""The FastAPI example, for real: uvicorn serves app.py in a child process on a free port
(its lifespan opens the database and starts the worker), and an HTTP client posts
reports and polls them until the worker has finished them.

Run by scripts/python-tests (on SQLite; on PostgreSQL too when
TASKER_TEST_DATABASE_URL is set, in a schema of its own, dropped after). Needs fastapi,
uvicorn and httpx (``pip install -r requirements.txt``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator

import httpx
import pytest

HERE = Path(__file__).resolve().parent
TEXT = "The quick brown fox jumps over the lazy dog; the dog sleeps, the fox runs."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STORES = ["sqlite"] + (["postgres"] if os.environ.get("TASKER_TEST_DATABASE_URL") else [])


@pytest.fixture(params=STORES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The app under uvicorn in a child process; yields its base URL."""
    env = {**os.environ, "REPORT_WORKER_CONCURRENCY": "2"}
    schema = None
    if request.param == "sqlite":
        env["TASKER_DATABASE_URL"] = f"sqlite://{tmp_path / 'app.db'}"
    else:
        # A schema of its own (the engine creates it), dropped after.
        schema = f"fastapi_example_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        env["TASKER_DATABASE_URL"] = os.environ["TASKER_TEST_DATABASE_URL"]
        env["TASKER_POSTGRES_SCHEMA"] = schema
    port = free_port()
    log = open(tmp_path / "uvicorn.log", "w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=HERE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{log.read().decode()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the app did not answer /healthz within 30 s")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        log.seek(0)
        output = log.read().decode()
        log.close()
        if schema is not None:
            drop_schema(schema)
        # A graceful shutdown: the lifespan stopped the worker and closed the handle.
        # (uvicorn re-raises the SIGTERM it handled once it has shut down.)
        assert code in (0, -signal.SIGTERM), f"uvicorn exited with {code}:\n{output}"
        assert "Application shutdown complete" in output, output


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(os.environ["TASKER_TEST_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def wait_complete(client: httpx.Client, task_id: int) -> Dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        r = client.get(f"/reports/{task_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["state"] in ("complete", "error", "cancelled"):
            return body
        assert time.monotonic() < deadline, f"task {task_id} not finished after 30 s: {body}"
        time.sleep(0.05)


def test_post_then_poll_until_complete(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        r = client.post("/reports", json={"text": TEXT, "top": 2})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["created"] is True and created["state"] == "pending"
        body = wait_complete(client, created["task_id"])

    assert body["state"] == "complete", body
    assert body["steps_done"] == body["steps_total"] == 4
    steps = {s["name"]: s for s in body["steps"]}
    assert [s["name"] for s in body["steps"]][0] == "tokenize"
    assert all(s["state"] == "complete" and s["attempts"] == 1 for s in steps.values())
    assert steps["tokenize"]["result"]["words"][:3] == ["the", "quick", "brown"]
    assert steps["count_words"]["result"] == {
        "total": 15,
        "distinct": 10,
        "top": [["the", 4], ["dog", 2]],
    }
    assert steps["longest_words"]["result"] == {"longest": ["sleeps", "brown"]}
    assert body["report"] == {
        "words": 15,
        "distinct_words": 10,
        "most_common": [["the", 4], ["dog", 2]],
        "longest": ["sleeps", "brown"],
        "headline": "15 words, 10 distinct, longest 'sleeps'",
    }


def test_idempotency_key_returns_the_first_task(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        headers = {"Idempotency-Key": "report-1"}
        first = client.post("/reports", json={"text": "one two"}, headers=headers).json()
        again = client.post("/reports", json={"text": "something else"}, headers=headers)
        assert again.status_code == 201, again.text
        assert again.json()["task_id"] == first["task_id"]
        assert again.json()["created"] is False
        body = wait_complete(client, first["task_id"])
        assert body["context"] == {"text": "one two"}
        assert body["report"]["words"] == 2


def test_bad_context_is_422_with_the_engine_code(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        r = client.post("/reports", json={"top": 2})
        assert r.status_code == 422, r.text
        err = r.json()
        assert err["code"] == "schema_violation"
        assert any("text" in e["message"] for e in err["details"]["errors"]), err

        r = client.post("/reports", json={"text": "", "top": 50})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "schema_violation"
        paths = {e["path"] for e in r.json()["details"]["errors"]}
        assert any("text" in p for p in paths) and any("top" in p for p in paths), paths

        # Nothing was created by the refused requests.
        assert client.get("/reports/1").status_code == 404
        health = client.get("/healthz").json()
        assert health["worker_running"] is True
        assert health["worker"]["completed"] == 0


def test_unknown_task_is_404(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        r = client.get("/reports/4242")
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"


def test_the_default_database_is_outside_the_source_tree() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    out = subprocess.run([sys.executable, "-c", "import app; print(app.default_database_url())"],
                         cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith("sqlite://"), url
    db = Path(url[len("sqlite://"):]).resolve()
    assert db.parent.is_dir()
    assert HERE.parents[2] not in db.parents, f"{db} is inside the repository"
