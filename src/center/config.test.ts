import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCodes } from '../protocol/index.ts';
import { configFromEnv, resolveConfig } from './config.ts';

test('defaults: SQLite and a chunk store under ./data, loopback 8080', () => {
  const c = resolveConfig([], '/srv/center');
  assert.equal(c.dataDir, '/srv/center/data');
  assert.equal(c.database, 'sqlite:/srv/center/data/center.db');
  assert.equal(c.storeDir, '/srv/center/data/store');
  assert.deepEqual(c.listen, { host: '127.0.0.1', port: 8080 });
  assert.equal(c.publicUrl, 'http://127.0.0.1:8080');
  assert.equal(c.pollIntervalSeconds, 60);
  // Limits against floods (issue 10).
  assert.equal(c.bodyLimit, 1024 * 1024);
  assert.equal(c.headersTimeoutSeconds, 10);
  assert.equal(c.requestTimeoutSeconds, 300);
  assert.equal(c.keepAliveTimeoutSeconds, 72);
  assert.equal(c.maxConnectionsPerAddress, 256);
  assert.equal(c.maxEventLoopDelayMs, 1000);
  assert.ok(c.maxHeapUsedBytes > 64 * 1024 * 1024, '90% of the heap limit');
  assert.equal(c.reportEventsPerMinute, 2000);
  assert.equal(c.reportBytesPerMinute, 4 * 1024 * 1024);
  // No proxy is believed, and /metrics is not on the main listener, until the admin says.
  assert.deepEqual(c.trustedProxies, []);
  assert.equal(c.metricsListen, null);
  assert.equal(c.metricsToken, null);
  assert.deepEqual(
    [c.loginPerMinute, c.enrolPerMinute, c.deviceAuthPerMinute, c.passwordHashQueue],
    [30, 20, 600, 32],
  );
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.listen) && Object.isFrozen(c.trustedProxies));
});

test('later sources win: file, then environment, then flags', () => {
  const env = configFromEnv({
    BULKHEAD_LISTEN: '0.0.0.0:9000',
    BULKHEAD_MIRRORS: 'https://a.example/s, https://b.example/s',
    BULKHEAD_LOG_LEVEL: 'warn',
    BULKHEAD_POLL_INTERVAL_SECONDS: '300',
    BULKHEAD_MAX_CONNECTIONS_PER_ADDRESS: '64',
    BULKHEAD_HEADERS_TIMEOUT_SECONDS: '5',
    BULKHEAD_MAX_HEAP_USED_BYTES: '1073741824',
    BULKHEAD_REPORT_EVENTS_PER_MINUTE: '600',
    BULKHEAD_TRUSTED_PROXIES: '10.0.0.5, 10.1.0.0/16,fd00::/8',
    BULKHEAD_LOGIN_PER_MINUTE: '10',
    BULKHEAD_METRICS_LISTEN: '127.0.0.1:9464',
    BULKHEAD_METRICS_TOKEN: 't'.repeat(32),
  });
  const c = resolveConfig([{ listen: '[::1]:1', dataDir: '/x' }, env, { dataDir: '/y' }]);
  assert.deepEqual(c.listen, { host: '0.0.0.0', port: 9000 });
  assert.deepEqual(c.mirrors, ['https://a.example/s', 'https://b.example/s']);
  assert.equal(c.logLevel, 'warn');
  assert.equal(c.pollIntervalSeconds, 300);
  assert.equal(c.dataDir, '/y');
  assert.equal(c.maxConnectionsPerAddress, 64);
  assert.equal(c.headersTimeoutSeconds, 5);
  assert.equal(c.maxHeapUsedBytes, 1024 * 1024 * 1024);
  assert.equal(c.reportEventsPerMinute, 600);
  assert.deepEqual(c.trustedProxies, ['10.0.0.5', '10.1.0.0/16', 'fd00::/8']);
  assert.equal(c.loginPerMinute, 10);
  assert.deepEqual(c.metricsListen, { host: '127.0.0.1', port: 9464 });
  assert.equal(c.metricsToken, 't'.repeat(32));
});

test('a bad value fails start-up naming its key', async (t) => {
  const cases: [string, Record<string, unknown>][] = [
    ['listen', { listen: 'localhost' }],
    ['listen', { listen: '127.0.0.1:70000' }],
    ['publicUrl', { publicUrl: 'ftp://x' }],
    ['mirrors.0', { mirrors: ['not a url'] }],
    ['logLevel', { logLevel: 'loud' }],
    ['bodyLimit', { bodyLimit: 10 }],
    ['pollIntervalSeconds', { pollIntervalSeconds: 1 }],
    ['headersTimeoutSeconds', { headersTimeoutSeconds: 0 }],
    ['headersTimeoutSeconds', { headersTimeoutSeconds: 60, requestTimeoutSeconds: 30 }],
    ['maxConnectionsPerAddress', { maxConnectionsPerAddress: 0 }],
    ['maxHeapUsedBytes', { maxHeapUsedBytes: 1000 }],
    // A full batch must always fit in a device's quota.
    ['reportEventsPerMinute', { reportEventsPerMinute: 100 }],
    ['reportBytesPerMinute', { reportBytesPerMinute: 1000 }],
    ['maxConnectionsPerAddress', configFromEnv({ BULKHEAD_MAX_CONNECTIONS_PER_ADDRESS: 'many' })],
    ['trustedProxies.0', { trustedProxies: ['proxy.example.org'] }],
    ['trustedProxies.0', { trustedProxies: ['10.0.0.0/33'] }],
    ['trustedProxies.1', { trustedProxies: ['::1', 'fd00::/129'] }],
    ['trustedProxies.0', { trustedProxies: ['10.0.0.0/8/8'] }],
    ['loginPerMinute', { loginPerMinute: 0 }],
    ['passwordHashQueue', { passwordHashQueue: 'many' }],
    ['metricsListen', { metricsListen: '9464' }],
    ['metricsToken', { metricsToken: 'short' }],
    ['(root)', { databse: 'sqlite:x' }],
  ];
  for (const [key, input] of cases) {
    await t.test(key, () => {
      assert.throws(
        () => resolveConfig([input]),
        (err: { code?: string; message: string }) =>
          err.code === ErrorCodes.CONFIG_INVALID && err.message.includes(`"${key}"`),
      );
    });
  }
});
