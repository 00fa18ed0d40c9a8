// Half-open sockets from one client must not take Center's file descriptors: `center serve` as
// a real process with few descriptors (ulimit -n), flooded with silent connections from
// 127.0.0.1, still answers /healthz from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to lo),
// and closes the silent ones after its header timeout.
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';
import { waitFor } from '../support/wait.ts';

/** GET /healthz from `localAddress`: its status, or the error that ended it. */
function healthzFrom(url: URL, localAddress: string): Promise<number | string> {
  return new Promise((resolve) => {
    const req = request(
      { host: url.hostname, port: url.port, path: '/healthz', localAddress, agent: false },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    req.end();
  });
}

test('a flood of silent connections from one address does not stop /healthz answering another', async (t) => {
  const dir = await tempDir(t);
  // Center with 200 file descriptors: 400 idle connections would take them all.
  const wrapper = join(dir, 'node-with-few-fds');
  await writeFile(wrapper, `#!/bin/sh\nulimit -n 200\nexec '${process.execPath}' "$@"\n`);
  await chmod(wrapper, 0o755);
  const center = await startCenterProcess(t, ['--data', join(dir, 'data')], {
    node: wrapper,
    env: {
      BULKHEAD_MAX_CONNECTIONS_PER_ADDRESS: '32',
      BULKHEAD_HEADERS_TIMEOUT_SECONDS: '2',
      BULKHEAD_LOG_LEVEL: 'warn',
    },
  });
  const url = new URL(center.info.url);
  assert.equal(await healthzFrom(url, '127.0.0.2'), 200);

  const flood: { socket: Socket; closed: boolean; connected: boolean }[] = [];
  for (let i = 0; i < 400; i++) {
    const socket = connect({
      host: url.hostname,
      port: Number(url.port),
      localAddress: '127.0.0.1',
    });
    const entry = { socket, closed: false, connected: false };
    socket.on('connect', () => (entry.connected = true));
    socket.on('error', () => {});
    socket.on('close', () => (entry.closed = true));
    flood.push(entry);
  }
  t.after(() => flood.forEach((f) => f.socket.destroy()));
  await waitFor('the flood to connect', () =>
    flood.every((f) => f.connected || f.closed) ? true : undefined,
  );

  assert.equal(await healthzFrom(url, '127.0.0.2'), 200, 'another client is still served');
  // Those over the cap were closed at once; the 32 left wait for their header timeout.
  await waitFor('the connections over the cap to be closed', () =>
    flood.filter((f) => f.closed).length >= 400 - 32 ? true : undefined,
  );
  // 2 s header timeout: a silent connection does not outlive it by much (Node alone would
  // keep it for good).
  await waitFor(
    'the silent connections to be closed',
    () => (flood.every((f) => f.closed) ? true : undefined),
    { timeoutMs: 60_000 },
  );
  assert.equal(await healthzFrom(url, '127.0.0.1'), 200, 'the address is served again');
  assert.equal(await center.stop(), 0);
});
