import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { BIN, cliJson, runCli, startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';
import { PATIENCE_MS } from '../support/wait.ts';

async function login(url: string, username: string, password: string): Promise<string> {
  const res = await fetch(`${url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  assert.equal(res.status, 200, `login as ${username}`);
  return ((await res.json()) as { token: string }).token;
}

async function adminGet<T>(url: string, token: string, path: string): Promise<T> {
  const res = await fetch(`${url}/api/v1/admin${path}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(res.status, 200, path);
  return (await res.json()) as T;
}

/** What Center holds of the demo: its publishers' key ids and demo-os's versions. */
async function demoAtCenter(url: string, token: string) {
  const { publishers } = await adminGet<{ publishers: { name: string; keyid: string }[] }>(
    url,
    token,
    '/publishers',
  );
  const { images } = await adminGet<{
    images: { name: string; kind: string; release: { version: string } | null }[];
  }>(url, token, '/images');
  const detail = await adminGet<{ versions: { version: string; state: string }[] }>(
    url,
    token,
    '/images/demo-os',
  );
  return {
    publishers: publishers.map((p) => [p.name, p.keyid]),
    images: images.map((i) => [i.name, i.kind, i.release?.version]),
    versions: detail.versions.map((v) => [v.version, v.state]).sort(),
  };
}

test('center serve --demo publishes the demo image once, version 1 released', async (t) => {
  const data = join(await tempDir(t, 'bulkhead-demo-'), 'data');
  const first = await startCenterProcess(t, ['--demo', '--data', data]);
  const { url } = first.info;
  assert.equal((await fetch(`${url}/healthz`)).status, 200);
  const admin = first.info.initialAdmin!;
  const token = await login(url, admin.username, admin.password);
  const seen = await demoAtCenter(url, token);
  assert.deepEqual(seen.images, [['demo-os', 'system', '1']]);
  assert.deepEqual(seen.versions, [
    ['1', 'published'],
    ['2', 'published'],
  ]);
  assert.deepEqual(
    seen.publishers.map(([name]) => name),
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

test('center serve --demo, then bulkhead demo, then center serve --demo: same admin, same key', async (t) => {
  const data = join(await tempDir(t, 'bulkhead-demo-'), 'data');
  const first = await startCenterProcess(t, ['--demo', '--data', data]);
  const admin = first.info.initialAdmin!;
  const before = await demoAtCenter(
    first.info.url,
    await login(first.info.url, 'admin', admin.password),
  );
  assert.equal(await first.stop(), 0);
  const key = await readFile(join(data, 'demo', 'publisher.key'), 'utf8');

  // The demo the README suggests next, on the same directory: it reuses the store and its key.
  const demo = (await cliJson(['demo', '--dir', data])) as {
    keyid: string;
    v1: { built: boolean };
    v2: { built: boolean; size: number };
    pull: { downloadedBytes: number; sha256: string };
  };
  assert.equal(demo.v1.built, false, 'bulkhead demo reuses version 1');
  assert.equal(demo.v2.built, false, 'bulkhead demo reuses version 2');
  assert.equal(await readFile(join(data, 'demo', 'publisher.key'), 'utf8'), key);
  assert.deepEqual(before.publishers, [['demo', demo.keyid]]);

  const second = await startCenterProcess(t, ['--demo', '--data', data]);
  assert.equal(second.info.initialAdmin, null, 'no new administrator on the second start');
  const token = await login(second.info.url, 'admin', admin.password);
  assert.deepEqual(await demoAtCenter(second.info.url, token), before);
  assert.equal(await second.stop(), 0);
});

test('bulkhead demo, then center serve --demo twice with bulkhead demo between: one key throughout', async (t) => {
  const data = join(await tempDir(t, 'bulkhead-demo-'), 'data');
  const made = (await cliJson(['demo', '--dir', data])) as {
    keyid: string;
    v1: { built: boolean };
    v2: { built: boolean };
  };
  assert.equal(made.v1.built && made.v2.built, true, 'the first bulkhead demo builds both');
  const key = await readFile(join(data, 'demo', 'publisher.key'), 'utf8');

  const first = await startCenterProcess(t, ['--demo', '--data', data]);
  const admin = first.info.initialAdmin!;
  const token = await login(first.info.url, 'admin', admin.password);
  const seen = await demoAtCenter(first.info.url, token);
  assert.deepEqual(seen.publishers, [['demo', made.keyid]], "Center trusts the demo's own key");
  assert.deepEqual(seen.versions, [
    ['1', 'published'],
    ['2', 'published'],
  ]);
  assert.equal(await first.stop(), 0);

  const again = (await cliJson(['demo', '--dir', data])) as { keyid: string };
  assert.equal(again.keyid, made.keyid);

  const second = await startCenterProcess(t, ['--demo', '--data', data]);
  assert.equal(second.info.initialAdmin, null);
  const token2 = await login(second.info.url, 'admin', admin.password);
  assert.deepEqual(await demoAtCenter(second.info.url, token2), seen);
  assert.equal(await second.stop(), 0);
  assert.equal(await readFile(join(data, 'demo', 'publisher.key'), 'utf8'), key);
});

/**
 * Runs `bulkhead center serve ARGS…` as `npm start` does (human output) until it has printed
 * its last line, then stops it; its stdout.
 */
async function serveOutput(t: TestContext, args: string[]): Promise<string> {
  const child = spawn(
    process.execPath,
    [BIN, 'center', 'serve', '--listen', '127.0.0.1:0', ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`center serve printed no "npm link" line: ${out}\n${err}`)),
      PATIENCE_MS,
    );
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('npm link')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`center serve exited with ${code}: ${out}\n${err}`));
    });
  });
  child.removeAllListeners('exit');
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
  return out;
}

test('npm start says what to do next; later starts say how to reset the password, which works', async (t) => {
  const data = join(await tempDir(t, 'bulkhead-demo-'), 'data');
  const first = await serveOutput(t, ['--demo', '--data', data]);
  const url = /Center listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(first)?.[1];
  assert.ok(url, first);
  assert.match(first, /one-time password\n {2}\S+\n/);
  assert.ok(
    first.includes(`  bulkhead login --center ${url} --username admin\n`),
    `the login command with the URL:\n${first}`,
  );
  assert.ok(first.includes(`  bulkhead demo pc --dir ${data}\n`), first);
  assert.ok(first.includes(join(data, 'demo', 'store')), `where the demo store is:\n${first}`);
  assert.ok(first.includes(join(data, 'demo-pc')), `where the demo PC's data goes:\n${first}`);

  const second = await serveOutput(t, ['--demo', '--data', data]);
  assert.doesNotMatch(second, /one-time password\n/);
  const reset = /Forgot it\? (bulkhead center admin reset .*)\n/.exec(second)?.[1];
  assert.equal(reset, `bulkhead center admin reset --username admin --data ${data}`);
  // The command as printed (bulkhead being this checkout's launcher) gives a password that works.
  const r = await runCli([...reset.split(' ').slice(1), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const { password } = JSON.parse(r.stdout) as { password: string };
  const center = await startCenterProcess(t, ['--data', data]);
  await login(center.info.url, 'admin', password);
  assert.equal(await center.stop(), 0);
});

test('demo pc without an administrator login exits 2 saying what it needs and how to log in', async (t) => {
  const dir = await tempDir(t, 'bulkhead-demo-');
  const r = await runCli(['demo', 'pc', '--dir', dir], {
    env: { BULKHEAD_CREDENTIALS: join(dir, 'none.json'), BULKHEAD_TOKEN: '', BULKHEAD_CENTER: '' },
  });
  assert.equal(r.code, 2, r.stderr);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /^bulkhead demo pc: demo pc acts as an administrator of the demo Center/);
  assert.match(r.stderr, /bulkhead login --center \S+ --username admin/);
});
