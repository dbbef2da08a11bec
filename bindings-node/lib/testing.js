'use strict';
// Testing helpers: run workflows in a test without waiting real time.
//
//   const { openHarness } = require('tasker/testing');
//   const h = await openHarness();             // temporary SQLite database, manual clock
//   await h.tasker.registerTemplateText(TEMPLATE);
//   const worker = new Worker(h.tasker).handle('charge_card', async (step) => ...);
//   await h.runUntilIdle(worker);              // moves the clock to each retry: no waiting
//   await h.close();                           // removes the database
//
// The engine's clock (the `clock: manual` setting, docs/configuration.md) starts at the
// real time and moves only through `advance(seconds)`; retries, backoffs, release
// delays, lease expiries and step timeouts come due when the test says so. The engine
// decides; this module drives `advance_clock` and `next_ready_at` (docs/api.md).

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { Tasker } = require('./client');
const check = require('./check');

class Harness {
  /**
   * Use `await openHarness()`.
   * @param {Tasker} tasker
   * @param {string | null} dir
   */
  constructor(tasker, dir) {
    /** The handle to use in the test (register templates, create tasks, make workers). */
    this.tasker = tasker;
    this._dir = dir;
  }

  /** The engine's time (RFC 3339). */
  async now() {
    return (await this.tasker.call('advance_clock', { ms: 0 })).now;
  }

  /**
   * Moves the clock forward by `seconds` (0 to 30 days); resolves with the new time
   * (RFC 3339). Steps whose retry or delay came due are claimable at once; delayed
   * tasks that came due start, task timeouts that passed fire, and cron schedule ticks
   * that came due create their tasks before it resolves.
   * @param {number} seconds
   */
  async advance(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) {
      throw new TypeError(`seconds must be a finite number, not ${check.describe(seconds)}`);
    }
    return (await this.tasker.call('advance_clock', { ms: Math.round(seconds * 1000) })).now;
  }

  /**
   * When the next step (of `handlers`) becomes claimable:
   * `{next_ready_at, in_ms, now, clock}` (`next_ready_at` and `in_ms` null when none).
   * @param {string[]} [handlers]
   */
  async nextReadyAt(handlers) {
    return this.tasker.call('next_ready_at', handlers === undefined ? {} : { handlers });
  }

  /**
   * Runs the workers until none has anything left, moving the clock to each retry or
   * delay: every worker runs until idle; if a step of their handlers becomes claimable
   * later, the clock moves to it and they run again. Resolves with the counts summed
   * over workers and rounds (`{completed, failed, lost, released}`).
   * @param {...import('./worker').Worker} workers
   */
  async runUntilIdle(...workers) {
    if (workers.length === 0) throw new TypeError('runUntilIdle needs at least one Worker');
    const handlers = [...new Set(workers.flatMap((w) => [...w.handlers.keys()]))].sort();
    const total = { completed: 0, failed: 0, lost: 0, released: 0 };
    for (let round = 0; round < 10000; round += 1) {
      for (const w of workers) {
        const got = await w.runUntilIdle();
        for (const k of Object.keys(total)) total[k] += got[k] || 0;
      }
      const due = await this.nextReadyAt(handlers);
      if (due.in_ms === null) return total;
      await this.tasker.call('advance_clock', { ms: due.in_ms });
    }
    throw new Error('workers were still busy after 10000 rounds');
  }

  /** Closes the handle and removes the temporary database. */
  async close() {
    await this.tasker.close();
    if (this._dir !== null) {
      fs.rmSync(this._dir, { recursive: true, force: true });
      this._dir = null;
    }
  }
}

/**
 * Opens a harness: a fresh SQLite database in a temporary directory (or
 * `settings.database_url`, which no other test may use) on the manual clock.
 * `settings` are laid over (docs/configuration.md); `clock` is always `manual`.
 * @param {Record<string, unknown>} [settings]
 * @returns {Promise<Harness>}
 */
async function openHarness(settings = {}) {
  check.plainObject('settings', settings);
  if (settings.clock !== undefined && settings.clock !== 'manual') {
    throw new TypeError('a testing harness runs on the manual clock (leave out clock)');
  }
  let dir = null;
  const merged = { ...settings, clock: 'manual' };
  if (merged.database_url === undefined) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-test-'));
    merged.database_url = `sqlite://${dir}/tasker.db`;
    if (merged.templates_dir === undefined) merged.templates_dir = dir;
  }
  try {
    return new Harness(await Tasker.open(merged), dir);
  } catch (e) {
    if (dir !== null) fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

module.exports = { Harness, openHarness };
