'use strict';
// The Node.js package's numbers: per-call cost and a Worker of no-op async handlers.
//
//   node bench.js [--quick] [--sync normal|full] [--pg-url URL] [--concurrency N] [--batch N]
//
// Run by scripts/bench-node (from scripts/bench) with a release build of the package
// (TASKER_NODE_PACKAGE). Prints one JSON object of named numbers on stdout (progress on
// stderr):
//
// - ffi_noop_call_ns_node: median over rounds of the mean ns per `await tasker.ping()`,
//   one at a time. Core answers ping from memory, so the addon runs it on the calling
//   thread and the Promise is already settled: this is the cost of crossing into the
//   engine and back, plus one await.
// - ffi_call_ns_node_pool: the same ping sent the way every database operation goes
//   (`callJson`: a libuv pool thread runs the blocking call, the Promise settles on the
//   next turn of the event loop), one at a time; ffi_call_ns_node_pool_parallel with
//   256 in flight.
// - ffi_call_ns_node_runtime: through Tasker's runtime (napi's async fn awaiting
//   `call_async`), as worker sessions and waiting reads go.
// - steps_per_s_node_sqlite / _postgres: single-step tasks created beforehand (not
//   timed, as in the Rust bench), drained by one `Worker` of no-op async handlers with
//   `runUntilIdle()`; the clock covers the whole call.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');

const tasker = require(process.env.TASKER_NODE_PACKAGE || path.join(__dirname, '..', '..', '..', 'bindings-node'));
const { Tasker, Worker } = tasker;

const TEMPLATE = {
  namespace: 'bench',
  name: 'single',
  version: '1.0.0',
  steps: [{ name: 'only', handler: 'noop' }],
};
const CREATE = JSON.stringify({ namespace: 'bench', name: 'single', version: '1.0.0', context: { n: 1 } });

function say(msg) {
  process.stderr.write(`${msg}\n`);
}

function args() {
  const a = { quick: false, sync: 'normal', pgUrl: '', concurrency: 1, batch: 256 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--quick') a.quick = true;
    else if (k === '--sync') a.sync = argv[++i];
    else if (k === '--pg-url') a.pgUrl = argv[++i];
    else if (k === '--concurrency') a.concurrency = Number(argv[++i]);
    else if (k === '--batch') a.batch = Number(argv[++i]);
    else throw new Error(`bench.js: unknown argument ${k}`);
  }
  return a;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median over rounds of the mean ns per awaited `fn()`. */
async function perCall(fn, calls, batch) {
  for (let i = 0; i < Math.min(2000, calls); i++) await fn();
  const means = [];
  for (let r = 0; r < calls / batch; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < batch; i++) await fn();
    means.push(Number(process.hrtime.bigint() - start) / batch);
  }
  return Math.round(median(means) * 10) / 10;
}

async function ffi(out, db, sync, quick) {
  const t = await Tasker.open({ database_url: `sqlite://${db}`, sqlite_synchronous: sync });
  try {
    const [calls, batch] = quick ? [50000, 5000] : [200000, 10000];
    out.ffi_noop_call_ns_node = await perCall(() => t.ping(), calls, batch);
    say(`  ffi_noop_call_ns_node: ${out.ffi_noop_call_ns_node} ns/call (await tasker.ping())`);
    const [slow, slowBatch] = quick ? [5000, 1000] : [20000, 2000];
    out.ffi_call_ns_node_pool = await perCall(() => t.callJson('ping', '{}'), slow, slowBatch);
    say(`  ffi_call_ns_node_pool: ${out.ffi_call_ns_node_pool} ns/call (await callJson('ping'), libuv pool)`);
    const h = t.native;
    out.ffi_call_ns_node_runtime = await perCall(() => h.callWaiting('ping', '{}'), slow, slowBatch);
    say(`  ffi_call_ns_node_runtime: ${out.ffi_call_ns_node_runtime} ns/call (Tasker's runtime)`);
    const inFlight = 256;
    const rounds = slow / inFlight;
    const start = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) {
      const ps = [];
      for (let i = 0; i < inFlight; i++) ps.push(t.callJson('ping', '{}'));
      await Promise.all(ps);
    }
    out.ffi_call_ns_node_pool_parallel = Math.round(Number(process.hrtime.bigint() - start) / (rounds * inFlight));
    say(`  ffi_call_ns_node_pool_parallel: ${out.ffi_call_ns_node_pool_parallel} ns/call (${inFlight} in flight)`);
    out.ffi_noop_calls_node = calls;
  } finally {
    await t.close();
  }
}

async function createMany(t, n, inFlight) {
  let next = 0;
  const lane = async () => {
    while (next < n) {
      next++;
      await t.callJson('create_task', CREATE);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
}

async function steps(out, store, config, n, concurrency, batch) {
  const t = await Tasker.open(config);
  try {
    await t.registerTemplate(TEMPLATE);
    const inFlight = store === 'sqlite' ? 1 : 4;
    let start = performance.now();
    await createMany(t, n, inFlight);
    const createS = (performance.now() - start) / 1000;

    const worker = new Worker(t, { concurrency, batch, handlers: { noop: async () => undefined } });
    start = performance.now();
    const counts = await worker.runUntilIdle();
    const drainS = (performance.now() - start) / 1000;
    const complete = (await t.stats()).tasks.complete;
    if (counts.completed !== n || complete !== n) {
      throw new Error(`node bench (${store}): worker completed ${counts.completed}, ${complete} of ${n} tasks complete`);
    }
    const rate = n / drainS;
    out[`steps_per_s_node_${store}`] = Math.round(rate);
    out[`steps_node_tasks_${store}`] = n;
    out[`steps_node_concurrency_${store}`] = concurrency;
    out[`steps_node_batch_${store}`] = batch;
    out[`create_tasks_per_s_node_${store}`] = Math.round(n / createS);
    say(
      `  steps (node, ${store}): ${rate.toFixed(0)} steps/s drained by Worker(concurrency=${concurrency}, batch=${batch}) ` +
        `(${n} tasks, created at ${(n / createS).toFixed(0)}/s with ${inFlight} in flight)`,
    );
  } finally {
    await t.close();
  }
}

async function main() {
  const a = args();
  const out = { node_version: process.versions.node, node_package_version: tasker.version };
  const n = a.quick ? 5000 : 20000;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-bench-node-'));
  try {
    say('node (ffi):');
    await ffi(out, path.join(scratch, 'ffi.db'), a.sync, a.quick);
    say('node (steps):');
    const cfg = { database_url: `sqlite://${path.join(scratch, 'steps.db')}`, sqlite_synchronous: a.sync };
    await steps(out, 'sqlite', cfg, n, a.concurrency, a.batch);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  if (a.pgUrl) {
    const schema = `tasker_bench_node_${process.pid}_${crypto.randomBytes(4).toString('hex')}`;
    try {
      await steps(out, 'postgres', { database_url: a.pgUrl, postgres_schema: schema }, n, a.concurrency, a.batch);
    } finally {
      execFileSync('psql', [a.pgUrl, '-q', '-c', 'SET client_min_messages = warning', '-c', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], {
        stdio: ['ignore', 'ignore', 'inherit'],
      });
    }
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
