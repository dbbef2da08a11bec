-- Event order without serializing writers. Until now every writer took the per-schema
-- advisory lock in exclusive mode just before inserting its transition rows and held it
-- to commit, so ids became visible in id order and a reader could simply read
-- `id > cursor`. That serialized every commit of every process on every machine (each
-- waited for the one before it to flush its WAL), and a transaction waiting for the
-- lock kept the steps it had just claimed locked, for other claimers to skip.
--
-- Now writers take the lock in shared mode (still just before their first id is drawn,
-- still until commit): writers no longer wait for each other. Readers that move a
-- cursor read the sequence's last value `h`, then take the lock in exclusive mode for
-- an instant: that waits for every writer that drew an id before `h` was read (it took
-- the lock first) to commit or roll back. After that, no row with an id at most `h`
-- can appear any more, so the reader returns rows up to `h` and never skips one
-- committed later. A transaction draws its ids last, after every read it acted on, so
-- a transition caused by another transaction's change still has the greater id.
--
-- A reader's exclusive request makes writers that arrive after it wait until the
-- writers before it finish: readers wait for writers' commits, writers for no one but
-- a reader's instant.
--
-- Rolling upgrade: once this is applied, every writer of this schema uses the shared
-- mode (the hot-path functions below are the ones older engines call too), and an
-- event reader of an older engine, which reads without the lock, can miss an event
-- committed out of id order. Upgrade the processes that read events (subscriptions)
-- first or together (docs/operations.md).

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
    PERFORM pg_advisory_xact_lock_shared(p_lock_key), pg_notify(p_channel, '');
    INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
    SELECT u.task_id, u.step_id, u.step_name, u.from_state, u.to_state, p_now, u.attempt,
           u.worker, u.reason, u.details
    FROM unnest(p_trs) WITH ORDINALITY AS u(task_id, step_id, step_name, from_state, to_state,
                                            attempt, worker, reason, details, n)
    ORDER BY u.n;
END
$$;

-- The highest transition id below which the log is final: every writer that drew an id
-- up to it has committed or rolled back. Waits (briefly) for writers in flight.
CREATE FUNCTION tasker_event_horizon(p_lock_key BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    -- NULL while the sequence has never been used.
    v_h BIGINT := coalesce(pg_sequence_last_value('tasker_transitions_id_seq'), 0);
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_key);
    RETURN v_h;
END
$$;

-- Events after `p_since` (of task `p_task` when given), in id order, at most `p_limit`,
-- none past the horizon. The query after the lock takes a fresh snapshot (a volatile
-- function's statements each do), so it sees every writer the lock waited for.
CREATE FUNCTION tasker_events(p_since BIGINT, p_task BIGINT, p_limit BIGINT, p_lock_key BIGINT)
RETURNS SETOF tasker_transitions
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_h BIGINT := tasker_event_horizon(p_lock_key);
BEGIN
    RETURN QUERY
        SELECT * FROM tasker_transitions t
        WHERE t.id > p_since AND t.id <= v_h AND (p_task IS NULL OR t.task_id = p_task)
        ORDER BY t.id
        LIMIT p_limit;
END
$$;

-- The newest event's id that is safe as a cursor for "from now on": no event with a
-- smaller id can still commit.
CREATE FUNCTION tasker_last_event_id(p_lock_key BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_h BIGINT := tasker_event_horizon(p_lock_key);
BEGIN
    RETURN coalesce((SELECT max(t.id) FROM tasker_transitions t WHERE t.id <= v_h), 0);
END
$$;
