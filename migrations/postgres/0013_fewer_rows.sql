-- Fewer rows, index entries and checks per step (issue 18), with the same event stream.
--
-- 1. A task's state changes become HOT updates. A non-HOT update writes a new entry
--    into every index of the table; an update is HOT (no index entry at all) when it
--    changes no indexed column, predicate columns included, and the new version fits on
--    the row's page. `state` was indexed twice (`tasker_tasks_state`, and the predicate
--    of `tasker_tasks_deadline`), so each of a task's two or three state changes wrote
--    three index entries. Now:
--    - `tasker_tasks_state` is gone. Nothing on the hot path read it; `list_tasks` by
--      state walks the primary key newest first and filters (see docs/operations.md),
--      and the health counts read the whole table either way.
--    - `tasker_tasks_deadline` covers every task with a deadline. The sweep filters
--      unfinished ones, and clears `deadline_at` of completed and cancelled tasks whose
--      deadline passed (they can never run again), so the range it reads stays as
--      small as before. An errored task keeps its deadline: a retry before the deadline
--      still runs under it, as before.
--    - Pages keep 30% free for the new versions (fillfactor 70).
--
-- 2. A task transition is stored in the row of one of its own task's step transitions
--    of the same call, when it is next to it among that task's transitions: a task's
--    `created` with its first step's, its `claimed` with the first claimed step's, its
--    `finalized` with the last finished step's. The row then holds two events: ids
--    `id` and `id + 1`, in the order `task_first` says. Event ids step by 2 from now on
--    (so `id + 1` is never another row's), every event keeps its own id, and each
--    task's events keep their order. Only events of other tasks written by the same
--    call may come in another order than before (they never had an order of cause).
--    `tasker_events` and `tasker_last_event_id` return events as before, so readers of
--    the previous version read the same stream (their column lists still match).

-- 3. A step's reference to its task is no foreign key any more: the check ran a query and
--    took a row lock on the task for every step inserted (a tenth of a creation's server
--    time). Steps are only inserted by the engine, into a task it creates in the same
--    transaction or has just read (fan-out instances), and no task is ever deleted.
ALTER TABLE tasker_steps DROP CONSTRAINT tasker_steps_task_id_fkey;

DROP INDEX tasker_tasks_state;
DROP INDEX tasker_tasks_deadline;
CREATE INDEX tasker_tasks_deadline ON tasker_tasks (deadline_at) WHERE deadline_at IS NOT NULL;
ALTER TABLE tasker_tasks SET (fillfactor = 70);

ALTER TABLE tasker_transitions
    ADD COLUMN task_from   TEXT,
    ADD COLUMN task_to     TEXT,
    ADD COLUMN task_reason TEXT,
    ADD COLUMN task_first  BOOLEAN;
ALTER SEQUENCE tasker_transitions_id_seq INCREMENT BY 2;

-- As 0008's: in array order under the ordering lock, with the NOTIFY only when a step
-- turns ready. A task row (no step, attempt, worker or details) whose previous row
-- among its task's rows is a step row goes into that row (after it); otherwise, when
-- its next row of the task is a step row that no later task row takes, into that one
-- (before it). A step row carries at most one task row.
CREATE OR REPLACE FUNCTION tasker_insert_transitions(p_trs tasker_tr[], p_now BIGINT, p_lock_key BIGINT, p_channel TEXT)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    IF coalesce(cardinality(p_trs), 0) = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(p_lock_key);
    IF p_channel IS NOT NULL
       AND EXISTS (SELECT 1 FROM unnest(p_trs) AS u WHERE u.to_state = 'ready' AND u.step_id IS NOT NULL) THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
    IF NOT (SELECT bool_or(u.step_id IS NULL) AND bool_or(u.step_id IS NOT NULL)
            FROM unnest(p_trs) AS u) THEN
        -- Only step rows (most calls of a workflow's middle steps) or only task rows:
        -- nothing to combine.
        INSERT INTO tasker_transitions
            (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
        SELECT u.task_id, u.step_id, u.step_name, u.from_state, u.to_state, p_now, u.attempt,
               u.worker, u.reason, u.details
        FROM unnest(p_trs) WITH ORDINALITY AS u(task_id, step_id, step_name, from_state, to_state,
                                                attempt, worker, reason, details, n)
        ORDER BY u.n;
        RETURN;
    END IF;
    INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details,
         task_from, task_to, task_reason, task_first)
    SELECT m.task_id, m.step_id, m.step_name, m.from_state, m.to_state, p_now, m.attempt,
           m.worker, m.reason, m.details,
           CASE WHEN m.takes_after THEN m.next_from WHEN m.takes_before THEN m.prev_from END,
           CASE WHEN m.takes_after THEN m.next_to WHEN m.takes_before THEN m.prev_to END,
           CASE WHEN m.takes_after THEN m.next_reason WHEN m.takes_before THEN m.prev_reason END,
           CASE WHEN m.takes_after THEN false WHEN m.takes_before THEN true END
    FROM (
        SELECT w.*,
               -- A step row takes the task row right after it, else the one right before
               -- it when that one has no step row before it and this row is not taken.
               w.is_s AND coalesce(w.next_is_t, false) AS takes_after,
               w.is_s AND NOT coalesce(w.next_is_t, false) AND coalesce(w.prev_is_t, false)
                   AND NOT coalesce(w.prev2_is_s, false) AS takes_before,
               -- A task row goes into a step row (it is not inserted by itself).
               w.is_t AND (coalesce(w.prev_is_s, false)
                           OR (coalesce(w.next_is_s, false) AND NOT coalesce(w.next2_is_t, false)))
                   AS merged
        FROM (
            SELECT c.*,
                   lag(c.is_s) OVER t AS prev_is_s, lag(c.is_t) OVER t AS prev_is_t,
                   lag(c.is_s, 2) OVER t AS prev2_is_s,
                   lead(c.is_s) OVER t AS next_is_s, lead(c.is_t) OVER t AS next_is_t,
                   lead(c.is_t, 2) OVER t AS next2_is_t,
                   lag(c.from_state) OVER t AS prev_from, lag(c.to_state) OVER t AS prev_to,
                   lag(c.reason) OVER t AS prev_reason,
                   lead(c.from_state) OVER t AS next_from, lead(c.to_state) OVER t AS next_to,
                   lead(c.reason) OVER t AS next_reason
            FROM (
                SELECT u.*, u.step_id IS NOT NULL AS is_s,
                       u.step_id IS NULL AND u.step_name IS NULL AND u.attempt IS NULL
                           AND u.worker IS NULL AND u.details IS NULL AS is_t
                FROM unnest(p_trs) WITH ORDINALITY AS u(task_id, step_id, step_name, from_state,
                                                        to_state, attempt, worker, reason,
                                                        details, n)) c
            WINDOW t AS (PARTITION BY c.task_id ORDER BY c.n)) w) m
    WHERE NOT m.merged
    ORDER BY m.n;
END
$$;

-- The events of transition rows: one, or two for a row that holds a task transition.
CREATE FUNCTION tasker_row_events(t tasker_transitions)
RETURNS TABLE (id BIGINT, task_id BIGINT, step_id BIGINT, step_name TEXT, from_state TEXT,
               to_state TEXT, at BIGINT, attempt BIGINT, worker TEXT, reason TEXT, details TEXT)
LANGUAGE sql IMMUTABLE
AS $$
    SELECT e.id, e.task_id, e.step_id, e.step_name, e.from_state, e.to_state, e.at, e.attempt,
           e.worker, e.reason, e.details
    FROM (VALUES
        (CASE WHEN t.task_first THEN t.id + 1 ELSE t.id END, t.task_id, t.step_id, t.step_name,
         t.from_state, t.to_state, t.at, t.attempt, t.worker, t.reason, t.details, true),
        (CASE WHEN t.task_first THEN t.id ELSE t.id + 1 END, t.task_id, NULL::BIGINT, NULL::TEXT,
         t.task_from, t.task_to, t.at, NULL::BIGINT, NULL::TEXT, t.task_reason, NULL::TEXT,
         t.task_to IS NOT NULL))
        AS e(id, task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason,
             details, present)
    WHERE e.present
$$;

-- As 0006's, over events: those after `p_since` (of task `p_task` when given), in id
-- order, at most `p_limit`, none of a row past the horizon. A row with id `p_since`
-- may still hold the event `p_since + 1`.
DROP FUNCTION tasker_events(BIGINT, BIGINT, BIGINT, BIGINT);
CREATE FUNCTION tasker_events(p_since BIGINT, p_task BIGINT, p_limit BIGINT, p_lock_key BIGINT)
RETURNS TABLE (id BIGINT, task_id BIGINT, step_id BIGINT, step_name TEXT, from_state TEXT,
               to_state TEXT, at BIGINT, attempt BIGINT, worker TEXT, reason TEXT, details TEXT)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_h BIGINT := tasker_event_horizon(p_lock_key);
BEGIN
    RETURN QUERY
        SELECT e.* FROM (
            SELECT t FROM tasker_transitions t
            WHERE t.id >= p_since AND t.id <= v_h AND (p_task IS NULL OR t.task_id = p_task)
            ORDER BY t.id
            LIMIT p_limit + 1) r
        CROSS JOIN LATERAL tasker_row_events(r.t) e
        WHERE e.id > p_since
        ORDER BY e.id
        LIMIT p_limit;
END
$$;

CREATE OR REPLACE FUNCTION tasker_last_event_id(p_lock_key BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_h BIGINT := tasker_event_horizon(p_lock_key);
BEGIN
    RETURN coalesce((SELECT t.id + CASE WHEN t.task_to IS NULL THEN 0 ELSE 1 END
                     FROM tasker_transitions t WHERE t.id <= v_h
                     ORDER BY t.id DESC LIMIT 1), 0);
END
$$;
