-- The hot path as functions: creating a task, claiming, and completing (optionally with
-- the next claim) are each one call, so each costs one round trip to the server (the
-- engine calls the claim and complete functions outside an explicit transaction: the
-- call is its own transaction and commits when it returns). The statements are the
-- same set-based ones the engine ran from Rust before (0001-0003), run one after the
-- other inside the function, so each sees what the one before it changed (a completion
-- releases a child that the claim after it can take at once).
--
-- Transitions (the audit trail and the event log) are collected while the function
-- runs and inserted last, under the per-schema advisory lock that orders transition ids
-- (held until commit, so an event cursor never skips a row committed later): taking
-- the lock at the end keeps the time it is held, which serializes writers, to the
-- insert and the commit.
--
-- Functions pin the schema they were created in and always use cached generic plans
-- (every statement finds its rows by primary key or a partial index; re-planning these
-- statements cost more than running them for small batches).
-- Reason strings are the ones in core/src/model/events.rs (`reason::*`).

-- One transition row before it has an id.
CREATE TYPE tasker_tr AS (
    task_id    BIGINT,
    step_id    BIGINT,
    step_name  TEXT,
    from_state TEXT,
    to_state   TEXT,
    attempt    BIGINT,
    worker     TEXT,
    reason     TEXT,
    details    TEXT
);

-- A row a hot-path function returns. `kind`: 1 a claimed step (every column but
-- `state`); 2 nothing could be claimed, `lease_expires_at` holds the earliest future
-- `ready_at` of the handlers (NULL when none); 3 a completion that was not recorded,
-- `id` the step and `state` its state now (NULL when the step does not exist).
CREATE TYPE tasker_hot_row AS (
    kind             INT,
    id               BIGINT,
    task_id          BIGINT,
    name             TEXT,
    handler          TEXT,
    attempts         BIGINT,
    retry_base       BIGINT,
    max_attempts     BIGINT,
    lease_expires_at BIGINT,
    timeout_ms       BIGINT,
    config           TEXT,
    context          TEXT,
    parent_names     TEXT[],
    parent_results   TEXT[],
    state            TEXT
);

-- Inserts transition rows in array order under the ordering lock, and sends the NOTIFY
-- that wakes waiters in every process at commit.
CREATE FUNCTION tasker_insert_transitions(p_trs tasker_tr[], p_now BIGINT, p_lock_key BIGINT, p_channel TEXT)
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
    PERFORM pg_advisory_xact_lock(p_lock_key), pg_notify(p_channel, '');
    INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
    SELECT u.task_id, u.step_id, u.step_name, u.from_state, u.to_state, p_now, u.attempt,
           u.worker, u.reason, u.details
    FROM unnest(p_trs) WITH ORDINALITY AS u(task_id, step_id, step_name, from_state, to_state,
                                            attempt, worker, reason, details, n)
    ORDER BY u.n;
END
$$;

-- Creates a task with its steps and edges; returns its id, or NULL when a task with the
-- same idempotency key exists (the caller reads that one). Steps come in template
-- order; `e_parent`/`e_child` are 1-based positions in the step arrays.
CREATE FUNCTION tasker_create_task(
    p_namespace TEXT, p_name TEXT, p_version TEXT, p_context TEXT, p_key TEXT,
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
    INSERT INTO tasker_tasks (namespace, name, version, state, context, idempotency_key, priority,
                              n_total, n_active, created_at, updated_at)
    VALUES (p_namespace, p_name, p_version, 'pending', p_context, p_key, p_priority, v_n,
            (SELECT count(*) FROM unnest(s_pending) p WHERE p = 0), p_now, p_now)
    ON CONFLICT (namespace, name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_task;
    IF v_task IS NULL THEN
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

-- Completes claimed steps (each fenced by its claim token), releases their children
-- (children reaching 0 pending parents become `ready`), moves the task counters and
-- finalizes tasks; then, when `p_limit` > 0, claims up to `p_limit` ready steps of
-- `p_handlers` (distinct names) in the same transaction. With no steps to complete this
-- is the `claim` operation. Returns a kind-3 row for each completion that was not
-- recorded, then the claimed steps (kind 1, by id) or a kind-2 row when the claim found
-- nothing.
--
-- Every statement goes by primary key or a partial index, driven by a small array: the
-- functions turn off sequential scans, hash and merge joins, so no plan depends on table
-- statistics (a generic plan made while a table was empty would otherwise keep a
-- sequential scan as the table grows). Rows another transaction may also update
-- (children, tasks) are updated in id order, driven by a sorted array (a nested loop
-- over it, the only plan those joins have here), so two transactions lock shared rows
-- in the same order and cannot deadlock; a deadlock would still be rolled back and the
-- call repeated by the engine.
CREATE FUNCTION tasker_complete_and_claim(
    p_ids BIGINT[], p_tokens BIGINT[], p_results TEXT[], p_now BIGINT,
    p_handlers TEXT[], p_limit BIGINT, p_token BIGINT, p_worker TEXT, p_lease_ms BIGINT,
    p_lock_key BIGINT, p_channel TEXT)
RETURNS SETOF tasker_hot_row
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_trs      tasker_tr[] := '{}';
    v_rows     tasker_hot_row[] := '{}';
    v_done     BIGINT[];
    v_tasks    BIGINT[];
    v_da       BIGINT[];
    v_dd       BIGINT[];
    v_claimed  tasker_hot_row[];
    v_released BIGINT[];
    v_next     BIGINT;
BEGIN
    IF cardinality(p_ids) > 0 THEN
        WITH done AS (
            UPDATE tasker_steps s SET state = 'complete', result = u.result, claim_token = NULL,
               lease_expires_at = NULL, finished_at = p_now, updated_at = p_now
            FROM unnest(p_ids, p_tokens, p_results) AS u(id, token, result)
            WHERE s.id = u.id AND s.claim_token = u.token AND s.state = 'running'
            RETURNING s.id, s.task_id, s.name, s.attempts, s.worker)
        SELECT ARRAY(SELECT d.id FROM done d ORDER BY d.id),
               ARRAY(SELECT ROW(d.task_id, d.id, d.name, 'running', 'complete', d.attempts, d.worker,
                                'completed', NULL)::tasker_tr
                     FROM done d ORDER BY d.id),
               ARRAY(SELECT d.task_id FROM done d)
        INTO v_done, v_trs, v_tasks;
        -- What was not recorded (a stale token, a step not running, an unknown id), with
        -- the step's state now so the caller can say why.
        IF cardinality(v_done) < cardinality(p_ids) THEN
            v_rows := ARRAY(
                SELECT ROW(3, u.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                           NULL, NULL, (SELECT s.state FROM tasker_steps s WHERE s.id = u.id))::tasker_hot_row
                FROM unnest(p_ids) AS u(id)
                WHERE NOT (u.id = ANY(v_done)));
        END IF;
    END IF;
    IF cardinality(v_done) > 0 THEN
        -- Children: one decrement per completed parent.
        WITH d AS (
            SELECT child_id, count(*) AS n FROM tasker_edges
            WHERE parent_id = ANY(v_done) GROUP BY child_id ORDER BY child_id),
         children AS (
            UPDATE tasker_steps s SET pending_parents = s.pending_parents - d.n,
               state = CASE WHEN s.state = 'pending' AND s.pending_parents = d.n THEN 'ready' ELSE s.state END,
               ready_at = CASE WHEN s.state = 'pending' AND s.pending_parents = d.n THEN p_now ELSE s.ready_at END,
               updated_at = p_now
            FROM d WHERE s.id = d.child_id
            RETURNING s.id, s.task_id, s.name, s.state, s.pending_parents),
         released AS (
            SELECT id, task_id, name FROM children WHERE state = 'ready' AND pending_parents = 0)
        SELECT v_trs || ARRAY(SELECT ROW(r.task_id, r.id, r.name, 'pending', 'ready', NULL, NULL,
                                         'parents_done', NULL)::tasker_tr
                              FROM released r ORDER BY r.id),
               ARRAY(SELECT r.task_id FROM released r)
        INTO v_trs, v_released;
        -- Task counters: a completed step leaves the active count for the done count, a
        -- released child joins the active count.
        SELECT array_agg(x.id ORDER BY x.id), array_agg(x.da ORDER BY x.id), array_agg(x.dd ORDER BY x.id)
        INTO v_tasks, v_da, v_dd
        FROM (SELECT u.id, sum(u.da)::bigint AS da, sum(u.dd)::bigint AS dd
              FROM (SELECT t AS id, -1 AS da, 1 AS dd FROM unnest(v_tasks) AS t
                    UNION ALL SELECT t, 1, 0 FROM unnest(v_released) AS t) u
              GROUP BY u.id) x;
        WITH tasks AS (
            UPDATE tasker_tasks t SET prev_state = t.state,
               n_active = t.n_active + d.da,
               n_done = t.n_done + d.dd,
               state = CASE
                   WHEN t.state IN ('complete', 'cancelled') THEN t.state
                   WHEN t.n_active + d.da = 0 AND t.n_done + d.dd = t.n_total THEN 'complete'
                   WHEN t.n_active + d.da = 0 THEN 'error'
                   WHEN t.state = 'error' THEN 'running'
                   ELSE t.state END,
               finished_at = CASE
                   WHEN t.state IN ('complete', 'cancelled') THEN t.finished_at
                   WHEN t.n_active + d.da = 0 THEN COALESCE(t.finished_at, p_now)
                   ELSE NULL END,
               updated_at = p_now
            FROM unnest(v_tasks, v_da, v_dd) AS d(id, da, dd) WHERE t.id = d.id
            RETURNING t.id, t.prev_state, t.state)
        SELECT v_trs || ARRAY(SELECT ROW(k.id, NULL, NULL, k.prev_state, k.state, NULL, NULL,
                                         'finalized', NULL)::tasker_tr
                              FROM tasks k WHERE k.prev_state IS DISTINCT FROM k.state ORDER BY k.id)
        INTO v_trs;
    END IF;
    IF p_limit > 0 THEN
        -- Candidates come from the claim index one handler at a time (with
        -- `handler = ANY(..)` PostgreSQL would read and sort every ready row), the best
        -- `p_limit` across handlers are taken; pending tasks are started, in id order.
        WITH picked AS (
            SELECT c.id FROM unnest(p_handlers) AS h(name)
            CROSS JOIN LATERAL (
                SELECT id, priority, ready_at FROM tasker_steps
                WHERE state = 'ready' AND handler = h.name AND ready_at <= p_now
                ORDER BY priority DESC, ready_at, id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED) c
            ORDER BY c.priority DESC, c.ready_at, c.id
            LIMIT p_limit),
         claimed AS (
            UPDATE tasker_steps s SET state = 'running', attempts = s.attempts + 1,
               claim_token = p_token, worker = p_worker, started_at = p_now,
               first_started_at = COALESCE(s.first_started_at, p_now),
               lease_expires_at = LEAST(p_now + p_lease_ms, p_now + s.timeout_ms), updated_at = p_now
            FROM picked u WHERE s.id = u.id
            RETURNING s.id, s.task_id, s.name, s.handler, s.attempts, s.retry_base, s.max_attempts,
                      s.lease_expires_at, s.timeout_ms, s.config),
         started AS (
            UPDATE tasker_tasks t SET state = 'running', prev_state = t.state, started_at = p_now,
               updated_at = p_now
            FROM (SELECT DISTINCT task_id FROM claimed ORDER BY task_id) AS c
            WHERE t.id = c.task_id AND t.state = 'pending'
            RETURNING t.id),
         rows AS (
            SELECT c.*, row_number() OVER (PARTITION BY c.task_id ORDER BY c.id) AS nth
            FROM claimed c)
        SELECT ARRAY(
                   SELECT ROW(1, c.id, c.task_id, c.name, c.handler, c.attempts, c.retry_base,
                              c.max_attempts, c.lease_expires_at, c.timeout_ms, c.config,
                              -- The context once per task, on its first step's row.
                              CASE WHEN c.nth = 1 THEN
                                  (SELECT t.context FROM tasker_tasks t WHERE t.id = c.task_id) END,
                              pr.names, pr.results, NULL)::tasker_hot_row
                   FROM rows c
                   LEFT JOIN LATERAL (
                       SELECT array_agg(p.name ORDER BY p.id) AS names,
                              array_agg(COALESCE(p.result, 'null') ORDER BY p.id) AS results
                       FROM tasker_edges e JOIN tasker_steps p ON p.id = e.parent_id
                       WHERE e.child_id = c.id) pr ON true
                   ORDER BY c.id),
               v_trs
               || ARRAY(SELECT ROW(s.id, NULL, NULL, 'pending', 'running', NULL, NULL, 'claimed',
                                   NULL)::tasker_tr
                        FROM started s ORDER BY s.id)
               || ARRAY(SELECT ROW(c.task_id, c.id, c.name, 'ready', 'running', c.attempts, p_worker,
                                   'claimed', NULL)::tasker_tr
                        FROM rows c ORDER BY c.id)
        INTO v_claimed, v_trs;
        IF cardinality(v_claimed) = 0 THEN
            SELECT MIN(ready_at) INTO v_next FROM tasker_steps
            WHERE state = 'ready' AND handler = ANY(p_handlers);
            v_claimed := ARRAY[ROW(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, v_next, NULL, NULL,
                                   NULL, NULL, NULL, NULL)::tasker_hot_row];
        END IF;
        v_rows := v_rows || v_claimed;
    END IF;
    PERFORM tasker_insert_transitions(v_trs, p_now, p_lock_key, p_channel);
    RETURN QUERY SELECT * FROM unnest(v_rows);
END
$$;
