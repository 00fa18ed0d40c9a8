import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../support/fixtures.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));

interface Started {
  child: ChildProcess;
  info: { url: string; initialAdmin: { username: string; password: string } | null };
}

/** Starts `bulkhead center serve --demo` and waits until it listens. */
function serveDemo(t: TestContext, data: string): Promise<Started> {
  const child = spawn(
    process.execPath,
    [BIN, 'center', 'serve', '--demo', '--data', data, '--listen', '127.0.0.1:0', '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('\n')) resolve({ child, info: JSON.parse(out.split('\n')[0]!) });
    });
    child.on('exit', (code) => reject(new Error(`center serve exited with ${code}: ${err}`)));
  });
}

function stop(s: Started): Promise<number | null> {
  return new Promise((resolve) => {
    s.child.once('exit', (code) => resolve(code));
    s.child.kill('SIGTERM');
  });
}

test('center serve --demo publishes the demo image once, version 1 released', async (t) => {
  const data = join(await tempDir(t, 'bulkhead-demo-'), 'data');
  const first = await serveDemo(t, data);
  const { url } = first.info;
  assert.equal((await fetch(`${url}/healthz`)).status, 200);
  const admin = first.info.initialAdmin!;
  const login = await fetch(`${url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: admin.username, password: admin.password }),
  });
  assert.equal(login.status, 200);
  const { token } = (await login.json()) as { token: string };
  const get = async (path: string) => {
    const res = await fetch(`${url}/api/v1/admin${path}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(res.status, 200, path);
    return res.json() as Promise<Record<string, unknown>>;
  };
  const images = (await get('/images')).images as {
    name: string;
    kind: string;
    release: { version: string } | null;
  }[];
  assert.deepEqual(
    images.map((i) => [i.name, i.kind, i.release?.version]),
    [['demo-os', 'system', '1']],
  );
  const detail = await get('/images/demo-os');
  assert.deepEqual(
    (detail.versions as { version: string; state: string }[])
      .map((v) => [v.version, v.state])
      .sort(),
    [
      ['1', 'published'],
      ['2', 'published'],
    ],
  );
  const publishers = (await get('/publishers')).publishers as { name: string }[];
  assert.deepEqual(
    publishers.map((p) => p.name),
    ['demo'],
  );
  const manifest = await fetch(`${url}/store/manifests/demo-os/2.json`);
  assert.equal(manifest.status, 200);
  assert.equal(await stop(first), 0);

  // A restart reuses what the first start built and recorded.
  const second = await serveDemo(t, data);
  const res = await fetch(`${second.info.url}/healthz`);
  assert.equal(res.status, 200);
  assert.equal(await stop(second), 0);
});
