-- Analytics in SQL, where it pays: views and functions over the tables, never used on the
-- claim/complete hot path. `stats` reads everything through tasker_stats() in one round
-- trip (instead of one query per figure); operators and dashboards can query the same
-- views from psql (`SET search_path TO tasker;`). Functions pin the schema they were
-- created in (SET search_path FROM CURRENT), so they work from any session.
-- Times are milliseconds since the Unix epoch, as in every table.

-- System health: how many tasks and steps are in each state.
CREATE VIEW tasker_health AS
    SELECT 'task'::text AS kind, state, count(*)::bigint AS n FROM tasker_tasks GROUP BY state
    UNION ALL
    SELECT 'step'::text, state, count(*)::bigint FROM tasker_steps GROUP BY state;

-- How long each completed step took, from its first claim to its completion (retries
-- included).
CREATE VIEW tasker_step_durations AS
    SELECT task_id, id AS step_id, name AS step_name, handler,
           finished_at - first_started_at AS duration_ms, finished_at
    FROM tasker_steps
    WHERE state = 'complete' AND first_started_at IS NOT NULL;

-- How long each completed task took, from its first claim to its completion.
CREATE VIEW tasker_task_durations AS
    SELECT id AS task_id, namespace, name, version,
           finished_at - started_at AS duration_ms, finished_at
    FROM tasker_tasks
    WHERE state = 'complete' AND started_at IS NOT NULL;

-- What finished since `since_ms`, by kind (task/step) and final state.
CREATE FUNCTION tasker_throughput(since_ms bigint)
RETURNS TABLE (kind text, state text, n bigint)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT 'step'::text, s.state, count(*)::bigint
    FROM tasker_steps s WHERE s.finished_at >= since_ms GROUP BY s.state
    UNION ALL
    SELECT 'task'::text, t.state, count(*)::bigint
    FROM tasker_tasks t WHERE t.finished_at >= since_ms GROUP BY t.state
$$;

-- Dependency level of every step of a task: 0 for a step without parents, otherwise one
-- more than its deepest parent (the longest path from a root). UNION (not UNION ALL)
-- keeps each (step, level) pair once, so a dense DAG costs steps x depth, not paths.
CREATE FUNCTION tasker_dependency_levels(p_task_id bigint)
RETURNS TABLE (step_id bigint, step_name text, level bigint)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    WITH RECURSIVE walk (id, level) AS (
        SELECT s.id, 0::bigint
        FROM tasker_steps s
        WHERE s.task_id = p_task_id
          AND NOT EXISTS (SELECT 1 FROM tasker_edges e WHERE e.child_id = s.id)
        UNION
        SELECT e.child_id, w.level + 1
        FROM walk w JOIN tasker_edges e ON e.parent_id = w.id
    )
    SELECT s.id, s.name, max(w.level)::bigint
    FROM walk w JOIN tasker_steps s ON s.id = w.id
    GROUP BY s.id, s.name
    ORDER BY s.id
$$;

-- Readiness explanation: every unfinished step of a task with the parents it still waits
-- for (those neither complete nor resolved by an operator).
CREATE FUNCTION tasker_step_waiting_on(p_task_id bigint)
RETURNS TABLE (step_id bigint, step_name text, state text, ready_at bigint, waiting_on text[])
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT s.id, s.name, s.state, s.ready_at,
           COALESCE(array_agg(p.name ORDER BY p.id)
                        FILTER (WHERE p.state NOT IN ('complete', 'resolved_manually')),
                    '{}')
    FROM tasker_steps s
    LEFT JOIN tasker_edges e ON e.child_id = s.id
    LEFT JOIN tasker_steps p ON p.id = e.parent_id
    WHERE s.task_id = p_task_id AND s.state NOT IN ('complete', 'resolved_manually')
    GROUP BY s.id, s.name, s.state, s.ready_at
    ORDER BY s.id
$$;

-- Everything `stats` reports, as one JSON document: counts by state, the age of the
-- oldest claimable step, throughput over the window, the ten slowest steps and tasks,
-- and the newest event id.
CREATE FUNCTION tasker_stats(now_ms bigint, window_ms bigint)
RETURNS json
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT json_build_object(
        'tasks', COALESCE((SELECT json_object_agg(h.state, h.n) FROM tasker_health h
                           WHERE h.kind = 'task'), '{}'::json),
        'steps', COALESCE((SELECT json_object_agg(h.state, h.n) FROM tasker_health h
                           WHERE h.kind = 'step'), '{}'::json),
        'oldest_ready_at', (SELECT min(ready_at) FROM tasker_steps
                            WHERE state = 'ready' AND ready_at <= now_ms),
        'finished', COALESCE((SELECT json_agg(json_build_object('kind', f.kind,
                                                                'state', f.state, 'n', f.n))
                              FROM tasker_throughput(now_ms - window_ms) f), '[]'::json),
        'slowest_steps', COALESCE((SELECT json_agg(d) FROM (
                                       SELECT task_id, step_id, step_name, handler, duration_ms
                                       FROM tasker_step_durations
                                       ORDER BY duration_ms DESC, step_id LIMIT 10) d),
                                  '[]'::json),
        'slowest_tasks', COALESCE((SELECT json_agg(d) FROM (
                                       SELECT task_id, namespace, name, duration_ms
                                       FROM tasker_task_durations
                                       ORDER BY duration_ms DESC, task_id LIMIT 10) d),
                                  '[]'::json),
        'last_event_id', (SELECT COALESCE(max(id), 0) FROM tasker_transitions)
    )
$$;
