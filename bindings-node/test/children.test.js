'use strict';
// Child tasks from Node.js, on SQLite and PostgreSQL: a handler starts child tasks with
// `step.startChild` and returns `waitForChildren()`; the same worker runs the children,
// and the parent step completes with their results in start order.

const test = require('node:test');
const assert = require('node:assert/strict');
const { STORES, pkg, withTasker } = require('./helpers');

const { Worker, waitForChildren } = pkg();

const RETRY = { max_attempts: 2, base_ms: 1, max_ms: 5, jitter: 0 };
const FAMILY = {
  namespace: 't',
  name: 'family',
  version: '1',
  defaults: { retry: RETRY },
  steps: [
    { name: 'spawn', handler: 'spawn' },
    { name: 'after', handler: 'after', depends_on: ['spawn'] },
  ],
};
const KID = { namespace: 't', name: 'kid', version: '1', defaults: { retry: RETRY }, steps: [{ name: 'work', handler: 'work' }] };

for (const store of STORES) {
  test.describe(`child tasks on ${store}`, () => {
    test('a handler starts children, waits for them and its step gets their results', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(FAMILY);
        await t.registerTemplate(KID);
        const { task_id } = await t.createTask('t', 'family', { context: { n: 3 } });
        const started = [];
        await new Worker(t, { concurrency: 2 })
          .handle('spawn', async (step) => {
            for (let i = 0; i < step.context.n; i++) {
              started.push(await step.startChild({ namespace: 't', name: 'kid', key: `kid-${i}`, context: { i } }));
            }
            // The same key again: the same task.
            assert.equal(await step.startChild({ namespace: 't', name: 'kid', key: 'kid-0', context: { i: 0 } }), started[0]);
            return waitForChildren();
          })
          .handle('work', (step) => step.context.i * 10)
          .handle('after', (step) => step.results.spawn.children.map((c) => c.results.work))
          .runUntilIdle();
        const task = await t.getTask(task_id);
        assert.equal(task.state, 'complete');
        const spawn = task.steps.find((s) => s.name === 'spawn');
        assert.deepEqual(spawn.children, started);
        assert.deepEqual(spawn.result.children.map((c) => c.key), ['kid-0', 'kid-1', 'kid-2']);
        assert.deepEqual(task.steps.find((s) => s.name === 'after').result, [0, 10, 20]);
        const child = await t.getTask(started[2]);
        assert.deepEqual(child.parent, { task_id, step_id: spawn.id, step_name: 'spawn' });
      }));

    test('startChild without a key is refused before anything is stored', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(FAMILY);
        await t.registerTemplate(KID);
        const { task_id } = await t.createTask('t', 'family');
        let refused = null;
        await new Worker(t)
          .handle('spawn', async (step) => {
            try {
              await step.startChild({ namespace: 't', name: 'kid' });
            } catch (e) {
              refused = e;
            }
            return 1;
          })
          .handle('after', () => 2)
          .runUntilIdle();
        assert.ok(refused instanceof TypeError, String(refused));
        assert.equal((await t.getTask(task_id)).state, 'complete');
        assert.equal((await t.listTasks({ name: 'kid' })).tasks.length, 0);
      }));
  });
}
