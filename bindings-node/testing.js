'use strict';
// `require('tasker/testing')`: a harness on a temporary database with a manual clock
// (lib/testing.js; docs/testing.md).
module.exports = require('./lib/testing');
