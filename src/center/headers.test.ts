import assert from 'node:assert/strict';
import { test } from 'node:test';
import { enrolTestDevice, insertSession, startTestCenter } from '../../test/support/center.ts';
import { createUser } from './admin/index.ts';

/** The headers every answer carries, whatever its route or status. */
function assertSecurityHeaders(what: string, headers: Record<string, unknown>): void {
  assert.equal(headers['x-content-type-options'], 'nosniff', what);
  assert.equal(headers['referrer-policy'], 'no-referrer', what);
  assert.equal(headers['x-frame-options'], 'DENY', what);
  const csp = String(headers['content-security-policy']);
  const directives = new Map(
    csp.split(';').map((d) => {
      const [name = '', ...values] = d.trim().split(/\s+/);
      return [name, values.join(' ')] as const;
    }),
  );
  assert.equal(directives.get('default-src'), "'self'", `${what}: ${csp}`);
  assert.equal(directives.get('script-src'), "'self'", `${what}: ${csp}`);
  assert.equal(directives.get('script-src-attr'), "'none'", `${what}: ${csp}`);
  assert.equal(directives.get('style-src'), "'self'", `${what}: ${csp}`);
  assert.equal(directives.get('object-src'), "'none'", `${what}: ${csp}`);
  assert.equal(directives.get('frame-ancestors'), "'none'", `${what}: ${csp}`);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, `${what}: ${csp}`);
}

test('every answer carries the security headers: success, refusal, error, not found', async (t) => {
  const c = await startTestCenter(t, 'sqlite::memory:', { start: Date.now() });
  const admin = await insertSession(c.db, 'root', 'admin', c.clock.ms);
  const answers = {
    healthz: await c.app.inject({ url: '/healthz' }),
    openapi: await c.app.inject({ url: '/api/openapi.json' }),
    'not found': await c.app.inject({ url: '/nowhere' }),
    'store 404': await c.app.inject({ url: '/store/catalog.json' }),
    'admin 200': await c.app.inject({
      url: '/api/v1/admin/me',
      headers: { authorization: `Bearer ${admin}` },
    }),
    'admin 401': await c.app.inject({ url: '/api/v1/admin/users' }),
    'bad JSON': await c.app.inject({
      method: 'POST',
      url: '/api/v1/admin/login',
      headers: { 'content-type': 'application/json' },
      payload: '{',
    }),
  };
  for (const [what, res] of Object.entries(answers)) assertSecurityHeaders(what, res.headers);
  assert.equal(answers['bad JSON'].statusCode, 400);
  // Rate-limited answers too (20 enrolments a minute from one address).
  let limited;
  for (let i = 0; i < 21; i++) {
    limited = await c.app.inject({ method: 'POST', url: '/api/v1/device/enrol', payload: {} });
  }
  assert.equal(limited!.statusCode, 429);
  assertSecurityHeaders('429', limited!.headers);
});

test('answers that carry secrets are never stored: login, tokens, enrolment, desired state', async (t) => {
  const c = await startTestCenter(t, 'sqlite::memory:', { start: Date.now() });
  await createUser(
    c.db,
    { label: 'system' },
    { username: 'root', role: 'admin', password: 'the right password' },
    c.clock.ms,
  );
  const login = await c.call('POST', '/login', {
    body: { username: 'root', password: 'the right password' },
  });
  assert.equal(login.status, 200);
  const session = login.body.token as string;
  const failed = await c.call('POST', '/login', { body: { username: 'root', password: 'no' } });
  const apiToken = await c.call('POST', '/tokens', { token: session, body: { name: 'ci' } });
  assert.equal(apiToken.status, 201);
  const device = await enrolTestDevice(c);
  const [enrol, challenge, deviceToken] = device.responses;
  const desired = await c.call('GET', '/api/v1/device/desired-state', { token: device.token });
  assert.equal(desired.status, 200);
  const notModified = await c.app.inject({
    url: '/api/v1/device/desired-state',
    headers: {
      authorization: `Bearer ${device.token}`,
      'if-none-match': desired.headers['etag'] as string,
    },
  });
  assert.equal(notModified.statusCode, 304);
  const answers = {
    login,
    'failed login': failed,
    'API token': apiToken,
    enrol: enrol!,
    challenge: challenge!,
    'device token': deviceToken!,
    'desired state': desired,
    'desired state 304': { headers: notModified.headers },
    me: await c.call('GET', '/me', { token: session }),
  };
  for (const [what, res] of Object.entries(answers)) {
    assert.equal(res.headers['cache-control'], 'no-store', what);
    assertSecurityHeaders(what, res.headers);
  }
});
