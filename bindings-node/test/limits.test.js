'use strict';
// Concurrency and rate limits (docs/scheduling.md) through the Node package, on SQLite
// and PostgreSQL: a template with limits is accepted, the Worker never runs more than
// `max` steps of a key at once (counted inside the handlers), a rate limit spaces
// starts, explainTask says why a step waits, and bad limits are refused.

const test = require('node:test');
const assert = require('node:assert/strict');
const { STORES, pkg, withTasker, sleep } = require('./helpers');

const tasker = pkg();
const { Worker } = tasker;

function limited(name, step) {
  return { namespace: 't', name, version: '1', steps: [{ name: 'work', handler: 'work', ...step }] };
}

for (const store of STORES) {
  test.describe(`limits on ${store}`, () => {
    test('a concurrency key from the context caps running steps per key', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(limited('conc', { concurrency: { key: '$context.k', max: 1 } }));
        for (let i = 0; i < 8; i++) await t.createTask('t', 'conc', { context: { k: i % 2 } });
        const now = { 0: 0, 1: 0 };
        const most = { 0: 0, 1: 0 };
        const worker = new Worker(t, { concurrency: 4 }).handle('work', async (step) => {
          const k = step.context.k;
          now[k] += 1;
          most[k] = Math.max(most[k], now[k]);
          await sleep(15);
          now[k] -= 1;
          return k;
        });
        const counts = await worker.runUntilIdle();
        assert.equal(counts.completed, 8);
        assert.deepEqual(most, { 0: 1, 1: 1 });
      }));

    test('explainTask says a ready step is held by its limit', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(limited('held', { concurrency: { key: 'shared', max: 1 } }));
        const a = await t.createTask('t', 'held');
        const b = await t.createTask('t', 'held');
        const got = await t.call('claim', { handlers: ['work'], limit: 5, worker_id: 'node' });
        assert.equal(got.steps.length, 1);
        const waiting = got.steps[0].task_id === a.task_id ? b : a;
        const why = await t.explainTask(waiting.task_id);
        assert.equal(why.steps[0].status, 'held_by_limit');
        assert.match(why.steps[0].reason, /concurrency key `global:shared` has 1 of 1 running/);
        assert.deepEqual(why.steps[0].limits.concurrency, { key: 'global:shared', running: 1, max: 1 });
      }));

    test('a rate limit spaces the starts', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(limited('rate', { rate_limit: { limit: 2, per_ms: 200 } }));
        for (let i = 0; i < 6; i++) await t.createTask('t', 'rate');
        const starts = [];
        const worker = new Worker(t, { concurrency: 2 }).handle('work', () => {
          starts.push(Date.now());
          return null;
        });
        const counts = await worker.runUntilIdle();
        assert.equal(counts.completed, 6);
        // Three windows of two: the last pair starts at least two windows after the first.
        assert.ok(starts[5] - starts[0] >= 380, `starts ${starts.map((s) => s - starts[0])}`);
      }));

    test('bad limits are refused', () =>
      withTasker(store, async (t) => {
        await assert.rejects(t.registerTemplate(limited('bad', { concurrency: { key: 'k', max: 0 } })), (e) =>
          e instanceof tasker.InvalidTemplateError && e.code === 'invalid_template' && e.details.problem === 'bad_concurrency');
        await t.registerTemplate(limited('ctx', { rate_limit: { key: '$context.account', limit: 1, per_ms: 1000 } }));
        await assert.rejects(t.createTask('t', 'ctx', { context: {} }), (e) =>
          e.code === 'invalid_argument' && e.details.field === 'context.account');
      }));
  });
}
