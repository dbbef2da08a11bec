'use strict';
// Scheduling through the Node package, on both stores: delayed tasks (runAt/delayMs),
// task timeouts (timeoutS, step.signal reason 'task_timeout') and cron schedules on a
// manual clock; and the testing harness running delayed tasks and firing schedules.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { STORES, pkg, withTasker, chain, until } = require('./helpers');

const tasker = pkg();
const { Worker } = tasker;
const { openHarness } = require(path.join(process.env.TASKER_NODE_PACKAGE || path.join(__dirname, '..'), 'testing'));

const advance = (t, ms) => t.call('advance_clock', { ms });

for (const store of STORES) {
  test.describe(`scheduling on ${store}`, () => {
    test('a delayed task waits for its time', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('c', [['a'], ['b', ['a']]]));
        const now = (await advance(t, 0)).now_ms;
        const { task_id } = await t.createTask('t', 'c', { runAt: new Date(now + 90000) });
        const info = await t.getTask(task_id);
        assert.equal(info.delayed, true);
        assert.equal(info.run_at, new Date(now + 90000).toISOString());
        assert.equal(info.steps[0].state, 'pending');
        assert.deepEqual((await t.call('claim', { handlers: ['a'] })).steps, []);
        assert.equal((await t.call('next_ready_at', {})).in_ms, 90000);
        await advance(t, 90000);
        assert.equal((await t.call('claim', { handlers: ['a'] })).steps.length, 1);
        await assert.rejects(
          t.createTask('t', 'c', { runAt: '2030-01-01T00:00:00Z', delayMs: 5 }),
          tasker.InvalidArgumentError,
        );
        await assert.rejects(t.createTask('t', 'c', { runAt: new Date('nope') }), TypeError);
        await assert.rejects(t.createTask('t', 'c', { delay: 5 }), TypeError);
        const batch = await t.createTasks([
          { namespace: 't', name: 'c', delayMs: 1000 },
          { namespace: 't', name: 'c', timeoutS: 5 },
        ]);
        const states = [];
        for (const b of batch) states.push((await t.getTask(b.task_id)).steps[0].state);
        assert.deepEqual(states, ['pending', 'ready']);
      }, { clock: 'manual' }));

    test('a task timeout aborts step.signal with task_timeout', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('c', [['a'], ['b', ['a']]]));
        const { task_id } = await t.createTask('t', 'c', { timeoutS: 30 });
        assert.equal((await t.getTask(task_id)).timeout_s, 30);
        let reason = null;
        let started = false;
        const worker = new Worker(t, { concurrency: 1, leaseMs: 600000 });
        worker.handle('a', (step) => {
          started = true;
          return new Promise((resolve) => {
            step.signal.addEventListener('abort', () => {
              reason = step.signal.reason.code;
              resolve('late');
            });
          });
        });
        await worker.start();
        await until(() => started, 10000, 'the handler to start');
        await advance(t, 30000);
        await until(() => reason !== null, 10000, 'the abort');
        assert.equal(reason, 'task_timeout');
        await worker.stop({ graceMs: 1000 });
        const info = await t.getTask(task_id);
        assert.equal(info.state, 'error');
        assert.deepEqual(info.steps.map((s) => s.state), ['cancelled', 'cancelled']);
        assert.ok(tasker.STOP_REASONS.includes('task_timeout'));
      }, { clock: 'manual' }));

    test('a schedule fires once per tick; bad schedules are refused', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('c', [['a']]));
        const s = await t.createSchedule('minutely', 't', 'c', { cron: '* * * * *', context: { k: 1 } });
        assert.deepEqual(s.catch_up, { policy: 'skip' });
        for (let i = 0; i < 3; i++) await advance(t, 60000);
        const tasks = (await t.listTasks({ namespace: 't', name: 'c' })).tasks;
        assert.equal(tasks.length, 3);
        assert.equal(new Set(tasks.map((x) => x.idempotency_key)).size, 3);
        assert.equal((await t.pauseSchedule('minutely')).next_fire_at, null);
        await advance(t, 600000);
        assert.equal((await t.listTasks()).tasks.length, 3);
        assert.equal((await t.resumeSchedule('minutely')).paused, false);
        assert.deepEqual((await t.listSchedules()).map((x) => x.name), ['minutely']);
        await assert.rejects(t.createSchedule('minutely', 't', 'c', { cron: '* * * * *' }), tasker.ConflictError);
        await assert.rejects(t.createSchedule('x', 't', 'c', { cron: '61 * * * *' }), tasker.InvalidArgumentError);
        await assert.rejects(
          t.createSchedule('x', 't', 'c', { cron: '* * * * *', timezone: 'Nowhere/Land' }),
          tasker.InvalidArgumentError,
        );
        await assert.rejects(t.createSchedule('x', 't', 'nope', { cron: '* * * * *' }), tasker.NotFoundError);
        await assert.rejects(t.createSchedule('x', 't', 'c', { cron: '* * * * *', every: 1 }), TypeError);
        await t.deleteSchedule('minutely');
        await assert.rejects(t.getSchedule('minutely'), tasker.NotFoundError);
        assert.deepEqual(await t.listSchedules(), []);
      }, { clock: 'manual' }));
  });
}

test('the harness runs delayed tasks and fires schedules on advance', async () => {
  const h = await openHarness();
  try {
    const t = h.tasker;
    await t.registerTemplate(chain('c', [['a']]));
    await t.createTask('t', 'c', { delayMs: 3600000 });
    const ran = [];
    const worker = new Worker(t).handle('a', async () => {
      ran.push(await h.now());
      return null;
    });
    assert.equal((await h.runUntilIdle(worker)).completed, 1);
    await t.createSchedule('hourly', 't', 'c', { cron: '0 * * * *' });
    await h.advance(2 * 3600);
    assert.equal((await h.runUntilIdle(worker)).completed, 1);
    await h.advance(3600);
    assert.equal((await h.runUntilIdle(worker)).completed, 1);
    assert.equal(ran.length, 3);
  } finally {
    await h.close();
  }
});
