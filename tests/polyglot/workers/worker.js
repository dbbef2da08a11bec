'use strict';
// The Node.js worker of the polyglot tests (tests/polyglot/README.md): serves the
// handler named by POLY_HANDLER (default `node`) and does what each step's config `do`
// says. Works until SIGTERM.
const fs = require('node:fs');
const { Tasker, Worker, PermanentError, RetryableError } = require('tasker');

const LANG = 'node';
const LOG = process.env.POLY_LOG;

function log(step, event) {
  const line = { lang: LANG, pid: process.pid, task_id: step.taskId, step: step.stepName, attempt: step.attempt, event };
  fs.appendFileSync(LOG, `${JSON.stringify(line)}\n`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function handle(step) {
  const cfg = step.config || {};
  log(step, 'start');
  let out;
  switch (cfg.do || 'emit') {
    case 'emit':
      out = { language: LANG, value: cfg.value ?? null };
      break;
    case 'echo':
      out = { language: LANG, parents: step.results };
      break;
    case 'sleep':
      await sleep(cfg.ms);
      out = { language: LANG, pid: process.pid };
      break;
    case 'flaky':
      if (step.attempt < cfg.succeed_on) {
        log(step, 'fail');
        throw new RetryableError(`attempt ${step.attempt} fails`, { retryAfterMs: 10 });
      }
      out = { language: LANG, attempt: step.attempt };
      break;
    case 'permanent':
      log(step, 'fail');
      throw new PermanentError(cfg.message);
    default:
      throw new PermanentError(`unknown action ${cfg.do}`);
  }
  log(step, 'end');
  return out;
}

async function main() {
  const settings = JSON.parse(process.env.POLY_SETTINGS);
  const lease = process.env.POLY_LEASE_MS;
  const tasker = await Tasker.open(settings);
  const options = { concurrency: 4, name: `${LANG}-${process.pid}` };
  if (lease) options.leaseMs = Number(lease);
  const worker = new Worker(tasker, options);
  worker.handle(process.env.POLY_HANDLER || LANG, handle);
  await worker.start();
  await new Promise((resolve) => process.once('SIGTERM', resolve));
  await worker.stop({ graceMs: 5000 });
  await tasker.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
