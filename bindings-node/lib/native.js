'use strict';
// Loads the native addon (index.node, built by `npm install` with cargo).
const path = require('node:path');

const file = path.join(__dirname, '..', 'index.node');
let native;
try {
  native = require(file);
} catch (e) {
  const err = new Error(
    `tasker: cannot load the native addon ${file} (${e.message}). ` +
      'It is built by `npm install` (scripts/build.js runs cargo); run `npm install` in the package again.',
  );
  err.cause = e;
  throw err;
}
module.exports = native;
