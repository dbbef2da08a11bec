'use strict';
// tasker/testing: the harness's manual clock, runUntilIdle over retries, clean-up, and
// the documented example kept in step with docs/testing.md.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { pkg, freshSettings } = require('./helpers');

const tasker = pkg();
const { openHarness } = require(path.join(process.env.TASKER_NODE_PACKAGE || path.join(__dirname, '..'), 'testing'));

test('the documented example is the one in docs/testing.md', () => {
  const example = fs.readFileSync(path.join(__dirname, 'testing_example.test.js'), 'utf8');
  const body = example.split('\n').slice(1).join('\n').trim();
  const doc = fs.readFileSync(path.join(__dirname, '..', '..', 'docs', 'testing.md'), 'utf8');
  assert.ok(doc.includes(body), 'docs/testing.md does not hold test/testing_example.test.js');
});

test('the clock moves only when advanced; bad input is refused', async () => {
  const h = await openHarness();
  try {
    const before = await h.now();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(await h.now(), before);
    const later = await h.advance(3600);
    assert.ok(later > before);
    assert.deepEqual(await h.nextReadyAt(), { next_ready_at: null, in_ms: null, now: later, clock: 'manual' });
    await assert.rejects(h.advance(-1), tasker.InvalidArgumentError);
    await assert.rejects(h.advance('soon'), TypeError);
    assert.equal(await h.now(), later);
  } finally {
    await h.close();
  }
  await assert.rejects(openHarness({ clock: 'system' }), TypeError);
});

test('retryAfterMs waits for the clock; the database is removed on close', async () => {
  const h = await openHarness();
  const dir = h._dir;
  try {
    await h.tasker.registerTemplate({ namespace: 't', name: 'r', version: '1', steps: [{ name: 'a', handler: 'a' }] });
    const task = await h.tasker.createTask('t', 'r');
    let runs = 0;
    const worker = new tasker.Worker(h.tasker).handle('a', async (step) => {
      runs += 1;
      if (step.attempt < 3) throw new tasker.RetryableError('later', { retryAfterMs: 7_200_000 });
      return 'ok';
    });
    assert.equal((await worker.runUntilIdle()).failed, 1);
    assert.equal((await h.nextReadyAt(['a'])).in_ms, 7_200_000);
    assert.equal((await h.nextReadyAt(['other'])).in_ms, null);
    const counts = await h.runUntilIdle(worker);
    assert.deepEqual([counts.completed, counts.failed], [1, 1]);
    assert.equal((await h.tasker.getTask(task.task_id)).state, 'complete');
    assert.equal(runs, 3);
  } finally {
    await h.close();
  }
  assert.equal(fs.existsSync(dir), false);
});

test('a system-clock handle cannot be advanced', async () => {
  const fresh = freshSettings('sqlite');
  const t = await tasker.Tasker.open(fresh.settings);
  try {
    await assert.rejects(t.call('advance_clock', { ms: 1000 }), (e) => {
      assert.ok(e instanceof tasker.InvalidStateError);
      assert.deepEqual(e.details, { clock: 'system' });
      return true;
    });
  } finally {
    await t.close();
    fresh.cleanup();
  }
});
