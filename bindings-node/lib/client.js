'use strict';
// The `Tasker` handle: the engine's operations (docs/api.md) as methods returning
// Promises. Requests and responses cross the addon as JSON text; responses are the
// engine's JSON, field names as in docs/api.md (`task_id`, `steps_done`, ...).

const native = require('./native');
const { fromNative, ClosedError } = require('./errors');
const check = require('./check');
const json = require('./json');

// Makes `new Tasker(...)` from user code fail: handles come from Tasker.open.
const OPENING = Symbol('tasker.opening');

// One `events` read of a subscription waits this long for new events.
const FOLLOW_WAIT_MS = 250;
const FOLLOW_PAGE = 500;
// After a failed read (database restart), a subscription tries again this much later.
const FOLLOW_RETRY_MS = 500;

function parse(text) {
  return json.parse(text);
}

function rethrow(e) {
  throw fromNative(e);
}

/** A request object with the fields that were given (undefined means "not given"). */
/** The options of `createTask` (and the fields of a `createTasks` item besides the key). */
const CREATE_OPTIONS = ['version', 'context', 'idempotencyKey', 'priority', 'runAt', 'delayMs', 'timeoutS'];

/** The delay and timeout fields of a creation (`runAt` may be a Date). */
function timing(at, o) {
  let runAt = o.runAt;
  if (runAt instanceof Date) {
    if (Number.isNaN(runAt.getTime())) throw new TypeError(`${at}.runAt is an invalid Date`);
    runAt = runAt.toISOString();
  }
  check.optString(`${at}.runAt`, runAt);
  check.optInt(`${at}.delayMs`, o.delayMs);
  check.optInt(`${at}.timeoutS`, o.timeoutS);
  const out = {};
  if (runAt !== undefined) out.run_at = runAt;
  if (o.delayMs !== undefined) out.delay_ms = o.delayMs;
  if (o.timeoutS !== undefined) out.timeout_s = o.timeoutS;
  return out;
}

function request(fields) {
  const out = {};
  for (const k of Object.keys(fields)) {
    if (fields[k] !== undefined) out[k] = fields[k];
  }
  return out;
}

/**
 * An open handle on a Tasker database. Open one with `await Tasker.open(...)` and
 * `await tasker.close()` when done. Each method runs the engine operation of the same
 * name (in snake_case) and resolves with its response; a failure rejects with the
 * `TaskerError` subclass of its code. Wrong argument types reject with a `TypeError`
 * naming the argument.
 */
class Tasker {
  constructor(handle, token) {
    if (token !== OPENING) {
      throw new TypeError('use `await Tasker.open(url or config)` to open a handle');
    }
    this._h = handle;
    this._subs = new Set();
  }

  /**
   * Opens a handle. `config` is a database URL (`'sqlite://app.db'`,
   * `'postgres://...'`), or an object of settings (docs/configuration.md), or omitted
   * for the defaults; `settings` are laid over it.
   * @param {string | Record<string, unknown>} [config]
   * @param {Record<string, unknown>} [settings]
   * @returns {Promise<Tasker>}
   */
  static async open(config, settings) {
    const merged = {};
    if (typeof config === 'string') {
      merged.database_url = config;
    } else if (config !== undefined && config !== null) {
      check.plainObject('config', config);
      Object.assign(merged, config);
    }
    if (settings !== undefined && settings !== null) {
      check.plainObject('settings', settings);
      Object.assign(merged, settings);
    }
    const text = Object.keys(merged).length ? check.json('config', merged) : '';
    const handle = await native.open(text).catch(rethrow);
    return new Tasker(handle, OPENING);
  }

  /** True once `close()` was called. */
  get closed() {
    return this._h.closed;
  }

  /** The engine's lease length in milliseconds. */
  get leaseMs() {
    return this._h.leaseMs;
  }

  /**
   * Closes the handle and stops its event subscriptions. Idempotent; every later call
   * rejects with `ClosedError`. The engine is released with the last handle on its
   * database in this process.
   * @returns {Promise<void>}
   */
  async close() {
    for (const sub of this._subs) sub.stop();
    this._subs.clear();
    await this._h.close();
  }

  /** The native handle (used by `Worker`). */
  get native() {
    return this._h;
  }

  toString() {
    return `[Tasker ${this.closed ? 'closed' : 'open'}]`;
  }

  // -- raw access ------------------------------------------------------------------

  /**
   * Runs any operation by name with a request object; resolves with the response.
   * The escape hatch under every other method.
   * @param {string} op
   * @param {Record<string, unknown>} [req]
   */
  async call(op, req) {
    check.string('op', op);
    const text = req === undefined || req === null ? '' : check.json('request', check.plainObject('request', req));
    // A request that may wait is awaited on Tasker's runtime, not a libuv pool thread.
    const waits = req && typeof req.wait_ms === 'number' && req.wait_ms > 0;
    const out = waits ? this._h.callWaiting(op, text) : this._h.call(op, text);
    return parse(await out.catch(rethrow));
  }

  /**
   * Runs an operation with a JSON request text; resolves with the JSON response text,
   * unchanged.
   * @param {string} op
   * @param {string} [text]
   */
  async callJson(op, text = '') {
    check.string('op', op);
    check.string('text', text);
    return this._h.call(op, text).catch(rethrow);
  }

  /** An operation with a request built by this package (already-checked fields). */
  _op(op, req) {
    let text;
    try {
      text = json.stringify(req);
    } catch (e) {
      return Promise.reject(e);
    }
    return this._h.call(op, text).then(parse, rethrow);
  }

  /** Like `_op`, for operations that may wait (awaited on Tasker's runtime). */
  _waiting(op, req) {
    return this._h.callWaiting(op, json.stringify(req)).then(parse, rethrow);
  }

  // -- operations --------------------------------------------------------------------

  /** Checks that the handle works: `{ok: true, version}`. */
  async ping() {
    // Core answers `ping` from memory (no database, no wait), so it runs on this thread.
    try {
      return parse(this._h.ping());
    } catch (e) {
      throw fromNative(e);
    }
  }

  /**
   * Validates a template and stores it in the registry. `source` is a file path (a
   * string, always) or the template document (an object, always); for YAML or JSON
   * text use `registerTemplateText`. Registering the identical template again changes
   * nothing (`registered: false`); a different one under the same key rejects with
   * `ConflictError` unless `replace: true`.
   * @param {string | Record<string, unknown>} source
   * @param {{replace?: boolean}} [options]
   */
  async registerTemplate(source, options = {}) {
    const req = templateSource(source);
    addReplace(req, options);
    return this._op('register_template', req);
  }

  /**
   * Registers a template given as YAML (or JSON) text.
   * @param {string} text
   * @param {{replace?: boolean}} [options]
   */
  async registerTemplateText(text, options = {}) {
    check.string('text', text);
    const req = { yaml: text };
    addReplace(req, options);
    return this._op('register_template', req);
  }

  /**
   * Validates a template without storing it; resolves with `{valid: true, template}`
   * (the template resolved). `source` as for `registerTemplate`.
   * @param {string | Record<string, unknown>} source
   */
  async validateTemplate(source) {
    return this._op('validate_template', templateSource(source));
  }

  /**
   * Validates a template given as YAML (or JSON) text without storing it.
   * @param {string} text
   */
  async validateTemplateText(text) {
    check.string('text', text);
    return this._op('validate_template', { yaml: text });
  }

  /**
   * The stored (resolved) template; the highest version when `version` is omitted.
   * @param {string} namespace
   * @param {string} name
   * @param {string} [version]
   */
  async getTemplate(namespace, name, version) {
    check.string('namespace', namespace);
    check.string('name', name);
    check.optString('version', version);
    const out = await this._op('get_template', request({ namespace, name, version }));
    return out.template;
  }

  /**
   * Creates a task (one run of a template) with all its steps. Resolves with
   * `{task_id, created, state}`; `created` is false when `idempotencyKey` was already
   * used for this template's namespace and name (the existing task is returned).
   * @param {string} namespace
   * @param {string} name
   * `runAt` (RFC 3339 text or a Date) or `delayMs` delays the task; `timeoutS` fails it
   * when it runs past that many seconds after it is due (docs/scheduling.md).
   * @param {{version?: string, context?: unknown, idempotencyKey?: string, priority?: number, runAt?: string|Date, delayMs?: number, timeoutS?: number}} [options]
   */
  async createTask(namespace, name, options = {}) {
    check.string('namespace', namespace);
    check.string('name', name);
    check.options('options', options, CREATE_OPTIONS);
    const { version, context, idempotencyKey, priority } = options;
    check.optString('version', version);
    check.optString('idempotencyKey', idempotencyKey);
    check.optInt('priority', priority);
    const req = request({ namespace, name, version, idempotency_key: idempotencyKey, priority, ...timing('options', options) });
    if (context !== undefined) {
      check.json('context', context);
      req.context = context;
    }
    return this._op('create_task', req);
  }

  /**
   * Creates many tasks in one transaction: every one of them, or none. Each item takes
   * `createTask`'s arguments as fields and is checked and created as `createTask` would,
   * in order: a key that made a task before, or that an earlier item of the batch has,
   * returns that task (`created: false`). Rejects with `createTask`'s errors for the
   * first item that has one (its message starts with `tasks[i]`, `details.index` is `i`);
   * nothing of the batch is stored then. Resolves to one `{task_id, created, state}` per
   * task, in order.
   * @param {Array<{namespace: string, name: string, version?: string, context?: unknown, idempotencyKey?: string, priority?: number}>} tasks
   */
  async createTasks(tasks) {
    if (!Array.isArray(tasks)) throw new TypeError(`tasks must be an array, not ${typeof tasks}`);
    const items = tasks.map((task, i) => {
      const at = `tasks[${i}]`;
      check.options(at, task, ['namespace', 'name', ...CREATE_OPTIONS]);
      const { namespace, name, version, context, idempotencyKey, priority } = task;
      check.string(`${at}.namespace`, namespace);
      check.string(`${at}.name`, name);
      check.optString(`${at}.version`, version);
      check.optString(`${at}.idempotencyKey`, idempotencyKey);
      check.optInt(`${at}.priority`, priority);
      const req = request({ namespace, name, version, idempotency_key: idempotencyKey, priority, ...timing(at, task) });
      if (context !== undefined) {
        check.json(`${at}.context`, context);
        req.context = context;
      }
      return req;
    });
    const out = await this._op('create_tasks', { tasks: items });
    return out.tasks;
  }

  /**
   * Creates a cron schedule: at each tick of `options.cron` in `options.timezone` (IANA,
   * default UTC) a task of the template is created with `options.context`, exactly one
   * per tick whatever the number of processes. `catchUp` (`'skip'`, default, or `'all'`
   * with `catchUpLimit`) says what happens to ticks missed while no process ran.
   * Rejects with `InvalidArgumentError` (cron, time zone, policy), `NotFoundError`
   * (template) or `ConflictError` (the name is taken).
   * @param {string} name
   * @param {string} namespace
   * @param {string} template
   * @param {{cron: string, timezone?: string, version?: string, context?: unknown, catchUp?: string, catchUpLimit?: number, paused?: boolean}} options
   */
  async createSchedule(name, namespace, template, options) {
    check.string('name', name);
    check.string('namespace', namespace);
    check.string('template', template);
    check.options('options', options, ['cron', 'timezone', 'version', 'context', 'catchUp', 'catchUpLimit', 'paused']);
    const { cron, timezone, version, context, catchUp, catchUpLimit, paused } = options;
    check.string('options.cron', cron);
    check.optString('options.timezone', timezone);
    check.optString('options.version', version);
    check.optString('options.catchUp', catchUp);
    check.optInt('options.catchUpLimit', catchUpLimit);
    if (paused !== undefined) check.bool('options.paused', paused);
    const req = request({
      name,
      template: request({ namespace, name: template, version }),
      cron,
      timezone,
      catch_up: request({ policy: catchUp === undefined ? 'skip' : catchUp, limit: catchUpLimit }),
      paused,
    });
    if (context !== undefined) {
      check.json('options.context', context);
      req.context = context;
    }
    const out = await this._op('create_schedule', req);
    return out.schedule;
  }

  /** Every schedule, by name. */
  async listSchedules() {
    const out = await this._op('list_schedules', {});
    return out.schedules;
  }

  /** @param {string} name */
  async getSchedule(name) {
    check.string('name', name);
    return (await this._op('get_schedule', { name })).schedule;
  }

  /** Stops a schedule from firing. @param {string} name */
  async pauseSchedule(name) {
    check.string('name', name);
    return (await this._op('pause_schedule', { name })).schedule;
  }

  /** Lets a paused schedule fire again, from its next tick after now. @param {string} name */
  async resumeSchedule(name) {
    check.string('name', name);
    return (await this._op('resume_schedule', { name })).schedule;
  }

  /** Deletes a schedule; the tasks it created stay. @param {string} name */
  async deleteSchedule(name) {
    check.string('name', name);
    await this._op('delete_schedule', { name });
  }

  /**
   * A task with its context and every step (state, attempts, result, latest error
   * document). Rejects with `NotFoundError`.
   * @param {number} taskId
   */
  async getTask(taskId) {
    check.int('taskId', taskId);
    const out = await this._op('get_task', { task_id: taskId });
    return out.task;
  }

  /**
   * A page of tasks, newest first, optionally filtered. Pass the returned
   * `next_cursor` as `cursor` for the next page.
   * @param {{state?: string, namespace?: string, name?: string, limit?: number, cursor?: number}} [filter]
   */
  async listTasks(filter = {}) {
    check.options('filter', filter, ['state', 'namespace', 'name', 'limit', 'cursor']);
    const { state, namespace, name, limit, cursor } = filter;
    check.optString('state', state);
    check.optString('namespace', namespace);
    check.optString('name', name);
    check.optInt('limit', limit);
    check.optInt('cursor', cursor);
    return this._op('list_tasks', request({ state, namespace, name, limit, cursor }));
  }

  /**
   * Says, for people, why each unfinished step of a task is not done yet.
   * @param {number} taskId
   */
  async explainTask(taskId) {
    check.int('taskId', taskId);
    return this._op('explain_task', { task_id: taskId });
  }

  /**
   * Cancels a task: every unfinished step becomes `cancelled`. Resolves with
   * `{task_id, state, changed}`. Rejects with `InvalidStateError` when the task is
   * complete.
   * @param {number} taskId
   * @param {{reason?: string}} [options]
   */
  async cancelTask(taskId, options = {}) {
    check.int('taskId', taskId);
    check.options('options', options, ['reason']);
    check.optString('reason', options.reason);
    return this._op('cancel_task', request({ task_id: taskId, reason: options.reason }));
  }

  /**
   * Puts a step in `error` back to `ready` with a fresh attempt budget. Name it by id,
   * or by `{taskId, stepName}`.
   * @param {number | {taskId: number, stepName: string}} step
   */
  async retryStep(step) {
    return this._op('retry_step', stepRef(step));
  }

  /**
   * Marks an unfinished step done by hand (`resolved_manually`), optionally with a
   * `result` its children receive. Name the step as for `retryStep`.
   * @param {number | {taskId: number, stepName: string}} step
   * @param {{result?: unknown, reason?: string}} [options]
   */
  async resolveStep(step, options = {}) {
    const req = stepRef(step);
    check.options('options', options, ['result', 'reason']);
    check.optString('reason', options.reason);
    if (options.reason !== undefined) req.reason = options.reason;
    if ('result' in options && options.result !== undefined) {
      check.json('result', options.result);
      req.result = options.result;
    }
    return this._op('resolve_step', req);
  }

  /**
   * Sends signal `name` to a task: every step of it that waits for the signal
   * (`wait_for` in the template) and is `waiting` completes with `payload` (default
   * null) as its result; a step not waiting yet takes the signal when it gets there.
   * Rejects with `not_found` (no such task, or nothing waits for `name`),
   * `invalid_state` (the task is complete or cancelled) or `conflict` (sent before).
   * @param {number} taskId
   * @param {string} name
   * @param {unknown} [payload]
   */
  async sendSignal(taskId, name, payload = null) {
    check.int('taskId', taskId);
    check.string('name', name);
    const req = { task_id: taskId, name, payload: payload === undefined ? null : payload };
    check.json('payload', req.payload);
    return this._op('send_signal', req);
  }

  /**
   * Counts by state, throughput in the window, the slowest steps and tasks, and
   * `last_event_id`. Reads whole tables: for dashboards, not per task.
   * @param {{windowMs?: number}} [options]
   */
  async stats(options = {}) {
    check.options('options', options, ['windowMs']);
    check.optInt('windowMs', options.windowMs);
    return this._op('stats', request({ window_ms: options.windowMs }));
  }

  /**
   * Events after cursor `since`, oldest first (`{events, next_cursor}`). With
   * `waitMs`, waits that long for new events when there are none (on Tasker's
   * runtime: the event loop goes on).
   * @param {{since?: number, limit?: number, waitMs?: number, taskId?: number, types?: string[]}} [options]
   */
  async events(options = {}) {
    check.options('options', options, ['since', 'limit', 'waitMs', 'taskId', 'types']);
    const { since, limit, waitMs, taskId, types } = options;
    check.optInt('since', since);
    check.optInt('limit', limit);
    check.optInt('waitMs', waitMs);
    check.optInt('taskId', taskId);
    check.optStringArray('types', types);
    const req = request({ since, limit, wait_ms: waitMs, task_id: taskId, types });
    return waitMs ? this._waiting('events', req) : this._op('events', req);
  }

  /**
   * Calls `callback(event)` for every new event named `event` (`'task.completed'`,
   * `'step.failed'`, ...; `'*'` for all), read from the durable log, so events
   * committed by other processes are delivered too. `since` is the cursor to start
   * after; omitted, delivery starts from now. A callback that throws (or rejects) is
   * reported on `console.error` and delivery goes on.
   *
   * Resolves, once the subscription is running, with a function that unsubscribes
   * (idempotent); `close()` unsubscribes all. Rejects with `InvalidArgumentError`
   * when `event` is not an event name.
   * @param {string} event
   * @param {(event: object) => unknown} callback
   * @param {{since?: number}} [options]
   * @returns {Promise<() => void>}
   */
  async on(event, callback, options = {}) {
    check.string('event', event);
    check.func('callback', callback);
    const sub = await this._follow(event, options);
    (async () => {
      try {
        for (;;) {
          const ev = await sub.next();
          if (ev === null) return;
          try {
            await callback(ev);
          } catch (e) {
            console.error(`tasker: event callback failed on ${ev.event}:`, e);
          }
        }
      } catch (e) {
        console.error('tasker: event subscription stopped:', e);
      }
    })();
    return () => sub.stop();
  }

  /**
   * The events named `event` (`'*'` for all) as an async iterator, from cursor
   * `since` (omitted: from now), waiting for new ones:
   * `for await (const ev of tasker.subscribe('task.completed')) { ... }`. It ends when
   * the loop breaks, `signal` aborts, or the handle closes. Rejects (on the first
   * `next()`) with `InvalidArgumentError` when `event` is not an event name.
   * @param {string} [event]
   * @param {{since?: number, signal?: AbortSignal}} [options]
   * @returns {AsyncIterableIterator<object>}
   */
  subscribe(event = '*', options = {}) {
    check.string('event', event);
    check.options('options', options, ['since', 'signal']);
    check.optInt('since', options.since);
    const { signal } = options;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError('signal must be an AbortSignal');
    }
    let sub = null;
    // Starts now, so "from now" means from this call; a failure (an unknown event
    // name) rejects the first next().
    const starting = this._follow(event, { since: options.since });
    starting.catch(() => {});
    const onAbort = () => sub && sub.stop();
    const iterator = {
      async next() {
        if (sub === null) {
          sub = await starting;
          if (signal) {
            if (signal.aborted) sub.stop();
            else signal.addEventListener('abort', onAbort, { once: true });
          }
        }
        const ev = await sub.next();
        if (ev === null) {
          if (signal) signal.removeEventListener('abort', onAbort);
          return { value: undefined, done: true };
        }
        return { value: ev, done: false };
      },
      async return() {
        if (sub === null) sub = await starting.catch(() => null);
        if (sub) sub.stop();
        if (signal) signal.removeEventListener('abort', onAbort);
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  /** Starts following the log for `event` from `since` (checked by the engine). */
  async _follow(event, options) {
    check.options('options', options, ['since']);
    check.optInt('since', options.since);
    const types = event === '*' ? undefined : [event];
    let since = options.since;
    if (since === undefined) since = (await this.stats()).last_event_id;
    if (types) {
      // The engine checks the name now, from the cursor, reading at most one event.
      await this._op('events', { since, limit: 1, types });
    }
    const sub = new Follower(this, since, types);
    this._subs.add(sub);
    sub.onStop = () => this._subs.delete(sub);
    return sub;
  }

  // -- the low-level worker protocol (for custom workers; `Worker` uses sessions) -------

  /**
   * Runs `sweep`: takes back expired leases now (`{expired}`).
   */
  async sweep() {
    return this._op('sweep', {});
  }

  /** Runs `migrate`: applies pending database migrations (`{applied}`). */
  async migrate() {
    return this._op('migrate', {});
  }
}

/** Follows the event log from a cursor: `next()` resolves with an event, or null once stopped. */
class Follower {
  constructor(tasker, since, types) {
    this.tasker = tasker;
    this.cursor = since;
    this.types = types;
    this.buffer = [];
    this.stopped = false;
    this.onStop = null;
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.buffer = [];
    if (this.onStop) this.onStop();
  }

  async next() {
    while (!this.stopped) {
      if (this.buffer.length) return this.buffer.shift();
      if (this.tasker.closed) break;
      let page;
      try {
        page = await this.tasker._waiting(
          'events',
          request({ since: this.cursor, limit: FOLLOW_PAGE, wait_ms: FOLLOW_WAIT_MS, types: this.types }),
        );
      } catch (e) {
        if (e instanceof ClosedError) break;
        if (this.stopped) break;
        console.warn(`tasker: event subscription read failed; retrying: ${e.message}`);
        await new Promise((r) => setTimeout(r, FOLLOW_RETRY_MS));
        continue;
      }
      if (this.stopped) break;
      this.buffer = page.events;
      this.cursor = page.next_cursor;
    }
    this.stop();
    return null;
  }
}

function templateSource(source) {
  if (typeof source === 'string') return { path: source };
  if (source !== null && typeof source === 'object' && !Array.isArray(source)) {
    check.json('source', source);
    return { template: source };
  }
  throw new TypeError(
    `source must be a file path (string) or a template (object), not ${check.describe(source)}; ` +
      'for YAML text use registerTemplateText',
  );
}

function addReplace(req, options) {
  check.options('options', options, ['replace']);
  if (options.replace !== undefined) {
    check.bool('replace', options.replace);
    if (options.replace) req.replace = true;
  }
}

function stepRef(step) {
  if (typeof step === 'number') {
    check.int('step', step);
    return { step_id: step };
  }
  if (step !== null && typeof step === 'object' && !Array.isArray(step)) {
    check.options('step', step, ['taskId', 'stepName']);
    check.int('step.taskId', step.taskId);
    check.string('step.stepName', step.stepName);
    return { task_id: step.taskId, step_name: step.stepName };
  }
  throw new TypeError(`step must be a step id (integer) or {taskId, stepName}, not ${check.describe(step)}`);
}

module.exports = { Tasker };
