"""The polyglot example (examples/polyglot, docs/polyglot.md) as a user runs it: run.py
with its Python, Node.js, Ruby and C workers, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import PG_URL

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "polyglot"


def test_the_template_in_the_docs_is_the_example_file() -> None:
    doc = (ROOT / "docs" / "polyglot.md").read_text()
    block = re.search(r"```yaml file=examples/polyglot/invoice.yaml\n(.*?)```", doc, re.S)
    assert block, "docs/polyglot.md shows examples/polyglot/invoice.yaml in a ```yaml file=... block"
    assert block.group(1) == (EXAMPLE / "invoice.yaml").read_text()


def run_example(store: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    env["TASKER_C_WORKER"] = os.environ["TASKER_POLYGLOT_EXAMPLE_C"]
    schema = None
    if store == "postgres":
        schema = f"poly_example_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        env.update(TASKER_DATABASE_URL=PG_URL, TASKER_POSTGRES_SCHEMA=schema)
    try:
        out = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), "--orders", "4", str(tmp_path)],
                             env=env, capture_output=True, text=True, timeout=180)
    finally:
        if schema is not None:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_the_example_runs_each_step_in_its_language(store: str, tmp_path: Path) -> None:
    out = run_example(store, tmp_path)
    assert "every step ran in its language" in out, out
    rows = [line.split() for line in out.splitlines() if re.match(r"^\d+\s+\w+\s+(py|rb|js|c)_", line)]
    assert len(rows) == 4 * 5, out
    for row in rows:
        step, handler, ran_in, worker = row[1], row[2], row[3], row[4]
        lang = {"py": "python", "rb": "ruby", "js": "node", "c": "c"}[handler.split("_")[0]]
        assert ran_in == lang and worker.startswith(f"{lang}-"), (step, row)
    assert "Invoice for order" in out and "signature" in out, out
