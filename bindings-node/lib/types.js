'use strict';
// The engine's closed sets of names, as frozen arrays (docs/api.md, "State machines"
// and "Events"). The shapes of responses are documented in index.d.ts.

/** Every task state. */
const TASK_STATES = Object.freeze(['pending', 'running', 'complete', 'error', 'cancelled']);

/** Every step state. */
const STEP_STATES = Object.freeze([
  'pending',
  'ready',
  'running',
  'waiting',
  'complete',
  'error',
  'cancelled',
  'resolved_manually',
]);

/** Every event name (`tasker.on(name, cb)` also takes `'*'` for all). */
const EVENT_NAMES = Object.freeze([
  'task.created',
  'task.started',
  'task.completed',
  'task.failed',
  'task.cancelled',
  'task.resumed',
  'step.created',
  'step.ready',
  'step.started',
  'step.completed',
  'step.failed',
  'step.retry_scheduled',
  'step.lease_expired',
  'step.released',
  'step.timed_out',
  'step.retry_requested',
  'step.resolved_manually',
  'step.cancelled',
  'step.waiting',
  'step.signalled',
  'step.fanned_out',
]);

/** Why a held step must stop (`worker_next`'s `stop[].reason`, `step.signal.reason`). */
const STOP_REASONS = Object.freeze(['cancelled', 'timeout', 'lease_lost', 'task_timeout']);

module.exports = { TASK_STATES, STEP_STATES, EVENT_NAMES, STOP_REASONS };
