// scripts/bench peer: graphile-worker (installed from npm by `npm ci`, see package.json).
//
//   node bench.js <postgres-url> <schema> <jobs> <fast|default|chain4|fanout10>
//
// In a fresh schema: adds <jobs> no-op jobs in one addJobs batch (not timed), then one
// worker pool (this process) at concurrency 24 burns them down. The clock runs from
// starting the runner until the jobs table is empty, i.e. every completion committed.
// `fast` is the configuration graphile-worker's performance page documents as its
// fastest (local queue of 500, batched completion and failure with delay 0, pool of 25);
// `default` leaves those at their defaults. Prints one JSON line; drops the schema.
//
// `chain4` and `fanout10` (fast configuration) are workflows built the way
// graphile-worker's users build them, <jobs> of them, their first jobs added in one
// addJobs batch (not timed): a chain of four jobs where each job adds the next
// (`helpers.addJob`); and a fan-out of ten with a join: the root job inserts a counter
// row and adds ten jobs, each of those decrements the counter, and the one that takes it
// to zero adds the join job. The clock stops when every workflow's last job ran and the
// jobs table is empty.
// Also reports the CPU time per job over the burn-down: this process's, and the server's
// (every `postgres` process on this machine, read as tests/bench/src/cpu.rs does).
"use strict";

const fs = require("fs");
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { Pool } = require("pg");

// CPU ticks (1/100 s) of every process named `postgres`: utime + stime + the reaped
// children's cutime + cstime (a backend that exits lives on in the postmaster's).
// NaN where /proc cannot be read.
function serverTicks() {
  let total = 0;
  let seen = false;
  let pids;
  try {
    pids = fs.readdirSync("/proc").filter((p) => /^[0-9]+$/.test(p));
  } catch (e) {
    return NaN;
  }
  for (const pid of pids) {
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch (e) {
      continue; // exited since the listing
    }
    const open = stat.indexOf("(");
    const close = stat.lastIndexOf(")");
    if (stat.slice(open + 1, close) !== "postgres") continue;
    const f = stat.slice(close + 1).trim().split(/\s+/);
    // f[0] is field 3: utime, stime, cutime, cstime are fields 14 to 17.
    total += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    seen = true;
  }
  return seen ? total : NaN;
}

const CONCURRENCY = 24;

async function main() {
  const [url, schema, jobsArg, mode] = process.argv.slice(2);
  const jobs = Number(jobsArg);
  if (!url || !/^[a-z_][a-z0-9_]{0,62}$/.test(schema || "") || !(jobs > 0) ||
      !["fast", "default", "chain4", "fanout10"].includes(mode)) {
    throw new Error("usage: node bench.js <postgres-url> <schema> <jobs> <fast|default|chain4|fanout10>");
  }
  const worker = mode !== "default"
    ? { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0, maxPoolSize: 25 }
    : {};
  // Only errors: graphile-worker logs every worker start and stop at info.
  const logger = new Logger(() => (level, message) => {
    if (level === "error") console.error(`graphile-worker: ${message}`);
  });

  const admin = new Pool({ connectionString: url, max: 1 });
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  const tls = (await admin.query(
    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).rows[0].ssl;

  const utils = await makeWorkerUtils({ connectionString: url, schema, logger });
  let result;
  try {
    await utils.migrate();
    const flows = mode === "chain4" || mode === "fanout10";
    if (mode === "fanout10") {
      await admin.query(
        `CREATE TABLE "${schema}".fanout (id integer PRIMARY KEY, left_count integer NOT NULL)`);
    }
    const first = mode === "chain4" ? "chain" : mode === "fanout10" ? "root" : "noop";
    const specs = [];
    for (let i = 0; i < jobs; i++) {
      specs.push({ identifier: first, payload: mode === "chain4" ? { w: i, step: 0 } : mode === "fanout10" ? { w: i } : { n: i } });
    }
    let t = process.hrtime.bigint();
    await utils.addJobs(specs);
    const addS = Number(process.hrtime.bigint() - t) / 1e9;

    let ran = 0;
    let drained;
    const allRan = new Promise((resolve) => { drained = resolve; });
    const finished = () => {
      ran += 1;
      if (ran === jobs) drained();
    };
    const taskList = {
      noop: async () => finished(),
      chain: async (payload, helpers) => {
        if (payload.step < 3) {
          await helpers.addJob("chain", { w: payload.w, step: payload.step + 1 });
        } else {
          finished();
        }
      },
      root: async (payload, helpers) => {
        await helpers.withPgClient((c) => c.query(
          `INSERT INTO "${schema}".fanout (id, left_count) VALUES ($1, 10)`, [payload.w]));
        await Promise.all(Array.from({ length: 10 }, (_, i) =>
          helpers.addJob("branch", { w: payload.w, i })));
      },
      branch: async (payload, helpers) => {
        const { rows } = await helpers.withPgClient((c) => c.query(
          `UPDATE "${schema}".fanout SET left_count = left_count - 1 WHERE id = $1 RETURNING left_count`,
          [payload.w]));
        if (rows[0].left_count === 0) await helpers.addJob("join", { w: payload.w });
      },
      join: async () => finished(),
    };
    t = process.hrtime.bigint();
    const ticks = serverTicks();
    const own = process.cpuUsage();
    const runner = await run({
      connectionString: url,
      schema,
      concurrency: CONCURRENCY,
      noHandleSignals: true,
      pollInterval: 1000,
      taskList,
      logger,
      preset: { worker },
    });
    await allRan;
    // Done means committed: wait until no job row is left (batched completions flush).
    for (;;) {
      const left = Number((await admin.query(
        `SELECT count(*) AS n FROM "${schema}"._private_jobs`)).rows[0].n);
      if (left === 0) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    const runS = Number(process.hrtime.bigint() - t) / 1e9;
    const serverS = (serverTicks() - ticks) / 100;
    const ownUsage = process.cpuUsage(own);
    const ownS = (ownUsage.user + ownUsage.system) / 1e6;
    await runner.stop();
    result = {
      mode,
      jobs,
      ran,
      concurrency: CONCURRENCY,
      jobs_per_s: jobs / runS,
      flows: flows,
      run_s: runS,
      add_jobs_per_s: jobs / addS,
      server_cpu_us_per_job: (serverS * 1e6) / jobs,
      client_cpu_us_per_job: (ownS * 1e6) / jobs,
      tls,
      version: require("graphile-worker/package.json").version,
      node_version: process.version,
    };
  } finally {
    await utils.release();
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await admin.end();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => {
  console.error(`graphile-worker peer: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
