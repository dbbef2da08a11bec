-- The lease index again, with a predicate on lease_expires_at (set exactly while a step
-- runs, cleared by every way out of `running`) instead of on state. With
-- `WHERE state = 'running'` the planner would use this index for any statement that
-- checks `state = 'running'`, such as completing 256 steps by id: a bitmap scan over
-- every entry left by steps finished since the last vacuum, so each batch cost more
-- than the one before. Now those statements go by primary key, and the sweep
-- (`lease_expires_at < now`, which implies NOT NULL) still uses this index.
DROP INDEX tasker_steps_lease;
CREATE INDEX tasker_steps_lease ON tasker_steps (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
