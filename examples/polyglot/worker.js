'use strict';
// The Node.js worker of the polyglot invoice workflow (docs/polyglot.md): reserves the
// stock of each order line. Opens the database named by TASKER_DATABASE_URL and works
// until SIGTERM or SIGINT.
const { Tasker, Worker } = require('tasker');

async function reserveStock(step) {
  const order = step.results.validate;
  const reservations = order.lines.map((line) => `${line.sku}:${line.qty}@${process.pid}`);
  return { language: 'node', reservations };
}

async function main() {
  const tasker = await Tasker.open(process.env.TASKER_DATABASE_URL);
  const worker = new Worker(tasker, { concurrency: 8, name: `node-${process.pid}` });
  worker.handle('js_reserve_stock', reserveStock);
  await worker.start();
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await worker.stop({ graceMs: 5000 });
  await tasker.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
