-- Tasker schema for SQLite. Times are milliseconds since the Unix epoch; JSON is text.
-- Tables are prefixed `tasker_` so they can share a database file with an application.

CREATE TABLE tasker_templates (
    id          INTEGER PRIMARY KEY,
    namespace   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    body        TEXT    NOT NULL,              -- the resolved template as JSON
    created_at  INTEGER NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE tasker_tasks (
    id              INTEGER PRIMARY KEY,
    namespace       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    prev_state      TEXT,                      -- state before the last update (for transitions)
    context         TEXT    NOT NULL,
    idempotency_key TEXT,
    priority        INTEGER NOT NULL DEFAULT 0,
    -- Step counts kept by every state change, so finalization is a comparison:
    n_total         INTEGER NOT NULL,
    n_active        INTEGER NOT NULL,          -- ready + running
    n_done          INTEGER NOT NULL DEFAULT 0, -- complete + resolved_manually
    n_error         INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX tasker_tasks_idempotency
    ON tasker_tasks (namespace, name, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasker_tasks_state ON tasker_tasks (state, id);
CREATE INDEX tasker_tasks_template ON tasker_tasks (namespace, name, id);

CREATE TABLE tasker_steps (
    id               INTEGER PRIMARY KEY,
    task_id          INTEGER NOT NULL REFERENCES tasker_tasks (id),
    name             TEXT    NOT NULL,
    handler          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    pending_parents  INTEGER NOT NULL,         -- unfinished parents; 0 means runnable
    attempts         INTEGER NOT NULL DEFAULT 0,
    retry_base       INTEGER NOT NULL DEFAULT 0, -- attempts made before the last operator retry
    max_attempts     INTEGER NOT NULL,
    backoff          TEXT    NOT NULL,
    base_ms          INTEGER NOT NULL,
    max_ms           INTEGER NOT NULL,
    jitter           REAL    NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    config           TEXT,
    ready_at         INTEGER,
    claim_token      INTEGER,
    worker           TEXT,
    lease_expires_at INTEGER,
    result           TEXT,
    last_error       TEXT,
    first_started_at INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (task_id, name)
);
-- The claim path: a range scan per handler over ready steps only.
CREATE INDEX tasker_steps_claim
    ON tasker_steps (handler, priority DESC, ready_at) WHERE state = 'ready';
-- The sweep path: running steps by lease expiry.
CREATE INDEX tasker_steps_lease
    ON tasker_steps (lease_expires_at) WHERE state = 'running';

CREATE TABLE tasker_edges (
    parent_id INTEGER NOT NULL,
    child_id  INTEGER NOT NULL,
    PRIMARY KEY (parent_id, child_id)
) WITHOUT ROWID;
CREATE INDEX tasker_edges_child ON tasker_edges (child_id, parent_id);

-- The audit trail and the durable event log; `id` is the event cursor. Ids only grow:
-- rows are appended and never deleted from the end (no AUTOINCREMENT needed, which
-- would cost a write to sqlite_sequence in every transaction).
CREATE TABLE tasker_transitions (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL,
    step_id    INTEGER,
    step_name  TEXT,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    attempt    INTEGER,
    worker     TEXT,
    reason     TEXT,
    details    TEXT
);
CREATE INDEX tasker_transitions_task ON tasker_transitions (task_id, id);
