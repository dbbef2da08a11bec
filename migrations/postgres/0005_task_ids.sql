-- A task id chosen by the caller, so a creation without an idempotency key is one round
-- trip too and can be repeated safely after a lost connection: the engine reserves ids
-- from `tasker_tasks_id_seq` in small blocks (`tasker_reserve_task_ids`) and passes one
-- per creation. A repeat of a creation that had committed finds its own id taken and
-- returns it, so a lost answer never makes a second task. Reserved ids are unique, as
-- every `nextval` is, but no longer follow creation order across processes: within a
-- process they still do.
--
-- 0004's `tasker_create_task` (without the id) stays, for workers of the version before
-- this one during a rolling upgrade; it now takes its id from the sequence and calls
-- this one, so there is one body.

-- `p_n` fresh task ids, in ascending order.
CREATE FUNCTION tasker_reserve_task_ids(p_n INT)
RETURNS SETOF BIGINT
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT nextval('tasker_tasks_id_seq') FROM generate_series(1, p_n)
$$;

-- Creates task `p_task_id` (a reserved id) with its steps and edges, as 0004's did;
-- returns the id, also when a repeat finds this very task committed, or NULL when a
-- task with the same idempotency key exists (the caller reads that one).
CREATE FUNCTION tasker_create_task(
    p_task_id BIGINT, p_namespace TEXT, p_name TEXT, p_version TEXT, p_context TEXT, p_key TEXT,
    p_priority BIGINT, p_now BIGINT,
    s_names TEXT[], s_handlers TEXT[], s_pending BIGINT[], s_max_attempts BIGINT[],
    s_backoff TEXT[], s_base_ms BIGINT[], s_max_ms BIGINT[], s_jitter FLOAT8[],
    s_timeout_ms BIGINT[], s_priority BIGINT[], s_config TEXT[],
    e_parent INT[], e_child INT[],
    p_lock_key BIGINT, p_channel TEXT)
RETURNS BIGINT
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_task BIGINT;
    v_ids  BIGINT[];
    v_n    INT := cardinality(s_names);
BEGIN
    -- No conflict target: either unique index may refuse the row. The id's own (the
    -- primary key) means this is a repeat of a creation that committed (reserved ids
    -- are never handed out twice); otherwise the idempotency key is taken.
    INSERT INTO tasker_tasks (id, namespace, name, version, state, context, idempotency_key, priority,
                              n_total, n_active, created_at, updated_at)
    VALUES (p_task_id, p_namespace, p_name, p_version, 'pending', p_context, p_key, p_priority, v_n,
            (SELECT count(*) FROM unnest(s_pending) p WHERE p = 0), p_now, p_now)
    ON CONFLICT DO NOTHING
    RETURNING id INTO v_task;
    IF v_task IS NULL THEN
        IF EXISTS (SELECT 1 FROM tasker_tasks WHERE id = p_task_id) THEN
            RETURN p_task_id;
        END IF;
        RETURN NULL;
    END IF;
    -- Ids first, so the edges can name them: in template order, so a DAG's steps are in
    -- topological order by id.
    v_ids := ARRAY(SELECT nextval('tasker_steps_id_seq') FROM generate_series(1, v_n));
    INSERT INTO tasker_steps (id, task_id, name, handler, state, pending_parents, max_attempts, backoff,
                              base_ms, max_ms, jitter, timeout_ms, priority, config, ready_at,
                              created_at, updated_at)
    SELECT v_ids[u.n], v_task, u.name, u.handler,
           CASE WHEN u.pending = 0 THEN 'ready' ELSE 'pending' END,
           u.pending, u.max_attempts, u.backoff, u.base_ms, u.max_ms, u.jitter, u.timeout_ms,
           u.priority, u.config, CASE WHEN u.pending = 0 THEN p_now END, p_now, p_now
    FROM unnest(s_names, s_handlers, s_pending, s_max_attempts, s_backoff, s_base_ms, s_max_ms,
                s_jitter, s_timeout_ms, s_priority, s_config)
         WITH ORDINALITY AS u(name, handler, pending, max_attempts, backoff, base_ms, max_ms,
                              jitter, timeout_ms, priority, config, n);
    IF coalesce(cardinality(e_parent), 0) > 0 THEN
        INSERT INTO tasker_edges (parent_id, child_id)
        SELECT v_ids[e.p], v_ids[e.c] FROM unnest(e_parent, e_child) AS e(p, c);
    END IF;
    PERFORM tasker_insert_transitions(
        ARRAY[ROW(v_task, NULL, NULL, NULL, 'pending', NULL, NULL, 'created', NULL)::tasker_tr]
        || ARRAY(SELECT ROW(v_task, v_ids[u.n], u.name, NULL,
                            CASE WHEN u.pending = 0 THEN 'ready' ELSE 'pending' END,
                            NULL, NULL, 'created', NULL)::tasker_tr
                 FROM unnest(s_names, s_pending) WITH ORDINALITY AS u(name, pending, n)
                 ORDER BY u.n),
        p_now, p_lock_key, p_channel);
    RETURN v_task;
END
$$;

-- 0004's signature, as workers of the previous version call it.
CREATE OR REPLACE FUNCTION tasker_create_task(
    p_namespace TEXT, p_name TEXT, p_version TEXT, p_context TEXT, p_key TEXT,
    p_priority BIGINT, p_now BIGINT,
    s_names TEXT[], s_handlers TEXT[], s_pending BIGINT[], s_max_attempts BIGINT[],
    s_backoff TEXT[], s_base_ms BIGINT[], s_max_ms BIGINT[], s_jitter FLOAT8[],
    s_timeout_ms BIGINT[], s_priority BIGINT[], s_config TEXT[],
    e_parent INT[], e_child INT[],
    p_lock_key BIGINT, p_channel TEXT)
RETURNS BIGINT
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT tasker_create_task(nextval('tasker_tasks_id_seq'), p_namespace, p_name, p_version,
        p_context, p_key, p_priority, p_now, s_names, s_handlers, s_pending, s_max_attempts,
        s_backoff, s_base_ms, s_max_ms, s_jitter, s_timeout_ms, s_priority, s_config,
        e_parent, e_child, p_lock_key, p_channel)
$$;
