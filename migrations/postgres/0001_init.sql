-- Tasker schema for PostgreSQL, created inside the configured schema (search_path).
-- Same model as SQLite: times are milliseconds since the Unix epoch, JSON is stored as
-- text (passed through untouched), every integer is BIGINT.

CREATE TABLE tasker_templates (
    id          BIGSERIAL PRIMARY KEY,
    namespace   TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    version     TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE tasker_tasks (
    id              BIGSERIAL PRIMARY KEY,
    namespace       TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    version         TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    prev_state      TEXT,
    context         TEXT   NOT NULL,
    idempotency_key TEXT,
    priority        BIGINT NOT NULL DEFAULT 0,
    n_total         BIGINT NOT NULL,
    n_active        BIGINT NOT NULL,
    n_done          BIGINT NOT NULL DEFAULT 0,
    n_error         BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX tasker_tasks_idempotency
    ON tasker_tasks (namespace, name, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasker_tasks_state ON tasker_tasks (state, id);
CREATE INDEX tasker_tasks_template ON tasker_tasks (namespace, name, id);

CREATE TABLE tasker_steps (
    id               BIGSERIAL PRIMARY KEY,
    task_id          BIGINT NOT NULL REFERENCES tasker_tasks (id),
    name             TEXT   NOT NULL,
    handler          TEXT   NOT NULL,
    state            TEXT   NOT NULL,
    pending_parents  BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    retry_base       BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    backoff          TEXT   NOT NULL,
    base_ms          BIGINT NOT NULL,
    max_ms           BIGINT NOT NULL,
    jitter           DOUBLE PRECISION NOT NULL,
    timeout_ms       BIGINT NOT NULL,
    priority         BIGINT NOT NULL DEFAULT 0,
    config           TEXT,
    ready_at         BIGINT,
    claim_token      BIGINT,
    worker           TEXT,
    lease_expires_at BIGINT,
    result           TEXT,
    last_error       TEXT,
    first_started_at BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (task_id, name)
);
CREATE INDEX tasker_steps_claim
    ON tasker_steps (handler, priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX tasker_steps_lease
    ON tasker_steps (lease_expires_at) WHERE state = 'running';

CREATE TABLE tasker_edges (
    parent_id BIGINT NOT NULL,
    child_id  BIGINT NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX tasker_edges_child ON tasker_edges (child_id, parent_id);

-- The audit trail and the durable event log; `id` is the event cursor. Writers take a
-- transaction-scoped advisory lock just before inserting their rows, so ids become
-- visible in id order and a reader's cursor never skips a row committed later.
CREATE TABLE tasker_transitions (
    id         BIGSERIAL PRIMARY KEY,
    task_id    BIGINT NOT NULL,
    step_id    BIGINT,
    step_name  TEXT,
    from_state TEXT,
    to_state   TEXT   NOT NULL,
    at         BIGINT NOT NULL,
    attempt    BIGINT,
    worker     TEXT,
    reason     TEXT,
    details    TEXT
);
CREATE INDEX tasker_transitions_task ON tasker_transitions (task_id, id);
