"""The shapes of the engine's responses, as ``TypedDict`` s.

Responses are plain dicts (parsed from the engine's JSON in native code); these types
document their fields for readers and type checkers. docs/api.md is the reference for
every field. Fields marked ``NotRequired`` may be absent.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

from . import _native

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired, TypedDict

__all__ = [
    "Handler",
    "Step",
    "WorkerStats",
    "CreatedTask",
    "NewTask",
    "Schedule",
    "ScheduleTemplate",
    "CatchUp",
    "Event",
    "EventPage",
    "Explanation",
    "ExplainedStep",
    "Registered",
    "StepInfo",
    "TaskInfo",
    "TaskPage",
    "TaskSummary",
]


class Registered(TypedDict):
    """``register_template``: the template's key and whether the registry changed."""

    namespace: str
    name: str
    version: str
    steps: int
    registered: bool
    #: True when the identical template was already registered (nothing changed).
    unchanged: bool
    #: Says that nothing changed, when ``unchanged``.
    note: NotRequired[str]


class SignalledStep(TypedDict):
    """A step that waits for the signal ``send_signal`` sent, after the call."""

    step_id: int
    step_name: str
    state: str


class SignalSent(TypedDict):
    """``send_signal``: every step of the task that waits for the signal (``complete``
    when it took it now) and the task's state."""

    task_id: int
    signal: str
    steps: List[SignalledStep]
    task_state: str


class CreatedTask(TypedDict):
    """``create_task``: ``created`` is False when an existing task with the same
    idempotency key was returned; ``state`` is that task's current state."""

    task_id: int
    created: bool
    state: str


class NewTask(TypedDict):
    """One item of ``create_tasks``: :meth:`tasker.Tasker.create_task`'s arguments."""

    namespace: str
    name: str
    version: NotRequired[str]
    context: NotRequired[Any]
    idempotency_key: NotRequired[str]
    priority: NotRequired[int]
    run_at: NotRequired[str]
    delay_ms: NotRequired[int]
    timeout_s: NotRequired[int]


class ScheduleTemplate(TypedDict):
    """The template a schedule runs (``version`` None: the highest at each tick)."""

    namespace: str
    name: str
    version: Optional[str]


class CatchUp(TypedDict):
    """What happens to missed ticks: ``policy`` ``skip`` or ``all`` (with ``limit``)."""

    policy: str
    limit: NotRequired[int]


class Schedule(TypedDict):
    """A cron schedule (``create_schedule``, ``get_schedule``, ...)."""

    name: str
    template: ScheduleTemplate
    cron: str
    timezone: str
    context: Any
    catch_up: CatchUp
    paused: bool
    next_fire_at: Optional[str]
    last_tick_at: Optional[str]
    last_task_id: Optional[int]
    created_at: str
    updated_at: str


class TaskSummary(TypedDict):
    """A task without its context and steps (``list_tasks`` items)."""

    id: int
    namespace: str
    name: str
    version: str
    state: str
    priority: int
    idempotency_key: Optional[str]
    steps_total: int
    steps_done: int
    steps_error: int
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    duration_ms: Optional[int]


class StepInfo(TypedDict):
    """One step of ``get_task``: state, attempts, result and the latest error document."""

    id: int
    name: str
    handler: str
    state: str
    depends_on: List[str]
    pending_parents: int
    level: int
    attempts: int
    max_attempts: int
    priority: int
    config: Any
    result: Any
    error: Optional[Dict[str, Any]]
    worker: Optional[str]
    ready_at: Optional[str]
    lease_expires_at: Optional[str]
    wait_until: NotRequired[str]
    first_started_at: Optional[str]
    started_at: Optional[str]
    finished_at: Optional[str]
    duration_ms: Optional[int]


class TaskInfo(TaskSummary):
    """``get_task``: the summary fields plus the context and every step; a delayed
    task has ``run_at`` (and ``delayed`` while it waits), a task with a timeout has
    ``timeout_s`` and ``deadline_at``."""

    context: Any
    steps: List[StepInfo]
    run_at: NotRequired[str]
    delayed: NotRequired[bool]
    timeout_s: NotRequired[int]
    deadline_at: NotRequired[str]


class TaskPage(TypedDict):
    """``list_tasks``: a page of tasks, newest first; pass ``next_cursor`` as
    ``cursor`` for the next page (None when this page was not full)."""

    tasks: List[TaskSummary]
    next_cursor: Optional[int]


class LimitUse(TypedDict):
    """One limit of a step and its use now (``explain_task``): a concurrency limit
    (``running`` of ``max``) or a rate limit (``running`` starts in the last ``per_ms``
    of ``max``; ``next_free_at`` when the full window admits its next start)."""

    key: str
    running: int
    max: int
    per_ms: NotRequired[int]
    next_free_at: NotRequired[str]


class StepLimits(TypedDict, total=False):
    """A step's concurrency and rate limits (docs/scheduling.md)."""

    concurrency: LimitUse
    rate: LimitUse


class ExplainedStep(TypedDict):
    """Why one unfinished step is not done (``explain_task``). ``status`` is
    ``held_by_limit`` for a ready step its concurrency or rate limit holds back."""

    name: str
    state: str
    level: int
    status: str
    reason: str
    waiting_on: NotRequired[List[str]]
    blocked_by: NotRequired[List[str]]
    limits: NotRequired[StepLimits]


class Explanation(TypedDict):
    """``explain_task``: the task's state and one entry per unfinished step."""

    task_id: int
    state: str
    steps: List[ExplainedStep]


class Event(TypedDict):
    """One event of the durable log; ``id`` is the cursor."""

    id: int
    event: str
    task_id: int
    step_id: NotRequired[int]
    step_name: NotRequired[str]
    # "from" is a keyword in Python: read it as event["from"].
    to: str
    at: str
    attempt: NotRequired[int]
    worker: NotRequired[str]
    reason: str
    details: NotRequired[Dict[str, Any]]


class EventPage(TypedDict):
    """``events``: events after the cursor, oldest first; pass ``next_cursor`` as
    ``since`` next time."""

    events: List[Event]
    next_cursor: int


@dataclass
class WorkerStats:
    """What a worker did so far.

    Attributes:
        completed: Steps whose result was recorded.
        failed: Failed attempts recorded (each may be retried by the engine).
        lost: Outcomes the engine refused because the step was no longer held (taken
            back, cancelled or resolved meanwhile).
        released: Claimed steps handed back unrun while stopping.
    """

    completed: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0


#: The step object a handler receives (see ``tasker._native.Step``).
Step = _native.Step

#: A handler: ``def h(step) -> result`` or ``async def h(step) -> result``; the result
#: must be JSON-serialisable (dict, list, str, int, float, bool, None).
Handler = Union[Callable[[Step], Any], Callable[[Step], Awaitable[Any]]]
