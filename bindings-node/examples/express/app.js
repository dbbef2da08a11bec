'use strict';
// An Express 5 app whose orders run as Tasker tasks, with a worker in the same process.
//
//   POST /orders        body: {"customer": "ada", "items": [{"sku": "book", "qty": 2}]}
//                       header Idempotency-Key (optional): the same key twice gives one task
//                       -> 201 {"task_id", "created", "state"} (200 when the key was seen)
//   GET  /orders/:id    -> the task's state and its steps (state, attempts, result, error)
//   GET  /healthz       -> the engine's ping and the worker's counts
//
// The template (templates/order.yaml) is registered at start-up; a tasker.Worker with
// the async handlers below runs in this process and stops gracefully on SIGINT/SIGTERM.
// Engine errors become JSON `{code, message, details}` with the HTTP status of their
// code: a body that is not JSON (`invalid_json`) or that the template's input_schema
// rejects (`schema_violation`) is 400; an unknown order is 404 `not_found`.
//
// Settings (environment): TASKER_DATABASE_URL (default sqlite://<tmp dir>/orders.db),
// PORT (default 3000), ORDER_WORKER_CONCURRENCY (default 4).

const path = require('node:path');
const os = require('node:os');
const fs = require('node:fs');
const express = require('express');
const { Tasker, Worker, TaskerError, PermanentError } = require('tasker');

const TEMPLATE = path.join(__dirname, 'templates', 'order.yaml');
const NAMESPACE = 'shop';
const NAME = 'order';

// The HTTP status of each engine error code a client can cause; other codes are the
// server's problem (500), except an unreachable database (503).
const STATUS_OF_CODE = {
  invalid_json: 400,
  schema_violation: 400,
  invalid_argument: 400,
  too_large: 413,
  not_found: 404,
  conflict: 409,
  unavailable: 503,
};

// -- the handlers: async JavaScript, one per step of the template --------------------

const handlers = {
  async validate_order(step) {
    const { customer, items } = step.context;
    if (items.some((i) => i.sku === 'forbidden')) {
      throw new PermanentError(`item forbidden cannot be sold to ${customer}`);
    }
    return { valid: true, lines: items.length };
  },
  async reserve_stock(step) {
    return { reserved: step.context.items.map((i) => `${i.sku}x${i.qty}`) };
  },
  async charge_card(step) {
    const qty = step.context.items.reduce((n, i) => n + i.qty, 0);
    return { charged: qty * step.config.cents_per_item, currency: step.config.currency };
  },
  async ship_order(step) {
    const { reserved } = step.results.reserve;
    const { charged } = step.results.charge;
    return { shipped: reserved, tracking: `TRK-${step.taskId}`, paid: charged };
  },
};

/** An async route handler whose rejections reach the error middleware. */
const route = (fn) => (req, res, next) => fn(req, res).catch(next);

/**
 * Opens the engine, registers the template, starts the worker and builds the app.
 * Resolves with `{app, tasker, worker, close}`; `close()` stops the worker gracefully
 * and closes the handle.
 */
async function createApp(options = {}) {
  let databaseUrl = options.databaseUrl || process.env.TASKER_DATABASE_URL;
  if (!databaseUrl) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-express-'));
    databaseUrl = `sqlite://${path.join(dir, 'orders.db')}`;
  }
  const settings = { database_url: databaseUrl, ...(options.settings || {}) };
  const concurrency = options.concurrency || Number(process.env.ORDER_WORKER_CONCURRENCY || 4);

  const tasker = await Tasker.open(settings);
  // Registering the same template again is a no-op, so every start may do it.
  await tasker.registerTemplate(TEMPLATE);
  const worker = new Worker(tasker, { concurrency, name: 'express-worker', handlers });
  await worker.start();

  const app = express();
  app.use(express.json());

  app.post(
    '/orders',
    route(async (req, res) => {
      const created = await tasker.createTask(NAMESPACE, NAME, {
        context: req.body === undefined ? {} : req.body,
        idempotencyKey: req.get('Idempotency-Key') || undefined,
      });
      res.status(created.created ? 201 : 200).json(created);
    }),
  );

  app.get(
    '/orders/:id',
    route(async (req, res) => {
      const id = Number(req.params.id);
      if (!Number.isSafeInteger(id) || id < 1) {
        res.status(400).json({ code: 'invalid_argument', message: `not an order id: ${req.params.id}`, details: null });
        return;
      }
      const task = await tasker.getTask(id);
      res.json({
        task_id: task.id,
        state: task.state,
        customer: task.context.customer,
        idempotency_key: task.idempotency_key ?? null,
        steps_done: task.steps_done,
        steps_total: task.steps_total,
        steps: task.steps.map((s) => ({
          name: s.name,
          state: s.state,
          attempts: s.attempts,
          result: s.result,
          error: s.error,
        })),
      });
    }),
  );

  app.get(
    '/healthz',
    route(async (req, res) => {
      res.json({ engine: await tasker.ping(), worker_running: worker.running, worker: await worker.stats() });
    }),
  );

  // Engine errors and unreadable bodies as JSON {code, message, details}.
  app.use((err, req, res, next) => {
    if (err instanceof TaskerError) {
      res.status(STATUS_OF_CODE[err.code] || 500).json({ code: err.code, message: err.message, details: err.details });
    } else if (err && err.type === 'entity.parse.failed') {
      res.status(400).json({ code: 'invalid_json', message: `the body is not JSON: ${err.message}`, details: null });
    } else {
      next(err);
    }
  });

  async function close() {
    // Graceful: running handlers get 5 s to finish; unstarted claims go back.
    if (worker.running) await worker.stop({ graceMs: 5000 });
    await tasker.close();
  }

  return { app, tasker, worker, close };
}

module.exports = { createApp, handlers };

if (require.main === module) {
  (async () => {
    const { app, close } = await createApp();
    const port = Number(process.env.PORT || 3000);
    const server = app.listen(port, () => console.log(`orders on http://127.0.0.1:${server.address().port}`));
    const shutdown = () => server.close(() => close().then(() => process.exit(0)));
    process.once('SIGINT', shutdown);
    process.once('SIGTERM', shutdown);
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
