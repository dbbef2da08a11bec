-- Concurrency limits and rate limits (docs/scheduling.md).
--
-- Each step keeps the keys its task's context gave it when the task was created
-- (`concurrency_key`/`concurrency_max`, `rate_key`/`rate_limit`/`rate_per_ms`; the engine
-- sets them in the creating transaction); `limited` says it has either, and leads the
-- claim index after the handler, so steps without limits are claimed from their own
-- index range as before and limited ones are looked at separately.
--
-- No counters are kept: a claim takes a transaction-level advisory lock per key of the
-- limited candidates it may start (in hash order, so two claimers cannot deadlock), then
-- counts: running steps with the key (a partial index), starts of the key within its
-- window (`tasker_rate_starts`, a sliding log pruned as it is read). The lock is held
-- until commit, so the next claimer of the key counts after this one's steps are
-- visible as running.
ALTER TABLE tasker_steps
    ADD COLUMN limited BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN concurrency_key TEXT,
    ADD COLUMN concurrency_max BIGINT,
    ADD COLUMN rate_key TEXT,
    ADD COLUMN rate_limit BIGINT,
    ADD COLUMN rate_per_ms BIGINT;

DROP INDEX tasker_steps_claim;
CREATE INDEX tasker_steps_claim
    ON tasker_steps (handler, limited, priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX tasker_steps_concurrency
    ON tasker_steps (concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE tasker_rate_starts (
    key    TEXT   NOT NULL,
    per_ms BIGINT NOT NULL,
    at     BIGINT NOT NULL
);
CREATE INDEX tasker_rate_starts_key ON tasker_rate_starts (key, per_ms, at);

-- A limited step a claim looks at.
CREATE TYPE tasker_limit_cand AS (
    id     BIGINT,
    ckey   TEXT,
    cmax   BIGINT,
    rkey   TEXT,
    rlimit BIGINT,
    rper   BIGINT
);

-- Which of `p_cand` (best first) the limits let start now, at most `p_limit`: the ids,
-- and the earliest time a rate window that held one back frees (NULL when none did).
--
-- Two passes, so a claim locks few keys however many candidates it looks at. The first
-- counts without locks and picks at most `p_limit` candidates whose keys look free (a
-- key seen full is skipped without being locked: a stale count can only make it look
-- fuller than it is, which defers a start to the next claim, never over-admits). The
-- second takes the advisory lock of every key of those picks (in hash order, so two
-- claimers cannot deadlock; released at commit), counts again, and admits what the
-- fresh counts allow. Keys of different schemas use different lock classes (from the
-- schema's lock key).
CREATE FUNCTION tasker_admit_limited(
    p_cand tasker_limit_cand[], p_limit BIGINT, p_now BIGINT, p_lock_key BIGINT,
    OUT r_ids BIGINT[], OUT r_next BIGINT)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_class  INT := (p_lock_key % 2147483647)::int;
    v_lock   INT;
    v_used   JSONB;
    v_n      BIGINT;
    v_ck     TEXT;
    v_rk     TEXT;
    v_ok     BOOLEAN;
    v_picks  tasker_limit_cand[] := '{}';
    v_pass   INT;
    v_list   tasker_limit_cand[];
    c        tasker_limit_cand;
BEGIN
    FOR v_pass IN 1..2 LOOP
        IF v_pass = 2 THEN
            IF cardinality(v_picks) = 0 THEN
                EXIT;
            END IF;
            FOR v_lock IN
                SELECT k.h FROM (
                    SELECT hashtext('c:' || u.ckey) AS h FROM unnest(v_picks) AS u WHERE u.ckey IS NOT NULL
                    UNION
                    SELECT hashtext('r:' || u.rkey) FROM unnest(v_picks) AS u WHERE u.rkey IS NOT NULL) k
                ORDER BY k.h
            LOOP
                PERFORM pg_advisory_xact_lock(v_class, v_lock);
            END LOOP;
        END IF;
        v_list := CASE WHEN v_pass = 1 THEN p_cand ELSE v_picks END;
        v_used := '{}';
        r_ids := '{}';
        FOREACH c IN ARRAY v_list LOOP
            EXIT WHEN cardinality(r_ids) >= p_limit;
            v_ok := true;
            v_ck := 'c:' || c.ckey;
            v_rk := 'r:' || c.rper || ':' || c.rkey;
            IF c.ckey IS NOT NULL THEN
                IF NOT v_used ? v_ck THEN
                    SELECT count(*) INTO v_n FROM tasker_steps
                    WHERE concurrency_key = c.ckey AND state = 'running';
                    v_used := v_used || jsonb_build_object(v_ck, v_n);
                END IF;
                v_ok := (v_used ->> v_ck)::bigint < c.cmax;
            END IF;
            IF v_ok AND c.rkey IS NOT NULL THEN
                IF NOT v_used ? v_rk THEN
                    IF v_pass = 2 THEN
                        -- Starts that left their window, dropped under the key's lock,
                        -- ten minutes late: a claimer's p_now is read before it waits for
                        -- the lock, so another may count with an older p_now than this one
                        -- and must still see every start of its window.
                        DELETE FROM tasker_rate_starts
                        WHERE key = c.rkey AND per_ms = c.rper AND at <= p_now - c.rper - 600000;
                    END IF;
                    SELECT count(*) INTO v_n FROM tasker_rate_starts
                    WHERE key = c.rkey AND per_ms = c.rper AND at > p_now - c.rper;
                    v_used := v_used || jsonb_build_object(v_rk, v_n);
                END IF;
                IF (v_used ->> v_rk)::bigint >= c.rlimit THEN
                    v_ok := false;
                    -- The oldest start in the window leaves it `per_ms` after it was made
                    -- (a start admitted by this call is made now).
                    r_next := LEAST(r_next, COALESCE(
                        (SELECT min(s.at) FROM tasker_rate_starts s
                         WHERE s.key = c.rkey AND s.per_ms = c.rper AND s.at > p_now - c.rper),
                        p_now) + c.rper);
                END IF;
            END IF;
            IF v_ok THEN
                r_ids := r_ids || c.id;
                IF v_pass = 1 THEN
                    v_picks := v_picks || c;
                END IF;
                IF c.ckey IS NOT NULL THEN
                    v_used := v_used || jsonb_build_object(v_ck, (v_used ->> v_ck)::bigint + 1);
                END IF;
                IF c.rkey IS NOT NULL THEN
                    v_used := v_used || jsonb_build_object(v_rk, (v_used ->> v_rk)::bigint + 1);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- Limited ready steps by concurrency key, for `tasker_limited_key_heads`.
CREATE INDEX tasker_steps_limited_key
    ON tasker_steps (handler, concurrency_key, priority DESC, ready_at, id)
    WHERE state = 'ready' AND limited = true;

-- When the best limited candidates of a claim (`p_cand`, a full scan of `p_scan`) may
-- all be held back: the best due step of each other concurrency key of `p_handlers`
-- (at most `p_scan` keys, found by a skip scan of `tasker_steps_limited_key`, one index
-- probe per key), best first. So a long queue of one held-back key does not hide the
-- steps of other keys.
CREATE FUNCTION tasker_limited_key_heads(
    p_handlers TEXT[], p_cand tasker_limit_cand[], p_now BIGINT, p_scan BIGINT)
RETURNS tasker_limit_cand[]
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_seen TEXT[] := ARRAY(SELECT DISTINCT u.ckey FROM unnest(p_cand) AS u WHERE u.ckey IS NOT NULL);
    v_ids  BIGINT[] := ARRAY(SELECT u.id FROM unnest(p_cand) AS u);
    v_keys TEXT[];
    v_h    TEXT;
    v_out  tasker_limit_cand[] := '{}';
BEGIN
    FOREACH v_h IN ARRAY p_handlers LOOP
        v_keys := ARRAY(
            WITH RECURSIVE k(key, n) AS (
                SELECT (SELECT min(s.concurrency_key) FROM tasker_steps s
                        WHERE s.state = 'ready' AND s.limited = true AND s.handler = v_h
                          AND s.concurrency_key IS NOT NULL), 1::bigint
                UNION ALL
                SELECT (SELECT min(s.concurrency_key) FROM tasker_steps s
                        WHERE s.state = 'ready' AND s.limited = true AND s.handler = v_h
                          AND s.concurrency_key > k.key), k.n + 1
                FROM k WHERE k.key IS NOT NULL AND k.n < p_scan + cardinality(v_seen))
            SELECT k.key FROM k WHERE k.key IS NOT NULL AND NOT (k.key = ANY(v_seen)));
        v_out := v_out || ARRAY(
            SELECT ROW(c.id, c.concurrency_key, c.concurrency_max, c.rate_key, c.rate_limit,
                       c.rate_per_ms)::tasker_limit_cand
            FROM unnest(v_keys) AS ks(key)
            CROSS JOIN LATERAL (
                SELECT s.id, s.priority, s.ready_at, s.concurrency_key, s.concurrency_max,
                       s.rate_key, s.rate_limit, s.rate_per_ms
                FROM tasker_steps s
                WHERE s.state = 'ready' AND s.limited = true AND s.handler = v_h
                  AND s.concurrency_key = ks.key AND s.ready_at <= p_now
                ORDER BY s.priority DESC, s.ready_at, s.id
                LIMIT 1) c
            WHERE NOT (c.id = ANY(v_ids))
            ORDER BY c.priority DESC, c.ready_at, c.id
            LIMIT p_scan);
    END LOOP;
    RETURN v_out;
END
$$;

-- The completion and claim function of 0004, with the claim taking limits into account
-- (the completion is unchanged but for the comparison below).
-- The updates that find steps by id compare states with variables, not literals: with
-- `s.state = 'ready'` the generic plan may read the update's rows from the claim index
-- (whose predicate the condition implies) and compare every ready step with every
-- picked one. On a scratch schema whose statistics favoured that plan, a call that
-- completed and claimed 256 steps took 37 ms, 24 of them in that update, and 7.5 ms
-- with the variables: a generic plan cannot prove a partial index's predicate from a
-- parameter.
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
    v_rows     tasker_hot_row[] := '{}';
    v_done     BIGINT[];
    v_tasks    BIGINT[];
    v_da       BIGINT[];
    v_dd       BIGINT[];
    v_claimed  tasker_hot_row[];
    v_released BIGINT[];
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
    PERFORM tasker_insert_transitions(v_trs, p_now, p_lock_key, p_channel);
    RETURN QUERY SELECT * FROM unnest(v_rows);
END
$$;
