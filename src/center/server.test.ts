import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import { HttpStore, pullImage } from '../image/index.ts';
import { endpoints, ErrorBodySchema } from '../protocol/index.ts';
import { publishPair, sha256Of, tempDir } from '../../test/support/fixtures.ts';
import { resolveConfig, type CenterConfigInput } from './config.ts';
import { migrateToLatest, openDatabase } from './db/index.ts';
import { createCenterApp } from './server.ts';
import { startCenter } from './start.ts';
import { isStoreKey } from './store-route.ts';

async function center(
  t: TestContext,
  extra: CenterConfigInput = {},
  now: () => Date = () => new Date(),
) {
  const dir = await tempDir(t);
  const published = await publishPair(dir);
  // The fixture's store is the Center's: dataDir/store.
  const config = resolveConfig([{ dataDir: dir, listen: '127.0.0.1:0' }, extra]);
  const database = await openDatabase({ url: 'sqlite::memory:' });
  await migrateToLatest(database.db);
  const app = await createCenterApp({
    config,
    log: pino({ level: 'silent' }),
    database,
    signingKey: published.keys.key,
    now,
  });
  t.after(async () => {
    await app.close();
    await database.close();
  });
  return { app, database, ...published };
}

test('healthz answers ok, and 503 naming the cause when the database is down', async (t) => {
  const up = await center(t);
  const ok = await up.app.inject({ url: '/healthz' });
  assert.equal(ok.statusCode, 200);
  assert.deepEqual(ok.json(), { status: 'ok' });
  await up.database.close();
  const bad = await up.app.inject({ url: '/healthz' });
  assert.equal(bad.statusCode, 503);
  assert.match(bad.json().reason, /^database: /);
});

const METRICS_TOKEN = 'm'.repeat(40);

test('metrics count requests in the Prometheus text format', async (t) => {
  const { app } = await center(t, { metricsToken: METRICS_TOKEN });
  await app.inject({ url: '/healthz' });
  const res = await app.inject({
    url: '/metrics',
    headers: { authorization: `Bearer ${METRICS_TOKEN}` },
  });
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /text\/plain/);
  assert.match(
    res.body,
    /bulkhead_center_http_requests_total\{method="GET",route="\/healthz",status="2xx"\} 1/,
  );
});

test('by default the main listener serves no /metrics', async (t) => {
  const { app } = await center(t);
  const res = await app.inject({ url: '/metrics' });
  assert.equal(res.statusCode, 404);
  assert.doesNotMatch(res.body, /bulkhead_center_/);
});

test('with metricsToken, /metrics on the main listener needs that bearer token', async (t) => {
  const { app } = await center(t, { metricsToken: METRICS_TOKEN });
  for (const authorization of [
    undefined,
    'Bearer wrong',
    `Bearer ${METRICS_TOKEN}x`,
    METRICS_TOKEN,
  ]) {
    const res = await app.inject({
      url: '/metrics',
      headers: authorization === undefined ? {} : { authorization },
    });
    assert.equal(res.statusCode, 401, String(authorization));
    assert.equal(ErrorBodySchema.parse(res.json()).error.code, 'ERR_UNAUTHENTICATED');
    assert.doesNotMatch(res.body, /bulkhead_center_/);
  }
});

test('with metricsListen, /metrics is served there alone, without a token', async (t) => {
  const dir = await tempDir(t);
  const config = resolveConfig([
    { dataDir: dir, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0' },
  ]);
  const running = await startCenter({ config, log: pino({ level: 'silent' }) });
  t.after(() => running.close());
  assert.ok(running.metricsUrl !== null && running.metricsUrl !== running.url);
  await fetch(`${running.url}/healthz`);
  const metrics = await fetch(`${running.metricsUrl}/metrics`);
  assert.equal(metrics.status, 200);
  assert.match(
    await metrics.text(),
    /bulkhead_center_http_requests_total\{method="GET",route="\/healthz",status="2xx"\} 1/,
  );
  assert.equal(metrics.headers.get('x-content-type-options'), 'nosniff');
  // Nothing else there, and no /metrics on the main listener.
  assert.equal((await fetch(`${running.metricsUrl}/healthz`)).status, 404);
  assert.equal((await fetch(`${running.metricsUrl}/api/v1/admin/users`)).status, 404);
  assert.equal((await fetch(`${running.url}/metrics`)).status, 404);
});

test('the OpenAPI document is generated from the route schemas', async (t) => {
  const { app } = await center(t);
  const doc = (await app.inject({ url: '/api/openapi.json' })).json();
  assert.match(doc.openapi, /^3\./);
  assert.ok(doc.paths['/healthz'].get.responses['503']);
  // Each route says which bearer token it needs; public ones say none.
  assert.equal(doc.components.securitySchemes.admin.scheme, 'bearer');
  assert.deepEqual(doc.paths['/api/v1/admin/users'].get.security, [{ admin: [] }]);
  assert.equal(doc.paths['/api/v1/admin/login'].post.security, undefined);
  assert.deepEqual(doc.paths['/api/v1/device/desired-state'].get.security, [{ device: [] }]);
  assert.equal(doc.paths['/api/v1/device/enrol'].post.security, undefined);
  assert.equal(doc.paths['/healthz'].get.security, undefined);
});

test('every declared endpoint is served, guarded by its declared auth', async (t) => {
  const { app } = await center(t);
  const doc = (await app.inject({ url: '/api/openapi.json' })).json();
  for (const [name, e] of Object.entries(endpoints)) {
    assert.ok(app.hasRoute({ method: e.method, url: e.path }), `${name}: ${e.method} ${e.path}`);
    const documented = doc.paths[e.path.replace(/:(\w+)/g, '{$1}')]?.[e.method.toLowerCase()];
    assert.ok(documented, `${name} is in the OpenAPI document`);
    if (e.auth === 'public') continue;
    // No token: refused before the body is read, with the one error body.
    const url = e.path.replace(/:(\w+)/g, 'x');
    const res = await app.inject({ method: e.method, url });
    assert.equal(res.statusCode, 401, `${name} without a token`);
    assert.equal(ErrorBodySchema.parse(res.json()).error.code, 'ERR_UNAUTHENTICATED');
  }
});

test('a rate-limited answer carries Retry-After in seconds and retryAfterMs in its body', async (t) => {
  // Limits count in fixed minutes: at the start of one, its whole length is left.
  const { app } = await center(t, {}, () => new Date(Date.UTC(2026, 0, 1, 12, 0)));
  const enrol = () => app.inject({ method: 'POST', url: endpoints.enrol.path, payload: {} });
  for (let i = 0; i < 20; i++) assert.equal((await enrol()).statusCode, 400);
  const limited = await enrol();
  assert.equal(limited.statusCode, 429);
  assert.equal(limited.headers['retry-after'], '60');
  const { error } = ErrorBodySchema.parse(limited.json());
  assert.deepEqual([error.code, error.retryAfterMs], ['ERR_RATE_LIMITED', 60_000]);
});

test('rotating X-Forwarded-For does not escape the enrolment limit unless a trusted proxy sends it', async (t) => {
  const enrol = (app: Awaited<ReturnType<typeof center>>['app'], peer: string, client: string) =>
    app.inject({
      method: 'POST',
      url: endpoints.enrol.path,
      payload: {},
      remoteAddress: peer,
      headers: { 'x-forwarded-for': client },
    });
  const direct = await center(t);
  for (let i = 0; i < 20; i++) {
    assert.equal((await enrol(direct.app, '203.0.113.7', `198.51.100.${i}`)).statusCode, 400);
  }
  assert.equal((await enrol(direct.app, '203.0.113.7', '198.51.100.99')).statusCode, 429);

  // Behind a trusted proxy, each forwarded client has its own limit; the proxy has none.
  const proxied = await center(t, { trustedProxies: ['10.9.0.5'] });
  for (let i = 0; i < 25; i++) {
    assert.equal((await enrol(proxied.app, '10.9.0.5', `198.51.100.${i}`)).statusCode, 400);
  }
  for (let i = 0; i < 20; i++) await enrol(proxied.app, '10.9.0.5', '198.51.100.200');
  assert.equal((await enrol(proxied.app, '10.9.0.5', '198.51.100.200')).statusCode, 429);
});

test('the chunk store is served read-only, with ranges, and nothing outside its layout', async (t) => {
  const { app, store } = await center(t);
  const manifest = await app.inject({ url: '/store/manifests/os/2.json' });
  assert.equal(manifest.statusCode, 200);
  assert.equal(manifest.body, await readFile(join(store.location, 'manifests/os/2.json'), 'utf8'));
  assert.match(manifest.headers['cache-control'] as string, /immutable/);

  const pack = await readFile(join(store.location, 'packs/os/2/from-1.pack'));
  const range = await app.inject({
    url: '/store/packs/os/2/from-1.pack',
    headers: { range: 'bytes=10-99' },
  });
  assert.equal(range.statusCode, 206);
  assert.equal(range.headers['content-range'], `bytes 10-99/${pack.length}`);
  assert.deepEqual(range.rawPayload, pack.subarray(10, 100));
  const head = await app.inject({ method: 'HEAD', url: '/store/catalog.json' });
  assert.equal(head.statusCode, 200);
  assert.equal(head.headers['cache-control'], 'no-cache');

  for (const url of [
    '/store/../package.json',
    '/store/%2e%2e/%2e%2e/etc/passwd',
    '/store/.tmp/x',

    '/store/chunks/00/00/' + 'ab'.repeat(32),
  ]) {
    const res = await app.inject({ url });
    assert.equal(res.statusCode, 404, url);
  }
  const put = await app.inject({ method: 'PUT', url: '/store/catalog.json', payload: '{}' });
  assert.equal(put.statusCode, 404);
});

test('a PC pulls an image from a listening Center with only the chunks it lacks', async (t) => {
  const { app, keys, v1, v2, dir } = await center(t);
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  const r = await pullImage({
    store: new HttpStore(`${url}/store/`),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'pc.raw'),
    seeds: [v1],
  });
  assert.equal(r.sha256, await sha256Of(v2));
  assert.ok(r.packFrames > 0);
});

test('store keys follow the layout exactly', () => {
  const d = 'ab'.repeat(32);
  assert.equal(isStoreKey(`chunks/ab/ab/${d}`), true);
  assert.equal(isStoreKey(`chunks/ab/ac/${d}`), false);
  assert.equal(isStoreKey('manifests/os/1.json'), true);
  assert.equal(isStoreKey('manifests/../1.json'), false);
  assert.equal(isStoreKey('packs/os/2/from-1.pack'), true);
  assert.equal(isStoreKey('packs/os/2/from-1.exe'), false);
  assert.equal(isStoreKey('packs/os/2/from-1.index'), true);
  assert.equal(isStoreKey('packs/os/2/from-1.index.tmp'), false);
});
