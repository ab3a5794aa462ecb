#!/usr/bin/env node
// One elector of the npm package followtheleader 2.0.9 (pinned in package.json,
// patched by benchmarks/scale.py so that it browses _<type>._udp), driven by
// benchmarks/scale.py. Reports one JSON object a line on stdout.
//
//   node harness.js NAME --type T --hostname H
//
// Run it ONLY inside a lab network namespace (tests/netlab.py): bonjour binds
// UDP 5353 and joins the mDNS group as soon as the package is loaded.
//
// Lines: {"t": <seconds of CLOCK_MONOTONIC>, "kind": ..., "node": H, ...}.
// process.hrtime() is libuv's uv_hrtime(), clock_gettime(CLOCK_MONOTONIC) on
// Linux, the clock of Python's time.monotonic(); scale.py checks that every
// "ready" time lies between its own clock readings before the spawn and after
// the line arrived. Kinds:
//   ready      - package loaded, elector created (not started); first line
//   started    - "go" read on stdin, elector.start() called
//   leader     - the package emitted 'leader'
//   follower   - the package emitted 'follower'; "leader" is the SRV target
//                (host name) of the service followed, i.e. the leader's H
//   reelection - the package emitted 'reelection'
//   error      - the package emitted 'error'
//   crash      - uncaught exception (bonjour's "Service name is already in use
//                on the network"); the process then exits with status 1
//   stopping   - "stop" read on stdin; the process exits right after, without
//                any goodbye, as the package does (it never unpublishes)
//
// --type gives each benchmark group its own service type, so that several
// groups can run in one lab at once without seeing each other. --hostname H
// makes os.hostname() return H: lab namespaces share the machine's host name,
// which bonjour advertises as SRV target and A record owner.
'use strict';

const os = require('os');

function usage(message) {
  process.stderr.write(`harness.js: ${message}\nusage: node harness.js NAME --type T --hostname H\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
let name = null;
let type = 'ftl';
let hostname = null;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--type' || argv[i] === '--hostname') {
    const value = argv[++i];
    if (value === undefined) usage(`${argv[i - 1]} needs a value`);
    if (argv[i - 1] === '--type') type = value;
    else hostname = value;
  } else if (argv[i].startsWith('--') || name !== null) {
    usage(`unexpected argument ${JSON.stringify(argv[i])}`);
  } else {
    name = argv[i];
  }
}
if (!name || !hostname) usage('NAME and --hostname are required');
os.hostname = () => hostname; // bonjour's Service reads os.hostname() at publish time

function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function emit(kind, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ t: now(), kind, node: hostname }, fields || {})) + '\n');
}

// aws-sdk v2 (loaded by the package's index) prints an end-of-support notice otherwise.
process.env.AWS_SDK_JS_SUPPRESS_MAINTENANCE_MODE_MESSAGE = '1';
const { BonjourElector } = require('followtheleader');

process.on('uncaughtExceptionMonitor', (error) => {
  emit('crash', { error: String(error && error.message ? error.message : error) });
});

const elector = new BonjourElector({ name, type });
elector.on('leader', () => emit('leader', { leader: hostname }));
elector.on('follower', () => emit('follower', { leader: (elector.leader || {}).host || null }));
elector.on('reelection', () => emit('reelection'));
elector.on('error', (error) => emit('error', { error: String(error && error.message ? error.message : error) }));

let buffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffer += chunk;
  let newline;
  while ((newline = buffer.indexOf('\n')) >= 0) {
    const command = buffer.slice(0, newline).trim();
    buffer = buffer.slice(newline + 1);
    if (command === 'go') {
      emit('started');
      elector.start();
    } else if (command === 'stop') {
      emit('stopping');
      process.exit(0);
    }
  }
});
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));

emit('ready', { name, type });
