import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { verifyPassword } from '../../src/center/auth/passwords.ts';
import { openDatabase } from '../../src/center/db/index.ts';
import { runCli, startCenterProcess as serve } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

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
  assert.equal(await first.stop(), 0, 'SIGTERM shuts down cleanly');

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

  assert.equal(first.info.metricsUrl, null);
  const metricsToken = 'a-metrics-token-of-forty-characters-long';
  const second = await serve(
    t,
    [
      '--data',
      data,
      '--metrics-listen',
      '127.0.0.1:0',
      '--trusted-proxies',
      '10.0.0.1,10.2.0.0/16',
    ],
    { env: { BULKHEAD_METRICS_TOKEN: metricsToken, BULKHEAD_LOG_LEVEL: 'debug' } },
  );
  assert.equal(second.info.initialAdmin, null, 'the password is shown once');
  assert.equal(second.info.keyid, first.info.keyid, 'the signing key is kept');
  // /metrics on its own listener, and on the main one only with the token.
  const own = await fetch(`${second.info.metricsUrl}/metrics`);
  assert.equal(own.status, 200);
  assert.match(await own.text(), /bulkhead_center_push_connections 0/);
  assert.equal((await fetch(`${second.info.url}/metrics`)).status, 401);
  const main = await fetch(`${second.info.url}/metrics`, {
    headers: { authorization: `Bearer ${metricsToken}` },
  });
  assert.equal(main.status, 200);
  assert.equal(await second.stop(), 0);
  assert.ok(!second.stderr().includes(metricsToken), 'the metrics token never reaches the log');
});

test('a bad setting stops start-up with the key named', async (t) => {
  const dir = await tempDir(t);
  const { code, stderr } = await runCli([
    'center',
    'serve',
    '--data',
    dir,
    '--public-url',
    'ftp://x',
  ]);
  assert.equal(code, 1);
  assert.match(stderr, /configuration key "publicUrl"/);
  assert.doesNotMatch(stderr, /^\s+at /m);
  const proxies = await runCli(['center', 'serve', '--data', dir, '--trusted-proxies', 'lb.local']);
  assert.equal(proxies.code, 1);
  assert.match(
    proxies.stderr,
    /configuration key "trustedProxies.0": must be an IP address or CIDR/,
  );
});
