-- Batch creation, and NOTIFY only when work becomes claimable.
--
-- NOTIFY: a transaction that notifies takes a cluster-wide lock just before it commits
-- and holds it until the commit is flushed (so notifications queue in commit order):
-- every notifying commit of every database on the server waits for the one before it.
-- Until now every write notified, so waiting claimers and event readers in other
-- processes woke at once. Now a write notifies only when one of its transitions makes
-- a step `ready` (a created root, a released child, a retry, a released or swept step):
-- the only changes a waiting claimer can act on. A delayed retry notifies too, so
-- waiters learn its `ready_at` and wake then. A completion that releases nothing, a
-- claim, a failure that ends a step, a cancellation: no NOTIFY. Event readers in other
-- processes see those within `claim_poll_ms` (their fallback re-check); readers in the
-- writing process are woken in memory as before. PostgreSQL already folds identical
-- notifications of one transaction into one, and each function here notifies at most
-- once.
--
-- A NULL channel sends no NOTIFY: the engine passes it for creations, which always make
-- work ready, and notifies after the commit from a transaction of its own with
-- `synchronous_commit = off` (nothing to make durable: the tasks are), which holds the
-- cluster-wide lock for an instant instead of through a WAL flush. So creating tasks
-- from many connections commits in parallel (group commit) again.
--
-- `tasker_create_tasks`: many tasks in one call (one transaction, one round trip), with
-- the same rules as `tasker_create_task` (0005): each task carries a reserved id; a task
-- whose id is taken is a repeat of this very call that committed (returned as created);
-- a task whose idempotency key is taken returns the existing task. The engine never
-- passes two tasks with the same key in one batch.

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
    INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
    SELECT u.task_id, u.step_id, u.step_name, u.from_state, u.to_state, p_now, u.attempt,
           u.worker, u.reason, u.details
    FROM unnest(p_trs) WITH ORDINALITY AS u(task_id, step_id, step_name, from_state, to_state,
                                            attempt, worker, reason, details, n)
    ORDER BY u.n;
END
$$;

-- Tasks come as parallel arrays (`t_*`, one element per task, in batch order), steps as
-- parallel arrays of every task's steps one task after the other in template order
-- (`s_task`: the 1-based position of the step's task), edges as 1-based positions in
-- the step arrays. Returns one row per task: its position, its id, whether this call
-- (or a committed repeat of it) created it, and its state.
CREATE FUNCTION tasker_create_tasks(
    t_ids BIGINT[], t_namespace TEXT[], t_name TEXT[], t_version TEXT[], t_context TEXT[],
    t_key TEXT[], t_priority BIGINT[], t_total BIGINT[], t_active BIGINT[], p_now BIGINT,
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
                                      priority, n_total, n_active, created_at, updated_at)
            SELECT u.id, u.ns, u.name, u.version, 'pending', u.context, u.key, u.priority, u.total,
                   u.active, p_now, p_now
            FROM unnest(t_ids, t_namespace, t_name, t_version, t_context, t_key, t_priority,
                        t_total, t_active)
                 WITH ORDINALITY AS u(id, ns, name, version, context, key, priority, total, active, n)
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
               CASE WHEN u.pending = 0 THEN 'ready' ELSE 'pending' END,
               u.pending, u.max_attempts, u.backoff, u.base_ms, u.max_ms, u.jitter, u.timeout_ms,
               u.priority, u.config, CASE WHEN u.pending = 0 THEN p_now END, p_now, p_now
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
                           CASE WHEN u.pending = 0 THEN 'ready' ELSE 'pending' END,
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
