import assert from 'node:assert/strict';
import { encryptionKeyPem } from '../support/keys.ts';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { newId } from '../../src/center/db/index.ts';
import { createEnrolmentToken, DEVICE_SIGNATURE_DOMAINS } from '../../src/center/devices/index.ts';
import { isText, UNSAFE_NAME_CHARACTER } from '../../src/protocol/index.ts';
import { signPayload } from '../../src/signing/index.ts';
import { insertDevices, insertGroup, insertSession, startTestCenter } from '../support/center.ts';
import { runCli } from '../support/cli.ts';
import { forEachDatabase } from '../support/databases.ts';
import { tempDir } from '../support/fixtures.ts';

/*
 * Input that must not reach the database or the terminal (issue 10): strings with NUL, control
 * characters or unpaired surrogates get the same 400 on SQLite and PostgreSQL (PostgreSQL used
 * to answer 500); JSON bodies nested too deep, malformed or of the wrong content type are
 * refused before a handler sees them; and the CLI prints no control character Center sent.
 */

const START = Date.parse('2026-02-02T10:00:00Z');

interface Answer {
  status: number;
  body: { error?: { code: string; message: string } };
}

async function center(t: TestContext, url: string) {
  const c = await startTestCenter(t, url, { start: START });
  const admin = await insertSession(c.db, 'root', 'admin', START);
  const groupId = await insertGroup(c.db, 'office', START);
  const [deviceId] = await insertDevices(c.db, groupId, 1, [], START);

  /** A request as a client sends it: `body` JSON, or `raw` text with its own content type. */
  const send = async (
    method: 'GET' | 'POST' | 'PATCH' | 'PUT',
    path: string,
    options: {
      body?: unknown;
      raw?: string | Buffer;
      type?: string;
      token?: string;
    } = {},
  ): Promise<Answer> => {
    const headers: Record<string, string> = {};
    if (options.token !== undefined) headers['authorization'] = `Bearer ${options.token}`;
    let payload: string | Buffer | undefined;
    if (options.raw !== undefined) payload = options.raw;
    else if (options.body !== undefined) payload = JSON.stringify(options.body);
    if (payload !== undefined) headers['content-type'] = options.type ?? 'application/json';
    const res = await c.app.inject({
      method,
      url: path,
      headers,
      remoteAddress: '198.51.100.9',
      ...(payload === undefined ? {} : { payload }),
    });
    return { status: res.statusCode, body: res.body ? res.json() : {} };
  };

  /** An enrolled device's bearer token, through the API as Engine gets one. */
  const deviceToken = async (): Promise<string> => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const { token } = await createEnrolmentToken(c.db, {
      groupId,
      uses: 1,
      expiresAt: new Date(START + 3_600_000),
      now: new Date(START),
    });
    const publicPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const enrolled = await send('POST', '/api/v1/device/enrol', {
      body: {
        token,
        publicKey: publicPem,
        encryptionKey: encryptionKeyPem(),
        inventory: { hostname: 'pc-1' },
      },
    });
    assert.equal(enrolled.status, 200, JSON.stringify(enrolled.body));
    const id = (enrolled.body as { deviceId: string }).deviceId;
    const ch = await send('POST', '/api/v1/device/auth/challenge', { body: { deviceId: id } });
    const challenge = (ch.body as { challenge: string }).challenge;
    const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, privateKey);
    const res = await send('POST', '/api/v1/device/auth/token', {
      body: { deviceId: id, challenge, signature },
    });
    return (res.body as { token: string }).token;
  };

  return { ...c, admin, groupId, deviceId: deviceId as string, send, deviceToken };
}

/** The answer is `status` with `code`, its message naming `field`, and no stack trace. */
function assertRefused(res: Answer, status: number, code: string, field?: RegExp): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.error?.code, code, res.body.error?.message);
  if (field !== undefined) assert.match(res.body.error!.message, field);
  assert.doesNotMatch(JSON.stringify(res.body), /\n\s+at /, 'no stack trace');
}

const update = (reason: string) => ({
  id: 'evt-1',
  type: 'failed',
  at: START,
  data: {
    profileId: 'p',
    image: 'os',
    version: '2',
    versionId: 'v2',
    volumes: [
      { role: 'system', image: 'os', imageId: 'i', version: '2', versionId: 'v2', isNew: true },
    ],
    reason,
  },
});

forEachDatabase('strings with NUL, control characters or unpaired surrogates', async (t, dbs) => {
  const c = await center(t, await dbs.emptyUrl(t));
  const device = await c.deviceToken();
  const enrol = (inventory: object, name?: string) =>
    c.send('POST', '/api/v1/device/enrol', {
      body: {
        token: 'bhe_unused',
        publicKey: 'unused',
        encryptionKey: 'unused',
        inventory,
        ...(name ? { name } : {}),
      },
    });
  const { admin } = c;
  const cases: [string, () => Promise<Answer>, RegExp][] = [
    [
      'a NUL in the login name (anonymous)',
      () =>
        c.send('POST', '/api/v1/admin/login', { body: { username: 'root\u0000', password: 'x' } }),
      /^body\.username: must be text without NUL/,
    ],
    [
      'a NUL in an enrolling host name (anonymous)',
      () => enrol({ hostname: 'pc\u0000' }),
      /^body\.inventory\.hostname: must be printable/,
    ],
    [
      'an unpaired surrogate in a firmware string (anonymous)',
      () => enrol({ hostname: 'pc', firmware: { vendor: '\ud800', version: '1' } }),
      /^body\.inventory\.firmware\.vendor: must be text without NUL/,
    ],
    [
      'terminal escapes in the name a device enrols with',
      () => enrol({ hostname: 'pc' }, '\u001b]0;pwned\u0007\u001b[2J'),
      /^body\.name: must be printable/,
    ],
    [
      'terminal escapes in an enrolling host name, the name shown when none is given',
      () => enrol({ hostname: 'pc\u001b[2J' }),
      /^body\.inventory\.hostname: must be printable/,
    ],
    [
      'a NUL in an event reason (device)',
      () =>
        c.send('POST', '/api/v1/device/reports', {
          body: { events: [update('qemu said \u0000')] },
          token: device,
        }),
      /^body\.events\.0\.data\.reason: must be text without NUL/,
    ],
    [
      'an escape sequence in a new device name',
      () =>
        c.send('PATCH', `/api/v1/admin/devices/${c.deviceId}`, {
          body: { name: 'pc\u001b[2J' },
          token: admin,
        }),
      /^body\.name: must be printable/,
    ],
    [
      'an unpaired surrogate in a group description',
      () =>
        c.send('POST', '/api/v1/admin/groups', {
          body: { name: 'finance', description: 'floor \udc00 3' },
          token: admin,
        }),
      /^body\.description: must be text without NUL/,
    ],
    [
      'a bidirectional override in an API token name',
      () =>
        c.send('POST', '/api/v1/admin/tokens', { body: { name: 'ci\u202egpj.exe' }, token: admin }),
      /^body\.name: must be printable/,
    ],
    [
      'a NUL in a path parameter',
      () => c.send('GET', '/api/v1/admin/images/os%00', { token: admin }),
      /^params\.id: must be text without NUL/,
    ],
    [
      'a NUL in a query parameter',
      () => c.send('GET', '/api/v1/admin/devices?q=pc%00', { token: admin }),
      /^querystring\.q: must be text without NUL/,
    ],
    [
      'an unpaired surrogate in a path parameter (invalid UTF-8 in the URL)',
      () => c.send('GET', '/api/v1/admin/users/%ED%A0%80', { token: admin }),
      /not a valid url component/,
    ],
  ];
  for (const [name, call, field] of cases) {
    await t.test(name, async () => assertRefused(await call(), 400, 'ERR_VALIDATION', field));
  }

  await t.test('nothing of them reached the database', async () => {
    const names = await c.db.selectFrom('devices').select('name').execute();
    assert.ok(names.every((d) => isText(d.name) && !UNSAFE_NAME_CHARACTER.test(d.name)));
    const groups = await c.db.selectFrom('device_groups').select('name').execute();
    assert.deepEqual(groups.map((g) => g.name).sort(), ['office']);
  });

  await t.test('printable names in other scripts are taken', async () => {
    const res = await c.send('POST', '/api/v1/admin/groups', {
      body: { name: 'Büro Zürich 財務部 😀', description: 'two\nlines' },
      token: admin,
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  });
});

forEachDatabase('JSON bodies: depth, syntax and content type', async (t, dbs) => {
  const c = await center(t, await dbs.emptyUrl(t));
  const device = await c.deviceToken();
  const { admin } = c;
  const group = (raw: string | Buffer, type?: string) =>
    c.send('POST', '/api/v1/admin/groups', { raw, token: admin, type });

  await t.test('event data nested 10,000 deep is refused before it is parsed', async () => {
    const deep = '['.repeat(10_000) + ']'.repeat(10_000);
    const raw = JSON.stringify({ events: [update('x')] }).replace('"x"', deep);
    const res = await c.send('POST', '/api/v1/device/reports', { raw, token: device });
    assertRefused(res, 400, 'ERR_BODY_TOO_DEEP', /nested deeper than 32 levels/);
  });

  await t.test('a body 33 levels deep is refused, 32 levels is parsed', async () => {
    const nested = (depth: number) => '{"name":'.repeat(depth) + '"x"' + '}'.repeat(depth);
    assertRefused(await group(nested(33)), 400, 'ERR_BODY_TOO_DEEP');
    // Parsed, then refused by the schema: it is not a group.
    assertRefused(await group(nested(32)), 400, 'ERR_VALIDATION', /^body\.name/);
    // Brackets inside strings are text, not nesting.
    const res = await group(JSON.stringify({ name: 'brackets', description: '['.repeat(100) }));
    assert.equal(res.status, 201, JSON.stringify(res.body));
  });

  await t.test('an empty or malformed body is a 400 saying so', async () => {
    assertRefused(await group(''), 400, 'ERR_VALIDATION', /^body: empty/);
    for (const raw of ['{', '{"name":"x",}', 'nul', '[1,]', Buffer.from([0xff, 0xfe])]) {
      assertRefused(await group(raw), 400, 'ERR_VALIDATION', /^body: not valid JSON/);
    }
    assertRefused(
      await group('{"__proto__":{"x":1}}'),
      400,
      'ERR_VALIDATION',
      /^body: not valid JSON/,
    );
  });

  await t.test('a body of a type the route does not take is a 415', async () => {
    const body = JSON.stringify({ name: 'typed' });
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml']) {
      assertRefused(await group(body, type), 415, 'ERR_UNSUPPORTED_MEDIA_TYPE');
    }
    // Where raw bytes have a parser (the images routes), JSON routes still take only JSON…
    const publisher = await c.send('POST', '/api/v1/admin/publishers', {
      raw: Buffer.from(body),
      type: 'application/octet-stream',
      token: admin,
    });
    assertRefused(publisher, 415, 'ERR_UNSUPPORTED_MEDIA_TYPE', /takes JSON/);
    // … and uploads take only bytes.
    const chunk = await c.send('PUT', `/api/v1/admin/store/chunks/${'ab'.repeat(32)}`, {
      body: { bytes: 'no' },
      token: admin,
    });
    assertRefused(chunk, 415, 'ERR_UNSUPPORTED_MEDIA_TYPE', /application\/octet-stream/);
  });

  await t.test('an unknown route answers with the one error body', async () => {
    assertRefused(await c.send('GET', '/api/v1/admin/nothing-here'), 404, 'ERR_NOT_FOUND');
    const long = await c.send('PATCH', `/api/v1/admin/users/${'x'.repeat(3000)}`, {
      body: { role: 'viewer' },
      token: admin,
    });
    assertRefused(long, 414, 'ERR_VALIDATION', /exceeding the max param length/);
  });
});

test('the CLI prints no control character a device put in its name', async (t) => {
  const c = await startTestCenter(t, `sqlite:${join(await tempDir(t), 'center.db')}`, {
    start: Date.now(),
  });
  const url = await c.app.listen({ host: '127.0.0.1', port: 0 });
  const token = await insertSession(c.db, 'root', 'admin', Date.now());
  const groupId = await insertGroup(c.db, 'office\u001b[31m', Date.now());
  // As a Center from before names were checked holds it: straight into the database.
  const hostile = 'pc\u001b]0;pwned\u0007\u001b[2J\r\u009b1m\u202e';
  const id = newId(Date.now());
  await c.db
    .insertInto('devices')
    .values({
      id,
      name: hostile,
      public_key: 'unused',
      inventory: '{}',
      group_id: groupId,
      current_versions: '{}',
      state: 'active',
      enrolled_at: Date.now(),
      last_contact_at: Date.now(),
      updated_at: Date.now(),
    })
    .execute();
  const env = { BULKHEAD_CENTER: url, BULKHEAD_TOKEN: token, BULKHEAD_CREDENTIALS: '/nonexistent' };
  // Every control character but the newlines that end lines, and the override.
  // eslint-disable-next-line no-control-regex
  const controls = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/;

  for (const args of [
    ['devices', 'list'],
    ['devices', 'show', id],
  ]) {
    const r = await runCli(args, { env });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, controls, `${args.join(' ')}: ${JSON.stringify(r.stdout)}`);
    assert.ok(r.stdout.includes('pc\\u001b]0;pwned\\u0007\\u001b[2J\\u000d\\u009b1m\\u202e'));
  }
  const table = await runCli(['devices', 'list'], { env });
  assert.equal(table.stdout.trimEnd().split('\n').length, 2, 'a header and one row');
  const shown = await runCli(['devices', 'show', id], { env });
  assert.ok(shown.stdout.includes('office\\u001b[31m'), shown.stdout);

  // --json stays exact: the name as Center holds it.
  const json = await runCli(['devices', 'list', '--json'], { env });
  assert.equal(JSON.parse(json.stdout).devices[0].name, hostile);
});
