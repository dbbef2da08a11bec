-- Scheduling (issue 19): delayed tasks, task timeouts and cron schedules.
--
-- A delayed task keeps its root steps `pending` until it is due, so the claim index
-- holds nothing of it; `due_at` is its due time until the engine promotes it (root
-- steps -> `ready`), then NULL. `run_at` keeps the due time for people to read.
ALTER TABLE tasker_tasks ADD COLUMN run_at INTEGER;
ALTER TABLE tasker_tasks ADD COLUMN due_at INTEGER;
-- The task timeout: `deadline_at` = due time + `timeout_ms`; the sweep ends the task
-- in `error` when it passes while the task is unfinished.
ALTER TABLE tasker_tasks ADD COLUMN timeout_ms INTEGER;
ALTER TABLE tasker_tasks ADD COLUMN deadline_at INTEGER;
-- Promotion: a range scan over tasks still waiting for their due time, only.
CREATE INDEX tasker_tasks_due ON tasker_tasks (due_at) WHERE due_at IS NOT NULL;
-- Timeouts: a range scan over unfinished tasks that have a deadline, only.
CREATE INDEX tasker_tasks_deadline ON tasker_tasks (deadline_at)
    WHERE deadline_at IS NOT NULL AND state IN ('pending', 'running');

-- Cron schedules: each tick creates one task (its idempotency key names the tick), and
-- `next_fire_at` only moves by a conditional update, so every tick fires once.
CREATE TABLE tasker_schedules (
    name           TEXT    PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    template_name  TEXT    NOT NULL,
    version        TEXT,                     -- NULL: the highest version at each tick
    cron           TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    context        TEXT    NOT NULL,
    catch_up       TEXT    NOT NULL,         -- 'skip' or 'all'
    catch_up_limit INTEGER NOT NULL,
    paused         INTEGER NOT NULL DEFAULT 0,
    next_fire_at   INTEGER NOT NULL,         -- the next tick not yet fired
    last_tick_at   INTEGER,                  -- the last tick fired
    last_task_id   INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tasker_schedules_due ON tasker_schedules (next_fire_at) WHERE paused = 0;
