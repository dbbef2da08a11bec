'use strict';
// The cross-language conformance vectors (tests/conformance/*.json, format in its
// README.md) run through the Node.js package: every call goes through `tasker.Tasker`
// (claims with `claim`, reports with `complete_step` / `fail_step` / `heartbeat`, or,
// for `"via": "worker_session"` vectors, `worker_next` and `worker_report`),
// each claim is handed to a JavaScript handler as a `tasker.Step` that computes the
// scripted outcome from the step's `context`, `results`, `config` and `attempt`, and
// expected errors are matched on the error class and its `code`, `message` and
// `details`. Same semantics as core/tests/conformance.rs.
//
// Runs on SQLite, and on PostgreSQL when TASKER_TEST_DATABASE_URL is set (a schema per
// vector). Env: TASKER_NODE_PACKAGE (the installed package; default bindings-node),
// TASKER_CONFORMANCE_DIR (the vectors; default this directory's parent).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const tasker = require(process.env.TASKER_NODE_PACKAGE || path.join(ROOT, 'bindings-node'));
const { Step } = tasker;

const VECTORS_DIR = process.env.TASKER_CONFORMANCE_DIR || path.join(ROOT, 'tests', 'conformance');
const VECTORS = fs
  .readdirSync(VECTORS_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort();
const MIN_VECTORS = 20;
const MAX_LOOPS = 2000;
const PG_URL = process.env.TASKER_TEST_DATABASE_URL || '';
const STORES = (process.env.TASKER_NODE_STORES || 'sqlite,postgres')
  .split(',')
  .filter((s) => s === 'sqlite' || (s === 'postgres' && PG_URL));

class VectorFailure extends Error {}

// -- JSON comparison and expressions ------------------------------------------------

/** JSON equality, numbers by value; a boolean is never a number. */
function jsonEq(a, b) {
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEq(x, b[i]));
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a).sort();
    const kb = Object.keys(b).sort();
    return jsonEq(ka, kb) && ka.every((k) => jsonEq(a[k], b[k]));
  }
  return a === b;
}

/** `expected` is a subset of `actual`: objects key by key, recursively. */
function jsonSubset(expected, actual) {
  if (
    expected !== null &&
    actual !== null &&
    typeof expected === 'object' &&
    typeof actual === 'object' &&
    !Array.isArray(expected) &&
    !Array.isArray(actual)
  ) {
    return Object.keys(expected).every((k) => k in actual && jsonSubset(expected[k], actual[k]));
  }
  return jsonEq(expected, actual);
}

const ABSENT = Symbol('absent');

/** The value of a result expression (see the README's Expressions). */
function evaluate(expr, scope) {
  if (typeof expr === 'string' && expr.startsWith('$$')) return expr.slice(1);
  if (typeof expr === 'string' && expr.startsWith('$')) {
    const [root, ...segs] = expr.slice(1).split('.');
    if (!['context', 'results', 'config', 'attempt'].includes(root)) {
      throw new VectorFailure(`expression \`${expr}\`: unknown reference`);
    }
    let cur = root in scope ? scope[root] : ABSENT;
    if (cur === ABSENT) throw new VectorFailure(`expression \`${expr}\`: not available here`);
    for (const seg of segs) {
      if (cur !== null && typeof cur === 'object' && !Array.isArray(cur) && seg in cur) cur = cur[seg];
      else if (Array.isArray(cur) && /^\d+$/.test(seg) && Number(seg) < cur.length) cur = cur[Number(seg)];
      else throw new VectorFailure(`expression \`${expr}\`: no \`${seg}\` in ${JSON.stringify(cur)}`);
    }
    return cur;
  }
  if (Array.isArray(expr)) return expr.map((x) => evaluate(x, scope));
  if (expr !== null && typeof expr === 'object') {
    const keys = Object.keys(expr);
    if (keys.length === 1 && keys[0] === 'sum') {
      const values = expr.sum.map((x) => evaluate(x, scope));
      for (const v of values) {
        if (typeof v !== 'number') throw new VectorFailure(`\`sum\` of a non-number ${JSON.stringify(v)}`);
      }
      return values.reduce((a, b) => a + b, 0);
    }
    if (keys.length === 1 && keys[0] === 'literal') return expr.literal;
    if (keys.length === 1 && keys[0] === 'object') {
      return Object.fromEntries(Object.entries(expr.object).map(([k, v]) => [k, evaluate(v, scope)]));
    }
    return Object.fromEntries(Object.entries(expr).map(([k, v]) => [k, evaluate(v, scope)]));
  }
  return expr;
}

function checkError(expected, err, what) {
  if (!(err instanceof tasker.TaskerError)) throw err;
  const code = typeof expected === 'string' ? expected : expected.code;
  const details = typeof expected === 'string' ? undefined : expected.details;
  const contains = typeof expected === 'string' ? [] : expected.message_contains || [];
  if (err.code !== code) {
    throw new VectorFailure(`${what}: expected error \`${code}\`, got \`${err.code}\`: ${err.message}`);
  }
  if (err.constructor !== tasker.ERROR_CLASSES[code]) {
    throw new VectorFailure(`${what}: \`${code}\` raised as ${err.constructor.name}`);
  }
  if (details !== undefined && !jsonSubset(details, err.details)) {
    throw new VectorFailure(`${what}: error details ${JSON.stringify(err.details)} do not contain ${JSON.stringify(details)}`);
  }
  for (const s of contains) {
    if (!err.message.includes(s)) throw new VectorFailure(`${what}: error message \`${err.message}\` does not contain \`${s}\``);
  }
}

// -- the runner ---------------------------------------------------------------------

class Run {
  constructor(v, t, leaseMs) {
    this.v = v;
    this.t = t;
    this.leaseMs = leaseMs;
    this.taskId = 0;
    this.handlers = [];
    this.claims = new Map();
    this.tokens = new Map();
    this.held = [];
    this.actions = v.actions || [];
    this.fired = this.actions.map(() => false);
    this.notBefore = new Map();
    // With "via": "worker_session": the session the run claims and reports through.
    this.session = null;
  }

  async call(what, fn) {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof tasker.TaskerError) throw new VectorFailure(`${what} failed: ${e.name}: ${e.message}`);
      throw e;
    }
  }

  async expectFailure(expected, what, fn) {
    let out;
    try {
      out = await fn();
    } catch (e) {
      checkError(expected, e, what);
      return;
    }
    throw new VectorFailure(`${what} succeeded (${JSON.stringify(out)}) but was expected to fail with ${JSON.stringify(expected)}`);
  }

  async checked(expectError, what, fn) {
    if (expectError !== undefined) {
      await this.expectFailure(expectError, what, fn);
      return null;
    }
    return this.call(what, fn);
  }

  async run() {
    const { v, t } = this;
    const tpl = v.template;
    const ns = tpl.namespace;
    const name = tpl.name;
    // A step with wait_for has no handler (the engine runs it).
    for (const s of tpl.steps || []) if (s.handler !== undefined && !this.handlers.includes(s.handler)) this.handlers.push(s.handler);
    const expect = v.expect;
    if ('register_error' in expect) {
      await this.expectFailure(expect.register_error, 'register_template', () => t.registerTemplate(tpl));
      await this.expectFailure(expect.register_error, 'validate_template', () => t.validateTemplate(tpl));
      await this.expectFailure('not_found', 'get_template', () => t.getTemplate(ns, name));
      return;
    }
    await this.call('register_template', () => t.registerTemplate(tpl));
    if (v.via === 'worker_session') {
      const opened = await this.call('worker_open', () =>
        t.call('worker_open', { handlers: this.handlers, batch: 1, name: 'conformance' }),
      );
      this.session = opened.worker_id;
    }

    const create = { context: v.context === undefined ? {} : v.context, version: tpl.version };
    if ('priority' in v) create.priority = v.priority;
    // Scheduling vectors: more create_task fields (run_at, delay_ms, timeout_s), in the
    // package's camelCase.
    for (const [k, x] of Object.entries(v.create || {})) {
      create[k.replace(/_([a-z])/g, (_, c) => c.toUpperCase())] = x;
    }
    const idem = v.idempotency;
    if (idem) create.idempotencyKey = idem.key;
    if ('create_error' in expect) {
      await this.expectFailure(expect.create_error, 'create_task', () => t.createTask(ns, name, create));
      const listed = await t.listTasks({ namespace: ns, name });
      if (listed.tasks.length) throw new VectorFailure(`a rejected create_task left tasks behind: ${JSON.stringify(listed)}`);
      const ev = await t.events({ since: 0, limit: 1000 });
      if (ev.events.length) throw new VectorFailure(`a rejected create_task left events behind: ${JSON.stringify(ev)}`);
      return;
    }
    const created = await this.call('create_task', () => t.createTask(ns, name, create));
    if (created.created !== true) throw new VectorFailure(`create_task did not create a task: ${JSON.stringify(created)}`);
    this.taskId = created.task_id;
    if (idem) {
      const again = { ...create, context: 'context' in idem ? idem.context : create.context };
      const second = await this.call('create_task', () => t.createTask(ns, name, again));
      if (second.task_id !== this.taskId || second.created !== false) {
        throw new VectorFailure(`repeated create_task returned ${JSON.stringify(second)}`);
      }
    }

    await this.fire((a) => a.when === 'created');
    await this.drive();
    const unfired = this.actions.filter((_, i) => !this.fired[i]);
    if (unfired.length) throw new VectorFailure(`actions never fired: ${JSON.stringify(unfired)}`);

    const task = await this.call('get_task', () => t.getTask(this.taskId));
    if (idem) {
      const third = await this.call('create_task', () => t.createTask(ns, name, create));
      if (third.task_id !== this.taskId || third.created !== false || third.state !== task.state) {
        throw new VectorFailure(`create_task after the run returned ${JSON.stringify(third)}`);
      }
      const n = (await t.listTasks({ namespace: ns, name })).tasks.length;
      if (n !== 1) throw new VectorFailure(`expected one task for the idempotency key, list_tasks shows ${n}`);
    }
    const problems = [];
    for (const [k, want] of Object.entries(expect.task || {})) {
      if (!jsonEq(want, task[k])) problems.push(`task.${k}: expected ${JSON.stringify(want)}, got ${JSON.stringify(task[k])}`);
    }
    const steps = Object.fromEntries(task.steps.map((s) => [s.name, s]));
    for (const [sname, want] of Object.entries(expect.steps || {})) {
      if (!(sname in steps)) {
        problems.push(`step ${sname} is not in the task`);
        continue;
      }
      for (const [k, w] of Object.entries(want)) {
        const got = steps[sname][k];
        const ok = k === 'error' ? jsonSubset(w, got) : jsonEq(w, got);
        if (!ok) problems.push(`step ${sname}.${k}: expected ${JSON.stringify(w)}, got ${JSON.stringify(got)}`);
      }
    }
    if ('events' in expect) {
      const got = await this.events();
      if (!jsonEq(got, expect.events)) {
        problems.push(`events: expected ${JSON.stringify(expect.events)}, got ${JSON.stringify(got)}`);
      }
    }
    if (problems.length) throw new VectorFailure(problems.join('; '));
  }

  async events() {
    const out = [];
    let since = 0;
    for (;;) {
      const page = await this.call('events', () => this.t.events({ since, taskId: this.taskId, limit: 1000 }));
      if (!page.events.length) return out;
      for (const e of page.events) out.push('step_name' in e ? `${e.event}:${e.step_name}` : e.event);
      since = page.next_cursor;
    }
  }

  async fire(pred) {
    for (let i = 0; i < this.actions.length; i++) {
      if (!this.fired[i] && pred(this.actions[i])) {
        this.fired[i] = true;
        await this.act(this.actions[i]);
      }
    }
  }

  fireAfter(step, n, phase) {
    return this.fire((a) => {
      const at = a.after || {};
      return at.step === step && at.attempt === n && (at.phase || 'reported') === phase;
    });
  }

  // `explain_task`: each step named in `expect_steps` must have these fields in the
  // explanation (a step missing from it is a failure).
  async explainAction(a) {
    const resp = await this.t.call('explain_task', { task_id: this.taskId });
    for (const [name, fields] of Object.entries(a.expect_steps || {})) {
      const got = resp.steps.find((s) => s.name === name);
      if (got === undefined) throw new VectorFailure(`action ${JSON.stringify(a)}: step ${name} is not in the explanation ${JSON.stringify(resp)}`);
      for (const [k, w] of Object.entries(fields)) {
        if (!jsonEq(w, got[k])) {
          throw new VectorFailure(`action ${JSON.stringify(a)}: step ${name}: expected ${k} = ${JSON.stringify(w)}, got ${JSON.stringify(got[k])} (${JSON.stringify(resp)})`);
        }
      }
    }
  }

  async act(a) {
    const { t } = this;
    const step = a.step;
    if (a.do === 'explain_task') return this.explainAction(a);
    let fn;
    switch (a.do) {
      case 'cancel_task':
        fn = () => t.cancelTask(this.taskId, a.reason === undefined ? {} : { reason: a.reason });
        break;
      case 'retry_step':
        fn = () => t.retryStep({ taskId: this.taskId, stepName: step });
        break;
      case 'resolve_step': {
        const opts = {};
        if (a.reason !== undefined) opts.reason = a.reason;
        if ('result' in a) opts.result = evaluate(a.result, { context: this.v.context === undefined ? {} : this.v.context });
        fn = () => t.resolveStep({ taskId: this.taskId, stepName: step }, opts);
        break;
      }
      case 'report_stale': {
        const key = `${step}#${a.attempt}`;
        if (!this.tokens.has(key)) throw new VectorFailure(`report_stale: no claim number ${a.attempt} of step ${step}`);
        const [stepId, token] = this.tokens.get(key);
        if (a.report === 'complete') fn = () => t.call('complete_step', { step_id: stepId, claim_token: token, result: null });
        else if (a.report === 'fail') fn = () => t.call('fail_step', { step_id: stepId, claim_token: token, error: { message: 'stale' } });
        else if (a.report === 'heartbeat') fn = () => t.call('heartbeat', { step_id: stepId, claim_token: token });
        else throw new VectorFailure(`report_stale: unknown report \`${a.report}\``);
        break;
      }
      case 'advance_clock':
        // Scheduling vectors: move the manual clock (config.clock: manual).
        fn = () => t.call('advance_clock', { ms: a.ms });
        break;
      case 'send_signal':
        fn = this.signalCall(a);
        break;
      default:
        throw new VectorFailure(`unknown action \`${a.do}\``);
    }
    const resp = await this.checked(a.expect_error, a.do, fn);
    if (resp !== null) {
      for (const [k, w] of Object.entries(a.expect || {})) {
        if (!jsonEq(w, resp[k])) {
          throw new VectorFailure(`action ${JSON.stringify(a)}: expected ${k} = ${JSON.stringify(w)}, got ${JSON.stringify(resp[k])}`);
        }
      }
    }
  }

  /** sendSignal(taskId, signal, payload?: EXPR) (only $context in scope). */
  signalCall(a) {
    const payload = 'payload' in a
      ? evaluate(a.payload, { context: this.v.context === undefined ? {} : this.v.context })
      : undefined;
    return () => this.t.sendSignal(this.taskId, a.signal, payload);
  }

  async claim(waitMs) {
    if (this.session !== null) {
      const req = { worker_id: this.session, max: 1 };
      if (waitMs) req.wait_ms = waitMs;
      const page = await this.call('worker_next', () => this.t.call('worker_next', req));
      const steps = page.steps.map((raw) => ({ raw, step: new Step(raw, new AbortController().signal) }));
      // A session that is not idle but got nothing has a retry scheduled.
      return [steps, steps.length || page.idle ? null : 'scheduled'];
    }
    const req = { handlers: this.handlers, limit: 1, worker_id: 'conformance' };
    if (waitMs) req.wait_ms = waitMs;
    const page = await this.call('claim', () => this.t.call('claim', req));
    return [page.steps.map((raw) => ({ raw, step: new Step(raw, new AbortController().signal) })), page.next_ready_at];
  }

  async drive() {
    for (let loop = 0; loop < MAX_LOOPS; loop++) {
      let [steps, nextReady] = await this.claim(0);
      if (!steps.length && nextReady !== undefined && nextReady !== null) [steps, nextReady] = await this.claim(5000);
      if (steps.length) {
        await this.handle(steps[0]);
        continue;
      }
      if (this.held.length) {
        const delay = Math.max(...this.held) - performance.now();
        if (delay > 0) await new Promise((r) => setTimeout(r, delay));
        await this.call('sweep', () => this.t.sweep());
        this.held = [];
        continue;
      }
      const idle = this.actions.findIndex((a, i) => !this.fired[i] && a.when === 'idle');
      if (idle >= 0) {
        this.fired[idle] = true;
        await this.act(this.actions[idle]);
        continue;
      }
      return;
    }
    throw new VectorFailure(`the run did not settle within ${MAX_LOOPS} loops`);
  }

  /** The JavaScript handler every step is given to: the scripted outcome for this claim. */
  handler(step) {
    const n = this.claims.get(step.stepName);
    const outcomes = this.v.outcomes || {};
    if (!(step.stepName in outcomes)) {
      if (n !== 1) throw new VectorFailure(`unscripted attempt: claim ${n} of step ${step.stepName}`);
      return { complete: null };
    }
    const script = outcomes[step.stepName];
    if (n > script.length) throw new VectorFailure(`unscripted attempt: claim ${n} of step ${step.stepName}`);
    const outcome = { ...script[n - 1] };
    if ('complete' in outcome) {
      const scope = { context: step.context, results: step.results, config: step.config, attempt: step.attempt };
      outcome.complete = evaluate(outcome.complete, scope);
    }
    return outcome;
  }

  /** `worker_report` with the scripted outcome; its result must match `expect_report`
   * (a subset), else have the outcome the kind implies. */
  async report(name, n, step, outcome) {
    let item;
    let dflt;
    if ('complete' in outcome) [item, dflt] = [{ step_id: step.stepId, result: outcome.complete }, 'completed'];
    else if ('fail' in outcome) {
      [item, dflt] = [{ step_id: step.stepId, error: { message: 'scripted failure', ...outcome.fail } }, 'failed'];
    } else if ('invalid_result' in outcome) {
      [item, dflt] = [{ step_id: step.stepId, invalid_result: outcome.invalid_result }, 'failed'];
    } else if ('release' in outcome) [item, dflt] = [{ step_id: step.stepId, release: true }, 'released'];
    else throw new VectorFailure(`step ${name} claim ${n}: bad outcome for a worker session ${JSON.stringify(outcome)}`);
    const resp = await this.call('worker_report', () => this.t.call('worker_report', { worker_id: this.session, outcomes: [item] }));
    const got = resp.results[0];
    const want = outcome.expect_report || { outcome: dflt };
    if (!jsonSubset(want, got)) {
      throw new VectorFailure(`step ${name} claim ${n}: worker_report gave ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
    }
  }

  async handle({ raw, step }) {
    const name = step.stepName;
    if (step.taskId !== this.taskId) throw new VectorFailure(`claimed a step of another task: ${step}`);
    const n = (this.claims.get(name) || 0) + 1;
    this.claims.set(name, n);
    this.tokens.set(`${name}#${n}`, [step.stepId, raw.claim_token]);
    if (this.notBefore.has(name)) {
      const [started, ms] = this.notBefore.get(name);
      this.notBefore.delete(name);
      const waited = performance.now() - started;
      if (waited + 2 < ms) {
        throw new VectorFailure(`step ${name} was claimed again ${waited.toFixed(0)} ms after a failure with retry_after_ms ${ms}`);
      }
    }
    const outcome = this.handler(step);
    if ('claim_attempt' in outcome && !jsonEq(outcome.claim_attempt, step.attempt)) {
      throw new VectorFailure(`claim ${n} of step ${name}: expected attempt ${outcome.claim_attempt}, got ${step.attempt}`);
    }
    await this.fireAfter(name, n, 'claimed');
    const expectError = outcome.expect_error;
    if (this.session !== null) {
      await this.report(name, n, step, outcome);
    } else if ('complete' in outcome) {
      await this.checked(expectError, 'complete_step', () =>
        this.t.call('complete_step', { step_id: step.stepId, claim_token: raw.claim_token, result: outcome.complete }),
      );
    } else if ('fail' in outcome) {
      const doc = { message: 'scripted failure', ...outcome.fail };
      const started = performance.now();
      await this.checked(expectError, 'fail_step', () =>
        this.t.call('fail_step', { step_id: step.stepId, claim_token: raw.claim_token, error: doc }),
      );
      if ('retry_after_ms' in doc) this.notBefore.set(name, [started, doc.retry_after_ms]);
    } else if ('hold' in outcome) {
      this.held.push(performance.now() + this.leaseMs + 30);
    } else {
      throw new VectorFailure(`step ${name} claim ${n}: bad outcome ${JSON.stringify(outcome)}`);
    }
    await this.fireAfter(name, n, 'reported');
  }
}

function freshStore(store) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasker-node-conf-'));
  const base = { templates_dir: path.join(dir, 'templates') };
  if (store === 'sqlite') {
    return { settings: { ...base, database_url: `sqlite://${path.join(dir, 'tasker.db')}` }, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
  }
  const schema = `node_conf_${process.pid}_${crypto.randomBytes(5).toString('hex')}`;
  return {
    settings: { ...base, database_url: PG_URL, postgres_schema: schema, postgres_pool_size: 4 },
    cleanup() {
      execFileSync('psql', [PG_URL, '-q', '-c', 'SET client_min_messages = warning', '-c', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], {
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Appends `node <store> <vector> ok|FAIL` to the file TASKER_CONFORMANCE_LEDGER names:
// scripts/conformance-coverage checks there that every runner ran every vector on both
// stores (tests/conformance/README.md).
function recordInLedger(store, vector, ok) {
  const ledger = process.env.TASKER_CONFORMANCE_LEDGER;
  if (ledger) fs.appendFileSync(ledger, `node\t${store}\t${vector}\t${ok ? 'ok' : 'FAIL'}\n`);
}

test('the vectors are there', () => {
  assert.ok(VECTORS.length >= MIN_VECTORS, `only ${VECTORS.length} vectors in ${VECTORS_DIR}`);
});

for (const store of STORES) {
  test.describe(`conformance on ${store}`, () => {
    for (const file of VECTORS) {
      const vector = file.replace(/\.json$/, '');
      test(vector, async () => {
        let ok = false;
        try {
          await runVector(file, store);
          ok = true;
        } finally {
          recordInLedger(store, vector, ok);
        }
      });
    }
  });
}

async function runVector(file, store) {
  const v = JSON.parse(fs.readFileSync(path.join(VECTORS_DIR, file), 'utf8'));
  const fresh = freshStore(store);
  const config = {
    ...fresh.settings,
    env: 'conformance',
    lease_ms: 30000,
    sweep_interval_ms: 3600000,
    claim_poll_ms: 20,
    ...(v.config || {}),
  };
  const t = await tasker.Tasker.open(config);
  try {
    await new Run(v, t, Number(config.lease_ms)).run();
  } finally {
    await t.close();
    fresh.cleanup();
  }
}
