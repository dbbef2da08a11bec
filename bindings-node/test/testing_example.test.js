// The example test of docs/testing.md ("Testing your workflows"), run as written.
const test = require('node:test');
const assert = require('node:assert/strict');
const { Worker, RetryableError } = require('tasker');
const { openHarness } = require('tasker/testing');

const TEMPLATE = `
namespace: shop
name: checkout
version: "1"
defaults:
  retry: { max_attempts: 3, backoff: fixed, base_ms: 600000, max_ms: 600000 }  # ten minutes
steps:
  - { name: charge, handler: charge_card }
  - { name: email,  handler: send_receipt, depends_on: [charge] }
`;

test('a declined card is charged again ten minutes later', async () => {
  const h = await openHarness(); // temporary SQLite database, manual clock
  try {
    await h.tasker.registerTemplateText(TEMPLATE);
    const task = await h.tasker.createTask('shop', 'checkout', { context: { order: 7 } });
    const worker = new Worker(h.tasker)
      .handle('charge_card', async (step) => {
        if (step.attempt === 1) throw new RetryableError('card declined');
        return { charged_at: await h.now() };
      })
      .handle('send_receipt', async () => ({ sent: true }));

    const started = await h.now();
    const counts = await h.runUntilIdle(worker); // moves the clock to the retry: no waiting

    assert.equal(counts.completed, 2);
    assert.equal(counts.failed, 1);
    const done = await h.tasker.getTask(task.task_id);
    assert.equal(done.state, 'complete');
    const charge = done.steps.find((s) => s.name === 'charge');
    assert.equal(charge.attempts, 2);
    assert.ok(charge.result.charged_at > started);
  } finally {
    await h.close();
  }
});
