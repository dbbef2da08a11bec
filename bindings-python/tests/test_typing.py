"""The package is typed (py.typed, stubs for the native module, mypy --strict clean)
and documented (a docstring on every public name)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import tasker

USAGE = '''
import tasker

def main() -> None:
    with tasker.Tasker.open("sqlite://typed.db") as t:
        created: tasker.types.CreatedTask = t.create_task("n", "x", context={"a": 1})
        task_id: int = created["task_id"]
        info = t.get_task(task_id)
        states: list[str] = [s["state"] for s in info["steps"]]
        w = tasker.Worker(t, concurrency=2)

        @w.handler("h")
        def h(step: tasker.Step) -> object:
            n: int = step.attempt
            return {"n": n, "ctx": step.context}

        stats: tasker.WorkerStats = w.run_until_idle()
        print(states, stats.completed)
'''


def test_package_files_are_installed() -> None:
    pkg = Path(tasker.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_native.pyi").exists()


def test_mypy_strict_accepts_the_package_source() -> None:
    pytest.importorskip("mypy")
    source = Path(__file__).resolve().parents[1] / "python" / "tasker"
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True, text=True, cwd=source.parent, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_accepts_typed_use_of_the_installed_package(tmp_path: Path) -> None:
    # mypy finds the installed package through its py.typed marker (PEP 561).
    pytest.importorskip("mypy")
    (tmp_path / "usage.py").write_text(USAGE)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path / "usage.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_type_error_in_use_is_caught(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "wrong.py").write_text(
        "import tasker\nt = tasker.Tasker.open('sqlite://x.db')\nt.get_task('one')\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          str(tmp_path / "wrong.py")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1 and "get_task" in out.stdout, out.stdout


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in tasker.__all__:
        obj = getattr(tasker, name)
        if name.startswith("__") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if callable(member) or isinstance(member, (property, classmethod, staticmethod)):
                    if not inspect.getdoc(getattr(obj, attr)):
                        missing.append(f"{name}.{attr}")
    assert missing == []
