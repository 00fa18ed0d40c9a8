// Floods that must not take Center down: huge anonymous bodies, silent and half-open
// connections from one address, and more work than the process can do (load shedding).
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { request } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import { insertSession } from '../../../test/support/center.ts';
import { tempDir } from '../../../test/support/fixtures.ts';
import { waitFor } from '../../../test/support/wait.ts';
import {
  ANONYMOUS_BODY_LIMIT,
  bodyLimitOf,
  endpoints,
  ErrorBodySchema,
  MAX_COMPRESSED_CHUNK_BYTES,
  MAX_INDEX_BYTES,
  MAX_MANIFEST_BYTES,
  MAX_REPORT_BYTES,
} from '../../protocol/index.ts';
import { generateKeyPair } from '../../signing/index.ts';
import { resolveConfig, type CenterConfigInput } from '../config.ts';
import { migrateToLatest, openDatabase } from '../db/index.ts';
import { createCenterApp } from '../server.ts';
import { addressMatcher } from './limits.ts';

const MB = 1024 * 1024;

/** A Center listening on 127.0.0.1 (SQLite in memory) with `settings` over the defaults. */
async function listening(t: TestContext, settings: CenterConfigInput = {}) {
  const config = resolveConfig([{ dataDir: await tempDir(t), listen: '127.0.0.1:0', ...settings }]);
  const database = await openDatabase({ url: 'sqlite::memory:' });
  await migrateToLatest(database.db);
  const pair = generateKeyPair();
  const app = await createCenterApp({
    config,
    log: pino({ level: 'silent' }),
    database,
    signingKey: { key: createPrivateKey(pair.privatePem), keyid: pair.keyid },
    now: () => new Date(),
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(async () => {
    await app.close();
    await database.close();
  });
  return { app, db: database.db, port: (app.server.address() as AddressInfo).port };
}

interface Sent {
  /** Bytes of body written when the first byte of the answer arrived (-1: no answer). */
  sentWhenAnswered: number;
  /** Bytes of body written in all. */
  sent: number;
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * Sends `head` then up to `total` bytes of body as a client would, at the pace the connection
 * takes them (chunked when `chunked`), and stops writing once an answer arrives. Resolves when
 * the server has closed the connection.
 */
function sendBody(port: number, head: string, total: number, chunked = false): Promise<Sent> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    const piece = Buffer.alloc(64 * 1024, 'a');
    const framed = chunked
      ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')])
      : piece;
    let sent = 0;
    let sentWhenAnswered = -1;
    const answer: Buffer[] = [];
    socket.on('data', (b: Buffer) => {
      if (sentWhenAnswered < 0) sentWhenAnswered = sent;
      answer.push(b);
    });
    // The server closes while the client still writes: EPIPE or ECONNRESET, as expected.
    socket.on('error', () => {});
    socket.on('close', () => {
      const text = Buffer.concat(answer).toString('latin1');
      const [top = '', body = ''] = text.split('\r\n\r\n');
      const [statusLine = '', ...lines] = top.split('\r\n');
      const headers = Object.fromEntries(
        lines.map((l) => [
          l.slice(0, l.indexOf(':')).toLowerCase(),
          l.slice(l.indexOf(':') + 1).trim(),
        ]),
      );
      resolve({ sentWhenAnswered, sent, status: Number(statusLine.split(' ')[1]), headers, body });
    });
    socket.write(head);
    const pump = () => {
      while (sentWhenAnswered < 0 && !socket.destroyed && sent < total) {
        sent += piece.length;
        if (!socket.write(framed)) {
          socket.once('drain', pump);
          return;
        }
      }
      if (sent >= total && !socket.destroyed) socket.end(chunked ? '0\r\n\r\n' : '');
    };
    pump();
  });
}

const loginHead = (length: number | 'chunked') =>
  `POST ${endpoints.login.path} HTTP/1.1\r\nHost: center\r\nContent-Type: application/json\r\n` +
  (length === 'chunked' ? 'Transfer-Encoding: chunked\r\n' : `Content-Length: ${length}\r\n`) +
  '\r\n';

function assertTooLarge(res: Sent, total: number) {
  assert.equal(res.status, 413, res.body);
  const { error } = ErrorBodySchema.parse(JSON.parse(res.body));
  assert.equal(error.code, 'ERR_OBJECT_TOO_LARGE');
  assert.match(error.message, /larger than the 8 KiB POST \/api\/v1\/admin\/login accepts/);
  assert.equal(res.headers['connection'], 'close');
  assert.ok(res.sentWhenAnswered >= 0 && res.sentWhenAnswered < total, 'answered before the end');
  assert.ok(res.sent < total, `the client could not send it all (${res.sent} of ${total})`);
}

test('body limits: anonymous routes a few KiB, uploads their own, the rest the configured default', async (t) => {
  for (const [name, e] of Object.entries(endpoints)) {
    if (e.auth === 'public') {
      const limit = bodyLimitOf(e);
      assert.ok(limit !== undefined && limit <= 16 * 1024, `${name} accepts ${limit} bytes`);
    }
  }
  assert.equal(bodyLimitOf(endpoints.login), ANONYMOUS_BODY_LIMIT);
  assert.equal(bodyLimitOf(endpoints.putChunk), MAX_COMPRESSED_CHUNK_BYTES);
  assert.equal(bodyLimitOf(endpoints.putIndex), MAX_INDEX_BYTES);
  assert.equal(bodyLimitOf(endpoints.pushVersion), MAX_MANIFEST_BYTES);
  assert.equal(bodyLimitOf(endpoints.reports), MAX_REPORT_BYTES);
  assert.equal(bodyLimitOf(endpoints.createGroup), undefined);
  assert.equal(resolveConfig([{ dataDir: await tempDir(t) }]).bodyLimit, MB);
  // The default applies to every route that declares none, as served.
  const { app, db } = await listening(t, { bodyLimit: 4096 });
  const token = await insertSession(db, 'ops', 'admin', Date.now());
  const group = (description: string) =>
    app.inject({
      method: 'POST',
      url: endpoints.createGroup.path,
      headers: { authorization: `Bearer ${token}` },
      payload: { name: `g${description.length}`, description },
    });
  assert.equal((await group('x'.repeat(1000))).statusCode, 201);
  const big = await group('x'.repeat(5000));
  assert.equal(big.statusCode, 413);
  assert.equal(ErrorBodySchema.parse(big.json()).error.code, 'ERR_OBJECT_TOO_LARGE');
  const login = await app.inject({
    method: 'POST',
    url: endpoints.login.path,
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify({ username: 'admin', password: 'x'.repeat(ANONYMOUS_BODY_LIMIT) }),
  });
  assert.equal(login.statusCode, 413);
  assert.equal(ErrorBodySchema.parse(login.json()).error.code, 'ERR_OBJECT_TOO_LARGE');
});

test('a 60 MB login body is refused with 413 from its Content-Length, without being read', async (t) => {
  const { port } = await listening(t);
  const total = 60 * MB;
  assertTooLarge(await sendBody(port, loginHead(total), total), total);
});

test('a chunked login body without Content-Length is cut off once it passes the limit', async (t) => {
  const { port } = await listening(t);
  const total = 60 * MB;
  assertTooLarge(await sendBody(port, loginHead('chunked'), total, true), total);
});

test('a flood of 60 MB anonymous bodies does not grow the heap by anything near one of them', async (t) => {
  const { port } = await listening(t);
  const total = 60 * MB;
  const before = process.memoryUsage();
  const answers = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      sendBody(port, loginHead(i % 2 === 0 ? total : 'chunked'), total, i % 2 === 1),
    ),
  );
  const after = process.memoryUsage();
  for (const res of answers) assertTooLarge(res, total);
  // Buffered, eight of them would be 480 MB (and twice that as strings).
  const grown = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
  assert.ok(grown < 60 * MB, `grew ${Math.round(grown / MB)} MB`);
  assert.ok(
    after.rss - before.rss < 60 * MB,
    `RSS grew ${Math.round((after.rss - before.rss) / MB)} MB`,
  );
});

test('an unauthenticated 60 MB upload gets its 401 and the connection is closed, its body unread', async (t) => {
  const { port } = await listening(t);
  const total = 60 * MB;
  const digest = 'a'.repeat(64);
  const res = await sendBody(
    port,
    `PUT /api/v1/admin/store/indexes/${digest} HTTP/1.1\r\nHost: center\r\n` +
      `Content-Type: application/octet-stream\r\nContent-Length: ${total}\r\n\r\n`,
    total,
  );
  assert.equal(res.status, 401, res.body);
  assert.equal(res.headers['connection'], 'close');
  assert.ok(res.sent < total, `the client could not send it all (${res.sent} of ${total})`);
});

/** A connection from `localAddress` that sends nothing, and when the server closed it. */
function silentSocket(port: number, localAddress: string) {
  const socket: Socket = connect({ port, host: '127.0.0.1', localAddress });
  const state = {
    closed: false,
    connected: false,
    openedAt: Date.now(),
    closedAfterMs: -1,
    received: '',
  };
  // Read what the server sends (a 408 when Node's own header check comes first): a paused
  // socket keeps it buffered and never reports the end that follows it.
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => {
    state.received += chunk;
  });
  socket.on('connect', () => {
    state.connected = true;
    state.openedAt = Date.now();
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    state.closed = true;
    state.closedAfterMs = Date.now() - state.openedAt;
  });
  return { socket, state };
}

/** GET /healthz from `localAddress`: its status, or the error that ended it. */
function healthzFrom(port: number, localAddress: string): Promise<number | string> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/healthz', localAddress, agent: false },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    req.end();
  });
}

test('connections over the cap from one address are closed at once; other addresses are served', async (t) => {
  const { port } = await listening(t, { maxConnectionsPerAddress: 8 });
  const flood = Array.from({ length: 40 }, () => silentSocket(port, '127.0.0.1'));
  t.after(() => flood.forEach((s) => s.socket.destroy()));
  await waitFor('the 32 connections over the cap to be closed', () =>
    flood.every((s) => s.socket.readyState !== 'opening') &&
    flood.filter((s) => s.state.closed).length === 32
      ? true
      : undefined,
  );
  // The eight under the cap stay (until the header timeout, 10 s): the address is full.
  assert.equal(flood.filter((s) => !s.state.closed).length, 8);
  assert.equal(await healthzFrom(port, '127.0.0.2'), 200);
  assert.notEqual(await healthzFrom(port, '127.0.0.1'), 200);
  // Once they are gone, the address is served again.
  flood.forEach((s) => s.socket.destroy());
  await waitFor('the address to be served again', async () =>
    (await healthzFrom(port, '127.0.0.1')) === 200 ? true : undefined,
  );
});

test('a trusted proxy is one address carrying every client: the per-address cap spares it', async (t) => {
  const { port } = await listening(t, {
    maxConnectionsPerAddress: 4,
    trustedProxies: ['127.0.0.2', '10.0.0.0/8'],
  });
  const viaProxy = Array.from({ length: 12 }, () => silentSocket(port, '127.0.0.2'));
  t.after(() => viaProxy.forEach((s) => s.socket.destroy()));
  await waitFor("the proxy's connections to be accepted", () =>
    viaProxy.every((s) => s.socket.readyState !== 'opening') ? true : undefined,
  );
  // Answered while its twelve connections are open, three times the cap of any other address.
  assert.equal(await healthzFrom(port, '127.0.0.2'), 200);
  assert.equal(viaProxy.filter((s) => s.state.closed).length, 0);
});

test('addressMatcher: addresses and CIDR blocks, IPv4 peers on dual-stack sockets', () => {
  const isTrusted = addressMatcher(['10.1.0.0/16', '192.0.2.7', 'fd00::/8']);
  assert.equal(isTrusted('10.1.200.3'), true);
  assert.equal(isTrusted('::ffff:10.1.0.9'), true);
  assert.equal(isTrusted('10.2.0.1'), false);
  assert.equal(isTrusted('192.0.2.7'), true);
  assert.equal(isTrusted('192.0.2.8'), false);
  assert.equal(isTrusted('fd12::1'), true);
  assert.equal(isTrusted('fe80::1'), false);
  assert.equal(addressMatcher([])('127.0.0.1'), false);
});

test('silent connections and unfinished headers are closed after the header timeout', async (t) => {
  const { port } = await listening(t, { headersTimeoutSeconds: 1 });
  const silent = silentSocket(port, '127.0.0.1');
  const partial = silentSocket(port, '127.0.0.1');
  partial.socket.write('GET /healthz HTTP/1.1\r\nHost: center\r\n');
  t.after(() => [silent, partial].forEach((s) => s.socket.destroy()));
  // The header timeout counts from the connection; on a loaded machine the connection itself
  // can take a while (a SYN retried), which is not the server's doing.
  await waitFor(
    'both connections to be made',
    () => ([silent, partial].every((s) => s.state.connected || s.state.closed) ? true : undefined),
    { timeoutMs: 120_000 },
  );
  // Node's defaults would keep the first for good and the second for 60 to 90 s.
  await waitFor(
    'the server to close the silent connection',
    () => silent.state.closed || undefined,
    {
      timeoutMs: 30_000,
    },
  ).catch((err: Error) => {
    const s = silent.socket;
    throw new Error(
      `${err.message} (client: ${s.readyState}, local ${s.localAddress}:${s.localPort}, ` +
        `bytes read ${s.bytesRead}, written ${s.bytesWritten}, ended ${s.readableEnded})`,
    );
  });
  await waitFor(
    'the server to close the one with unfinished headers',
    () => partial.state.closed || undefined,
    { timeoutMs: 30_000 },
  ).catch((err: Error) => {
    const p = partial.socket;
    throw new Error(
      `${err.message} (client: ${p.readyState}, bytes read ${p.bytesRead}, written ${p.bytesWritten})`,
    );
  });
  assert.ok(silent.state.closedAfterMs >= 900, `closed after ${silent.state.closedAfterMs} ms`);
  // Closed silently, or with a 408 when Node's own check came first; never with a request served.
  for (const { state } of [silent, partial]) {
    assert.match(state.received, /^(|HTTP\/1\.1 408 [^]*)$/, `received ${state.received}`);
  }
  // A connection that sends its request in time is answered as usual.
  assert.equal(await healthzFrom(port, '127.0.0.1'), 200);
});

test('under pressure, requests are shed with 503 and Retry-After, and /healthz says why', async (t) => {
  // Any process uses more than 1 MiB of heap: from its first sample on, Center sheds load.
  const { app } = await listening(t, { maxHeapUsedBytes: MB });
  await waitFor('the first sample', () => app.isUnderPressure() || undefined);
  const shed = await app.inject({ url: endpoints.me.path });
  assert.equal(shed.statusCode, 503);
  assert.equal(shed.headers['retry-after'], '10');
  const { error } = ErrorBodySchema.parse(shed.json());
  assert.equal(error.code, 'ERR_OVERLOADED');
  assert.equal(error.retryAfterMs, 10_000);
  assert.match(error.message, /overloaded \(heap in use \d+ MiB, over 1 MiB\)/);
  const health = await app.inject({ url: '/healthz' });
  assert.equal(health.statusCode, 503);
  assert.equal(health.headers['retry-after'], '10');
  assert.equal(health.json().status, 'unavailable');
  assert.match(health.json().reason, /^overloaded: heap in use \d+ MiB, over 1 MiB$/);
});
