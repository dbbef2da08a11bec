'use strict';
// The Worker over core's worker sessions, on SQLite and PostgreSQL: handlers and their
// inputs, every way a handler can fail, unserialisable and oversize results,
// concurrency, step.signal on cancel and timeout, graceful stop, and an event loop that
// keeps ticking while the worker waits for work.

const test = require('node:test');
const assert = require('node:assert/strict');
const { STORES, pkg, withTasker, chain, allEvents, sleep, until } = require('./helpers');

const tasker = pkg();
const { Worker, PermanentError, RetryableError } = tasker;

const DIAMOND = {
  ...chain('diamond', [['validate'], ['reserve', ['validate']], ['charge', ['validate']], ['ship', ['reserve', 'charge']]]),
};
DIAMOND.steps[2].config = { currency: 'EUR' };

async function stepOf(t, taskId, name) {
  return (await t.getTask(taskId)).steps.find((s) => s.name === name);
}

for (const store of STORES) {
  test.describe(`worker on ${store}`, () => {
    test('runUntilIdle runs a diamond: context, config, parent results, attempts', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(DIAMOND);
        const { task_id } = await t.createTask('t', 'diamond', { context: { order: 7 } });
        const seen = {};
        const worker = new Worker(t, { concurrency: 2, name: 'node-test' });
        worker
          .handle('validate', async (step) => {
            seen.validate = step;
            return { ok: step.context.order };
          })
          .handle('reserve', (step) => ({ reserved: step.results.validate.ok }))
          .handle('charge', async (step) => {
            await sleep(5);
            return { charged: 10, currency: step.config.currency };
          })
          .handle('ship', async (step) => ({ parents: Object.keys(step.results).sort(), sum: step.results.charge.charged }));
        const counts = await worker.runUntilIdle();
        assert.equal(counts.completed, 4);
        assert.equal(counts.failed, 0);
        assert.equal(worker.running, false);
        const task = await t.getTask(task_id);
        assert.equal(task.state, 'complete');
        const byName = Object.fromEntries(task.steps.map((s) => [s.name, s]));
        assert.deepEqual(byName.ship.result, { parents: ['charge', 'reserve'], sum: 10 });
        assert.deepEqual(byName.charge.result, { charged: 10, currency: 'EUR' });
        assert.equal(byName.validate.worker, 'node-test');
        const s = seen.validate;
        assert.equal(s.taskId, task_id);
        assert.equal(s.stepName, 'validate');
        assert.equal(s.handler, 'validate');
        assert.equal(s.attempt, 1);
        assert.equal(s.maxAttempts, 3);
        assert.equal(typeof s.stepId, 'number');
        assert.ok(s.signal instanceof AbortSignal);
        assert.equal(s.cancelled, false);
        // Nothing left: a second run finds nothing and returns at once.
        const again = await worker.runUntilIdle();
        assert.equal(again.completed, 0);
      }));

    test('failures: PermanentError, RetryableError with retryAfterMs, thrown strings and undefined, sync throws', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('fails', [['perm'], ['later'], ['str'], ['undef'], ['sync']]));
        const { task_id } = await t.createTask('t', 'fails');
        const attempts = {};
        const count = (name) => (attempts[name] = (attempts[name] || 0) + 1);
        const worker = new Worker(t, { concurrency: 3 });
        const logs = [];
        worker.on('log', (r) => logs.push(r));
        worker.handle('perm', async () => {
          count('perm');
          throw new PermanentError('card reported stolen', { details: { gateway: 'sandbox' } });
        });
        worker.handle('later', async () => {
          if (count('later') === 1) throw new RetryableError('busy', { retryAfterMs: 40 });
          return 'done later';
        });
        worker.handle('str', async () => {
          if (count('str') === 1) throw 'boom'; // eslint-disable-line no-throw-literal
          return 'ok';
        });
        worker.handle('undef', async () => {
          if (count('undef') === 1) throw undefined; // eslint-disable-line no-throw-literal
          return 'ok';
        });
        worker.handle('sync', (step) => {
          if (count('sync') === 1) step.context.missing.field = 1;
          return 'ok';
        });
        const counts = await worker.runUntilIdle();
        assert.deepEqual(attempts, { perm: 1, later: 2, str: 2, undef: 2, sync: 2 });
        // Core's log line for each failure reached the worker's 'log' event.
        const failures = logs.filter((r) => r.target === 'tasker::worker' && /step attempt failed/.test(r.message));
        assert.equal(failures.length, 5, JSON.stringify(logs));
        assert.ok(failures.some((r) => r.level === 'warn' && /kind=PermanentError/.test(r.message)));
        assert.equal(counts.completed, 4);
        assert.equal(counts.failed, 5);
        const task = await t.getTask(task_id);
        assert.equal(task.state, 'error');
        const s = Object.fromEntries(task.steps.map((x) => [x.name, x]));
        assert.equal(s.perm.state, 'error');
        assert.equal(s.perm.attempts, 1);
        assert.equal(s.perm.error.message, 'card reported stolen');
        assert.equal(s.perm.error.kind, 'PermanentError');
        assert.equal(s.perm.error.retryable, false);
        assert.deepEqual(s.perm.error.details, { gateway: 'sandbox' });
        assert.match(s.perm.error.backtrace, /worker\.test\.js/);
        assert.equal(s.later.state, 'complete');
        assert.equal(s.later.error.kind, 'RetryableError');
        assert.equal(s.later.error.retry_after_ms, 40);
        assert.equal(s.str.state, 'complete');
        assert.equal(s.str.error.message, 'boom');
        assert.equal(s.str.error.kind, 'string');
        assert.equal(s.str.error.retryable, true);
        assert.equal(s.undef.error.kind, 'undefined');
        assert.match(s.undef.error.message, /non-Error value was thrown: undefined/);
        assert.equal(s.sync.error.kind, 'TypeError');
        assert.match(s.sync.error.message, /Cannot set properties of undefined/);
        const retried = await allEvents(t, { taskId: task_id, types: ['step.retry_scheduled'] });
        const later = retried.find((e) => e.step_name === 'later');
        assert.equal(later.details.error.retry_after_ms, 40);
        // The retry came no earlier than asked.
        const started = await allEvents(t, { taskId: task_id, types: ['step.started'] });
        const [first, second] = started.filter((e) => e.step_name === 'later');
        const failedAt = Date.parse(later.at);
        assert.ok(Date.parse(second.at) - failedAt >= 38, `retried after ${Date.parse(second.at) - failedAt} ms`);
        assert.ok(first);
      }));

    test('results that are not JSON data or too large fail only their step', () =>
      withTasker(
        store,
        async (t) => {
          await t.registerTemplate(chain('results', [['cyclic'], ['func'], ['huge'], ['fine']]));
          const { task_id } = await t.createTask('t', 'results');
          const worker = new Worker(t, { concurrency: 2 });
          worker.handle('cyclic', async () => {
            const o = { n: 10n };
            o.self = o;
            return o;
          });
          worker.handle('func', async () => () => 1);
          worker.handle('huge', async () => 'x'.repeat(10000));
          worker.handle('fine', async () => undefined);
          await worker.runUntilIdle();
          const s = Object.fromEntries((await t.getTask(task_id)).steps.map((x) => [x.name, x]));
          for (const name of ['cyclic', 'func', 'huge']) {
            assert.equal(s[name].state, 'error', `${name}: ${JSON.stringify(s[name])}`);
            assert.equal(s[name].attempts, 1, `${name} is not retried`);
          }
          assert.match(JSON.stringify(s.cyclic.error), /circular/);
          assert.match(JSON.stringify(s.func.error), /function/);
          assert.match(JSON.stringify(s.huge.error), /too_large|result_too_large|limit/);
          assert.equal(s.fine.state, 'complete');
          assert.equal(s.fine.result, null);
        },
        { max_payload_bytes: 4096 },
      ));

    test('at most `concurrency` handlers run at once', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('one', [['work']]));
        for (let i = 0; i < 9; i++) await t.createTask('t', 'one', { context: { i } });
        let now = 0;
        let max = 0;
        const worker = new Worker(t, { concurrency: 3, batch: 6 });
        worker.handle('work', async () => {
          now++;
          max = Math.max(max, now);
          await sleep(30);
          now--;
          return null;
        });
        const counts = await worker.runUntilIdle();
        assert.equal(counts.completed, 9);
        assert.equal(max, 3);
        assert.equal((await t.stats()).tasks.complete, 9);
      }));

    test('step.signal aborts when the task is cancelled; start and stop', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('slow', [['wait']]));
        const { task_id } = await t.createTask('t', 'slow');
        let reason = null;
        let started = false;
        const worker = new Worker(t, { concurrency: 1 });
        worker.handle('wait', (step) => {
          started = true;
          return new Promise((resolve) => {
            step.signal.addEventListener('abort', () => {
              reason = step.signal.reason.code;
              resolve('too late');
            });
          });
        });
        await worker.start();
        assert.equal(worker.running, true);
        await until(() => started, 10000, 'the handler to start');
        await t.cancelTask(task_id, { reason: 'test' });
        await until(() => reason !== null, 10000, 'the abort');
        assert.equal(reason, 'cancelled');
        const counts = await worker.stop({ graceMs: 1000 });
        assert.equal(counts.completed, 0);
        assert.equal(worker.running, false);
        const step = await stepOf(t, task_id, 'wait');
        assert.equal(step.state, 'cancelled');
        assert.equal(step.result, null);
      }));

    test('step.signal aborts when the step times out', () =>
      withTasker(store, async (t) => {
        const tpl = chain('timed', [['wait']]);
        tpl.steps[0].timeout_s = 1;
        tpl.defaults.retry.max_attempts = 1;
        await t.registerTemplate(tpl);
        const { task_id } = await t.createTask('t', 'timed');
        let reason = null;
        const worker = new Worker(t);
        worker.handle('wait', (step) => new Promise((resolve) => {
          step.signal.addEventListener('abort', () => {
            reason = step.signal.reason.code;
            resolve(null);
          });
        }));
        await worker.start();
        await until(() => reason !== null, 15000, 'the timeout');
        assert.equal(reason, 'timeout');
        await worker.stop({ graceMs: 1000 });
        const step = await until(async () => {
          const s = await stepOf(t, task_id, 'wait');
          return s.state === 'error' ? s : null;
        }, 10000, 'the step to fail');
        assert.equal(step.attempts, 1);
      }));

    test('stop({graceMs}) waits for running handlers, then aborts and releases the rest', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('two', [['quick'], ['stuck']]));
        const { task_id } = await t.createTask('t', 'two');
        let stuckReason = null;
        let quickStarted = false;
        let stuckStarted = false;
        const worker = new Worker(t, { concurrency: 2 });
        worker.handle('quick', async () => {
          quickStarted = true;
          await sleep(100);
          return 'finished in the grace period';
        });
        worker.handle('stuck', (step) => {
          stuckStarted = true;
          return new Promise((resolve) => {
            step.signal.addEventListener('abort', () => {
              stuckReason = step.signal.reason.code;
              resolve('never reported');
            });
          });
        });
        await worker.start();
        await until(() => quickStarted && stuckStarted, 10000, 'both handlers');
        const counts = await worker.stop({ graceMs: 400 });
        assert.equal(counts.completed, 1);
        assert.equal(counts.released, 1);
        assert.equal(stuckReason, 'stopped');
        const task = await t.getTask(task_id);
        const s = Object.fromEntries(task.steps.map((x) => [x.name, x]));
        assert.equal(s.quick.state, 'complete');
        assert.equal(s.stuck.state, 'ready');
        assert.equal(s.stuck.result, null);
        // Released unrun: its attempt does not count; another worker finishes it.
        const next = new Worker(t).handle('stuck', () => 'second worker');
        await next.runUntilIdle();
        assert.equal((await stepOf(t, task_id, 'stuck')).result, 'second worker');
      }));

    test('the event loop keeps ticking while a worker waits for work', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('tick', [['work']]));
        const worker = new Worker(t).handle('work', async (step) => ({ got: step.context.n }));
        await worker.start();
        let ticks = 0;
        const timer = setInterval(() => ticks++, 10);
        try {
          await sleep(600);
          // ~60 ticks if the loop is free; a blocked loop would give almost none.
          assert.ok(ticks >= 20, `only ${ticks} ticks in 600 ms while the worker waited`);
          const { task_id } = await t.createTask('t', 'tick', { context: { n: 5 } });
          await until(async () => (await t.getTask(task_id)).state === 'complete', 10000, 'the task');
          assert.deepEqual((await stepOf(t, task_id, 'work')).result, { got: 5 });
          const before = ticks;
          await sleep(300);
          assert.ok(ticks - before >= 10, `only ${ticks - before} ticks in 300 ms after the task`);
        } finally {
          clearInterval(timer);
          await worker.stop();
        }
        const stats = await t.stats();
        assert.equal(stats.tasks.complete, 1);
      }));

    test('misuse: no handlers, starting twice, handlers added while running', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('m', [['a']]));
        await assert.rejects(new Worker(t).runUntilIdle(), /at least one handler/);
        const w = new Worker(t).handle('a', () => null);
        await assert.rejects(w.stop(), /not running/);
        await w.start();
        await assert.rejects(w.start(), /already running/);
        assert.throws(() => w.handle('b', () => null), /before the worker starts/);
        const st = await w.stats();
        assert.deepEqual(st.handlers, ['a']);
        assert.equal(st.held, 0);
        await w.stop();
        await assert.rejects(w.stats(), /not running/);
        // The engine checks the settings: a concurrency out of range is invalid_argument.
        await assert.rejects(new Worker(t, { concurrency: 0 }).handle('a', () => null).runUntilIdle(), tasker.InvalidArgumentError);
      }));
  });
}
