'use strict';
// Signals from Node.js, on SQLite and PostgreSQL: a step with `wait_for` waits until
// `sendSignal`; its payload is the step's result for the next handler; bad signals
// reject with the matching errors and change nothing.

const test = require('node:test');
const assert = require('node:assert/strict');
const { STORES, pkg, withTasker, allEvents, fingerprint } = require('./helpers');

const tasker = pkg();
const { Worker } = tasker;

const APPROVAL = {
  namespace: 't',
  name: 'approval',
  version: '1',
  steps: [
    { name: 'fetch', handler: 'fetch' },
    { name: 'approve', depends_on: ['fetch'], wait_for: { signal: 'approved', timeout_s: 60 } },
    { name: 'ship', handler: 'ship', depends_on: ['approve'] },
  ],
};

for (const store of STORES) {
  test.describe(`signals on ${store}`, () => {
    test('sendSignal releases the waiting step with its payload', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(APPROVAL);
        const { task_id } = await t.createTask('t', 'approval', { context: { order: 7 } });
        const seen = [];
        const worker = () =>
          new Worker(t)
            .handle('fetch', (step) => step.context.order)
            .handle('ship', (step) => {
              seen.push(step.results.approve);
              return 'shipped';
            });
        await worker().runUntilIdle();
        const steps = (await t.getTask(task_id)).steps;
        const approve = steps.find((s) => s.name === 'approve');
        assert.equal(approve.state, 'waiting');
        assert.equal(typeof approve.wait_until, 'string');
        const out = await t.sendSignal(task_id, 'approved', { by: 'ada' });
        assert.deepEqual(out.steps, [{ step_id: approve.id, step_name: 'approve', state: 'complete' }]);
        await worker().runUntilIdle();
        assert.deepEqual(seen, [{ by: 'ada' }]);
        assert.equal((await t.getTask(task_id)).state, 'complete');
        const names = (await allEvents(t, { taskId: task_id })).map((e) => e.event);
        assert.ok(names.includes('step.waiting') && names.includes('step.signalled'), names.join());
        await assert.rejects(t.sendSignal(task_id, 'approved'), tasker.InvalidStateError);
      }));

    test('an early signal is kept; bad signals reject and change nothing', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(APPROVAL);
        const { task_id } = await t.createTask('t', 'approval');
        assert.equal((await t.sendSignal(task_id, 'approved', 'early')).steps[0].state, 'pending');
        const before = await fingerprint(t);
        await assert.rejects(t.sendSignal(task_id, 'approved', 2), tasker.ConflictError);
        await assert.rejects(t.sendSignal(task_id, 'aproved'), (e) => {
          assert.ok(e instanceof tasker.NotFoundError);
          assert.match(e.message, /did you mean `approved`/);
          return true;
        });
        await assert.rejects(t.sendSignal(999999, 'approved'), tasker.NotFoundError);
        await assert.rejects(t.sendSignal(task_id, 'not a name'), tasker.InvalidArgumentError);
        await assert.rejects(t.sendSignal(task_id, 7), TypeError);
        assert.deepEqual(await fingerprint(t), before);
        await new Worker(t)
          .handle('fetch', () => 1)
          .handle('ship', (step) => step.results.approve)
          .runUntilIdle();
        const ship = (await t.getTask(task_id)).steps.find((s) => s.name === 'ship');
        assert.equal(ship.result, 'early');
      }));
  });
}
