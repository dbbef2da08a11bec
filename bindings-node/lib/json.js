'use strict';
// JSON text to and from JavaScript values without losing integers. A JavaScript number
// holds integers exactly only up to 2^53 - 1, while the engine keeps every 64-bit
// integer a step stored (a Ruby, Python or C handler's ids, hashes, amounts). So an
// integer beyond Number.MAX_SAFE_INTEGER arrives as a BigInt, and a BigInt in a value
// sent to the engine is written as a JSON integer. Other numbers are plain numbers; as
// everywhere in JavaScript, a float with no fractional part (2.0) reads and writes as 2.
//
// Why hand-written: the package has no npm dependencies, because `npm install
// ./bindings-node` links the folder and npm does not install a linked folder's
// dependencies; and Node.js 20 has neither JSON.parse's source text access nor
// JSON.rawJSON, which make this a reviver and a replacer from Node.js 21 on. Only
// text with a run of 16 or more digits leaves the fast path of JSON.parse; strings and
// their escapes are still decoded by JSON.parse.

// An integer too large for a double has at least 16 digits.
const LONG_DIGITS = /\d{16}/;
const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;

/** Parses JSON text; integers beyond 2^53 - 1 become BigInts. */
function parse(text) {
  return LONG_DIGITS.test(text) ? parseExact(text) : JSON.parse(text);
}

function parseExact(text) {
  let i = 0;
  const fail = () => {
    throw new SyntaxError(`invalid JSON at position ${i}`);
  };
  const space = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const string = () => {
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i++ >= text.length) fail();
    return JSON.parse(text.slice(start, i));
  };
  const number = () => {
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (m === null) fail();
    i = NUMBER.lastIndex;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  };
  const literal = (word, v) => {
    if (text.startsWith(word, i)) {
      i += word.length;
      return v;
    }
    return fail();
  };
  const value = () => {
    space();
    switch (text[i]) {
      case '{': {
        i++;
        const out = {};
        space();
        if (text[i] === '}') return i++, out;
        for (;;) {
          space();
          if (text[i] !== '"') fail();
          const key = string();
          space();
          if (text[i++] !== ':') fail();
          // defineProperty: a key "__proto__" is an own property, as JSON.parse makes it.
          Object.defineProperty(out, key, { value: value(), writable: true, enumerable: true, configurable: true });
          space();
          if (text[i] === ',') i++;
          else if (text[i++] === '}') return out;
          else fail();
        }
      }
      case '[': {
        i++;
        const out = [];
        space();
        if (text[i] === ']') return i++, out;
        for (;;) {
          out.push(value());
          space();
          if (text[i] === ',') i++;
          else if (text[i++] === ']') return out;
          else fail();
        }
      }
      case '"':
        return string();
      case 't':
        return literal('true', true);
      case 'f':
        return literal('false', false);
      case 'n':
        return literal('null', null);
      default:
        return number();
    }
  };
  const out = value();
  space();
  if (i !== text.length) fail();
  return out;
}

/** JSON text of `value`, like JSON.stringify, with each BigInt written as an integer. */
function stringify(value) {
  try {
    return JSON.stringify(value);
  } catch (e) {
    // JSON.stringify refuses BigInt with a TypeError; any other failure stands.
    if (!(e instanceof TypeError) || !/BigInt/.test(e.message)) throw e;
    return stringifyExact(value, '', []);
  }
}

// JSON.stringify's rules (toJSON, undefined and functions left out of objects and null
// in arrays, non-finite numbers as null, cycles a TypeError), plus BigInt.
function stringifyExact(v, key, stack) {
  if (v !== null && (typeof v === 'object' || typeof v === 'bigint') && typeof v.toJSON === 'function') {
    v = v.toJSON(key);
  }
  switch (typeof v) {
    case 'bigint':
      return v.toString();
    case 'string':
      return JSON.stringify(v);
    case 'number':
      return Number.isFinite(v) ? String(v) : 'null';
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object': {
      if (v === null) return 'null';
      if (stack.includes(v)) throw new TypeError('Converting circular structure to JSON');
      stack.push(v);
      let out;
      if (Array.isArray(v)) {
        out = `[${v.map((x, n) => stringifyExact(x, String(n), stack) ?? 'null').join(',')}]`;
      } else {
        const parts = [];
        for (const k of Object.keys(v)) {
          const s = stringifyExact(v[k], k, stack);
          if (s !== undefined) parts.push(`${JSON.stringify(k)}:${s}`);
        }
        out = `{${parts.join(',')}}`;
      }
      stack.pop();
      return out;
    }
    default:
      return undefined;
  }
}

module.exports = { parse, stringify };
