'use strict';
// Dynamic fan-out from Node.js, on SQLite and PostgreSQL: a `fan_out` step runs its
// handler once per item of a parent's list (the item and index in
// `step.config.fan_out`), and the join gets every result in item order.

const test = require('node:test');
const assert = require('node:assert/strict');
const { STORES, pkg, withTasker } = require('./helpers');

const { Worker } = pkg();

const FAN = {
  namespace: 't',
  name: 'fan',
  version: '1',
  defaults: { retry: { max_attempts: 2, base_ms: 1, max_ms: 5, jitter: 0 } },
  steps: [
    { name: 'split', handler: 'split' },
    { name: 'square', handler: 'square', depends_on: ['split'], fan_out: { items: '$results.split.numbers', max_items: 50 } },
    { name: 'total', handler: 'total', depends_on: ['square'] },
  ],
};

for (const store of STORES) {
  test.describe(`fan-out on ${store}`, () => {
    test('one instance per item; the join gets the results in item order', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(FAN);
        const { task_id } = await t.createTask('t', 'fan', { context: { n: 5 } });
        const seen = [];
        await new Worker(t, { concurrency: 3 })
          .handle('split', (step) => ({ numbers: [...Array(step.context.n).keys()] }))
          .handle('square', (step) => {
            const { item, index, count } = step.config.fan_out;
            seen.push([step.stepName, index, count]);
            return item * item;
          })
          .handle('total', (step) => step.results.square)
          .runUntilIdle();
        const task = await t.getTask(task_id);
        assert.equal(task.state, 'complete');
        assert.equal(task.steps_total, 8);
        assert.deepEqual(task.steps.find((s) => s.name === 'total').result, [0, 1, 4, 9, 16]);
        assert.deepEqual(seen.sort(), [0, 1, 2, 3, 4].map((i) => [`square[${i}]`, i, 5]));
      }));

    test('a list over the bound fails the step permanently', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(FAN);
        const { task_id } = await t.createTask('t', 'fan', { context: { n: 51 } });
        await new Worker(t)
          .handle('split', (step) => ({ numbers: [...Array(step.context.n).keys()] }))
          .handle('square', () => 0)
          .runUntilIdle();
        const task = await t.getTask(task_id);
        assert.equal(task.state, 'error');
        const square = task.steps.find((s) => s.name === 'square');
        assert.equal(square.error.kind, 'fan_out_too_large');
        assert.equal(square.error.retryable, false);
      }));
  });
}
