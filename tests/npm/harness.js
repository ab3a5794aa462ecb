#!/usr/bin/env node
// Runs one elector of the published npm package followtheleader (pinned in
// package.json) and reports what it does, one JSON object a line on stdout.
//
//   node harness.js NAME [--port N] [--type T] [--host ADDR] [--max-failed N]
//                        [--hostname H] [--goodbye]
//
// Run it ONLY inside a lab network namespace (tests/netlab.py): bonjour starts
// multicasting as soon as the package is loaded.
//
// Lines: {"t": <CLOCK_MONOTONIC seconds, comparable with Python's
// time.monotonic()>, "kind": ..., "node": "npm-<pid>", ...} with kind
//   ready      - elector created and started (first line)
//   leader     - the package emitted 'leader' (it does so before probing its name)
//   published  - bonjour probed the leader's name and announced it (about 0.8 s later)
//   follower   - the package emitted 'follower'; "leader" describes the service
//                it follows ({name, host, port, addresses})
//   reelection - the package emitted 'reelection'
//   error      - the package emitted 'error'; "error" is the message
//   crash      - an uncaught exception (e.g. bonjour's name conflict); the
//                process then dies with status 1 as a real npm node would
//   received   - a heartbeat socket of the package got a datagram: "data" (as
//                latin1 text, e.g. "PONG" for a follower, "PING" for a leader),
//                "from" and "port" of its sender (observed, not changed)
//   exit       - leaving after SIGTERM, SIGINT or end of stdin
//
// Options: --port, --type, --host, --max-failed go to the elector as options
// port/type/host/maxFailedResponses (package defaults: 9001, 'ftl', '0.0.0.0',
// 3). --hostname H makes os.hostname() return H, as on a machine named H: lab
// namespaces share the real hostname, and bonjour advertises os.hostname() as
// SRV target and A/AAAA owner name. --goodbye: on exit, unpublish (bonjour
// sends its TTL-0 goodbye) before leaving; the package itself never does, so
// without it nothing is sent on exit, like a real npm node.
//
// Stop it with SIGTERM or by closing its stdin (give it a pipe: with stdin at
// end of file from the start it leaves at once).
'use strict';

const os = require('os');
const path = require('path');

function usage(message) {
  process.stderr.write(`harness.js: ${message}\n` +
    'usage: node harness.js NAME [--port N] [--type T] [--host ADDR] [--max-failed N] [--hostname H] [--goodbye]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { name: null, options: {}, hostname: null, goodbye: false };
  const integer = (flag, value) => {
    if (value === undefined || !/^[0-9]+$/.test(value)) usage(`${flag} needs a non-negative integer`);
    return Number(value);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    switch (arg) {
      case '--port': args.options.port = integer(arg, argv[++i]); break;
      case '--max-failed': args.options.maxFailedResponses = integer(arg, argv[++i]); break;
      case '--type':
      case '--host':
      case '--hostname': {
        const value = argv[++i];
        if (value === undefined) usage(`${arg} needs a value`);
        if (arg === '--type') args.options.type = value;
        else if (arg === '--host') args.options.host = value;
        else args.hostname = value;
        break;
      }
      case '--goodbye': args.goodbye = true; break;
      default:
        if (arg.startsWith('--') || args.name !== null) usage(`unexpected argument ${JSON.stringify(arg)}`);
        args.name = arg;
    }
  }
  if (!args.name) usage('NAME is required');
  args.options.name = args.name;
  return args;
}

const args = parseArgs(process.argv.slice(2));
const nodeId = `npm-${process.pid}`;

function now() {
  // process.hrtime is CLOCK_MONOTONIC on Linux, as is Python's time.monotonic().
  return Number(process.hrtime.bigint()) / 1e9;
}

function emit(kind, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ t: now(), kind, node: nodeId }, fields || {})) + '\n');
}

if (args.hostname !== null) {
  const hostname = args.hostname;
  os.hostname = () => hostname; // bonjour's Service reads os.hostname() at publish time
}

// Observe the package's heartbeat sockets (it creates them with dgram.createSocket)
// without changing what they do.
const dgram = require('dgram');
const createSocket = dgram.createSocket;
dgram.createSocket = function observedCreateSocket(...socketArgs) {
  const socket = createSocket.apply(this, socketArgs);
  socket.on('message', (message, rinfo) => {
    if (rinfo.port === 5353) return; // bonjour's own mDNS socket
    emit('received', { data: message.toString('latin1'), from: rinfo.address, port: rinfo.port });
  });
  return socket;
};

// The package creates one private bonjour instance when it is loaded. Record it
// (without changing it) so that --goodbye can unpublish on exit.
const bonjourInstances = [];
const packageDir = path.dirname(require.resolve('followtheleader/package.json'));
const bonjourPath = require.resolve('bonjour', { paths: [packageDir] });
const Bonjour = require(bonjourPath);
require.cache[bonjourPath].exports = function recordedBonjour(opts) {
  const instance = Bonjour(opts);
  bonjourInstances.push(instance);
  const publish = instance.publish;
  instance.publish = function observedPublish(...publishArgs) {
    const service = publish.apply(this, publishArgs);
    service.on('up', () => emit('published', { service: `${service.name}.${service.type}` }));
    return service;
  };
  return instance;
};

// The package's index also loads its AWS elector, whose aws-sdk v2 prints an
// end-of-support notice on stderr at load time; keep stderr for real problems.
if (process.env.AWS_SDK_JS_SUPPRESS_MAINTENANCE_MODE_MESSAGE === undefined) {
  process.env.AWS_SDK_JS_SUPPRESS_MAINTENANCE_MODE_MESSAGE = '1';
}
const { BonjourElector } = require('followtheleader');

process.on('uncaughtExceptionMonitor', (error) => {
  emit('crash', { error: String(error && error.message ? error.message : error) });
});

const elector = new BonjourElector(args.options);
elector.on('leader', () => emit('leader'));
elector.on('follower', () => {
  const leader = elector.leader || {};
  emit('follower', {
    leader: { name: leader.name, host: leader.host, port: leader.port, addresses: leader.addresses },
  });
});
elector.on('reelection', () => emit('reelection'));
elector.on('error', (error) => emit('error', { error: String(error && error.message ? error.message : error) }));

let leaving = false;
function leave(reason) {
  if (leaving) return;
  leaving = true;
  const finish = () => {
    emit('exit', { reason });
    process.exit(0);
  };
  if (!args.goodbye || bonjourInstances.length === 0) {
    finish();
    return;
  }
  // Give the goodbye one second at most, then leave anyway.
  setTimeout(finish, 1000).unref();
  let pending = bonjourInstances.length;
  for (const instance of bonjourInstances) {
    instance.unpublishAll(() => {
      if (--pending === 0) finish();
    });
  }
}

process.on('SIGTERM', () => leave('SIGTERM'));
process.on('SIGINT', () => leave('SIGINT'));
process.stdin.on('end', () => leave('stdin'));
process.stdin.on('error', () => leave('stdin'));
process.stdin.resume();

elector.start();
emit('ready', { name: args.name, options: args.options, hostname: os.hostname() });
