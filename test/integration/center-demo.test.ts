import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

test('center serve --demo publishes the demo image once, version 1 released', async (t) => {
  const data = join(await tempDir(t, 'bulkhead-demo-'), 'data');
  const first = await startCenterProcess(t, ['--demo', '--data', data]);
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
  assert.equal(await first.stop(), 0);

  // A restart reuses what the first start built and recorded.
  const second = await startCenterProcess(t, ['--demo', '--data', data]);
  const res = await fetch(`${second.info.url}/healthz`);
  assert.equal(res.status, 200);
  assert.equal(await second.stop(), 0);
});
