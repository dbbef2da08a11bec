"""The ``Tasker`` handle: the engine's operations (docs/api.md) as Python methods."""

from __future__ import annotations

import datetime
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union, cast

from . import _native
from .types import (
    CreatedTask,
    EventPage,
    NewTask,
    Explanation,
    Registered,
    Schedule,
    SignalSent,
    TaskInfo,
    TaskPage,
)

__all__ = ["Tasker", "forward_logs"]


def forward_logs() -> None:
    """Hands the engine's log records to :mod:`logging`, under the ``tasker`` logger
    (``tasker.worker``, ...). The worker calls it after each engine call."""
    for level, target, message in _native.drain_logs(1000):
        name = target.replace("tasker_core::", "tasker.").replace("::", ".")
        logging.getLogger(name).log(logging.getLevelName(level.upper()), message)

log = logging.getLogger("tasker")

# Marks "argument not given" where None is a meaningful value (a null result).
_UNSET: Any = object()

PathLike = Union[str, "os.PathLike[str]"]


def _request(**fields: Any) -> Dict[str, Any]:
    """A request with the fields that were given (None means "not given")."""
    return {k: v for k, v in fields.items() if v is not None}


def _time(value: Union[str, datetime.datetime, None]) -> Optional[str]:
    """An RFC 3339 time for the engine: a string as given, or an aware datetime."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("run_at: a datetime needs a time zone (datetime.timezone.utc, ...)")
    return value.isoformat()


class Tasker:
    """An open handle on a Tasker database.

    Open one with :meth:`Tasker.open`; use it as a context manager or call
    :meth:`close`. A handle is thread-safe, and survives ``fork`` (a forked child's
    first call reopens the database for the child). Every engine call releases the GIL.

    Each method runs the engine operation of the same name (docs/api.md) and returns
    its response as plain Python data; a failure raises the :class:`tasker.TaskerError`
    subclass of its code.
    """

    __slots__ = ("_h", "_subs", "_lock", "_config", "__weakref__")

    def __init__(self, handle: _native.Handle, config_json: Optional[str] = None) -> None:
        """Wraps a native handle; use :meth:`Tasker.open` instead."""
        if not isinstance(handle, _native.Handle):
            raise TypeError("use Tasker.open(...) to open a handle")
        self._h = handle
        self._subs: List[_native.Subscription] = []
        self._lock = threading.Lock()
        self._config = config_json

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    def open(
        cls, config: Union[str, Mapping[str, Any], None] = None, **settings: Any
    ) -> "Tasker":
        """Opens a handle.

        Args:
            config: A database URL (``"sqlite://app.db"``, ``"postgres://..."``), or a
                mapping of settings (docs/configuration.md), or None for the defaults
                (``tasker.yaml`` and ``TASKER_*`` variables still apply).
            **settings: More settings, laid over ``config``
                (``Tasker.open("sqlite://app.db", lease_ms=60000)``).

        Raises:
            InvalidArgumentError: an unknown or bad setting.
            UnavailableError: the database cannot be opened.
        """
        merged: Dict[str, Any] = {}
        if isinstance(config, str):
            merged["database_url"] = config
        elif config is not None:
            merged.update(config)
        merged.update(settings)
        text = _native.to_json(merged) if merged else ""
        return cls(_native.Handle.open(text), text)

    def __reduce__(self) -> Any:
        # Pickling (multiprocessing's spawn and forkserver start methods) hands over the
        # settings; the receiving process opens a handle of its own with them.
        if self._config is None:
            raise TypeError("only a handle made by Tasker.open can be pickled")
        return (Tasker._reopen, (self._config,))

    @staticmethod
    def _reopen(config_json: str) -> "Tasker":
        return Tasker(_native.Handle.open(config_json), config_json)

    def close(self) -> None:
        """Closes the handle and stops its event subscriptions. Idempotent; any later
        call raises :class:`tasker.ClosedError`."""
        with self._lock:
            subs, self._subs = self._subs, []
        for s in subs:
            s.stop()
        self._h.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._h.closed

    def __enter__(self) -> "Tasker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tasker.Tasker {'closed' if self.closed else 'open'}>"

    # -- raw access ----------------------------------------------------------------

    def call(self, op: str, request: Optional[Mapping[str, Any]] = None) -> Any:
        """Runs any operation by name with a request given as a dict; returns the
        response as Python data. The escape hatch under every other method."""
        return self._h.call_obj(op, request)

    def call_json(self, op: str, request: str = "") -> str:
        """Runs an operation with a JSON request text and returns the JSON response
        text, unchanged."""
        return self._h.call(op, request)

    @property
    def native(self) -> _native.Handle:
        """The native handle (used by :class:`tasker.Worker`)."""
        return self._h

    # -- operations ------------------------------------------------------------------

    def ping(self) -> Dict[str, Any]:
        """Checks that the handle works: ``{"ok": True, "version": ...}``."""
        return cast(Dict[str, Any], self._h.call_obj("ping"))

    def register_template(
        self,
        source: Union[Mapping[str, Any], PathLike, None] = None,
        *,
        path: Optional[PathLike] = None,
        yaml: Optional[str] = None,
        template: Optional[Mapping[str, Any]] = None,
        replace: bool = False,
    ) -> Registered:
        """Validates a template and stores it in the registry.

        ``source`` is a dict (the template document) or a file path (a str or a
        ``pathlib.Path``, relative to the working directory); nothing is guessed from
        a string's content. YAML or JSON *text* is given as ``yaml=``. Or name the kind
        with exactly one of ``path=``, ``yaml=``, ``template=``.

        Registering the identical template again changes nothing and says so
        (``registered`` False, ``unchanged`` True); a different template under the same
        key raises :class:`tasker.ConflictError` whose message names what differs,
        unless ``replace=True``.

        Raises:
            InvalidTemplateError: the template is invalid (``details["problem"]``).
            NotFoundError: the file does not exist.
        """
        req = self._template_source(source, path, yaml, template)
        if replace:
            req["replace"] = True
        return cast(Registered, self._h.call_obj("register_template", req))

    def validate_template(
        self,
        source: Union[Mapping[str, Any], PathLike, None] = None,
        *,
        path: Optional[PathLike] = None,
        yaml: Optional[str] = None,
        template: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Validates a template without storing it and returns it resolved
        (``{"valid": True, "template": {...}}``). Sources as for
        :meth:`register_template`."""
        req = self._template_source(source, path, yaml, template)
        return cast(Dict[str, Any], self._h.call_obj("validate_template", req))

    def get_template(
        self, namespace: str, name: str, version: Optional[str] = None
    ) -> Dict[str, Any]:
        """The stored (resolved) template; the highest version when ``version`` is
        None. Raises :class:`tasker.NotFoundError`."""
        req = _request(namespace=namespace, name=name, version=version)
        return cast(Dict[str, Any], self._h.call_obj("get_template", req)["template"])

    @staticmethod
    def _template_source(
        source: Any, path: Any, yaml: Optional[str], template: Any
    ) -> Dict[str, Any]:
        given = [x for x in (source, path, yaml, template) if x is not None]
        if len(given) != 1:
            raise TypeError("give exactly one template source: source, path=, yaml= or template=")
        if source is not None:
            if isinstance(source, Mapping):
                template = source
            elif isinstance(source, os.PathLike):
                path = source
            elif isinstance(source, str):
                if "\n" in source:
                    # A positional string is a path, and no path holds a line break.
                    raise TypeError("a positional template source is a file path; "
                                    "give YAML or JSON text as yaml=...")
                path = source
            else:
                raise TypeError(
                    f"a template source is a dict, a path or YAML text, not {type(source).__name__}"
                )
        if template is not None:
            return {"template": template}
        if yaml is not None:
            return {"yaml": yaml}
        return {"path": os.fspath(path)}

    def create_task(
        self,
        namespace: str,
        name: str,
        version: Optional[str] = None,
        context: Any = _UNSET,
        idempotency_key: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Union[str, datetime.datetime, None] = None,
        delay_ms: Optional[int] = None,
        timeout_s: Optional[int] = None,
    ) -> CreatedTask:
        """Creates a task (one run of a template) with all its steps.

        Args:
            namespace, name: The template's key.
            version: The template version; None takes the highest registered one.
            context: The task's input (any JSON data; default ``{}``), handed to every
                handler and checked against the template's ``input_schema``.
            idempotency_key: With a key already used for this template's namespace and
                name, the existing task is returned (``created`` is False).
            priority: Added to every step's priority.
            run_at: A delayed task: its steps first run at this time (RFC 3339 text or
                an aware ``datetime``) on the engine's clock. Not with ``delay_ms``.
            delay_ms: The same, as a delay from now.
            timeout_s: The task timeout, counted from when the task is due: when it
                passes the task ends in ``error`` and running handlers get the stop
                signal (``step.cancelled`` is set; the engine's reason is
                ``task_timeout``).

        Returns:
            ``{"task_id", "created", "state"}``.

        Raises:
            NotFoundError: no such template.
            SchemaViolationError: the context does not satisfy ``input_schema``.
            TooLargeError: the context exceeds ``max_payload_bytes``.
        """
        req = _request(
            namespace=namespace,
            name=name,
            version=version,
            idempotency_key=idempotency_key,
            priority=priority,
            run_at=_time(run_at),
            delay_ms=delay_ms,
            timeout_s=timeout_s,
        )
        if context is not _UNSET:
            req["context"] = context
        return cast(CreatedTask, self._h.call_obj("create_task", req))

    def create_tasks(self, tasks: Iterable[Union[NewTask, Mapping[str, Any]]]) -> List[CreatedTask]:
        """Creates many tasks in one transaction: every one of them, or none.

        Args:
            tasks: One mapping per task, with :meth:`create_task`'s arguments as keys
                (``namespace`` and ``name``; ``version``, ``context``,
                ``idempotency_key`` and ``priority`` as needed). Each is checked and
                created as ``create_task`` would, in order: a key that made a task
                before, or that an earlier item of the batch has, returns that task
                (``created`` is False). At most 10000.

        Returns:
            One ``{"task_id", "created", "state"}`` per task, in order.

        Raises:
            The errors of :meth:`create_task`, for the first item that has one: its
            message starts with ``tasks[i]`` and ``details["index"]`` is ``i``. Nothing
            of the batch is stored.
        """
        items = [dict(t) for t in tasks]
        for item in items:
            if isinstance(item.get("run_at"), datetime.datetime):
                item["run_at"] = _time(item["run_at"])
        return cast(List[CreatedTask], self._h.call_obj("create_tasks", {"tasks": items})["tasks"])

    # -- Schedules (docs/scheduling.md) --

    def create_schedule(
        self,
        name: str,
        namespace: str,
        template: str,
        cron: str,
        timezone: str = "UTC",
        version: Optional[str] = None,
        context: Any = _UNSET,
        catch_up: str = "skip",
        catch_up_limit: Optional[int] = None,
        paused: bool = False,
    ) -> Schedule:
        """Creates a cron schedule: at each tick of ``cron`` in ``timezone`` a task of
        the template ``namespace``/``template`` is created with ``context`` (exactly
        one per tick, whatever the number of processes).

        Args:
            catch_up: Ticks missed while no process ran: ``"skip"`` fires only the
                latest, ``"all"`` fires each (at most ``catch_up_limit``, default 100).

        Raises:
            InvalidArgumentError: a bad cron pattern, time zone or catch-up policy.
            NotFoundError: no such template. ConflictError: the name is taken.
        """
        tpl = _request(namespace=namespace, name=template, version=version)
        req: Dict[str, Any] = {
            "name": name,
            "template": tpl,
            "cron": cron,
            "timezone": timezone,
            "catch_up": _request(policy=catch_up, limit=catch_up_limit),
            "paused": paused,
        }
        if context is not _UNSET:
            req["context"] = context
        return cast(Schedule, self._h.call_obj("create_schedule", req)["schedule"])

    def list_schedules(self) -> List[Schedule]:
        """Every schedule, by name."""
        return cast(List[Schedule], self._h.call_obj("list_schedules", {})["schedules"])

    def get_schedule(self, name: str) -> Schedule:
        """One schedule. Raises :class:`tasker.NotFoundError`."""
        return cast(Schedule, self._h.call_obj("get_schedule", {"name": name})["schedule"])

    def pause_schedule(self, name: str) -> Schedule:
        """Stops a schedule from firing."""
        return cast(Schedule, self._h.call_obj("pause_schedule", {"name": name})["schedule"])

    def resume_schedule(self, name: str) -> Schedule:
        """Lets a paused schedule fire again, from its next tick after now."""
        return cast(Schedule, self._h.call_obj("resume_schedule", {"name": name})["schedule"])

    def delete_schedule(self, name: str) -> None:
        """Deletes a schedule (the tasks it created stay)."""
        self._h.call_obj("delete_schedule", {"name": name})

    def get_task(self, task_id: int) -> TaskInfo:
        """A task with its context and every step (state, attempts, result, latest
        error document). Raises :class:`tasker.NotFoundError`."""
        return cast(TaskInfo, self._h.call_obj("get_task", {"task_id": task_id})["task"])

    def list_tasks(
        self,
        state: Optional[str] = None,
        namespace: Optional[str] = None,
        name: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[int] = None,
    ) -> TaskPage:
        """A page of tasks, newest first, optionally filtered. Pass the returned
        ``next_cursor`` as ``cursor`` for the next page."""
        req = _request(state=state, namespace=namespace, name=name, limit=limit, cursor=cursor)
        return cast(TaskPage, self._h.call_obj("list_tasks", req))

    def explain_task(self, task_id: int) -> Explanation:
        """Says, for people, why each unfinished step of a task is not done yet."""
        return cast(Explanation, self._h.call_obj("explain_task", {"task_id": task_id}))

    def cancel_task(self, task_id: int, reason: Optional[str] = None) -> Dict[str, Any]:
        """Cancels a task: every unfinished step becomes ``cancelled``. Returns
        ``{"task_id", "state", "changed"}`` (``changed`` is False when it already was).

        Raises:
            InvalidStateError: the task is complete.
            NotFoundError: no such task.
        """
        return cast(
            Dict[str, Any],
            self._h.call_obj("cancel_task", _request(task_id=task_id, reason=reason)),
        )

    def retry_step(
        self,
        step_id: Optional[int] = None,
        *,
        task_id: Optional[int] = None,
        step_name: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Puts a step in ``error`` back to ``ready`` with a fresh attempt budget.
        Name it by ``step_id``, or by ``task_id`` and ``step_name``.

        Raises:
            InvalidStateError: the step is not in ``error`` (or the task is cancelled).
        """
        req = _request(step_id=step_id, task_id=task_id, step_name=step_name)
        return cast(Dict[str, Any], self._h.call_obj("retry_step", req))

    def resolve_step(
        self,
        step_id: Optional[int] = None,
        *,
        task_id: Optional[int] = None,
        step_name: Optional[str] = None,
        result: Any = _UNSET,
        reason: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Marks an unfinished step done by hand (``resolved_manually``), optionally with
        a ``result`` its children receive. Name it as for :meth:`retry_step`.

        Raises:
            InvalidStateError: the step already finished.
        """
        req = _request(step_id=step_id, task_id=task_id, step_name=step_name, reason=reason)
        if result is not _UNSET:
            req["result"] = result
        return cast(Dict[str, Any], self._h.call_obj("resolve_step", req))

    def send_signal(self, task_id: int, name: str, payload: Any = None) -> SignalSent:
        """Sends signal ``name`` to a task: every step of it that waits for the signal
        (``wait_for`` in the template) and is ``waiting`` completes with ``payload`` as
        its result; a step not waiting yet takes the signal when it gets there.

        Returns ``{task_id, signal, steps: [{step_id, step_name, state}], task_state}``.

        Raises:
            NotFoundError: no such task, or no step of it waits for ``name``.
            InvalidStateError: the task is complete or cancelled.
            ConflictError: this signal was already sent to the task.
        """
        req = {"task_id": task_id, "name": name, "payload": payload}
        return cast(SignalSent, self._h.call_obj("send_signal", req))

    def stats(self, window_ms: Optional[int] = None) -> Dict[str, Any]:
        """Counts by state, throughput in the window, the slowest steps and tasks, and
        ``last_event_id``. Reads whole tables: for dashboards, not per task."""
        return cast(Dict[str, Any], self._h.call_obj("stats", _request(window_ms=window_ms)))

    def events(
        self,
        since: int = 0,
        *,
        limit: Optional[int] = None,
        wait_ms: Optional[int] = None,
        task_id: Optional[int] = None,
        types: Optional[List[str]] = None,
    ) -> EventPage:
        """Events after cursor ``since``, oldest first (``{"events", "next_cursor"}``).
        With ``wait_ms``, waits that long for new events when there are none.

        Raises:
            InvalidArgumentError: an unknown event name in ``types``.
        """
        req = _request(since=since, limit=limit, wait_ms=wait_ms, task_id=task_id, types=types)
        return cast(EventPage, self._h.call_obj("events", req))

    def on(
        self,
        event: str,
        callback: Callable[[Dict[str, Any]], Any],
        *,
        since: Optional[int] = None,
    ) -> Callable[[], None]:
        """Calls ``callback(event_dict)`` on a background thread for every new event
        named ``event`` (``"task.completed"``, ``"step.failed"``, ...; ``"*"`` for all).

        Events come from the durable log, so events committed by other processes are
        delivered too. ``since`` is the cursor to start after; None starts from now.
        A callback that raises is logged (logger ``tasker``) and delivery goes on.

        Returns:
            A function that unsubscribes (idempotent). :meth:`close` unsubscribes all.

        Raises:
            InvalidArgumentError: ``event`` is not an event name.
        """
        types = None if event == "*" else [event]
        if since is None:
            since = int(self.stats()["last_event_id"])
        if types is not None:
            # Checks the name now rather than on the delivery thread (from the cursor,
            # so the check reads at most the events the subscription will read).
            self._h.call_obj("events", {"since": since, "limit": 1, "types": types})

        def deliver(ev: Dict[str, Any]) -> None:
            try:
                callback(ev)
            except Exception:
                log.exception("event callback %r failed on %s", callback, ev.get("event"))

        sub = self._h.subscribe(since, types, deliver)
        with self._lock:
            self._subs.append(sub)

        def unsubscribe() -> None:
            sub.stop()
            with self._lock:
                if sub in self._subs:
                    self._subs.remove(sub)

        return unsubscribe

    # -- the worker protocol (what tasker.Worker uses; for custom workers) ------------

    def claim(
        self,
        handlers: List[str],
        *,
        limit: Optional[int] = None,
        wait_ms: Optional[int] = None,
        worker_id: Optional[str] = None,
        lease_ms: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Claims up to ``limit`` ready steps of these handlers (``{"steps": [...]}``,
        each with its ``claim_token``, context, config and parent results)."""
        req = _request(
            handlers=handlers, limit=limit, wait_ms=wait_ms, worker_id=worker_id, lease_ms=lease_ms
        )
        return cast(Dict[str, Any], self._h.call_obj("claim", req))

    def heartbeat(
        self, step_id: int, claim_token: str, lease_ms: Optional[int] = None
    ) -> Dict[str, Any]:
        """Renews a claimed step's lease. Raises :class:`tasker.LeaseLostError` when
        the claim no longer holds the step."""
        req = _request(step_id=step_id, claim_token=claim_token, lease_ms=lease_ms)
        return cast(Dict[str, Any], self._h.call_obj("heartbeat", req))

    def complete_step(self, step_id: int, claim_token: str, result: Any = None) -> Dict[str, Any]:
        """Records a claimed step's result. Raises :class:`tasker.LeaseLostError` when
        the claim no longer holds the step (nothing is recorded)."""
        req = {"step_id": step_id, "claim_token": claim_token, "result": result}
        return cast(Dict[str, Any], self._h.call_obj("complete_step", req))

    def complete_steps(
        self, items: List[Mapping[str, Any]], claim: Optional[Mapping[str, Any]] = None
    ) -> Dict[str, Any]:
        """Records many results in one transaction; with ``claim`` the same transaction
        claims the next steps. Each item is ``{step_id, claim_token, result}``."""
        req: Dict[str, Any] = {"items": items}
        if claim is not None:
            req["claim"] = claim
        return cast(Dict[str, Any], self._h.call_obj("complete_steps", req))

    def fail_step(self, step_id: int, claim_token: str, error: Mapping[str, Any]) -> Dict[str, Any]:
        """Reports a failed attempt with an error document (``message`` required;
        ``kind``, ``retryable``, ``retry_after_ms`` and anything else are kept)."""
        req = {"step_id": step_id, "claim_token": claim_token, "error": error}
        return cast(Dict[str, Any], self._h.call_obj("fail_step", req))

    def release_step(
        self,
        step_id: int,
        claim_token: str,
        *,
        delay_ms: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Hands a claimed step back unrun; its attempt does not count."""
        req = _request(step_id=step_id, claim_token=claim_token, delay_ms=delay_ms, reason=reason)
        return cast(Dict[str, Any], self._h.call_obj("release_step", req))

    def sweep(self) -> Dict[str, Any]:
        """Takes back expired leases now (``{"expired": n}``)."""
        return cast(Dict[str, Any], self._h.call_obj("sweep"))

    def migrate(self) -> Dict[str, Any]:
        """Applies pending database migrations (``{"applied": n}``)."""
        return cast(Dict[str, Any], self._h.call_obj("migrate"))
