'use strict';
// tasker: workflow orchestration on a Rust engine, with JavaScript handlers.
//
//   const { Tasker, Worker } = require('tasker');
//   const tasker = await Tasker.open('sqlite://app.db');
//   await tasker.registerTemplate('templates/orders.yaml');
//   await tasker.createTask('orders', 'fulfill', { context: { order_id: 42 } });
//   const worker = new Worker(tasker, { concurrency: 4 });
//   worker.handle('validate_order', async (step) => ({ valid: step.context.order_id > 0 }));
//   await worker.runUntilIdle();
//
// The engine's operations, errors and events are documented in docs/api.md.

const native = require('./lib/native');
const { Tasker } = require('./lib/client');
const { Worker, Step, WaitForChildren, waitForChildren } = require('./lib/worker');
const errors = require('./lib/errors');
const types = require('./lib/types');

module.exports = {
  Tasker,
  Worker,
  Step,
  WaitForChildren,
  waitForChildren,
  TaskerError: errors.TaskerError,
  InvalidJsonError: errors.InvalidJsonError,
  InvalidUtf8Error: errors.InvalidUtf8Error,
  InvalidArgumentError: errors.InvalidArgumentError,
  UnknownOperationError: errors.UnknownOperationError,
  InvalidTemplateError: errors.InvalidTemplateError,
  SchemaViolationError: errors.SchemaViolationError,
  NotFoundError: errors.NotFoundError,
  ConflictError: errors.ConflictError,
  LeaseLostError: errors.LeaseLostError,
  InvalidStateError: errors.InvalidStateError,
  TooLargeError: errors.TooLargeError,
  UnavailableError: errors.UnavailableError,
  DatabaseError: errors.DatabaseError,
  ClosedError: errors.ClosedError,
  InternalError: errors.InternalError,
  ERROR_CLASSES: errors.ERROR_CLASSES,
  ERROR_CODES: errors.ERROR_CODES,
  HandlerError: errors.HandlerError,
  PermanentError: errors.PermanentError,
  RetryableError: errors.RetryableError,
  TASK_STATES: types.TASK_STATES,
  STEP_STATES: types.STEP_STATES,
  EVENT_NAMES: types.EVENT_NAMES,
  STOP_REASONS: types.STOP_REASONS,
  /** The version of the engine (tasker-core) this addon was built with. */
  version: native.version(),
};
// `import tasker from 'tasker'` (TypeScript's CommonJS interop) gets the same object.
module.exports.default = module.exports;
