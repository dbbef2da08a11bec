"""Shared fixtures: every test that takes ``settings`` or ``tk`` runs once per store —
an SQLite file in the test's temp dir, and (when ``TASKER_TEST_DATABASE_URL`` is set) a
PostgreSQL schema of its own, dropped after the test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import tasker

PG_URL = os.environ.get("TASKER_TEST_DATABASE_URL")
STORES = ["sqlite", "postgres"]


def drop_schema(schema: str) -> None:
    import psycopg

    assert PG_URL is not None
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not PG_URL:
        pytest.skip("TASKER_TEST_DATABASE_URL is not set")
    return str(request.param)


@pytest.fixture
def settings(store: str, tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """Settings for a fresh database on the parametrised store."""
    base: Dict[str, Any] = {"templates_dir": str(tmp_path / "templates"), "env": "test"}
    if store == "sqlite":
        yield {**base, "database_url": f"sqlite://{tmp_path}/tasker.db"}
        return
    schema = f"py_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    try:
        yield {**base, "database_url": PG_URL, "postgres_schema": schema, "postgres_pool_size": 4}
    finally:
        drop_schema(schema)


@pytest.fixture
def tk(settings: Dict[str, Any]) -> Iterator[tasker.Tasker]:
    with tasker.Tasker.open(settings) as t:
        yield t


def chain(name: str, steps: Any, **extra: Any) -> Dict[str, Any]:
    """A template in namespace ``t``: ``steps`` are (name, [parents]) pairs, the handler
    named like the step; fast retries unless ``extra`` says otherwise."""
    return {
        "namespace": "t",
        "name": name,
        "version": "1",
        "defaults": {"retry": {"max_attempts": 3, "base_ms": 1, "max_ms": 5, "jitter": 0}},
        "steps": [{"name": s, "handler": s, "depends_on": list(deps)} for s, deps in steps],
        **extra,
    }


def fingerprint(t: tasker.Tasker) -> Dict[str, Any]:
    """Counts of tasks, steps and events: equal before and after a refused request
    means the request stored nothing."""
    s = t.stats()
    return {"tasks": s["tasks"], "steps": s["steps"], "last_event_id": s["last_event_id"]}


def all_events(t: tasker.Tasker, **filters: Any) -> List[Dict[str, Any]]:
    """Every event matching ``filters``, read page by page to the end (a filtered page
    can be empty while the cursor still moves)."""
    out: List[Dict[str, Any]] = []
    cursor = 0
    while True:
        page = t.events(cursor, limit=1000, **filters)
        out.extend(page["events"])
        if page["next_cursor"] == cursor:
            return out
        cursor = page["next_cursor"]
