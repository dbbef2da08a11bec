"""A FastAPI service whose work runs as Tasker tasks, with a worker in the same process.

    POST /reports          body: the task's context, e.g. {"text": "...", "top": 3}
                           -> 201 {"task_id": 1, "created": true, "state": "pending"}
    GET  /reports/{id}     -> the task's state, its steps (state, attempts, result,
                           error) and, once complete, the report
    GET  /healthz          -> the engine's ping and the worker's counts

The template (templates/text_report.yaml) is registered at start-up; a
``tasker.Worker`` with the Python handlers below starts with the app's lifespan and
stops gracefully with it (running handlers finish, claimed steps are handed back).

Engine errors become JSON responses ``{"code", "message", "details"}`` with the HTTP
status of their code: a context the template's ``input_schema`` rejects is 422 with
code ``schema_violation``; an unknown task is 404 ``not_found``.

Settings (environment): ``TASKER_DATABASE_URL`` (default: ``fastapi_example.db`` in
``<temp dir>/tasker-examples``, outside the source tree), ``REPORT_WORKER_CONCURRENCY``
(default 2).
Run: ``uvicorn app:app`` from this directory (see README.md).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import Body, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

import tasker

TEMPLATE = Path(__file__).resolve().parent / "templates" / "text_report.yaml"
NAMESPACE, NAME = "reports", "text_report"

# HTTP status of each engine error code a client can cause; any other code is the
# server's problem (500), except an unreachable database (503).
STATUS_OF_CODE = {
    "schema_violation": 422,
    "invalid_argument": 422,
    "too_large": 413,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
}

WORD = re.compile(r"[\w']+")


# -- the handlers: plain Python, one per step of the template ------------------------


def tokenize(step: tasker.Step) -> Dict[str, Any]:
    words = [w.lower() for w in WORD.findall(step.context["text"])]
    return {"words": words}


def count_words(step: tasker.Step) -> Dict[str, Any]:
    words = step.results["tokenize"]["words"]
    top = step.context.get("top", 3)
    counts = Counter(words)
    # Most frequent first; ties in alphabetical order so the report is deterministic.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {"total": len(words), "distinct": len(counts), "top": [[w, n] for w, n in ranked]}


def longest_words(step: tasker.Step) -> Dict[str, Any]:
    words = set(step.results["tokenize"]["words"])
    top = step.context.get("top", 3)
    return {"longest": sorted(words, key=lambda w: (-len(w), w))[:top]}


async def summarize(step: tasker.Step) -> Dict[str, Any]:
    # An async handler: runs on the worker's asyncio loop, not a worker thread.
    counts = step.results["count_words"]
    longest = step.results["longest_words"]["longest"]
    return {
        "words": counts["total"],
        "distinct_words": counts["distinct"],
        "most_common": counts["top"],
        "longest": longest,
        "headline": f"{counts['total']} words, {counts['distinct']} distinct"
        + (f", longest '{longest[0]}'" if longest else ""),
    }


HANDLERS = {
    "tokenize": tokenize,
    "count_words": count_words,
    "longest_words": longest_words,
    "summarize": summarize,
}


# -- the app ---------------------------------------------------------------------------


def default_database_url() -> str:
    """A SQLite file in ``<temp dir>/tasker-examples``: an example never writes its
    database into the directory it runs from (the source tree)."""
    directory = Path(tempfile.gettempdir()) / "tasker-examples"
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite://{directory / 'fastapi_example.db'}"


def create_app(database_url: Optional[str] = None, concurrency: Optional[int] = None) -> FastAPI:
    """The app, on ``database_url`` (else ``TASKER_DATABASE_URL``, else
    :func:`default_database_url`)."""
    url = database_url or os.environ.get("TASKER_DATABASE_URL") or default_database_url()
    threads = concurrency or int(os.environ.get("REPORT_WORKER_CONCURRENCY", "2"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        t = tasker.Tasker.open(url)
        try:
            # Registering the same template again is a no-op, so every start may do it.
            t.register_template(TEMPLATE)
            worker = tasker.Worker(t, concurrency=threads, handlers=HANDLERS)
            worker.start()
            app.state.tasker = t
            app.state.worker = worker
            try:
                yield
            finally:
                # Graceful: handlers already running finish; unstarted claims go back.
                await run_in_threadpool(worker.stop)
        finally:
            t.close()

    app = FastAPI(title="Tasker text reports", lifespan=lifespan)

    @app.exception_handler(tasker.TaskerError)
    async def engine_error(request: Request, e: tasker.TaskerError) -> JSONResponse:
        return JSONResponse(
            status_code=STATUS_OF_CODE.get(e.code, 500),
            content={"code": e.code, "message": e.message, "details": e.details},
        )

    @app.post("/reports", status_code=201)
    def create_report(
        request: Request,
        context: Any = Body(..., description="The task's context; the template's input_schema checks it"),
        idempotency_key: Optional[str] = Header(None),
    ) -> Dict[str, Any]:
        # A sync endpoint: FastAPI runs it on a thread, and the engine call releases
        # the GIL, so the event loop is never blocked by the database.
        t: tasker.Tasker = request.app.state.tasker
        created = t.create_task(NAMESPACE, NAME, context=context, idempotency_key=idempotency_key)
        return dict(created)

    @app.get("/reports/{task_id}")
    def get_report(request: Request, task_id: int) -> Dict[str, Any]:
        t: tasker.Tasker = request.app.state.tasker
        task = t.get_task(task_id)
        steps: List[Dict[str, Any]] = [
            {
                "name": s["name"],
                "state": s["state"],
                "attempts": s["attempts"],
                "result": s.get("result"),
                "error": s.get("error"),
            }
            for s in task["steps"]
        ]
        final = next((s["result"] for s in steps if s["name"] == "summarize"), None)
        return {
            "task_id": task["id"],
            "state": task["state"],
            "context": task["context"],
            "steps_done": task["steps_done"],
            "steps_total": task["steps_total"],
            "steps": steps,
            "report": final if task["state"] == "complete" else None,
        }

    @app.get("/healthz")
    def healthz(request: Request) -> Dict[str, Any]:
        t: tasker.Tasker = request.app.state.tasker
        worker: tasker.Worker = request.app.state.worker
        return {"engine": t.ping(), "worker_running": worker.running, "worker": vars(worker.stats)}

    return app


app = create_app()
