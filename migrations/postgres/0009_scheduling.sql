-- Scheduling (issue 19): delayed tasks, task timeouts and cron schedules.
--
-- A delayed task keeps its root steps `pending` until it is due, so the claim index
-- holds nothing of it and the claim path pays nothing for it; `due_at` is its due time
-- until the engine promotes it (root steps -> `ready`, with their `step.ready` events
-- and one NOTIFY for the transaction), then NULL. `run_at` keeps the due time for
-- people to read. The task timeout: `deadline_at` = due time + `timeout_ms`; the sweep
-- ends an unfinished task in `error` when it passes.
--
-- `tasker_create_task` and `tasker_create_tasks` get overloads that take those four
-- values (the engine calls these); the earlier signatures stay for workers of the
-- previous version during a rolling upgrade and create undelayed tasks, as before.

ALTER TABLE tasker_tasks ADD COLUMN run_at BIGINT;
ALTER TABLE tasker_tasks ADD COLUMN due_at BIGINT;
ALTER TABLE tasker_tasks ADD COLUMN timeout_ms BIGINT;
ALTER TABLE tasker_tasks ADD COLUMN deadline_at BIGINT;
CREATE INDEX tasker_tasks_due ON tasker_tasks (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX tasker_tasks_deadline ON tasker_tasks (deadline_at)
    WHERE deadline_at IS NOT NULL AND state IN ('pending', 'running');

-- Cron schedules: each tick creates one task (its idempotency key names the tick), and
-- `next_fire_at` only moves by a conditional update, so every tick fires once however
-- many processes fire schedules.
CREATE TABLE tasker_schedules (
    name           TEXT    PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    template_name  TEXT    NOT NULL,
    version        TEXT,
    cron           TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    context        TEXT    NOT NULL,
    catch_up       TEXT    NOT NULL,
    catch_up_limit BIGINT  NOT NULL,
    paused         BOOLEAN NOT NULL DEFAULT false,
    next_fire_at   BIGINT  NOT NULL,
    last_tick_at   BIGINT,
    last_task_id   BIGINT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE INDEX tasker_schedules_due ON tasker_schedules (next_fire_at) WHERE NOT paused;

-- As 0005's, with the delay and the timeout: roots of a task with `p_due_at` stay pending.
CREATE FUNCTION tasker_create_task(
    p_task_id BIGINT, p_namespace TEXT, p_name TEXT, p_version TEXT, p_context TEXT, p_key TEXT,
    p_priority BIGINT, p_now BIGINT, p_run_at BIGINT, p_due_at BIGINT, p_timeout_ms BIGINT,
    p_deadline_at BIGINT,
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
                              n_total, n_active, created_at, updated_at, run_at, due_at, timeout_ms,
                              deadline_at)
    VALUES (p_task_id, p_namespace, p_name, p_version, 'pending', p_context, p_key, p_priority, v_n,
            (SELECT count(*) FROM unnest(s_pending) p WHERE p = 0), p_now, p_now, p_run_at, p_due_at,
            p_timeout_ms, p_deadline_at)
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
           CASE WHEN u.pending = 0 AND p_due_at IS NULL THEN 'ready' ELSE 'pending' END,
           u.pending, u.max_attempts, u.backoff, u.base_ms, u.max_ms, u.jitter, u.timeout_ms,
           u.priority, u.config, CASE WHEN u.pending = 0 AND p_due_at IS NULL THEN p_now END, p_now, p_now
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
                            CASE WHEN u.pending = 0 AND p_due_at IS NULL THEN 'ready' ELSE 'pending' END,
                            NULL, NULL, 'created', NULL)::tasker_tr
                 FROM unnest(s_names, s_pending) WITH ORDINALITY AS u(name, pending, n)
                 ORDER BY u.n),
        p_now, p_lock_key, p_channel);
    RETURN v_task;
END
$$;

-- As 0008's, with the delay and the timeout per task (`t_due_at[i]` set: task i's roots
-- stay pending until it is promoted).
CREATE FUNCTION tasker_create_tasks(
    t_ids BIGINT[], t_namespace TEXT[], t_name TEXT[], t_version TEXT[], t_context TEXT[],
    t_key TEXT[], t_priority BIGINT[], t_total BIGINT[], t_active BIGINT[], p_now BIGINT,
    t_run_at BIGINT[], t_due_at BIGINT[], t_timeout_ms BIGINT[], t_deadline_at BIGINT[],
    s_task INT[], s_names TEXT[], s_handlers TEXT[], s_pending BIGINT[], s_max_attempts BIGINT[],
    s_backoff TEXT[], s_base_ms BIGINT[], s_max_ms BIGINT[], s_jitter FLOAT8[],
    s_timeout_ms BIGINT[], s_priority BIGINT[], s_config TEXT[],
    e_parent INT[], e_child INT[],
    p_lock_key BIGINT, p_channel TEXT)
RETURNS TABLE (r_n INT, r_id BIGINT, r_created BOOLEAN, r_state TEXT)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_n      INT := coalesce(cardinality(t_ids), 0);
    v_skip   BOOLEAN[];
    v_out    BIGINT[];
    v_state  TEXT[];
    v_fresh  BOOLEAN[];
    v_ids    BIGINT[];
    v_want   INT;
    v_made   INT;
    r        RECORD;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    v_skip := array_fill(false, ARRAY[v_n]);
    v_out := t_ids;
    v_state := array_fill('pending'::TEXT, ARRAY[v_n]);
    v_fresh := array_fill(true, ARRAY[v_n]);
    -- Tasks that exist already: by id (a repeat of this call that committed: created),
    -- then by idempotency key (another call made it: returned instead). Each lookup
    -- goes by a unique index.
    FOR r IN
        SELECT u.n, t.id, t.state, true AS repeat
        FROM unnest(t_ids) WITH ORDINALITY AS u(id, n)
        JOIN tasker_tasks t ON t.id = u.id
        UNION ALL
        SELECT u.n, t.id, t.state, false
        FROM unnest(t_namespace, t_name, t_key) WITH ORDINALITY AS u(ns, name, key, n)
        JOIN tasker_tasks t ON t.namespace = u.ns AND t.name = u.name AND t.idempotency_key = u.key
        WHERE u.key IS NOT NULL
        ORDER BY 1, 4 DESC
    LOOP
        IF NOT v_skip[r.n] THEN
            v_skip[r.n] := true;
            v_out[r.n] := r.id;
            IF NOT r.repeat THEN
                v_fresh[r.n] := false;
                v_state[r.n] := r.state;
            END IF;
        END IF;
    END LOOP;
    SELECT count(*) INTO v_want FROM unnest(v_skip) AS s(skip) WHERE NOT s.skip;
    IF v_want > 0 THEN
        WITH ins AS (
            INSERT INTO tasker_tasks (id, namespace, name, version, state, context, idempotency_key,
                                      priority, n_total, n_active, created_at, updated_at, run_at,
                                      due_at, timeout_ms, deadline_at)
            SELECT u.id, u.ns, u.name, u.version, 'pending', u.context, u.key, u.priority, u.total,
                   u.active, p_now, p_now, u.run_at, u.due_at, u.timeout_ms, u.deadline_at
            FROM unnest(t_ids, t_namespace, t_name, t_version, t_context, t_key, t_priority,
                        t_total, t_active, t_run_at, t_due_at, t_timeout_ms, t_deadline_at)
                 WITH ORDINALITY AS u(id, ns, name, version, context, key, priority, total, active,
                                      run_at, due_at, timeout_ms, deadline_at, n)
            WHERE NOT v_skip[u.n]
            ORDER BY u.n
            ON CONFLICT DO NOTHING
            RETURNING 1)
        SELECT count(*) INTO v_made FROM ins;
        IF v_made < v_want THEN
            -- A concurrent call took one of the keys between the check and the insert:
            -- roll back and let the engine repeat the call, which then finds that task.
            RAISE EXCEPTION 'an idempotency key of the batch was taken meanwhile'
                USING ERRCODE = 'serialization_failure';
        END IF;
        -- Step ids in batch order: each task's steps in template order, so a DAG's
        -- steps are in topological order by id (ids of skipped tasks' steps go unused).
        v_ids := ARRAY(SELECT nextval('tasker_steps_id_seq') FROM generate_series(1, cardinality(s_names)));
        INSERT INTO tasker_steps (id, task_id, name, handler, state, pending_parents, max_attempts,
                                  backoff, base_ms, max_ms, jitter, timeout_ms, priority, config,
                                  ready_at, created_at, updated_at)
        SELECT v_ids[u.n], t_ids[u.task], u.name, u.handler,
               CASE WHEN u.pending = 0 AND t_due_at[u.task] IS NULL THEN 'ready' ELSE 'pending' END,
               u.pending, u.max_attempts, u.backoff, u.base_ms, u.max_ms, u.jitter, u.timeout_ms,
               u.priority, u.config, CASE WHEN u.pending = 0 AND t_due_at[u.task] IS NULL THEN p_now END, p_now, p_now
        FROM unnest(s_task, s_names, s_handlers, s_pending, s_max_attempts, s_backoff, s_base_ms,
                    s_max_ms, s_jitter, s_timeout_ms, s_priority, s_config)
             WITH ORDINALITY AS u(task, name, handler, pending, max_attempts, backoff, base_ms,
                                  max_ms, jitter, timeout_ms, priority, config, n)
        WHERE NOT v_skip[u.task];
        IF coalesce(cardinality(e_parent), 0) > 0 THEN
            INSERT INTO tasker_edges (parent_id, child_id)
            SELECT v_ids[e.p], v_ids[e.c] FROM unnest(e_parent, e_child) AS e(p, c)
            WHERE NOT v_skip[s_task[e.c]];
        END IF;
        -- Per task in batch order: the task's row, then its steps, as tasker_create_task.
        PERFORM tasker_insert_transitions(ARRAY(
            SELECT x.tr FROM (
                SELECT u.n AS tn, 0::BIGINT AS sn,
                       ROW(u.id, NULL, NULL, NULL, 'pending', NULL, NULL, 'created', NULL)::tasker_tr AS tr
                FROM unnest(t_ids) WITH ORDINALITY AS u(id, n)
                WHERE NOT v_skip[u.n]
                UNION ALL
                SELECT u.task, u.n,
                       ROW(t_ids[u.task], v_ids[u.n], u.name, NULL,
                           CASE WHEN u.pending = 0 AND t_due_at[u.task] IS NULL THEN 'ready' ELSE 'pending' END,
                           NULL, NULL, 'created', NULL)::tasker_tr
                FROM unnest(s_task, s_names, s_pending) WITH ORDINALITY AS u(task, name, pending, n)
                WHERE NOT v_skip[u.task]) x
            ORDER BY x.tn, x.sn),
            p_now, p_lock_key, p_channel);
    END IF;
    RETURN QUERY
        SELECT u.n::INT, v_out[u.n], v_fresh[u.n], v_state[u.n]
        FROM generate_series(1, v_n) AS u(n)
        ORDER BY u.n;
END
$$;
