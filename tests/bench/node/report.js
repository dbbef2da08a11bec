'use strict';
// Merges the Node.js numbers into scripts/bench's results file and prints their table.
//
//   node report.js RESULTS_JSON PART_JSON [PART_JSON ...]
//
// Each PART_JSON holds one JSON object (bench.js's output). Their keys are laid over
// RESULTS_JSON (created when missing), the ratio checks against numbers of the same run
// are added, and the result is written back. The table has the layout of the Rust and
// Python benches': each headline number beside its target, then the other numbers.

const fs = require('node:fs');
const path = require('node:path');

// [key, kind, bound]: 'at_most'/'at_least' compare with a constant; 'times' with
// bound[1] x the number named bound[0] of the same run.
const HEADLINE = [
  ['ffi_noop_call_ns_node', 'at_most', 3000],
  ['ffi_call_ns_node_pool', null, null],
  ['ffi_call_ns_node_runtime', null, null],
  ['steps_per_s_node_sqlite', 'times', ['steps_per_s_sqlite', 0.8]],
  ['node_sqlite_over_rust_sqlite', 'at_least', 0.8],
  ['steps_per_s_node_postgres', 'times', ['steps_per_s_postgres', 0.8]],
  ['node_postgres_over_rust_postgres', 'at_least', 0.8],
  ['peer_graphile_worker_jobs_per_s', null, null],
  ['node_postgres_over_graphile_worker', null, null],
];
const RATIOS = {
  node_sqlite_over_rust_sqlite: ['steps_per_s_node_sqlite', 'steps_per_s_sqlite'],
  node_postgres_over_rust_postgres: ['steps_per_s_node_postgres', 'steps_per_s_postgres'],
  node_postgres_over_graphile_worker: ['steps_per_s_node_postgres', 'peer_graphile_worker_jobs_per_s'],
};

const rounded = (v) => (typeof v === 'number' && !Number.isInteger(v) ? (Math.abs(v) >= 100 ? Math.round(v) : Math.round(v * 1000) / 1000) : v);
const fmt = (v) => (typeof v !== 'number' ? String(v) : Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));
const num = (r, k) => (typeof r[k] === 'number' ? r[k] : null);

function table(results, own) {
  const lines = [`${'metric'.padEnd(40)} ${'value'.padStart(14)}  ${'target'.padEnd(12)} status`, '-'.repeat(76)];
  for (const [key, kind, bound] of HEADLINE) {
    const v = num(results, key);
    let target = '';
    let status = '';
    if (kind === 'at_most' || kind === 'at_least') {
      target = `${kind === 'at_most' ? '<=' : '>='} ${fmt(bound)}`;
      const ok = kind === 'at_most' ? v <= bound : v >= bound;
      status = v === null ? 'not measured' : ok ? 'ok' : 'MISSED';
    } else if (kind === 'times') {
      const [other, factor] = bound;
      const base = num(results, other);
      if (base === null) {
        target = `>= ${factor}x ${other}`;
        status = 'no same-run number';
      } else {
        target = `>= ${fmt(Math.round(factor * base))}`;
        status = v === null ? 'not measured' : v >= factor * base ? 'ok' : 'MISSED';
      }
    }
    lines.push(`${key.padEnd(40)} ${(v === null ? '-' : fmt(v)).padStart(14)}  ${target.padEnd(12)} ${status}`.trimEnd());
  }
  lines.push('-'.repeat(76));
  const shown = new Set(HEADLINE.map(([k]) => k));
  for (const key of own) if (!shown.has(key)) lines.push(`${key.padEnd(40)} ${fmt(results[key]).padStart(14)}`);
  return lines.join('\n');
}

function main() {
  const [file, ...parts] = process.argv.slice(2);
  if (!file || !parts.length) {
    console.error('usage: report.js RESULTS_JSON PART_JSON [PART_JSON ...]');
    process.exit(2);
  }
  const results = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
  const own = [];
  for (const part of parts) {
    const lines = fs.readFileSync(part, 'utf8').trim().split('\n');
    for (const [k, v] of Object.entries(JSON.parse(lines[lines.length - 1]))) {
      results[k] = rounded(v);
      if (!own.includes(k)) own.push(k);
    }
  }
  for (const [name, [a, b]] of Object.entries(RATIOS)) {
    const x = num(results, a);
    const y = num(results, b);
    if (x !== null && y) {
      results[name] = rounded(x / y);
      own.push(name);
    } else {
      // A ratio left from an earlier run must not pass for this run's.
      delete results[name];
    }
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const sorted = Object.fromEntries(Object.keys(results).sort().map((k) => [k, results[k]]));
  fs.writeFileSync(file, `${JSON.stringify(sorted, null, 2)}\n`);
  console.log(table(results, own.sort()));
  console.log(`results: ${file}`);
}

main();
