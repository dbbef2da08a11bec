'use strict';
// Integers beyond Number.MAX_SAFE_INTEGER cross the package exactly, on SQLite and
// PostgreSQL: they arrive as BigInt (in contexts, parent results and responses), a
// BigInt a handler returns or a context holds is stored as an integer, and everything
// else keeps JSON.parse's plain values.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { STORES, pkg, withTasker, chain } = require('./helpers');

const { Worker } = pkg();

const U64_MAX = 18446744073709551615n;
const I64_MIN = -9223372036854775808n;

for (const store of STORES) {
  test.describe(`64-bit integers on ${store}`, () => {
    test('a BigInt context and result are stored as integers and read back as BigInt', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('big', [['first'], ['second', ['first']]]));
        const context = { id: U64_MAX, low: I64_MIN, safe: 9007199254740991, small: 7, pi: 3.25, s: '12345678901234567890' };
        const { task_id } = await t.createTask('t', 'big', { context });
        const seen = {};
        const worker = new Worker(t);
        worker.handle('first', (step) => {
          seen.context = step.context;
          return { next: step.context.id - 1n, big: 2n ** 63n };
        });
        worker.handle('second', (step) => {
          seen.parent = step.results.first;
          return { doubled: step.results.first.big * 2n - 1n };
        });
        await worker.runUntilIdle();
        assert.deepEqual(seen.context, context);
        assert.equal(typeof seen.context.safe, 'number');
        assert.equal(typeof seen.context.s, 'string');
        assert.deepEqual(seen.parent, { next: U64_MAX - 1n, big: 9223372036854775808n });
        const task = await t.getTask(task_id);
        assert.equal(task.state, 'complete');
        assert.deepEqual(task.context, context);
        assert.deepEqual(task.steps[1].result, { doubled: U64_MAX });
      }));

    test('without long integers a response is plain JSON.parse data', () =>
      withTasker(store, async (t) => {
        await t.registerTemplate(chain('plain', [['only']]));
        const { task_id } = await t.createTask('t', 'plain', { context: { n: 1, f: 0.5, list: [null, true] } });
        const task = await t.getTask(task_id);
        assert.deepEqual(task.context, { n: 1, f: 0.5, list: [null, true] });
        assert.equal(typeof task.id, 'number');
      }));
  });
}

test('the exact parser agrees with JSON.parse wherever no integer is too long', () => {
  const base = process.env.TASKER_NODE_PACKAGE || path.join(__dirname, '..');
  const json = require(path.join(base, 'lib', 'json.js'));
  // A seeded generator: the same documents every run.
  let seed = 20261206;
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const strings = ['', 'a', 'é', '🎉', '"', '\\', '\n', '\u0001', '12345678901234567', '__proto__', 'null'];
  const gen = (depth) => {
    switch (depth > 3 ? rand(4) : rand(7)) {
      case 0: return strings[rand(strings.length)];
      case 1: return [0, -1, 2.5, 1e-300, 6.02214076e23, 9007199254740991, -0.125][rand(7)];
      case 2: return [true, false, null][rand(3)];
      case 3: return rand(1000) - 500;
      case 4: return Array.from({ length: rand(4) }, () => gen(depth + 1));
      default: {
        const o = {};
        for (let k = rand(4); k > 0; k--) o[strings[rand(strings.length)]] = gen(depth + 1);
        return o;
      }
    }
  };
  for (let n = 0; n < 500; n++) {
    // The long digit run in a string sends every document through the exact parser.
    const text = JSON.stringify({ pad: '12345678901234567', doc: gen(0) }, null, n % 2 ? 1 : undefined);
    assert.deepEqual(json.parse(text), JSON.parse(text), text);
    assert.equal(json.stringify(json.parse(text)), JSON.stringify(JSON.parse(text)));
  }
  assert.throws(() => json.parse('{"a": 12345678901234567890,}'), SyntaxError);
  assert.throws(() => json.parse('[12345678901234567890'), SyntaxError);
});
