#!/usr/bin/env node
'use strict';
// Builds the native addon from source with cargo and puts it at index.node (run by
// `npm install`). The package must sit in its cargo workspace (the Tasker source
// tree), which `npm install ./bindings-node` keeps: npm links a local folder in place.
//
// Environment:
//   TASKER_NODE_PROFILE  cargo profile, default `release` (the tests use `dev`)
//   CARGO_TARGET_DIR     cargo's target directory (default: the workspace's target/)
//   CARGO                the cargo binary (default: `cargo` on PATH, else ~/.cargo/bin/cargo)

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const pkg = fs.realpathSync(path.join(__dirname, '..'));

function fail(msg) {
  console.error(`tasker: ${msg}`);
  process.exit(1);
}

function workspaceRoot(dir) {
  for (let d = path.dirname(dir); d !== path.dirname(d); d = path.dirname(d)) {
    const toml = path.join(d, 'Cargo.toml');
    if (fs.existsSync(toml) && /^\[workspace\]/m.test(fs.readFileSync(toml, 'utf8'))) return d;
  }
  return null;
}

const root = workspaceRoot(pkg);
if (!root) {
  fail(`${pkg} is not inside the Tasker cargo workspace; install it from the source tree (npm install ./bindings-node)`);
}

function findCargo() {
  if (process.env.CARGO) return process.env.CARGO;
  const probe = spawnSync('cargo', ['--version'], { stdio: 'ignore' });
  if (probe.status === 0) return 'cargo';
  const home = path.join(os.homedir(), '.cargo', 'bin', 'cargo');
  if (fs.existsSync(home)) return home;
  return fail('cargo was not found (install Rust: the addon is built from source)');
}

const profile = process.env.TASKER_NODE_PROFILE || 'release';
const cargo = findCargo();
const args = ['build', '-p', 'tasker-node', '--profile', profile, '--message-format=json-render-diagnostics'];
console.error(`tasker: building the native addon (cargo ${args.slice(0, 5).join(' ')})`);
const run = spawnSync(cargo, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 256 * 1024 * 1024 });
if (run.error) fail(`cannot run cargo: ${run.error.message}`);
if (run.status !== 0) fail(`cargo build failed (exit ${run.status})`);

// The cdylib cargo made, from its JSON messages.
let built = null;
for (const line of run.stdout.toString().split('\n')) {
  if (!line.startsWith('{')) continue;
  const msg = JSON.parse(line);
  if (msg.reason === 'compiler-artifact' && msg.target && msg.target.name === 'tasker_node') {
    built = msg.filenames.find((f) => /\.(so|dylib|dll)$/.test(f)) || built;
  }
}
if (!built) fail('cargo did not report the tasker_node library');
const dest = path.join(pkg, 'index.node');
// Copy to a temporary name and rename, so a running process never sees half a file.
const tmp = `${dest}.${process.pid}.tmp`;
fs.copyFileSync(built, tmp);
fs.renameSync(tmp, dest);
console.error(`tasker: built ${dest}`);
