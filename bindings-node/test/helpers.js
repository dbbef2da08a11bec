'use strict';
// Shared by the tests: every test that uses `eachStore` runs once per store, on an
// SQLite file in a fresh temp dir, and (when TASKER_TEST_DATABASE_URL is set) on a
// PostgreSQL schema of its own, dropped after the test.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');

const PG_URL = process.env.TASKER_TEST_DATABASE_URL || '';
// TASKER_NODE_STORES=sqlite (or postgres) runs one store only.
const STORES = (process.env.TASKER_NODE_STORES || 'sqlite,postgres')
  .split(',')
  .filter((s) => s === 'sqlite' || (s === 'postgres' && PG_URL));

/** The tasker package under test: TASKER_NODE_PACKAGE (the installed copy) or this tree. */
function pkg() {
  return require(process.env.TASKER_NODE_PACKAGE || path.join(__dirname, '..'));
}

function tmpDir(prefix = 'tasker-node-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

function dropSchema(schema) {
  execFileSync('psql', [PG_URL, '-q', '-v', 'ON_ERROR_STOP=1', '-c', 'SET client_min_messages = warning', '-c', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

/** Fresh settings for `store`; `cleanup()` removes the database afterwards. */
function freshSettings(store, extra = {}) {
  const dir = tmpDir();
  const base = { templates_dir: path.join(dir, 'templates'), env: 'test', ...extra };
  if (store === 'sqlite') {
    return {
      dir,
      settings: { ...base, database_url: `sqlite://${path.join(dir, 'tasker.db')}` },
      cleanup() {
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const schema = `node_${process.pid}_${crypto.randomBytes(5).toString('hex')}`;
  return {
    dir,
    schema,
    settings: { ...base, database_url: PG_URL, postgres_schema: schema, postgres_pool_size: 4 },
    cleanup() {
      dropSchema(schema);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Opens a handle on a fresh database of `store`, runs `fn(tasker, fresh)`, cleans up. */
async function withTasker(store, fn, extra = {}) {
  const { Tasker } = pkg();
  const fresh = freshSettings(store, extra);
  const t = await Tasker.open(fresh.settings);
  try {
    return await fn(t, fresh);
  } finally {
    await t.close();
    fresh.cleanup();
  }
}

/** A template in namespace `t`: `steps` are [name, [parents]] pairs, the handler named like the step. */
function chain(name, steps, extra = {}) {
  return {
    namespace: 't',
    name,
    version: '1',
    defaults: { retry: { max_attempts: 3, base_ms: 1, max_ms: 5, jitter: 0 } },
    steps: steps.map(([s, deps]) => ({ name: s, handler: s, depends_on: deps || [] })),
    ...extra,
  };
}

/** Every event matching `filter`, read page by page to the end. */
async function allEvents(t, filter = {}) {
  const out = [];
  let since = 0;
  for (;;) {
    const page = await t.events({ since, limit: 1000, ...filter });
    out.push(...page.events);
    if (page.next_cursor === since) return out;
    since = page.next_cursor;
  }
}

/** Counts of tasks, steps and events: equal before and after means nothing was stored. */
async function fingerprint(t) {
  const s = await t.stats();
  return { tasks: s.tasks, steps: s.steps, last_event_id: s.last_event_id };
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until `pred()` resolves truthy, up to `ms`. */
async function until(pred, ms = 10000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

module.exports = { PG_URL, STORES, pkg, tmpDir, freshSettings, withTasker, chain, allEvents, fingerprint, sleep, until };
