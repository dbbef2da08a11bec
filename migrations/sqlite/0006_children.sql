-- Child tasks (issue 19): a handler starts tasks with `create_task {parent: {step_id,
-- claim_token}}`; its step may then wait (state `waiting`, deadline `wait_until`) until
-- every child task is final. One row per child, in start order (`id`); the key is the
-- child's key under its parent step (the child task's idempotency key is
-- `child:<parent_step_id>:<key>`).
CREATE TABLE tasker_children (
    id             INTEGER PRIMARY KEY,
    parent_step_id INTEGER NOT NULL,
    parent_task_id INTEGER NOT NULL,
    child_task_id  INTEGER NOT NULL,
    key            TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (parent_step_id, key)
);
-- A child's parent (get_task of the child).
CREATE UNIQUE INDEX tasker_children_child ON tasker_children (child_task_id);
-- A task's children (get_task, cancel_task of the parent).
CREATE INDEX tasker_children_parent_task ON tasker_children (parent_task_id);
-- The steps waiting for their children (what the follow-up after each completion and
-- the sweep read), so that reading them costs the number of waiting parents, not a
-- scan of every step.
CREATE INDEX tasker_steps_waiting_parents
    ON tasker_steps (id) WHERE state = 'waiting' AND handler NOT LIKE 'tasker.%';
