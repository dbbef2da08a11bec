'use strict';
// The Node.js subscriber of the polyglot tests (tests/polyglot/README.md): follows the
// durable event log of the database in POLY_SETTINGS from its first event and prints
// each event as a JSON line, until it has seen POLY_EXPECT_COMPLETED `task.completed`
// events (then exits 0) or POLY_TIMEOUT_MS passed (exits 1). Prints `ready` first.
const { Tasker } = require('tasker');

async function main() {
  const tasker = await Tasker.open(JSON.parse(process.env.POLY_SETTINGS));
  const want = Number(process.env.POLY_EXPECT_COMPLETED);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), Number(process.env.POLY_TIMEOUT_MS || 60000));
  let completed = 0;
  process.stdout.write('ready\n');
  for await (const event of tasker.subscribe('*', { since: 0, signal: abort.signal })) {
    process.stdout.write(`${JSON.stringify(event)}\n`);
    if (event.event === 'task.completed' && ++completed === want) break;
  }
  clearTimeout(timer);
  await tasker.close();
  process.exitCode = completed === want ? 0 : 1;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
