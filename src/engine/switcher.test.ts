import assert from 'node:assert/strict';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { WebSocket } from 'ws';
import { recordingLog } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { waitFor } from '../../test/support/wait.ts';
import {
  BulkheadError,
  ErrorBodySchema,
  ErrorCodes,
  LocalVmsResponseSchema,
  switcherDisplayPath,
  type LocalVm,
} from '../protocol/index.ts';
import { startSwitcher, switcherUrlFile } from './switcher.ts';

/*
 * The switcher's server and its access rules, with a page and a display that stand in for the
 * built web/switcher and QEMU's VNC socket (the real ones meet in test/qemu/switcher.test.ts).
 */

function vm(name: string, update: LocalVm['update'] = null): LocalVm {
  return {
    name,
    kind: name === 'personal' ? 'personal' : 'work',
    version: 'os@1',
    activity: 'running',
    summary: `${name}: running and healthy on os@1`,
    currentVersionId: 'ver-1',
    desiredVersionId: 'ver-1',
    transaction: 'idle',
    lastError: null,
    leaseExpiresAt: null,
    leaseWarning: false,
    leaseExpired: false,
    update,
    lastOutcome: null,
  };
}

/** A display that greets as an RFB server does and echoes what it gets after. */
async function fakeDisplay(t: TestContext, dir: string): Promise<string> {
  const path = join(dir, 'vnc.sock');
  const server = createNetServer((s) => {
    s.write('RFB 003.008\n');
    s.on('data', (d) => s.write(d));
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return path;
}

async function switcher(t: TestContext) {
  const dataDir = await tempDir(t);
  const webDir = join(dataDir, 'web');
  await mkdir(join(webDir, 'assets'), { recursive: true });
  await writeFile(join(webDir, 'index.html'), '<!doctype html><title>Bulkhead</title>');
  await writeFile(join(webDir, 'assets', 'app-1234.js'), 'export {};');
  await writeFile(join(dataDir, 'secret.txt'), 'not to be served');
  const display = await fakeDisplay(t, dataDir);
  const log = recordingLog();
  const accepted: string[] = [];
  const s = await startSwitcher(
    { dataDir, port: 0 },
    {
      vms: async () => [vm('work', { to: 'os@2', stagedAt: 1, deadlineAt: null }), vm('personal')],
      screens: {
        screenshot: () => Promise.reject(new Error('no screens here')),
        input: () => Promise.reject(new Error('no screens here')),
      },
      accept: async (name) => {
        accepted.push(name);
      },
      display: async (name) => {
        if (name !== 'work') {
          throw new BulkheadError(ErrorCodes.VM_NOT_RUNNING, `VM ${name} is not running`);
        }
        return display;
      },
      webDir,
      log,
    },
  );
  t.after(() => s.close());
  const origin = `http://127.0.0.1:${s.port}`;
  const key = new URL(s.url).searchParams.get('key')!;
  return { dataDir, s, log, accepted, origin, key };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request to 127.0.0.1:port with exactly the headers given. */
function call(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method, path, headers: { host: `127.0.0.1:${port}`, ...headers } },
      (res) => {
        let text = '';
        res.on('data', (p: Buffer) => (text += p.toString()));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** The session cookie the switcher gives for its key. */
async function login(port: number, key: string): Promise<string> {
  const answer = await call(port, 'GET', `/?key=${encodeURIComponent(key)}`);
  assert.equal(answer.status, 303);
  const cookie = String(answer.headers['set-cookie']);
  return cookie.split(';')[0]!;
}

test('switcher: the key gives a session cookie and a redirect without it; the page and the API then answer', async (t) => {
  const { s, origin, key } = await switcher(t);
  const first = await call(s.port, 'GET', `/?key=${key}`);
  assert.equal(first.status, 303);
  assert.equal(first.headers.location, '/', 'the key leaves the address bar');
  const cookie = String(first.headers['set-cookie']);
  assert.match(cookie, new RegExp(`^bulkhead_switcher_${s.port}=[A-Za-z0-9_-]{43}; `));
  assert.match(cookie, /; HttpOnly/);
  assert.match(cookie, /; SameSite=Strict/);
  assert.ok(!cookie.includes(key), 'the cookie is a session, not the key');
  const session = cookie.split(';')[0]!;

  const page = await call(s.port, 'GET', '/', { cookie: session });
  assert.equal(page.status, 200);
  assert.match(String(page.headers['content-type']), /^text\/html/);
  const csp = String(page.headers['content-security-policy']);
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${s.port}`));
  assert.equal(page.headers['referrer-policy'], 'no-referrer');
  const asset = await call(s.port, 'GET', '/assets/app-1234.js', { cookie: session });
  assert.equal(asset.status, 200);
  assert.match(String(asset.headers['content-type']), /^text\/javascript/);

  const vms = await call(s.port, 'GET', '/v1/vms', { cookie: session });
  assert.equal(vms.status, 200);
  assert.deepEqual(
    LocalVmsResponseSchema.parse(JSON.parse(vms.body)).vms.map((v) => [v.name, v.kind]),
    [
      ['work', 'work'],
      ['personal', 'personal'],
    ],
  );
  // localhost names the same switcher; the cookie is kept per host by the browser.
  const byName = await call(s.port, 'GET', '/v1/vms', {
    cookie: session,
    host: `localhost:${s.port}`,
  });
  assert.equal(byName.status, 200);
  const accept = await call(s.port, 'POST', '/v1/vms/work/accept', { cookie: session, origin });
  assert.equal(accept.status, 204, accept.body);
  // Nothing outside the built page is served, however the path is spelt.
  for (const path of ['/../secret.txt', '/%2e%2e/secret.txt', '/assets/../../secret.txt']) {
    const answer = await call(s.port, 'GET', path, { cookie: session });
    assert.equal(answer.status, 404, path);
    assert.ok(!answer.body.includes('not to be served'), path);
  }
});

test('switcher: no cookie, a wrong key or a wrong cookie is refused with a sentence', async (t) => {
  const { s, key, origin } = await switcher(t);
  const wrongKey = key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A');
  const cases: [string, Promise<Answer>, number][] = [
    ['the page without a cookie', call(s.port, 'GET', '/'), 401],
    ['an asset without a cookie', call(s.port, 'GET', '/assets/app-1234.js'), 401],
    ['the API without a cookie', call(s.port, 'GET', '/v1/vms'), 401],
    ['a wrong key', call(s.port, 'GET', `/?key=${wrongKey}`), 403],
    ['an empty key', call(s.port, 'GET', '/?key='), 403],
    ['the key on a POST', call(s.port, 'POST', `/v1/vms/work/accept?key=${key}`, { origin }), 403],
    [
      'a made-up cookie',
      call(s.port, 'GET', '/v1/vms', { cookie: `bulkhead_switcher_${s.port}=${key}` }),
      401,
    ],
  ];
  for (const [what, pending, status] of cases) {
    const answer = await pending;
    assert.equal(answer.status, status, what);
    assert.equal(answer.headers['set-cookie'], undefined, `${what}: no cookie given`);
    const sentence = answer.body.startsWith('{')
      ? ErrorBodySchema.parse(JSON.parse(answer.body)).error.message
      : answer.body;
    assert.match(sentence, /^[A-Z].*[.:]/, `${what}: a sentence (${answer.body})`);
  }
  const api = await call(s.port, 'GET', '/v1/vms');
  assert.equal(ErrorBodySchema.parse(JSON.parse(api.body)).error.code, 'ERR_UNAUTHENTICATED');
  assert.match(api.body, /bulkhead engine switcher/);
});

test('switcher: another Host name (DNS rebinding) and cross-origin POSTs are refused', async (t) => {
  const { s, key, origin, accepted } = await switcher(t);
  const session = await login(s.port, key);
  for (const host of ['evil.example', `evil.example:${s.port}`, '127.0.0.1', `[::1]:${s.port}`]) {
    const answer = await call(s.port, 'GET', '/v1/vms', { cookie: session, host });
    assert.equal(answer.status, 403, `Host ${JSON.stringify(host)}`);
    const withKey = await call(s.port, 'GET', `/?key=${key}`, { host });
    assert.equal(withKey.status, 403, `Host ${JSON.stringify(host)} with the key`);
    assert.equal(withKey.headers['set-cookie'], undefined);
  }
  const froms: Record<string, string>[] = [
    { origin: 'http://evil.example' },
    { origin: `http://127.0.0.1:${s.port + 1}` },
    { origin: 'null' },
    {},
  ];
  for (const from of froms) {
    const answer = await call(s.port, 'POST', '/v1/vms/work/accept', { cookie: session, ...from });
    assert.equal(answer.status, 403, JSON.stringify(from));
    assert.equal(ErrorBodySchema.parse(JSON.parse(answer.body)).error.code, 'ERR_FORBIDDEN');
  }
  assert.deepEqual(accepted, [], 'no refused POST reached Engine');
  const ok = await call(s.port, 'POST', '/v1/vms/work/accept', { cookie: session, origin });
  assert.equal(ok.status, 204);
  const none = await call(s.port, 'POST', '/v1/vms/personal/accept', { cookie: session, origin });
  assert.equal(none.status, 409);
  assert.deepEqual(accepted, ['work']);
});

/**
 * Opens the display WebSocket of `vm`; resolves with it open and what it receives (from the
 * start: the first frame may come with the handshake), or rejects with the status.
 */
function openDisplay(
  port: number,
  name: string,
  headers: Record<string, string>,
): Promise<{ ws: WebSocket; received: Buffer[] }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${switcherDisplayPath(name)}`, { headers });
    ws.binaryType = 'nodebuffer';
    const received: Buffer[] = [];
    ws.on('message', (d: Buffer) => received.push(d));
    ws.once('open', () => resolve({ ws, received }));
    ws.once('unexpected-response', (_req, res) =>
      reject(new Error(`refused with HTTP ${res.statusCode}`)),
    );
    ws.once('error', reject);
  });
}

test("switcher: a VM's display relays bytes both ways, only with the cookie and from the page's origin", async (t) => {
  const { s, key, origin } = await switcher(t);
  const session = await login(s.port, key);
  await assert.rejects(openDisplay(s.port, 'work', { origin }), /HTTP 401/);
  await assert.rejects(
    openDisplay(s.port, 'work', { origin: 'http://evil.example', cookie: session }),
    /HTTP 403/,
  );
  await assert.rejects(openDisplay(s.port, 'work', { cookie: session }), /HTTP 403/);
  await assert.rejects(
    openDisplay(s.port, 'work', { origin, cookie: session, host: 'evil.example' }),
    /HTTP 403/,
  );
  await assert.rejects(openDisplay(s.port, 'personal', { origin, cookie: session }), /HTTP 409/);
  await assert.rejects(openDisplay(s.port, 'nosuch', { origin, cookie: session }), /HTTP 404/);

  const { ws, received } = await openDisplay(s.port, 'work', { origin, cookie: session });
  t.after(() => ws.terminate());
  const text = () => Buffer.concat(received).toString();
  await waitFor('the greeting', () => text().startsWith('RFB 003.008\n'));
  ws.send(Buffer.from('RFB 003.008\n'));
  await waitFor('the echo', () => text() === 'RFB 003.008\nRFB 003.008\n');
  const closed = new Promise((resolve) => ws.once('close', resolve));
  await s.close();
  await closed;
});

test('switcher: bound to 127.0.0.1 only; its URL is in a 0600 file; the key is never in the log', async (t) => {
  const { dataDir, s, log, key } = await switcher(t);
  assert.match(s.url, new RegExp(`^http://127\\.0\\.0\\.1:${s.port}/\\?key=[A-Za-z0-9_-]{43}$`));
  assert.equal(Buffer.from(key, 'base64url').length, 32);
  const file = switcherUrlFile(dataDir);
  assert.equal(file, join(dataDir, 'run', 'switcher.url'));
  assert.equal(await readFile(file, 'utf8'), `${s.url}\n`);
  assert.equal((await stat(file)).mode & 0o777, 0o600);

  const others = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && !a.internal)
    .map((a) => a!.address);
  for (const address of [...others, '::1']) {
    const reached = await new Promise<boolean>((resolve) => {
      const socket: Socket = connect({ host: address, port: s.port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    assert.equal(reached, false, `the switcher answers on ${address}`);
  }

  // Requests of every kind, good and bad, then nothing of the key in any line logged.
  const session = await login(s.port, key);
  await call(s.port, 'GET', `/?key=${key}x`);
  await call(s.port, 'GET', `/v1/vms/work/screen.png?key=${key}`);
  await call(s.port, 'GET', '/v1/vms/work/screen.png', { cookie: session });
  await openDisplay(s.port, 'work', {
    origin: `http://127.0.0.1:${s.port}`,
    cookie: session,
  }).then(({ ws }) => ws.terminate());
  await s.close();
  await assert.rejects(stat(file), { code: 'ENOENT' }, 'the URL goes with the switcher');
  const logged = JSON.stringify(log.entries, (_k, v: unknown) =>
    v instanceof Error ? { message: v.message, stack: v.stack } : v,
  );
  assert.ok(log.entries.length > 0, 'the switcher logged');
  assert.ok(logged.includes(`127.0.0.1:${s.port}`));
  assert.ok(!logged.includes(key), 'the key is in the log');
  assert.ok(!logged.includes(session.split('=')[1]!), 'the session is in the log');
});
