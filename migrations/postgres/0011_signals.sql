-- Signals (issue 19): a step with `wait_for` (handler `tasker.signal`) waits in state
-- `waiting` until `send_signal` names its signal, or until `wait_until` passes (the
-- sweep then fails it with kind `signal_timeout`). No existing function changes: the
-- engine moves ready `tasker.signal` steps to `waiting` itself, after the store call
-- that made them ready, with the sweep as the backstop.
ALTER TABLE tasker_steps ADD COLUMN wait_until BIGINT;
-- The sweep path for waits: waiting steps by deadline.
CREATE INDEX tasker_steps_wait
    ON tasker_steps (wait_until) WHERE state = 'waiting';

-- Signals sent to a task, one per (task, name): a signal sent before its step waits is
-- kept here and consumed when the step gets there; a second one of the same name is a
-- `conflict`.
CREATE TABLE tasker_signals (
    task_id  BIGINT NOT NULL,
    name     TEXT   NOT NULL,
    payload  TEXT   NOT NULL,
    sent_at  BIGINT NOT NULL,
    PRIMARY KEY (task_id, name)
);
