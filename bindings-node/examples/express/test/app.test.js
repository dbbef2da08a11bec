'use strict';
// The Express example, started as its own process on a free port and driven over real
// HTTP with fetch: orders run to `complete` through the in-process worker, bad bodies
// get 400 with the error code, an idempotency key gives one task, SIGTERM stops it.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Tasker } = require('tasker');

const APP = path.join(__dirname, '..', 'app.js');

let child;
let base;
let dbUrl;
let dir;
let output = '';

test.before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-express-test-'));
  dbUrl = `sqlite://${path.join(dir, 'orders.db')}`;
  child = spawn(process.execPath, [APP], {
    env: { ...process.env, PORT: '0', TASKER_DATABASE_URL: dbUrl, ORDER_WORKER_CONCURRENCY: '4' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.on('data', (d) => (output += d));
  base = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) resolve(`http://127.0.0.1:${m[1]}`);
    });
    child.once('exit', (code) => reject(new Error(`the app exited (${code}) before listening: ${output}`)));
    setTimeout(() => reject(new Error(`the app did not start: ${out} ${output}`)), 30000).unref();
  });
});

test.after(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

const ORDER = { customer: 'ada', items: [{ sku: 'book', qty: 2 }, { sku: 'pen', qty: 1 }] };

async function post(body, headers = {}) {
  const res = await fetch(`${base}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function settled(id) {
  const end = Date.now() + 15000;
  for (;;) {
    const res = await fetch(`${base}/orders/${id}`);
    assert.equal(res.status, 200);
    const order = await res.json();
    if (['complete', 'error', 'cancelled'].includes(order.state)) return order;
    if (Date.now() > end) throw new Error(`order ${id} did not settle: ${JSON.stringify(order)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('an order runs to complete through the worker in the same process', async () => {
  const created = await post(ORDER);
  assert.equal(created.status, 201);
  assert.equal(created.body.created, true);
  const order = await settled(created.body.task_id);
  assert.equal(order.state, 'complete', JSON.stringify(order));
  assert.equal(order.customer, 'ada');
  assert.equal(order.steps_done, 4);
  const steps = Object.fromEntries(order.steps.map((s) => [s.name, s]));
  assert.deepEqual(steps.validate.result, { valid: true, lines: 2 });
  assert.deepEqual(steps.charge.result, { charged: 3750, currency: 'EUR' });
  assert.deepEqual(steps.ship.result, {
    shipped: ['bookx2', 'penx1'],
    tracking: `TRK-${created.body.task_id}`,
    paid: 3750,
  });
  for (const s of order.steps) assert.equal(s.attempts, 1);
});

test('a malformed body gets 400 with the error code', async () => {
  const broken = await post('{"customer": "ada", "items": [');
  assert.equal(broken.status, 400);
  assert.equal(broken.body.code, 'invalid_json');
  const wrong = await post({ customer: 'ada', items: 'book' });
  assert.equal(wrong.status, 400);
  assert.equal(wrong.body.code, 'schema_violation');
  assert.ok(Array.isArray(wrong.body.details.errors));
  const missing = await fetch(`${base}/orders/9999`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).code, 'not_found');
  const notAnId = await fetch(`${base}/orders/abc`);
  assert.equal(notAnId.status, 400);
});

test('the same idempotency key twice gives one task', async () => {
  const first = await post(ORDER, { 'Idempotency-Key': 'order-7' });
  const second = await post({ ...ORDER, customer: 'bob' }, { 'Idempotency-Key': 'order-7' });
  assert.equal(first.status, 201);
  assert.equal(second.status, 200);
  assert.equal(second.body.task_id, first.body.task_id);
  assert.equal(second.body.created, false);
  const order = await settled(first.body.task_id);
  assert.equal(order.customer, 'ada');
  assert.equal(order.idempotency_key, 'order-7');
  // One task with that key in the database (read through a handle of this process).
  const t = await Tasker.open(dbUrl);
  try {
    const tasks = (await t.listTasks({ namespace: 'shop', name: 'order', limit: 1000 })).tasks;
    assert.equal(tasks.filter((x) => x.idempotency_key === 'order-7').length, 1);
  } finally {
    await t.close();
  }
});

test('a handler throwing PermanentError fails the order without retry', async () => {
  const created = await post({ customer: 'eve', items: [{ sku: 'forbidden', qty: 1 }] });
  const order = await settled(created.body.task_id);
  assert.equal(order.state, 'error');
  const validate = order.steps.find((s) => s.name === 'validate');
  assert.equal(validate.attempts, 1);
  assert.equal(validate.error.kind, 'PermanentError');
  assert.equal(validate.error.retryable, false);
  assert.match(validate.error.message, /forbidden/);
  const health = await (await fetch(`${base}/healthz`)).json();
  assert.equal(health.engine.ok, true);
  assert.equal(health.worker_running, true);
  assert.ok(health.worker.completed >= 8);
});

test('SIGTERM stops the worker and the server gracefully', async () => {
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.kill('SIGTERM');
  assert.deepEqual(await exited, { code: 0, signal: null });
});
