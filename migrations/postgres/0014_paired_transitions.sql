-- Cheaper creation and completion transitions (issue 18): the same rows and events as
-- 0013, found without building, sorting and windowing one array of all of a call's
-- transitions.
--
-- 0013 stores a task's transition in the row of a step transition of the same task
-- next to it (`tasker_insert_transitions` finds the pairs with a window over the whole
-- call, sorted by task). The hot functions know the pairs already:
-- - a creation: a task's `created` goes before its first step's;
-- - a completion: a finished task's `finalized` goes after its last completed (or
--   released) step's;
-- - a claim: a started task's `claimed` goes before its first claimed step's.
-- They now say so to `tasker_insert_paired_transitions`, or write the rows themselves.
-- Measured on this schema with pgbench, one call each, the server's time (no commit
-- wait): writing the 1,024 transitions of 256 completed and 256 claimed single-step
-- tasks took 2.9 ms through the window and 1.9 ms paired (1.5 ms without task rows at
-- all); creating 100 single-step tasks took 1.85 ms, now 1.3 ms.
--
-- Also in `tasker_create_tasks`: tasks without an idempotency key are inserted without
-- `ON CONFLICT` (whose speculative insertion cost about a tenth of the call), and the
-- check for a repeat of the call looks its ids up one by one only when the primary key
-- has an id in their range.
--
-- The signatures are unchanged, so workers of the previous version call these bodies
-- too; only `tasker_insert_transitions` keeps serving the other writers.

-- Step rows in array order under the ordering lock, each carrying the task row that
-- names its position (`p_into`: 1-based into `p_steps`; `p_first`: the task's event
-- comes first), with the NOTIFY only when a step turns ready. Every task row must name
-- a step row, and a step row takes at most one.
CREATE FUNCTION tasker_insert_paired_transitions(
    p_steps tasker_tr[], p_tasks tasker_tr[], p_into INT[], p_first BOOLEAN[], p_now BIGINT,
    p_lock_key BIGINT, p_channel TEXT)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = on
SET enable_nestloop = off
SET enable_mergejoin = off
AS $$
BEGIN
    IF coalesce(cardinality(p_steps), 0) = 0 THEN
        IF coalesce(cardinality(p_tasks), 0) > 0 THEN
            RAISE EXCEPTION 'task transitions without a step transition to go into';
        END IF;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(p_lock_key);
    IF p_channel IS NOT NULL
       AND EXISTS (SELECT 1 FROM unnest(p_steps) AS u WHERE u.to_state = 'ready') THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
    -- A hash join of the two, each a few hundred rows at most. The generic plan guesses
    -- ten rows for each `unnest`, and would join them in a nested loop (256 completions
    -- compared 65,280 pairs); nothing here reads a table, so nested loops are off. Hash
    -- joins are on explicitly: a caller's `SET enable_hashjoin = off` would hold here.
    INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details,
         task_from, task_to, task_reason, task_first)
    SELECT s.task_id, s.step_id, s.step_name, s.from_state, s.to_state, p_now, s.attempt,
           s.worker, s.reason, s.details, k.from_state, k.to_state, k.reason, k.task_first
    FROM unnest(p_steps) WITH ORDINALITY AS s(task_id, step_id, step_name, from_state, to_state,
                                              attempt, worker, reason, details, n)
    LEFT JOIN unnest(p_tasks, p_into, p_first)
              AS k(task_id, step_id, step_name, from_state, to_state, attempt, worker, reason,
                   details, pos, task_first)
           ON k.pos = s.n
    ORDER BY s.n;
END
$$;

-- As 0009's, with the creation events written directly and tasks without a key
-- inserted without `ON CONFLICT`.
CREATE OR REPLACE FUNCTION tasker_create_tasks(
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
    v_maybe_repeat BOOLEAN;
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
    -- goes by a unique index. The ids are looked up one by one only when some task has
    -- an id between the batch's least and greatest: in the common first call, one probe
    -- of the primary key instead of one per task.
    v_maybe_repeat := EXISTS (
        SELECT 1 FROM tasker_tasks t
        WHERE t.id BETWEEN (SELECT min(u.id) FROM unnest(t_ids) AS u(id))
                       AND (SELECT max(u.id) FROM unnest(t_ids) AS u(id)));
    FOR r IN
        SELECT u.n, t.id, t.state, true AS repeat
        FROM unnest(t_ids) WITH ORDINALITY AS u(id, n)
        JOIN tasker_tasks t ON t.id = u.id
        WHERE v_maybe_repeat
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
        -- Tasks without a key can only meet a repeat of this very call (their ids are
        -- reserved), which the lookup above found: a plain insert. With a key, another
        -- call may commit the same key meanwhile: `ON CONFLICT DO NOTHING` counts it out.
        -- (A repeat running at the same time as the call it repeats, after a lost
        -- connection, meets the first one's ids as a unique violation; the engine
        -- repeats the call once more, and that repeat finds them.)
        INSERT INTO tasker_tasks (id, namespace, name, version, state, context, idempotency_key,
                                  priority, n_total, n_active, created_at, updated_at, run_at,
                                  due_at, timeout_ms, deadline_at)
        SELECT u.id, u.ns, u.name, u.version, 'pending', u.context, NULL, u.priority, u.total,
               u.active, p_now, p_now, u.run_at, u.due_at, u.timeout_ms, u.deadline_at
        FROM unnest(t_ids, t_namespace, t_name, t_version, t_context, t_key, t_priority,
                    t_total, t_active, t_run_at, t_due_at, t_timeout_ms, t_deadline_at)
             WITH ORDINALITY AS u(id, ns, name, version, context, key, priority, total, active,
                                  run_at, due_at, timeout_ms, deadline_at, n)
        WHERE NOT v_skip[u.n] AND u.key IS NULL
        ORDER BY u.n;
        GET DIAGNOSTICS v_made = ROW_COUNT;
        IF v_made < v_want THEN
            WITH ins AS (
                INSERT INTO tasker_tasks (id, namespace, name, version, state, context,
                                          idempotency_key, priority, n_total, n_active,
                                          created_at, updated_at, run_at, due_at, timeout_ms,
                                          deadline_at)
                SELECT u.id, u.ns, u.name, u.version, 'pending', u.context, u.key, u.priority,
                       u.total, u.active, p_now, p_now, u.run_at, u.due_at, u.timeout_ms,
                       u.deadline_at
                FROM unnest(t_ids, t_namespace, t_name, t_version, t_context, t_key, t_priority,
                            t_total, t_active, t_run_at, t_due_at, t_timeout_ms, t_deadline_at)
                     WITH ORDINALITY AS u(id, ns, name, version, context, key, priority, total,
                                          active, run_at, due_at, timeout_ms, deadline_at, n)
                WHERE NOT v_skip[u.n] AND u.key IS NOT NULL
                ORDER BY u.n
                ON CONFLICT DO NOTHING
                RETURNING 1)
            SELECT v_made + count(*) INTO v_made FROM ins;
        END IF;
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
        -- The creation events, per task in batch order: the task's, then its steps'.
        -- Every task has a step (a template has at least one), and the task's event
        -- goes into the row of its first step, before that step's: what 0013's
        -- `tasker_insert_transitions` makes of them, without building and sorting them.
        PERFORM pg_advisory_xact_lock_shared(p_lock_key);
        IF p_channel IS NOT NULL AND EXISTS (
            SELECT 1 FROM unnest(s_task, s_pending) AS u(task, pending)
            WHERE u.pending = 0 AND t_due_at[u.task] IS NULL AND NOT v_skip[u.task]) THEN
            PERFORM pg_notify(p_channel, '');
        END IF;
        INSERT INTO tasker_transitions
            (task_id, step_id, step_name, from_state, to_state, at, reason,
             task_to, task_reason, task_first)
        SELECT t_ids[u.task], v_ids[u.n], u.name, NULL,
               CASE WHEN u.pending = 0 AND t_due_at[u.task] IS NULL THEN 'ready' ELSE 'pending' END,
               p_now, 'created',
               CASE WHEN u.first THEN 'pending' END, CASE WHEN u.first THEN 'created' END,
               CASE WHEN u.first THEN true END
        FROM (SELECT v.*, v.n = 1 OR s_task[v.n - 1] <> v.task AS first
              FROM unnest(s_task, s_names, s_pending) WITH ORDINALITY AS v(task, name, pending, n)) u
        WHERE NOT v_skip[u.task]
        ORDER BY u.n;
    END IF;
    RETURN QUERY
        SELECT u.n::INT, v_out[u.n], v_fresh[u.n], v_state[u.n]
        FROM generate_series(1, v_n) AS u(n)
        ORDER BY u.n;
END
$$;

-- As 0010's, with the task rows paired with their step rows directly.
CREATE OR REPLACE FUNCTION tasker_complete_and_claim(
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
    -- Task rows, each with the position in v_trs of the step row it goes into and
    -- whether its event comes first.
    v_ttrs     tasker_tr[] := '{}';
    v_tpos     INT[] := '{}';
    v_tfirst   BOOLEAN[] := '{}';
    v_rows     tasker_hot_row[] := '{}';
    v_done     BIGINT[];
    v_tasks    BIGINT[];
    v_da       BIGINT[];
    v_dd       BIGINT[];
    v_claimed  tasker_hot_row[];
    v_pos      INT[];
    v_next     BIGINT;
    -- Limited candidates looked at per claim (past blocked ones), and what they gave.
    v_scan     BIGINT := LEAST(p_limit * 4 + 128, 1000);
    v_cand     tasker_limit_cand[];
    v_admitted BIGINT[] := '{}';
    v_rate_next BIGINT;
    v_ready    TEXT := 'ready';
    v_running  TEXT := 'running';
BEGIN
    IF cardinality(p_ids) > 0 THEN
        WITH done AS (
            UPDATE tasker_steps s SET state = 'complete', result = u.result, claim_token = NULL,
               lease_expires_at = NULL, finished_at = p_now, updated_at = p_now
            FROM unnest(p_ids, p_tokens, p_results) AS u(id, token, result)
            WHERE s.id = u.id AND s.claim_token = u.token AND s.state = v_running
            RETURNING s.id, s.task_id, s.name, s.attempts, s.worker)
        SELECT ARRAY(SELECT d.id FROM done d ORDER BY d.id),
               ARRAY(SELECT ROW(d.task_id, d.id, d.name, 'running', 'complete', d.attempts, d.worker,
                                'completed', NULL)::tasker_tr
                     FROM done d ORDER BY d.id)
        INTO v_done, v_trs;
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
                              FROM released r ORDER BY r.id)
        INTO v_trs;
        -- Task counters, from the step rows so far: a completed step leaves the active
        -- count for the done count, a released child joins the active count. `v_pos`:
        -- each task's last step row, which takes the task's event if it finishes.
        SELECT array_agg(x.id ORDER BY x.id), array_agg(x.da ORDER BY x.id),
               array_agg(x.dd ORDER BY x.id), array_agg(x.pos ORDER BY x.id)
        INTO v_tasks, v_da, v_dd, v_pos
        FROM (SELECT u.task_id AS id,
                     sum(CASE WHEN u.to_state = 'complete' THEN -1 ELSE 1 END)::bigint AS da,
                     sum(CASE WHEN u.to_state = 'complete' THEN 1 ELSE 0 END)::bigint AS dd,
                     max(u.n)::INT AS pos
              FROM unnest(v_trs) WITH ORDINALITY AS u(task_id, step_id, step_name, from_state,
                                                      to_state, attempt, worker, reason,
                                                      details, n)
              GROUP BY u.task_id) x;
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
            FROM unnest(v_tasks, v_da, v_dd, v_pos) AS d(id, da, dd, pos) WHERE t.id = d.id
            RETURNING t.id, t.prev_state, t.state, d.pos)
        -- A finished task's event goes after its last step row.
        SELECT array_agg(ROW(k.id, NULL, NULL, k.prev_state, k.state, NULL, NULL, 'finalized',
                             NULL)::tasker_tr ORDER BY k.id),
               array_agg(k.pos ORDER BY k.id), array_agg(false ORDER BY k.id)
        INTO v_ttrs, v_tpos, v_tfirst
        FROM tasks k
        WHERE k.prev_state IS DISTINCT FROM k.state;
    END IF;
    IF p_limit > 0 THEN
        -- Steps with a concurrency or rate limit (`limited`) have their own range of the
        -- claim index: the best `v_scan` of them are looked at (not locked), and
        -- `tasker_admit_limited` says which the limits let start now. Steps without
        -- limits are claimed as before; the best `p_limit` of both are taken.
        v_cand := ARRAY(
            SELECT ROW(c.id, c.concurrency_key, c.concurrency_max, c.rate_key, c.rate_limit,
                       c.rate_per_ms)::tasker_limit_cand
            FROM unnest(p_handlers) AS h(name)
            CROSS JOIN LATERAL (
                SELECT id, priority, ready_at, concurrency_key, concurrency_max, rate_key,
                       rate_limit, rate_per_ms
                FROM tasker_steps
                WHERE state = 'ready' AND handler = h.name AND limited = true AND ready_at <= p_now
                ORDER BY priority DESC, ready_at, id
                LIMIT v_scan) c
            ORDER BY c.priority DESC, c.ready_at, c.id
            LIMIT v_scan);
        IF cardinality(v_cand) >= v_scan THEN
            -- The best ones may all be held back: other keys' best steps compete too.
            v_cand := v_cand || tasker_limited_key_heads(p_handlers, v_cand, p_now, v_scan);
        END IF;
        IF cardinality(v_cand) > 0 THEN
            SELECT a.r_ids, a.r_next INTO v_admitted, v_rate_next
            FROM tasker_admit_limited(v_cand, p_limit, p_now, p_lock_key) AS a;
        END IF;
        -- Candidates come from the claim index one handler at a time (with
        -- `handler = ANY(..)` PostgreSQL would read and sort every ready row), the best
        -- `p_limit` across handlers are taken; pending tasks are started, in id order.
        WITH picked AS (
            SELECT c.id, c.priority, c.ready_at FROM unnest(p_handlers) AS h(name)
            CROSS JOIN LATERAL (
                SELECT id, priority, ready_at FROM tasker_steps
                WHERE state = 'ready' AND handler = h.name AND limited = false AND ready_at <= p_now
                ORDER BY priority DESC, ready_at, id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED) c
            UNION ALL
            SELECT s.id, s.priority, s.ready_at FROM tasker_steps s
            WHERE s.id = ANY(v_admitted) AND s.state = v_ready
            ORDER BY 2 DESC, 3, 1
            LIMIT p_limit),
         claimed AS (
            UPDATE tasker_steps s SET state = 'running', attempts = s.attempts + 1,
               claim_token = p_token, worker = p_worker, started_at = p_now,
               first_started_at = COALESCE(s.first_started_at, p_now),
               lease_expires_at = LEAST(p_now + p_lease_ms, p_now + s.timeout_ms), updated_at = p_now
            FROM picked u WHERE s.id = u.id AND s.state = v_ready
            RETURNING s.id, s.task_id, s.name, s.handler, s.attempts, s.retry_base, s.max_attempts,
                      s.lease_expires_at, s.timeout_ms, s.config, s.rate_key, s.rate_per_ms),
         rated AS (
            INSERT INTO tasker_rate_starts (key, per_ms, at)
            SELECT c.rate_key, c.rate_per_ms, p_now FROM claimed c WHERE c.rate_key IS NOT NULL),
         rows AS (
            SELECT c.*, row_number() OVER (PARTITION BY c.task_id ORDER BY c.id) AS nth,
                   row_number() OVER (ORDER BY c.id)::INT AS pos
            FROM claimed c),
         -- `pos`: the task's first claimed step, whose row takes the task's event.
         started AS (
            UPDATE tasker_tasks t SET state = 'running', prev_state = t.state, started_at = p_now,
               updated_at = p_now
            FROM (SELECT r.task_id, r.pos FROM rows r WHERE r.nth = 1 ORDER BY r.task_id) AS c
            WHERE t.id = c.task_id AND t.state = 'pending'
            RETURNING t.id, c.pos)
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
               || ARRAY(SELECT ROW(c.task_id, c.id, c.name, 'ready', 'running', c.attempts, p_worker,
                                   'claimed', NULL)::tasker_tr
                        FROM rows c ORDER BY c.id),
               -- A started task's event goes before its first claimed step's.
               coalesce(v_ttrs, '{}')
               || ARRAY(SELECT ROW(s.id, NULL, NULL, 'pending', 'running', NULL, NULL, 'claimed',
                                   NULL)::tasker_tr
                        FROM started s ORDER BY s.id),
               coalesce(v_tpos, '{}')
               || ARRAY(SELECT coalesce(cardinality(v_trs), 0) + s.pos FROM started s ORDER BY s.id),
               coalesce(v_tfirst, '{}') || ARRAY(SELECT true FROM started s ORDER BY s.id)
        INTO v_claimed, v_trs, v_ttrs, v_tpos, v_tfirst;
        IF cardinality(v_claimed) = 0 THEN
            -- When to look again: the next future `ready_at`, or when a rate window
            -- frees. Limited steps held back now are not counted (a concurrency slot
            -- frees at a completion, which wakes claimers).
            SELECT LEAST(
                (SELECT MIN(ready_at) FROM tasker_steps
                 WHERE state = 'ready' AND handler = ANY(p_handlers) AND limited = false),
                (SELECT MIN(ready_at) FROM tasker_steps
                 WHERE state = 'ready' AND handler = ANY(p_handlers) AND limited = true
                   AND ready_at > p_now),
                v_rate_next)
            INTO v_next;
            v_claimed := ARRAY[ROW(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, v_next, NULL, NULL,
                                   NULL, NULL, NULL, NULL)::tasker_hot_row];
        END IF;
        v_rows := v_rows || v_claimed;
    END IF;
    PERFORM tasker_insert_paired_transitions(v_trs, v_ttrs, v_tpos, v_tfirst, p_now, p_lock_key,
                                             p_channel);
    RETURN QUERY SELECT * FROM unnest(v_rows);
END
$$;
