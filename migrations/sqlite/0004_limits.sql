-- Concurrency and rate limits (docs/scheduling.md). Each step keeps the keys its task's
-- context gave it when the task was created; `limited` is 1 when it has either, so the
-- claim path reads unlimited steps (the common case) from their own index range as
-- before, and looks at limited ones separately.
ALTER TABLE tasker_steps ADD COLUMN limited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasker_steps ADD COLUMN concurrency_key TEXT;
ALTER TABLE tasker_steps ADD COLUMN concurrency_max INTEGER;
ALTER TABLE tasker_steps ADD COLUMN rate_key TEXT;
ALTER TABLE tasker_steps ADD COLUMN rate_limit INTEGER;
ALTER TABLE tasker_steps ADD COLUMN rate_per_ms INTEGER;

DROP INDEX tasker_steps_claim;
CREATE INDEX tasker_steps_claim
    ON tasker_steps (handler, limited, priority DESC, ready_at) WHERE state = 'ready';
-- Running steps per concurrency key: what a limited claim counts.
CREATE INDEX tasker_steps_concurrency
    ON tasker_steps (concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- Starts of rate-limited steps inside their window (a sliding log): a claim counts the
-- key's starts in the last `per_ms` and drops older ones.
CREATE TABLE tasker_rate_starts (
    key    TEXT    NOT NULL,
    per_ms INTEGER NOT NULL,
    at     INTEGER NOT NULL
);
CREATE INDEX tasker_rate_starts_key ON tasker_rate_starts (key, per_ms, at);

-- Limited ready steps by concurrency key: when a claim's best candidates are all held
-- back, a skip scan over this index finds the best step of each other key (one probe
-- per key), so one key's long queue does not hide the others.
CREATE INDEX tasker_steps_limited_key
    ON tasker_steps (handler, concurrency_key, priority DESC, ready_at)
    WHERE state = 'ready' AND limited = 1;
