"""The README's Python quick start, run verbatim, and the demo scripts/demo runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tasker

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(markdown: str) -> list:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_readme_quick_start_runs_verbatim(tmp_path: Path) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```python block"
    code = blocks[0]
    # An empty directory outside the repository: the quick start must run anywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "complete"
    with tasker.Tasker.open(f"sqlite://{tmp_path}/app.db") as t:
        tasks = t.list_tasks()["tasks"]
        assert [(x["state"], x["idempotency_key"]) for x in tasks] == [("complete", "order-42")]
        steps = {s["name"]: s for s in t.get_task(tasks[0]["id"])["steps"]}
        assert steps["charge"]["attempts"] == 2
        assert steps["ship"]["result"] == {"by": "ups", "charged": True}


def test_the_package_readme_example_runs(tmp_path: Path) -> None:
    code = python_blocks((ROOT / "bindings-python" / "README.md").read_text())[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "complete"


def test_the_demo_completes_every_task(tmp_path: Path) -> None:
    demo = ROOT / "bindings-python" / "examples" / "demo.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    out = subprocess.run([sys.executable, str(demo), str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "created=false (deduplicated)" in text
    assert "[schema_violation]" in text
    assert "retry scheduled" in text
    assert text.count(": COMPLETE") == 5
    assert "all 5 tasks complete" in text
    charges = [line.split() for line in text.splitlines() if line.strip().startswith("charge ")]
    assert len(charges) == 5
    for cols in charges:
        assert cols[1:3] == ["complete", "2"], cols
    assert "kind TimeoutError" in text
    # A second run on the same directory refuses to reuse the database.
    again = subprocess.run([sys.executable, str(demo), str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert "exists already" in again.stderr
