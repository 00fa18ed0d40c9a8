import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { verifyPassword } from '../../src/center/auth/passwords.ts';
import { openDatabase } from '../../src/center/db/index.ts';
import { tempDir } from '../support/fixtures.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));

interface Started {
  child: ChildProcess;
  info: { url: string; keyid: string; initialAdmin: { username: string; password: string } | null };
  stderr: () => string;
}

/** Starts `bulkhead center serve` as an administrator would, and waits until it listens. */
function serve(t: TestContext, args: string[]): Promise<Started> {
  const child = spawn(
    process.execPath,
    [BIN, 'center', 'serve', '--listen', '127.0.0.1:0', '--json', ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n')) resolve({ child, info: JSON.parse(line!), stderr: () => err });
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

test('center serve on embedded defaults: first start creates the key and an admin, a restart reuses them', async (t) => {
  const dir = await tempDir(t);
  const data = join(dir, 'data');
  const first = await serve(t, ['--data', data]);
  assert.match(first.info.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  const health = await fetch(`${first.info.url}/healthz`);
  assert.equal(health.status, 200);
  const admin = first.info.initialAdmin;
  assert.ok(admin && admin.username === 'admin' && admin.password.length >= 16);
  assert.ok(!first.stderr().includes(admin.password), 'the password never reaches the log');
  assert.equal(await stop(first), 0, 'SIGTERM shuts down cleanly');

  assert.equal((await stat(join(data, 'center.key'))).mode & 0o777, 0o600);
  for (const f of ['center.db', 'center.db-wal', 'center.db-shm']) {
    const st = await stat(join(data, f)).catch(() => null);
    if (st) assert.equal(st.mode & 0o777, 0o600, f);
  }
  const database = await openDatabase({ url: `sqlite:${join(data, 'center.db')}` });
  try {
    const row = await database.db.selectFrom('admin_users').selectAll().executeTakeFirstOrThrow();
    assert.equal(await verifyPassword(admin.password, row.password_hash), true);
  } finally {
    await database.close();
  }

  const second = await serve(t, ['--data', data]);
  assert.equal(second.info.initialAdmin, null, 'the password is shown once');
  assert.equal(second.info.keyid, first.info.keyid, 'the signing key is kept');
  assert.equal(await stop(second), 0);
});

test('a bad setting stops start-up with the key named', async (t) => {
  const dir = await tempDir(t);
  const child = spawn(
    process.execPath,
    [BIN, 'center', 'serve', '--data', dir, '--public-url', 'ftp://x'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise((resolve) => child.on('exit', resolve));
  assert.equal(code, 1);
  assert.match(err, /configuration key "publicUrl"/);
  assert.doesNotMatch(err, /^\s+at /m);
});
