-- Step timeouts are bounded (1 ms to 30 days; templates: timeout_s 1 to 2592000). Steps
-- created before the bound from a template with a huge timeout_s hold a timeout_ms that
-- overflowed (negative, or so large that adding a time overflows an integer and every claim
-- of their handler failed): hold them to the bound, as the engine now holds templates.
UPDATE tasker_steps SET timeout_ms = 2592000000
 WHERE timeout_ms > 2592000000 OR timeout_ms < 1;
