'use strict';
// Argument checks: a wrong type is a TypeError that names the argument, raised before
// anything reaches the engine. The engine still checks values (ranges, names, states).

const { stringify } = require('./json');

function describe(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number' && !Number.isFinite(v)) return String(v);
  if (typeof v === 'object') return `an object (${(v.constructor && v.constructor.name) || 'Object'})`;
  return `${typeof v} ${typeof v === 'string' ? JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v) : String(v)}`;
}

function fail(name, want, v) {
  throw new TypeError(`${name} must be ${want}, not ${describe(v)}`);
}

function string(name, v) {
  if (typeof v !== 'string') fail(name, 'a string', v);
  return v;
}

function optString(name, v) {
  if (v !== undefined && v !== null) string(name, v);
  return v;
}

function int(name, v) {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail(name, 'an integer', v);
  return v;
}

function optInt(name, v) {
  if (v !== undefined && v !== null) int(name, v);
  return v;
}

function bool(name, v) {
  if (typeof v !== 'boolean') fail(name, 'a boolean', v);
  return v;
}

function func(name, v) {
  if (typeof v !== 'function') fail(name, 'a function', v);
  return v;
}

function plainObject(name, v) {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(name, 'an object', v);
  return v;
}

/** An options object (or undefined) whose keys are all in `known`. */
function options(name, v, known) {
  if (v === undefined) return {};
  plainObject(name, v);
  for (const k of Object.keys(v)) {
    if (!known.includes(k)) {
      throw new TypeError(`${name} has an unknown option \`${k}\` (known: ${known.join(', ')})`);
    }
  }
  return v;
}

function optStringArray(name, v) {
  if (v === undefined || v === null) return v;
  if (!Array.isArray(v)) fail(name, 'an array of strings', v);
  v.forEach((x, i) => string(`${name}[${i}]`, x));
  return v;
}

/**
 * JSON text of `value`, which must be JSON data: objects, arrays, strings, finite
 * numbers, BigInts (written as integers), booleans and null. A function, symbol,
 * non-finite number or cycle is a TypeError naming its place (JSON.stringify would drop
 * or null some silently).
 */
function json(name, value) {
  const seen = [];
  const walk = (v, where) => {
    switch (typeof v) {
      case 'string':
      case 'boolean':
      case 'bigint':
        return;
      case 'number':
        if (!Number.isFinite(v)) fail(where, 'JSON data (a finite number)', v);
        return;
      case 'object':
        if (v === null) return;
        if (seen.includes(v)) throw new TypeError(`${where} is a circular reference`);
        if (typeof v.toJSON === 'function') return;
        seen.push(v);
        if (Array.isArray(v)) {
          for (let i = 0; i < v.length; i++) walk(v[i], `${where}[${i}]`);
        } else {
          for (const k of Object.keys(v)) {
            if (v[k] !== undefined) walk(v[k], `${where}.${k}`);
          }
        }
        seen.pop();
        return;
      default:
        fail(where, 'JSON data', v);
    }
  };
  walk(value, name);
  return stringify(value);
}

module.exports = {
  describe,
  string,
  optString,
  int,
  optInt,
  bool,
  func,
  plainObject,
  options,
  optStringArray,
  json,
};
