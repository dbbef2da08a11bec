"""The polyglot demo (docs/polyglot.md): one template whose steps are handled by a
Python, a Node.js, a Ruby and a C worker, each its own process, on one database.

Registers invoice.yaml, starts the four workers, creates the orders, waits until every
task has finished, then prints which language and which process ran each step and how
long it took, and the invoice the last step rendered. Exit status 0 only when every
task completed and every step ran in the language its handler belongs to.

Usage: ``python run.py [--orders N] [DIR]``. The database is ``TASKER_DATABASE_URL``
when set (PostgreSQL: the schema TASKER_POSTGRES_SCHEMA, else a fresh one, printed and
kept for exploring), else
DIR/polyglot.db (default DIR: a new temporary directory, kept). Run by
``scripts/demo --polyglot``, which builds the packages and the C worker and sets
``TASKER_C_WORKER`` (the C worker's binary), ``NODE_PATH`` and ``GEM_PATH``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import tasker

HERE = Path(__file__).resolve().parent
LANGUAGE_OF = {"py_": "python", "rb_": "ruby", "js_": "node", "c_": "c"}


def language_of(handler: str) -> str:
    return next(lang for prefix, lang in LANGUAGE_OF.items() if handler.startswith(prefix))


def orders(n: int) -> List[Dict[str, Any]]:
    names = ["Ada Lovelace", "Grace Hopper", "Ēmīls Dārziņš", "Åsa Öberg", "李小龙", "Zoë Ångström"]
    return [{"order_id": 5000 + i, "customer": f" {names[i % len(names)]} ",
             "items": [{"sku": f"sku-{i}a", "qty": 1 + i % 3, "unit_cents": 1999},
                       {"sku": f"sku-{i}b", "qty": 2, "unit_cents": 350 + 10 * i}]}
            for i in range(n)]


def workers(env: Dict[str, str]) -> Dict[str, subprocess.Popen]:
    c_worker = os.environ.get("TASKER_C_WORKER")
    if not c_worker:
        sys.exit("run.py: set TASKER_C_WORKER to the built C worker (scripts/demo --polyglot does)")
    commands = {
        "python": [sys.executable, str(HERE / "worker.py")],
        "node": ["node", str(HERE / "worker.js")],
        "ruby": ["ruby", str(HERE / "worker.rb")],
        "c": [c_worker],
    }
    return {lang: subprocess.Popen(cmd, env=env) for lang, cmd in commands.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="where the SQLite database goes")
    parser.add_argument("--orders", type=int, default=5)
    args = parser.parse_args()

    env = dict(os.environ)
    url = os.environ.get("TASKER_DATABASE_URL", "")
    if url.startswith("postgres"):
        schema = os.environ.get("TASKER_POSTGRES_SCHEMA") or f"polyglot_demo_{int(time.time())}_{os.getpid()}"
        env["TASKER_POSTGRES_SCHEMA"] = schema
        where = f"{url} (schema {schema}; drop it with: psql '{url}' -c 'DROP SCHEMA {schema} CASCADE')"
        settings: Dict[str, Any] = {"database_url": url, "postgres_schema": schema}
    else:
        folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tasker-polyglot-"))
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite://{folder / 'polyglot.db'}"
        env["TASKER_DATABASE_URL"] = url
        where = str(folder / "polyglot.db")
        settings = {"database_url": url}

    with tasker.Tasker.open(settings) as t:
        t.register_template(HERE / "invoice.yaml")
        procs = workers(env)
        started = time.monotonic()
        try:
            ids = [t.create_task("polyglot", "invoice", "1.0.0", context=o)["task_id"] for o in orders(args.orders)]
            deadline = started + 120
            tasks: List[Dict[str, Any]] = []
            while time.monotonic() < deadline:
                tasks = [t.get_task(i) for i in ids]
                if all(task["state"] in ("complete", "error", "cancelled") for task in tasks):
                    break
                dead = [lang for lang, p in procs.items() if p.poll() is not None]
                if dead:
                    print(f"run.py: the {', '.join(dead)} worker exited early", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            wall_ms = (time.monotonic() - started) * 1000
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            codes = {lang: p.wait(timeout=30) for lang, p in procs.items()}

    ok = all(code == 0 for code in codes.values())
    print(f"\n{len(tasks)} orders, one template, four languages, database {where}\n")
    rows = [["task", "step", "handler", "ran in", "worker", "attempts", "duration"]]
    for task in tasks:
        for s in task["steps"]:
            ran_in = (s.get("result") or {}).get("language", "-")
            if s["state"] != "complete" or ran_in != language_of(s["handler"]):
                ok = False
            rows.append([str(task["id"]), s["name"], s["handler"], ran_in, s.get("worker") or "-",
                         str(s["attempts"]), f"{s['duration_ms']} ms" if s.get("duration_ms") is not None else "-"])
        if task["state"] != "complete":
            ok = False
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\nall {len(tasks)} tasks finished in {wall_ms:.0f} ms; worker exit codes {codes}")
    last = next((task for task in reversed(tasks) if task["state"] == "complete"), None)
    if last is not None:
        print("\n" + next(s for s in last["steps"] if s["name"] == "render")["result"]["text"])
    print("\nevery step ran in its language" if ok else "\nrun.py: some task or step did not finish as expected")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
