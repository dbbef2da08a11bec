'use strict';
// The worker: runs async JavaScript handlers for the steps core's worker runtime hands
// out (docs/workers.md). Core claims, keeps leases alive, retries, times out, releases
// and gives up; this driver only runs handlers on the event loop, turns what they
// return or throw into outcomes, and turns core's stop signals into `step.signal`
// aborts. Every native call is awaited on Tasker's runtime: the event loop never
// blocks, even while the worker waits for work.

const { EventEmitter } = require('node:events');
const native = require('./native');
const { Tasker } = require('./client');
const { fromNative, NotFoundError, PermanentError, RetryableError } = require('./errors');
const check = require('./check');
const json = require('./json');

// How long one `worker_next` waits for work while the worker has nothing to run.
const IDLE_WAIT_MS = 1000;
// While handlers run: how long one runs before the driver also asks core for stop
// signals, and how long that request waits for one.
const WATCH_AFTER_MS = 20;
const WATCH_WAIT_MS = 200;
// Outcomes are reported once every claimed step has started, or after this long.
const FLUSH_AFTER_MS = 20;
// Reports in flight at once (each also claims the next steps it has room for), and the
// fewest outcomes a report is split down to: a large batch is reported (and refilled)
// in up to this many overlapping round trips.
const MAX_IN_FLIGHT = 4;
const MIN_REPORT = 64;

/**
 * One run of a handler: its start time and its stop signal. The AbortController is
 * made when the handler first reads `step.signal` (most never do), already aborted
 * if a stop came before.
 */
class Run {
  constructor() {
    this.startedAt = Date.now();
    this.ctl = null;
    this.reason = null;
  }

  get signal() {
    if (this.ctl === null) {
      this.ctl = new AbortController();
      if (this.reason !== null) this.ctl.abort(new StopSignal(this.reason));
    }
    return this.ctl.signal;
  }

  abort(reason) {
    if (this.reason !== null) return;
    this.reason = reason;
    if (this.ctl !== null) this.ctl.abort(new StopSignal(reason));
  }
}

/**
 * What a handler returns to have its step wait for the child tasks it started
 * (`step.startChild`): made by `waitForChildren()`.
 */
class WaitForChildren {
  toString() {
    return 'waitForChildren()';
  }
}
const WAIT_FOR_CHILDREN = Object.freeze(new WaitForChildren());

/**
 * The handler's return value that makes its step wait for its child tasks instead of
 * completing: the step completes with `{children: [{task_id, key, state, results}]}`
 * (start order) once every child is final, or fails with kind `child_failed`.
 * @returns {WaitForChildren}
 */
function waitForChildren() {
  return WAIT_FOR_CHILDREN;
}

/** What a handler receives: one claimed step. */
class Step {
  /**
   * @param {object} raw the step as `worker_next` hands it out
   * @param {AbortSignal | Run} [stop] its stop signal (a fresh one when omitted)
   * @param {Tasker} [tasker] the client its worker claimed it with (for `startChild`)
   */
  constructor(raw, stop, tasker) {
    /** @type {number} */ this.stepId = raw.step_id;
    /** @type {number} */ this.taskId = raw.task_id;
    /** @type {string} */ this.stepName = raw.step_name;
    /** @type {string} */ this.handler = raw.handler;
    /** 1 on the first attempt. @type {number} */ this.attempt = raw.attempt;
    /** @type {number} */ this.maxAttempts = raw.max_attempts;
    /** @type {string | null} */ this.leaseExpiresAt = raw.lease_expires_at ?? null;
    /** @type {number | null} */ this.timeoutMs = raw.timeout_ms ?? null;
    /** The task's context. */ this.context = raw.context;
    /** The step's config (environment overrides applied), or null. */
    this.config = raw.config ?? null;
    /** Parent results by step name. */ this.results = raw.results || {};
    Object.defineProperty(this, '_stop', { value: stop || new Run(), enumerable: false });
    Object.defineProperty(this, '_claim', { value: { token: raw.claim_token, tasker }, enumerable: false });
  }

  /**
   * Starts a child task of this step (`create_task` with `parent`). `key` names the
   * child among this step's children: a retried handler that starts it again gets the
   * same task back. Resolves to the child task's id. Return `waitForChildren()` to have
   * the step wait for its children.
   * @param {{namespace: string, name: string, key: string, context?: unknown, version?: string, priority?: number}} options
   * @returns {Promise<number>}
   */
  async startChild(options) {
    const { tasker, token } = this._claim;
    if (!(tasker instanceof Tasker)) {
      throw new TypeError('startChild needs a step a Worker handed to its handler');
    }
    check.options('options', options, ['namespace', 'name', 'key', 'context', 'version', 'priority']);
    const { namespace, name, key, context, version, priority } = options;
    check.string('namespace', namespace);
    check.string('name', name);
    check.string('key', key);
    check.optString('version', version);
    check.optInt('priority', priority);
    const req = { namespace, name, idempotency_key: key, parent: { step_id: this.stepId, claim_token: token } };
    if (version !== undefined) req.version = version;
    if (priority !== undefined) req.priority = priority;
    if (context !== undefined) {
      check.json('context', context);
      req.context = context;
    }
    const out = await tasker.call('create_task', req);
    return out.task_id;
  }

  /**
   * Aborted when the run should stop: its task was cancelled (`reason.code`
   * `'cancelled'`), its timeout passed (`'timeout'`), its lease was lost
   * (`'lease_lost'`), or the worker stopped past its grace period (`'stopped'`).
   * @type {AbortSignal}
   */
  get signal() {
    return this._stop instanceof AbortSignal ? this._stop : this._stop.signal;
  }

  /** True once `signal` was aborted. */
  get cancelled() {
    return this._stop instanceof AbortSignal ? this._stop.aborted : this._stop.reason !== null;
  }

  toString() {
    return `[Step ${this.stepName} #${this.stepId} of task ${this.taskId}, attempt ${this.attempt}]`;
  }
}

/** Why `step.signal` was aborted: `signal.reason` is one of these. */
class StopSignal extends Error {
  constructor(reason) {
    super(`step run stopped: ${reason}`);
    this.name = 'StopSignal';
    this.code = reason;
  }
}

function encodeResult(stepId, result) {
  if (result === WAIT_FOR_CHILDREN) return `{"step_id":${stepId},"wait_for_children":true}`;
  let text;
  try {
    text = json.stringify(result === undefined ? null : result);
  } catch (e) {
    return json.stringify({ step_id: stepId, invalid_result: String(e && e.message ? e.message : e) });
  }
  if (text === undefined) {
    return json.stringify({
      step_id: stepId,
      invalid_result: `a handler returned ${typeof result}, which is not JSON data`,
    });
  }
  return `{"step_id":${stepId},"result":${text}}`;
}

function errorDocument(e) {
  if (e instanceof Error) {
    const doc = {
      message: String(e.message || e.name || 'Error'),
      kind: (e.constructor && e.constructor.name) || e.name || 'Error',
      retryable: !(e instanceof PermanentError),
    };
    if (e instanceof RetryableError && e.retryAfterMs !== null) {
      doc.retry_after_ms = Math.round(e.retryAfterMs);
    }
    if (e.details !== undefined && e.details !== null) doc.details = e.details;
    if (typeof e.stack === 'string') doc.backtrace = e.stack;
    return doc;
  }
  // A thrown non-Error (a string, undefined, a plain object): a retryable failure.
  const kind = e === null ? 'null' : typeof e;
  let message;
  if (typeof e === 'string') message = e;
  else {
    let shown;
    try {
      shown = json.stringify(e);
    } catch (_) {
      shown = undefined;
    }
    message = `a non-Error value was thrown: ${shown === undefined ? String(e) : shown}`;
  }
  return { message, kind, retryable: true };
}

function encodeFailure(stepId, e) {
  const doc = errorDocument(e);
  try {
    return json.stringify({ step_id: stepId, error: doc });
  } catch (err) {
    delete doc.details;
    doc.message += ` (its details are not JSON data: ${err.message})`;
    return json.stringify({ step_id: stepId, error: doc });
  }
}

function call(promise) {
  return promise.catch((e) => {
    throw fromNative(e);
  });
}

function sleep(ms) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (t.unref) t.unref();
  });
}

/**
 * Runs JavaScript handlers for claimed steps. Register handlers with `handle(name,
 * fn)`, then either `await runUntilIdle()` (drain what is runnable and stop) or
 * `await start()` and later `await stop({graceMs})`.
 *
 * Emits `'log'` with `{level, target, message}` for core's log lines about this
 * worker (warnings are also written with `console.warn` when nobody listens).
 */
class Worker extends EventEmitter {
  /**
   * @param {Tasker} tasker
   * @param {{concurrency?: number, batch?: number, leaseMs?: number, name?: string,
   *   handlers?: Record<string, (step: Step) => unknown>}} [options]
   */
  constructor(tasker, options = {}) {
    super();
    if (!(tasker instanceof Tasker)) {
      throw new TypeError(`tasker must be a Tasker (from Tasker.open), not ${check.describe(tasker)}`);
    }
    check.options('options', options, ['concurrency', 'batch', 'leaseMs', 'name', 'handlers']);
    const { concurrency = 1, batch, leaseMs, name, handlers } = options;
    check.int('concurrency', concurrency);
    check.optInt('batch', batch);
    check.optInt('leaseMs', leaseMs);
    check.optString('name', name);
    this.tasker = tasker;
    this.concurrency = concurrency;
    this.batch = batch;
    this.leaseMs = leaseMs;
    this.name = name;
    /** @type {Map<string, (step: Step) => unknown>} */
    this.handlers = new Map();
    if (handlers !== undefined) {
      check.plainObject('handlers', handlers);
      for (const [n, fn] of Object.entries(handlers)) this.handle(n, fn);
    }
    this._session = null;
    this._loop = null;
    this._stopping = null;
    this._reset();
  }

  _reset() {
    this._queue = [];
    this._running = new Map();
    this._outcomes = [];
    this._firstOutcomeAt = 0;
    this._watch = null;
    this._settledWaiters = [];
    // Reports in flight: their outcomes, the steps they may claim, their promises.
    this._reporting = 0;
    this._claiming = 0;
    this._calls = new Set();
    this._failure = null;
    this._lastIdle = false;
  }

  /**
   * Registers the handler for steps whose template names `name` as their handler.
   * `fn(step)` may be async; what it returns (JSON data; `undefined` is null) is the
   * step's result. Throw `PermanentError` to fail without retry, `RetryableError`
   * (with `retryAfterMs`) to ask for a retry; anything else thrown is a retryable
   * failure with its class, message and stack recorded.
   * @param {string} name
   * @param {(step: Step) => unknown} fn
   * @returns {this}
   */
  handle(name, fn) {
    check.string('name', name);
    check.func('fn', fn);
    if (this._session) throw new Error('register handlers before the worker starts');
    this.handlers.set(name, fn);
    return this;
  }

  /** True while the worker has an open session. */
  get running() {
    return this._session !== null;
  }

  /**
   * Runs handlers until nothing is left to run for them (no claimable step, none held,
   * no retry scheduled), then closes the session. Resolves with the session's counts
   * (`{worker_id, completed, failed, lost, released}`).
   */
  async runUntilIdle() {
    await this._open();
    this._loop = this._drive(true);
    return this._loop;
  }

  /**
   * Opens the session and runs handlers in the background until `stop()`. Resolves
   * once the session is open (rejects if it cannot be opened).
   */
  async start() {
    await this._open();
    this._loop = this._drive(false);
    // A loop that fails is reported here and again by stop().
    this._loop.catch((e) => console.error('tasker: worker stopped with an error:', e));
  }

  /**
   * Stops claiming, waits up to `graceMs` (default 0) for running handlers to finish
   * and reports them; steps not finished by then get their `signal` aborted and are
   * released by core (their attempt does not count). Resolves with the session's
   * counts; rejects with the error that stopped the worker, if one did.
   * @param {{graceMs?: number}} [options]
   */
  async stop(options = {}) {
    check.options('options', options, ['graceMs']);
    const { graceMs = 0 } = options;
    check.int('graceMs', graceMs);
    if (!this._loop) throw new Error('the worker is not running (call start() first)');
    if (!this._stopping) {
      // Core stops claiming, waits up to graceMs for the reports of held steps and
      // releases the rest; meanwhile the driver goes on reporting what finishes.
      this._stopping = call(this._session.close(graceMs));
      this._stopping.catch(() => {});
      this._wakeSettled();
    }
    return this._loop;
  }

  /** `worker_stats` of the running session (held, claimed, completed, ...). */
  async stats() {
    if (!this._session) throw new Error('the worker is not running');
    return json.parse(await call(this._session.stats()));
  }

  // -- the driver --------------------------------------------------------------------

  async _open() {
    if (this._session || this._loop) throw new Error('the worker is already running');
    if (this.handlers.size === 0) throw new Error('register at least one handler with handle(name, fn)');
    const req = { handlers: [...this.handlers.keys()], concurrency: this.concurrency };
    if (this.batch !== undefined) req.batch = this.batch;
    if (this.leaseMs !== undefined) req.lease_ms = this.leaseMs;
    if (this.name !== undefined) req.name = this.name;
    this._reset();
    this._stopping = null;
    native.captureLogs();
    const session = await call(native.openSession(this.tasker.native, json.stringify(req)));
    const opened = json.parse(session.opened);
    this.batch = opened.batch;
    this.concurrency = opened.concurrency;
    this.workerId = opened.worker_id;
    this._session = session;
    if (opened.warning) this._log({ level: 'warn', target: 'tasker::worker', message: opened.warning });
    this._drainLogs();
  }

  _log(record) {
    if (this.listenerCount('log') > 0) this.emit('log', record);
    else if (record.level === 'warn' || record.level === 'error') {
      console.warn(`tasker (${record.target}): ${record.message}`);
    }
  }

  _drainLogs() {
    for (const r of native.drainLogs(256)) this._log(r);
  }

  _held() {
    return this._queue.length + this._running.size + this._outcomes.length + this._reporting;
  }

  _room() {
    return Math.max(0, this.batch - this._held() - this._claiming);
  }

  _wakeSettled() {
    const w = this._settledWaiters;
    this._settledWaiters = [];
    for (const r of w) r();
  }

  /** Resolves when a handler settles (or stop() is called). */
  _settled() {
    return new Promise((resolve) => this._settledWaiters.push(resolve));
  }

  /** Applies a page of `worker_next` / `worker_report`: new steps, then stop signals
   * (a page can carry a step and its stop). */
  _apply(page) {
    for (const raw of page.steps || []) this._queue.push(raw);
    for (const s of page.stop || []) {
      const run = this._running.get(s.step_id);
      if (run) {
        run.abort(s.reason);
        continue;
      }
      // Claimed but not started: never run it (core already took it back or will).
      const i = this._queue.findIndex((q) => q.step_id === s.step_id);
      if (i >= 0) {
        this._queue.splice(i, 1);
        this._push(json.stringify({ step_id: s.step_id, release: true }));
      }
    }
    if (page.idle !== undefined) this._lastIdle = page.idle;
    this._drainLogs();
  }

  _push(outcome) {
    if (this._outcomes.length === 0) this._firstOutcomeAt = Date.now();
    this._outcomes.push(outcome);
  }

  _startHandlers() {
    while (this._running.size < this.concurrency && this._queue.length && !this._stopping) {
      this._run(this._queue.shift());
    }
  }

  async _run(raw) {
    const run = new Run();
    this._running.set(raw.step_id, run);
    const fn = this.handlers.get(raw.handler);
    let outcome;
    try {
      if (!fn) throw new PermanentError(`this worker has no handler named \`${raw.handler}\``);
      const result = await fn(new Step(raw, run, this.tasker));
      outcome = encodeResult(raw.step_id, result);
    } catch (e) {
      outcome = encodeFailure(raw.step_id, e);
    }
    // Abandoned after stop's grace period: the session is closed, core released it.
    if (this._running.get(raw.step_id) !== run) return;
    this._running.delete(raw.step_id);
    this._push(outcome);
    // The next claimed step starts at once, without a turn of the driver's loop, which
    // wakes once the claimed steps have all started (its timers cover the rest).
    this._startHandlers();
    if (this._queue.length === 0 || this._stopping) this._wakeSettled();
  }

  _takeOutcomes(n = this._outcomes.length) {
    const text = `[${this._outcomes.slice(0, n).join(',')}]`;
    this._outcomes = this._outcomes.slice(n);
    if (this._outcomes.length) this._firstOutcomeAt = Date.now();
    return text;
  }

  /**
   * Sends the finished outcomes in up to MAX_IN_FLIGHT reports without waiting for
   * them; each claims the next steps there is room for. Their answers start handlers
   * as they arrive.
   */
  _report(session) {
    const free = MAX_IN_FLIGHT - this._calls.size;
    const size = Math.max(MIN_REPORT, Math.ceil(this._outcomes.length / free));
    while (this._outcomes.length && this._calls.size < MAX_IN_FLIGHT) {
      const count = Math.min(size, this._outcomes.length);
      const outcomes = this._takeOutcomes(count);
      const room = this._room();
      this._reporting += count;
      this._claiming += room;
      const p = call(session.report(outcomes, room))
        .then(
          (text) => this._apply(json.parse(text)),
          (e) => {
            this._failure = this._failure || e;
          },
        )
        .finally(() => {
          this._reporting -= count;
          this._claiming -= room;
          this._calls.delete(p);
          this._startHandlers();
          this._wakeSettled();
        });
      this._calls.add(p);
    }
  }

  _flushDue() {
    if (!this._outcomes.length) return false;
    if (this._queue.length === 0 || this._stopping) return true;
    return Date.now() - this._firstOutcomeAt >= FLUSH_AFTER_MS;
  }

  /** When the driver must look up even if no handler settles (ms since the epoch). */
  _deadline() {
    let at = Infinity;
    if (!this._watch) {
      for (const run of this._running.values()) at = Math.min(at, run.startedAt + WATCH_AFTER_MS);
    }
    if (this._outcomes.length && this._queue.length) at = Math.min(at, this._firstOutcomeAt + FLUSH_AFTER_MS);
    return at;
  }

  async _drive(untilIdle) {
    const session = this._session;
    let failure = null;
    try {
      for (;;) {
        if (this._failure) throw this._failure;
        if (this._stopping) break;
        this._startHandlers();
        const busy = this._running.size > 0 || this._queue.length > 0;
        if (this._flushDue() && this._calls.size < MAX_IN_FLIGHT) {
          if (!busy && !untilIdle && !this._watch && this._calls.size === 0) {
            // Nothing else to do: report, and wait in core for the next work.
            const outcomes = this._takeOutcomes();
            const room = this._room();
            this._apply(json.parse(await call(session.reportWaiting(outcomes, room, IDLE_WAIT_MS))));
          } else {
            this._report(session);
          }
          continue;
        }
        if (!busy && this._calls.size === 0 && !this._watch && !this._outcomes.length) {
          if (untilIdle && this._lastIdle) break;
          // Nothing to run: ask for work (waiting in core, woken by notification).
          const room = this._room();
          let page = json.parse(await call(untilIdle ? session.next(room) : session.nextWaiting(room, IDLE_WAIT_MS)));
          if (untilIdle && !page.idle && !(page.steps || []).length && !(page.stop || []).length) {
            // A retry of these handlers is scheduled: wait for it.
            page = json.parse(await call(session.nextWaiting(this._room(), IDLE_WAIT_MS)));
          }
          this._apply(page);
          continue;
        }
        // Handlers are running or reports are in flight. Once a handler has run
        // WATCH_AFTER_MS, a watch asks core for stop signals (max 0: it claims nothing;
        // claims ride on the reports).
        if (!this._watch && this._running.size > 0 && Date.now() >= this._deadline() && !this._flushDue()) {
          this._watch = call(session.nextWaiting(0, WATCH_WAIT_MS)).then(
            (text) => ({ page: json.parse(text) }),
            (error) => ({ error }),
          );
        }
        const waits = [this._settled().then(() => null)];
        let timer = null;
        const at = this._deadline();
        if (at !== Infinity) {
          waits.push(
            new Promise((resolve) => {
              timer = setTimeout(() => resolve(null), Math.max(0, at - Date.now()));
            }),
          );
        }
        if (this._watch) waits.push(this._watch);
        const r = await Promise.race(waits);
        if (timer) clearTimeout(timer);
        if (r === null) continue;
        this._watch = null;
        if (r.error) throw r.error;
        this._apply(r.page);
      }
    } catch (e) {
      // stop() closed the session while a request was on its way: not a failure.
      if (!(this._stopping && e instanceof NotFoundError)) failure = e;
    }
    return this._finish(session, failure);
  }

  async _finish(session, failure) {
    // The session closes now (runUntilIdle, a failure) or is closing (stop()).
    const closing = this._stopping || call(session.close(0));
    closing.catch(() => {});
    let closed = null;
    try {
      // The reports in flight land first (what they claim is handed back below).
      while (this._calls.size) await Promise.all([...this._calls]);
      if (!(this._stopping && this._failure instanceof NotFoundError)) failure = failure || this._failure;
      // Claimed but never started: hand back.
      for (const raw of this._queue.splice(0)) this._push(json.stringify({ step_id: raw.step_id, release: true }));
      let done = false;
      closing.then(
        () => {
          done = true;
          this._wakeSettled();
        },
        () => {
          done = true;
          this._wakeSettled();
        },
      );
      // Report what finishes until core has closed the session.
      while (!failure && !done) {
        if (this._outcomes.length) {
          this._apply(json.parse(await call(session.report(this._takeOutcomes()))));
          continue;
        }
        if (this._running.size === 0 && !this._watch) break;
        const waits = [this._settled()];
        if (this._watch) waits.push(this._watch.then(() => (this._watch = null)));
        await Promise.race(waits);
      }
      closed = json.parse(await closing);
    } catch (e) {
      // A report that reached core after stop()'s close: its step was released.
      if (!(this._stopping && e instanceof NotFoundError)) failure = failure || e;
    }
    if (closed === null && !failure) closed = json.parse(await closing);
    // Past the grace period: the runs still going are told to stop; core released them.
    for (const run of this._running.values()) run.abort('stopped');
    this._running.clear();
    if (this._watch) await this._watch;
    this._drainLogs();
    this._session = null;
    this._loop = null;
    this._stopping = null;
    this._reset();
    if (failure) throw failure;
    return closed;
  }
}

module.exports = { Worker, Step, StopSignal, Run, WaitForChildren, waitForChildren };
