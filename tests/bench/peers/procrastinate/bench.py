"""Burns down no-op procrastinate jobs and prints one JSON line with the rate.

    python bench.py POSTGRES_URL [--jobs 10000] [--concurrency 10]

The peer gets a database of its own on the same server (created here, dropped at the
end), because procrastinate installs its schema into the connection's default schema.
The jobs are deferred in one batch before the worker starts; the clock runs from the
worker's start until the last job is done. The worker runs in its documented
production shape: async tasks, LISTEN/NOTIFY on, jobs kept (the default).
"""

import argparse
import asyncio
import json
import os
import sys
import time
from importlib.metadata import version
from urllib.parse import urlsplit, urlunsplit

import procrastinate
import psycopg


def with_database(url: str, database: str) -> str:
    """The same server URL, pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()

    database = f"tasker_peer_procrastinate_{os.getpid()}"
    admin = psycopg.connect(args.url, autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
    admin.execute(f'CREATE DATABASE "{database}"')
    try:
        url = with_database(args.url, database)
        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=url, min_size=2, max_size=12)
        )
        done = 0
        finished = asyncio.Event()

        @app.task(queue="bench")
        async def noop(i: int) -> None:
            nonlocal done
            done += 1
            if done == args.jobs:
                finished.set()

        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            await noop.batch_defer_async(*({"i": i} for i in range(args.jobs)))
            start = time.perf_counter()
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=["bench"],
                    concurrency=args.concurrency,
                    wait=True,
                    install_signal_handlers=False,
                )
            )
            await finished.wait()
            elapsed = time.perf_counter() - start
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        with psycopg.connect(url) as conn:
            (succeeded,) = conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            ).fetchone()
        if succeeded != args.jobs:
            sys.exit(f"procrastinate finished {succeeded} of {args.jobs} jobs")
        print(
            json.dumps(
                {
                    "peer_procrastinate_jobs_per_s": round(args.jobs / elapsed, 1),
                    "peer_procrastinate_version": version("procrastinate"),
                    "peer_procrastinate_jobs": args.jobs,
                    "peer_procrastinate_concurrency": args.concurrency,
                    "python_version": sys.version.split()[0],
                }
            )
        )
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    asyncio.run(main())
