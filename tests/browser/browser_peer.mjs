// A participant in headless Chromium, built on livekit-client with its default options,
// speaking the JSON-lines protocol of tests/interop/peer.py.
//
// Usage: node tests/browser/browser_peer.mjs URL TOKEN [--http-host ADDR]
//        [--chromium PATH] [--max-seconds S] [--debug]
//
// It serves a page over HTTP on --http-host (default 127.0.0.1: a secure context, as an
// https page is, which livekit-client's RPC needs; and, as in real life, an origin other
// than the LiveKit server's), opens it in Chromium (driven by playwright-core; never a
// downloaded browser), connects the page's Room, then writes one JSON object per line to
// stdout (events) and reads one per line from stdin (commands).
//
// Events: connected (identity, participants, server_version), participant_connected,
// participant_disconnected (identity), data_received (data_b64, kind reliable|lossy,
// topic, from), reconnecting, reconnected, disconnected (reason), error (message; for a
// failed connect also name, reason, status), and what livekit-client did on the wire:
// signal (path, outcome open|error) per signalling WebSocket and http (path, status) per
// fetch() such as the validate request. Commands, each with an id and answered by ok (id,
// ...) or failed (id, message, ...): publish_data (data_b64, reliable, topic,
// destinations), register_rpc (method, behavior echo|fail|crash|sleep), perform_rpc
// (destination, method, payload, timeout in seconds; ok has result, failed has code,
// message and data; both say callee_client_protocol: what livekit-client knew of the
// callee when it chose RPC v1 or v2), ice (peer_connections: each one's states, the
// candidates it gathered and put in its SDP, its selected pair), participants, quit.
//
// It leaves the room and exits on quit, on stdin EOF, when the room disconnects, and at
// the latest after --max-seconds (default 300); a failed connect prints an error event
// and exits 1. Chromium's console goes to stderr.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const LIVEKIT_UMD = join(HERE, 'node_modules', 'livekit-client', 'dist', 'livekit-client.umd.js');
const PAGE_JS = join(HERE, 'page.js');

// Keep Chromium from reaching beyond the test's network: no background services, no QUIC,
// no component or field-trial updates, no first-run work.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--disable-extensions',
  '--disable-dev-shm-usage',
  '--disable-domain-reliability',
  '--disable-breakpad',
  '--no-pings',
  '--metrics-recording-only',
  '--disable-features=MediaRouter,OptimizationHints,Translate,AutofillServerCommunication',
];

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'http-host': { type: 'string', default: '127.0.0.1' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'max-seconds': { type: 'string', default: '300' },
    debug: { type: 'boolean', default: false },
  },
});
if (positionals.length !== 2) {
  process.stderr.write('usage: browser_peer.mjs URL TOKEN [--http-host ADDR] [--debug]\n');
  process.exit(2);
}
const [url, token] = positionals;

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

// Chromium's own console messages quote signalling URLs whole: keep tokens out of logs.
function log(text) {
  const clean = text
    .replaceAll(token, '<token>')
    .replace(/access_token=[^&'"\s]+/g, 'access_token=<redacted>');
  process.stderr.write(`${clean}\n`);
}

const INDEX_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>room browser peer</title></head>
<body>
<script src="/livekit-client.umd.js"></script>
<script src="/page.js"></script>
</body></html>
`;

function serve(host) {
  const files = {
    '/': [() => Promise.resolve(INDEX_HTML), 'text/html; charset=utf-8'],
    '/livekit-client.umd.js': [() => readFile(LIVEKIT_UMD), 'text/javascript'],
    '/page.js': [() => readFile(PAGE_JS), 'text/javascript'],
  };
  const server = createServer(async (req, res) => {
    const entry = files[new URL(req.url, 'http://x').pathname];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await entry[0]();
      res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(server));
  });
}

let browser = null;
let httpServer = null;
let page = null;
let closing = null;
let joined = false; // the room is connected: its end ends this peer

// Leave the room, close Chromium and the page server, exit. Bounded: whatever hangs is
// abandoned after a few seconds (Chromium dies with its DevTools pipe when we exit).
function shutdown(code) {
  if (closing) return closing;
  closing = (async () => {
    const within = (promise, ms) =>
      Promise.race([promise.catch(() => {}), new Promise((r) => setTimeout(r, ms))]);
    if (page) await within(page.evaluate(() => window.peerDisconnect()), 3000);
    if (browser) await within(browser.close(), 5000);
    if (httpServer) httpServer.closeAllConnections?.();
    if (httpServer) await within(new Promise((r) => httpServer.close(r)), 1000);
    process.exit(code);
  })();
  return closing;
}

const maxSeconds = Number(opts['max-seconds']);
setTimeout(() => {
  emit('error', { message: `still running after ${maxSeconds} s: giving up` });
  shutdown(3);
  setTimeout(() => process.exit(3), 10000).unref();
}, maxSeconds * 1000).unref();
process.on('SIGTERM', () => shutdown(143));
process.on('SIGINT', () => shutdown(130));

async function runCommand(cmd) {
  const id = cmd.id;
  let answer;
  try {
    answer = await page.evaluate((c) => window.peerCommand(c), cmd);
  } catch (e) {
    answer = { ok: false, message: `page: ${e.message}` };
  }
  const { ok, ...fields } = answer;
  emit(ok ? 'ok' : 'failed', { id, ...fields });
}

async function main() {
  httpServer = await serve(opts['http-host']);
  const { port } = httpServer.address();
  const pageUrl = `http://${opts['http-host']}:${port}/`;

  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    chromiumSandbox: false,
    args: CHROMIUM_ARGS,
    timeout: 30000,
  });
  browser.on('disconnected', () => {
    if (!closing) {
      emit('error', { message: 'Chromium went away' });
      shutdown(4);
    }
  });
  const context = await browser.newContext();
  page = await context.newPage();
  page.on('console', (msg) => log(`[console.${msg.type()}] ${msg.text()}`));
  page.on('pageerror', (err) => log(`[pageerror] ${err.stack || err}`));
  await page.exposeBinding('peerEmit', (_source, text) => {
    const ev = JSON.parse(text);
    process.stdout.write(`${text}\n`);
    if (ev.event === 'disconnected' && joined && !closing) shutdown(0);
  });
  await page.goto(pageUrl, { waitUntil: 'load', timeout: 20000 });
  if (opts.debug) await page.evaluate(() => window.LivekitClient.setLogLevel('debug'));

  const result = await page.evaluate(([u, t]) => window.peerConnect(u, t), [url, token]);
  if (!result.ok) {
    const { ok, ...fields } = result;
    const message = String(fields.message).replaceAll(token, '<token>');
    emit('error', { ...fields, message: `connect failed: ${message}` });
    await shutdown(1);
    return;
  }
  joined = true;
  emit('connected', {
    identity: result.identity,
    participants: result.participants,
    server_version: result.server_version,
  });

  // Commands run one after another, so packets keep the command order; RPC calls may
  // overlap (each waits for its answer).
  let chain = Promise.resolve();
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      emit('error', { message: `bad command line: ${e.message}` });
      continue;
    }
    if (cmd.cmd === 'quit') {
      await chain;
      emit('ok', { id: cmd.id });
      break;
    }
    if (cmd.cmd === 'perform_rpc') {
      runCommand(cmd);
    } else {
      chain = chain.then(() => runCommand(cmd));
    }
  }
  await chain;
  await shutdown(0);
}

main().catch((e) => {
  emit('error', { message: `browser peer failed: ${e && e.stack ? e.stack : e}` });
  shutdown(1);
});
