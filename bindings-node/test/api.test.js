'use strict';
// The Tasker handle over the real addon, on SQLite and PostgreSQL: templates, tasks,
// operator actions, errors, events, bad input and the handle lifecycle.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { STORES, pkg, withTasker, chain, allEvents, fingerprint, freshSettings, until, sleep } = require('./helpers');

const tasker = pkg();
const { Tasker } = tasker;

const ORDERS = chain('orders', [['validate'], ['charge', ['validate']], ['ship', ['charge']]]);

for (const store of STORES) {
  test.describe(`api on ${store}`, () => {
    test('ping and version', () =>
      withTasker(store, async (t) => {
        const p = await t.ping();
        assert.equal(p.ok, true);
        assert.equal(p.version, tasker.version);
        assert.match(tasker.version, /^\d+\.\d+\.\d+/);
        assert.equal(t.closed, false);
        assert.equal(typeof t.leaseMs, 'number');
        assert.equal(String(t), '[Tasker open]');
      }));

    test('registerTemplate: an object, a file path, YAML text; idempotent; conflict; replace', () =>
      withTasker(store, async (t, fresh) => {
        const r = await t.registerTemplate(ORDERS);
        assert.deepEqual(r, { namespace: 't', name: 'orders', version: '1', steps: 3, registered: true, unchanged: false });
        const again = await t.registerTemplate(ORDERS);
        assert.equal(again.registered, false);
        assert.equal(again.unchanged, true);
        assert.match(again.note, /nothing changed/);

        const file = path.join(fresh.dir, 'tpl.json');
        fs.writeFileSync(file, JSON.stringify(chain('fromfile', [['a']])));
        assert.equal((await t.registerTemplate(file)).name, 'fromfile');

        const yaml = 'namespace: t\nname: fromyaml\nversion: "2"\nsteps:\n  - name: a\n    handler: a\n';
        assert.equal((await t.registerTemplateText(yaml)).version, '2');
        assert.equal((await t.validateTemplateText(yaml)).valid, true);

        const other = chain('orders', [['validate']]);
        await assert.rejects(t.registerTemplate(other), (e) => {
          assert.ok(e instanceof tasker.ConflictError && e.code === 'conflict');
          assert.match(e.message, /steps\.charge removed; steps\.ship removed/);
          assert.match(e.message, /new version \(e\.g\. version: 2\)/);
          assert.equal(e.details.next_version, '2');
          return true;
        });
        assert.equal((await t.registerTemplate(other, { replace: true })).steps, 1);
        assert.equal((await t.getTemplate('t', 'orders')).steps.length, 1);
        assert.equal((await t.validateTemplate(ORDERS)).valid, true);

        await assert.rejects(t.registerTemplate(path.join(fresh.dir, 'missing.yaml')), tasker.NotFoundError);
        const cyc = chain('cyc', [['a', ['b']], ['b', ['a']]]);
        const before = await fingerprint(t);
        await assert.rejects(t.registerTemplate(cyc), (e) => {
          assert.ok(e instanceof tasker.InvalidTemplateError);
          assert.equal(e.details.problem, 'cycle');
          return true;
        });
        await assert.rejects(t.getTemplate('t', 'cyc'), tasker.NotFoundError);
        assert.deepEqual(await fingerprint(t), before);
      }));

    test('createTasks: one transaction, keys as createTask, a bad item stores nothing', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(ORDERS);
        const first = await t.createTask('t', 'orders', { idempotencyKey: 'k0' });
        const out = await t.createTasks([
          { namespace: 't', name: 'orders', idempotencyKey: 'k0' },
          { namespace: 't', name: 'orders', context: { order_id: 1 }, idempotencyKey: 'k1' },
          { namespace: 't', name: 'orders', context: { order_id: 2 }, idempotencyKey: 'k1' },
          { namespace: 't', name: 'orders', version: '1', priority: 3 },
        ]);
        assert.deepEqual(out.map((x) => x.created), [false, true, false, true]);
        assert.equal(out[0].task_id, first.task_id);
        assert.equal(out[1].task_id, out[2].task_id);
        assert.deepEqual((await t.getTask(out[1].task_id)).context, { order_id: 1 });
        assert.deepEqual(await t.createTasks([]), []);
        const before = await fingerprint(t);
        await assert.rejects(
          t.createTasks([{ namespace: 't', name: 'orders' }, { namespace: 't', name: 'nope' }]),
          (e) => {
            assert.ok(e instanceof tasker.NotFoundError);
            assert.ok(e.message.startsWith('tasks[1]'), e.message);
            assert.equal(e.details.index, 1);
            return true;
          },
        );
        await assert.rejects(t.createTasks([{ namespace: 't', name: 'orders', idempotency_key: 'x' }]), TypeError);
        await assert.rejects(t.createTasks('nope'), TypeError);
        assert.deepEqual(await fingerprint(t), before);
      }));

    test('createTask with an idempotency key, getTask, listTasks, explainTask', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(ORDERS);
        const a = await t.createTask('t', 'orders', { context: { order_id: 1 }, idempotencyKey: 'k1', priority: 2 });
        assert.equal(a.created, true);
        assert.equal(a.state, 'pending');
        const again = await t.createTask('t', 'orders', { context: { order_id: 99 }, idempotencyKey: 'k1' });
        assert.deepEqual(again, { task_id: a.task_id, created: false, state: 'pending' });
        const b = await t.createTask('t', 'orders', { version: '1' });

        const task = await t.getTask(a.task_id);
        assert.equal(task.id, a.task_id);
        assert.deepEqual(task.context, { order_id: 1 });
        assert.equal(task.idempotency_key, 'k1');
        assert.equal(task.priority, 2);
        assert.deepEqual(
          task.steps.map((s) => [s.name, s.state]),
          [
            ['validate', 'ready'],
            ['charge', 'pending'],
            ['ship', 'pending'],
          ],
        );
        assert.deepEqual((await t.getTask(b.task_id)).context, {});

        const page = await t.listTasks({ namespace: 't', limit: 1 });
        assert.equal(page.tasks.length, 1);
        assert.equal(page.tasks[0].id, b.task_id);
        const rest = await t.listTasks({ namespace: 't', cursor: page.next_cursor });
        assert.deepEqual(
          rest.tasks.map((x) => x.id),
          [a.task_id],
        );
        assert.equal((await t.listTasks({ state: 'complete' })).tasks.length, 0);
        await assert.rejects(t.listTasks({ state: 'done' }), tasker.InvalidArgumentError);

        const why = await t.explainTask(a.task_id);
        assert.equal(why.state, 'pending');
        assert.equal(why.steps[0].status, 'waiting_for_worker');
        assert.deepEqual(why.steps[1].waiting_on, ['validate']);
      }));

    test('schema violations and oversize contexts store nothing', () =>
      withTasker(
        store,
        async (t) => {
          await t.registerTemplate(
            chain('typed', [['a']], {
              input_schema: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } },
            }),
          );
          const before = await fingerprint(t);
          await assert.rejects(t.createTask('t', 'typed', { context: { n: 'x' } }), (e) => {
            assert.ok(e instanceof tasker.SchemaViolationError);
            assert.ok(Array.isArray(e.details.errors));
            return true;
          });
          await assert.rejects(t.createTask('t', 'typed', { context: { n: 1, pad: 'x'.repeat(5000) } }), tasker.TooLargeError);
          assert.deepEqual(await fingerprint(t), before);
          await assert.rejects(t.createTask('t', 'nope'), tasker.NotFoundError);
        },
        { max_payload_bytes: 4096 },
      ));

    test('operator actions: cancel, retry and resolve through the low-level protocol', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(ORDERS);
        const { task_id } = await t.createTask('t', 'orders');
        const claimed = await t.call('claim', { handlers: ['validate'], limit: 1, worker_id: 'w' });
        const s = claimed.steps[0];
        await t.call('fail_step', { step_id: s.step_id, claim_token: s.claim_token, error: { message: 'no', retryable: false } });
        assert.equal((await t.getTask(task_id)).state, 'error');
        const retried = await t.retryStep({ taskId: task_id, stepName: 'validate' });
        assert.equal(retried.state, 'ready');
        await assert.rejects(t.retryStep(s.step_id), tasker.InvalidStateError);
        const resolved = await t.resolveStep(s.step_id, { result: { ok: 1 }, reason: 'by hand' });
        assert.equal(resolved.state, 'resolved_manually');
        const task = await t.getTask(task_id);
        assert.deepEqual(task.steps[0].result, { ok: 1 });
        assert.equal(task.steps[1].state, 'ready');
        const c = await t.cancelTask(task_id, { reason: 'changed my mind' });
        assert.equal(c.state, 'cancelled');
        assert.equal(c.changed, true);
        assert.equal((await t.cancelTask(task_id)).changed, false);
        const evs = await allEvents(t, { taskId: task_id, types: ['task.cancelled'] });
        assert.equal(evs.length, 1);
        assert.equal(evs[0].details.reason, 'changed my mind');
        const st = await t.stats();
        assert.equal(st.tasks.cancelled, 1);
        assert.equal(typeof st.last_event_id, 'number');
        assert.deepEqual(await t.sweep(), { expired: 0 });
      }));

    test('every error code has its class; raw calls; unknown operations', async () => {
      for (const code of tasker.ERROR_CODES) {
        const Cls = tasker.ERROR_CLASSES[code];
        assert.equal(Cls.CODE, code);
        const e = tasker.TaskerError.fromCode(code, 'm', { a: 1 });
        assert.ok(e instanceof Cls && e instanceof tasker.TaskerError && e instanceof Error);
        assert.equal(e.code, code);
        assert.deepEqual(e.details, { a: 1 });
      }
      await withTasker(store, async (t) => {
        await assert.rejects(t.call('explode', {}), (e) => {
          assert.ok(e instanceof tasker.UnknownOperationError);
          assert.ok(e.details.operations.includes('ping'));
          return true;
        });
        await assert.rejects(t.callJson('get_task', '{"task_id": '), tasker.InvalidJsonError);
        await assert.rejects(t.callJson('get_task', '{"task_id": "x"}'), tasker.InvalidArgumentError);
        assert.equal(JSON.parse(await t.callJson('ping')).ok, true);
        assert.equal((await t.call('ping')).ok, true);
      });
    });

    test('events: page reads, on(name, cb), the async iterator, unknown names', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(ORDERS);
        const created = [];
        const all = [];
        const off = await t.on('task.created', (ev) => created.push(ev.task_id));
        await t.on('*', async (ev) => {
          all.push(ev.event);
          throw new Error('a failing callback does not stop delivery');
        });
        const ac = new AbortController();
        const seen = [];
        // "From now" is resolved when the iterator starts; a cursor makes it exact.
        const since = (await t.stats()).last_event_id;
        const reader = (async () => {
          for await (const ev of t.subscribe('task.created', { signal: ac.signal, since })) seen.push(ev.task_id);
          return 'ended';
        })();
        const origError = console.error;
        console.error = () => {};
        try {
          const a = await t.createTask('t', 'orders');
          const b = await t.createTask('t', 'orders');
          await until(() => created.length === 2 && seen.length === 2 && all.length >= 8, 10000, 'events').catch((e) => {
            throw new Error(`${e.message}: ${JSON.stringify({ created, seen, all })}`);
          });
          assert.deepEqual(created, [a.task_id, b.task_id]);
          assert.deepEqual(seen, [a.task_id, b.task_id]);
          assert.equal(all.filter((e) => e === 'task.created').length, 2);
          off();
          off();
          await t.createTask('t', 'orders');
          await sleep(400);
          assert.equal(created.length, 2, 'no delivery after unsubscribing');
          ac.abort();
          assert.equal(await reader, 'ended');
        } finally {
          console.error = origError;
        }

        const page = await t.events({ since: 0, limit: 2 });
        assert.equal(page.events.length, 2);
        assert.equal(page.events[0].event, 'task.created');
        const waited = Date.now();
        const empty = await t.events({ since: (await t.stats()).last_event_id, waitMs: 100 });
        assert.equal(empty.events.length, 0);
        assert.ok(Date.now() - waited >= 90);

        await assert.rejects(t.on('step.exploded', () => {}), tasker.InvalidArgumentError);
        await assert.rejects(t.subscribe('step.exploded').next(), tasker.InvalidArgumentError);
        await assert.rejects(t.events({ types: ['nope'] }), tasker.InvalidArgumentError);
        // From a cursor: the past is delivered too.
        const past = [];
        for await (const ev of t.subscribe('task.created', { since: 0 })) {
          past.push(ev.task_id);
          if (past.length === 3) break;
        }
        assert.equal(past.length, 3);
      }));

    test('an iterator ends when the handle closes', async () => {
      const fresh = freshSettings(store);
      const t = await Tasker.open(fresh.settings);
      const it = t.subscribe('*');
      const done = it.next();
      await sleep(50);
      await t.close();
      assert.deepEqual(await done, { value: undefined, done: true });
      fresh.cleanup();
    });

    test('bad input: TypeErrors naming the argument, nothing stored', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(ORDERS);
        const before = await fingerprint(t);
        const cases = [
          [() => t.getTask('1'), /taskId must be an integer/],
          [() => t.getTask(), /taskId must be an integer, not undefined/],
          [() => t.getTask(1.5), /taskId must be an integer/],
          [() => t.getTask(null), /taskId must be an integer, not null/],
          [() => t.createTask(1, 'orders'), /namespace must be a string/],
          [() => t.createTask('t', null), /name must be a string/],
          [() => t.createTask('t', 'orders', { context: { f: () => 1 } }), /context\.f must be JSON data/],
          [() => t.createTask('t', 'orders', { context: { n: Symbol('n') } }), /context\.n must be JSON data/],
          [() => t.createTask('t', 'orders', { context: [NaN] }), /context\[0\] must be JSON data/],
          [() => t.createTask('t', 'orders', { idempotencyKey: 5 }), /idempotencyKey must be a string/],
          [() => t.createTask('t', 'orders', { priority: '1' }), /priority must be an integer/],
          [() => t.createTask('t', 'orders', { idempotency_key: 'x' }), /unknown option `idempotency_key`/],
          [() => t.createTask('t', 'orders', 'ctx'), /options must be an object/],
          [() => t.registerTemplate(42), /source must be a file path \(string\) or a template \(object\)/],
          [() => t.registerTemplate(['a']), /source must be/],
          [() => t.registerTemplateText({}), /text must be a string/],
          [() => t.registerTemplate(ORDERS, { replace: 'yes' }), /replace must be a boolean/],
          [() => t.listTasks({ limit: 'ten' }), /limit must be an integer/],
          [() => t.cancelTask('1'), /taskId must be an integer/],
          [() => t.retryStep('1'), /step must be a step id/],
          [() => t.retryStep({ taskId: 1 }), /step\.stepName must be a string/],
          [() => t.resolveStep(1, { result: Symbol('s') }), /result must be JSON data/],
          [() => t.events({ types: 'step.failed' }), /types must be an array of strings/],
          [() => t.events({ types: [1] }), /types\[0\] must be a string/],
          [() => t.on('task.created', 'cb'), /callback must be a function/],
          [() => t.on(7, () => {}), /event must be a string/],
          [() => t.call(5), /op must be a string/],
          [() => t.call('ping', 'x'), /request must be an object/],
          [() => t.callJson('ping', {}), /text must be a string/],
          [() => t.stats({ windowMs: -0.5 }), /windowMs must be an integer/],
          [() => Tasker.open(42), /config must be an object/],
          [() => Tasker.open('sqlite::memory:', 'x'), /settings must be an object/],
          [() => Tasker.open({ lease_ms: () => 10 }), /config\.lease_ms must be JSON data/],
        ];
        for (const [fn, msg] of cases) {
          await assert.rejects(fn(), (e) => {
            assert.ok(e instanceof TypeError, `${fn}: ${e}`);
            assert.match(e.message, msg);
            return true;
          });
        }
        const circular = {};
        circular.self = circular;
        await assert.rejects(t.createTask('t', 'orders', { context: circular }), /context\.self is a circular reference/);
        assert.throws(() => new Tasker(), /use `await Tasker.open/);
        assert.throws(() => t.subscribe(5), TypeError);
        assert.throws(() => t.subscribe('*', { signal: 'x' }), /signal must be an AbortSignal/);
        assert.throws(() => new tasker.Worker({}), /tasker must be a Tasker/);
        assert.throws(() => new tasker.Worker(t, { concurrency: 'many' }), /concurrency must be an integer/);
        assert.throws(() => new tasker.Worker(t).handle('x', 'nope'), /fn must be a function/);
        assert.throws(() => new tasker.RetryableError('x', { retryAfterMs: -1 }), RangeError);
        // The engine still checks values: a bad setting is the engine's invalid_argument.
        await assert.rejects(Tasker.open({ ...freshSettings(store).settings, no_such_setting: 1 }), tasker.InvalidArgumentError);
        // The native half refuses wrong types with an exception, never a crash.
        assert.throws(() => t.native.call(1, '{}'), /String/);
        assert.throws(() => t.native.call('ping'), Error);
        assert.deepEqual(await fingerprint(t), before);
      }));

    test('calls after close reject with ClosedError; close is idempotent', async () => {
      const fresh = freshSettings(store);
      const t = await Tasker.open(fresh.settings);
      await t.registerTemplate(ORDERS);
      await t.close();
      await t.close();
      assert.equal(t.closed, true);
      assert.equal(String(t), '[Tasker closed]');
      const calls = [
        () => t.ping(),
        () => t.getTask(1),
        () => t.createTask('t', 'orders'),
        () => t.registerTemplate(ORDERS),
        () => t.listTasks(),
        () => t.stats(),
        () => t.events({ waitMs: 10 }),
        () => t.call('ping'),
        () => t.callJson('ping', '{}'),
        () => t.on('*', () => {}),
      ];
      for (const fn of calls) {
        await assert.rejects(fn(), (e) => e instanceof tasker.ClosedError && e.code === 'closed', String(fn));
      }
      await assert.rejects(
        new tasker.Worker(t).handle('validate', () => null).runUntilIdle(),
        tasker.ClosedError,
      );
      fresh.cleanup();
    });

    test('two opens of one database share one engine; the last close releases it', async () => {
      const fresh = freshSettings(store);
      const a = await Tasker.open({ ...fresh.settings, lease_ms: 60000 });
      // A second open with other settings shares the first one's engine (and settings).
      const b = await Tasker.open({ ...fresh.settings, lease_ms: 1000 });
      await b.registerTemplate(ORDERS);
      await a.createTask('t', 'orders');
      const claimed = await b.call('claim', { handlers: ['validate'], worker_id: 'b' });
      const lease = Date.parse(claimed.steps[0].lease_expires_at) - Date.now();
      assert.ok(lease > 30000, `the lease follows the first open's lease_ms (got ${lease} ms)`);
      await a.close();
      assert.equal((await b.ping()).ok, true);
      assert.equal((await b.listTasks()).tasks.length, 1);
      await b.close();
      await assert.rejects(b.ping(), tasker.ClosedError);
      fresh.cleanup();
    });

    test('worker_threads in one process share the engine', async () => {
      const { Worker: Thread } = require('node:worker_threads');
      const fresh = freshSettings(store);
      const a = await Tasker.open({ ...fresh.settings, lease_ms: 60000 });
      await a.registerTemplate(ORDERS);
      await a.createTask('t', 'orders');
      const code = `
        const { parentPort, workerData } = require('node:worker_threads');
        const { Tasker } = require(workerData.pkg);
        (async () => {
          const t = await Tasker.open({ ...workerData.settings, lease_ms: 1000 });
          const c = await t.call('claim', { handlers: ['validate'], worker_id: 'thread' });
          const tasks = (await t.listTasks()).tasks.length;
          await t.close();
          parentPort.postMessage({ lease: Date.parse(c.steps[0].lease_expires_at) - Date.now(), tasks });
        })().catch((e) => parentPort.postMessage({ error: String(e) }));`;
      const pkgPath = process.env.TASKER_NODE_PACKAGE || require('node:path').join(__dirname, '..');
      const thread = new Thread(code, { eval: true, workerData: { pkg: pkgPath, settings: fresh.settings } });
      const msg = await new Promise((resolve, reject) => {
        thread.once('message', resolve);
        thread.once('error', reject);
      });
      await new Promise((r) => thread.once('exit', r));
      assert.equal(msg.error, undefined);
      assert.equal(msg.tasks, 1);
      assert.ok(msg.lease > 30000, `the thread's handle uses the process's engine (lease ${msg.lease} ms)`);
      // The thread's close did not close the engine under this handle.
      assert.equal((await a.getTask(1)).steps[0].state, 'running');
      await a.close();
      fresh.cleanup();
    });
  });
}

test('ESM entry exports the same objects', async () => {
  const p = process.env.TASKER_NODE_PACKAGE || require('node:path').join(__dirname, '..');
  const esm = await import(require('node:url').pathToFileURL(require('node:path').join(p, 'index.mjs')).href);
  assert.equal(esm.Tasker, tasker.Tasker);
  assert.equal(esm.default.Worker, tasker.Worker);
  for (const k of Object.keys(tasker)) assert.ok(k in esm, `index.mjs exports ${k}`);
});
