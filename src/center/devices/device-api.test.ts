import assert from 'node:assert/strict';
import { encryptionKeyPem } from '../../../test/support/keys.ts';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import type { TestContext } from 'node:test';
import { pino } from 'pino';
import { updateEvent } from '../../../test/support/events.ts';
import { tempDir } from '../../../test/support/fixtures.ts';
import { forEachDatabase } from '../../../test/support/databases.ts';
import {
  generateKeyPair,
  keyIdOf,
  signPayload,
  verifyPayload,
  canonicalJson,
} from '../../signing/index.ts';
import { resolveConfig } from '../config.ts';
import { type CenterDatabase, newId } from '../db/index.ts';
import { createLocalPushBus } from '../push.ts';
import { createCenterApp } from '../server.ts';
import { createEnrolmentToken, DEVICE_SIGNATURE_DOMAINS as DOMAINS } from './index.ts';
import { Writable } from 'node:stream';

const START = Date.parse('2026-03-02T09:15:00Z');
const MINUTE = 60_000;

function deviceKeys() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privateKey,
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    rawBase64: publicKey.export({ type: 'spki', format: 'der' }).subarray(-32).toString('base64'),
  };
}

const inventory = {
  hostname: 'pc-0042',
  cpu: { model: 'Intel Core i5-8250U', cores: 4 },
  memoryBytes: 16 * 2 ** 30,
  disks: [{ name: 'nvme0n1', sizeBytes: 512 * 10 ** 9 }],
  firmware: { vendor: 'LENOVO', version: 'N23ET80W' },
};

forEachDatabase('device API', async (t, databases) => {
  const database: CenterDatabase = await databases.open(t);
  const { db } = database;
  const dir = await tempDir(t);
  const config = resolveConfig([{ dataDir: dir, listen: '127.0.0.1:0' }]);
  const center = generateKeyPair();
  const signingKey = { key: createPrivateKey(center.privatePem), keyid: center.keyid };
  const centerPublic = createPublicKey(center.publicPem);

  /** A Center app of its own (own clock and rate limiter) over the shared database. */
  async function setup(st: TestContext, log = pino({ level: 'silent' })) {
    const clock = { ms: START };
    const now = () => new Date(clock.ms);
    const push = createLocalPushBus();
    const app = await createCenterApp({
      config,
      log,
      database,
      signingKey,
      now,
      push,
    });
    st.after(() => app.close());
    const groupId = newId(clock.ms);
    await db
      .insertInto('device_groups')
      .values({
        id: groupId,
        name: `group-${groupId}`,
        description: '',
        created_at: clock.ms,
        updated_at: clock.ms,
      })
      .execute();
    const token = (uses = 1, ttlMs = 60 * MINUTE) =>
      createEnrolmentToken(db, {
        groupId,
        uses,
        expiresAt: new Date(clock.ms + ttlMs),
        now: now(),
      }).then((r) => r.token);
    const enrol = (body: Record<string, unknown>) =>
      app.inject({
        method: 'POST',
        url: '/api/v1/device/enrol',
        payload: { encryptionKey: encryptionKeyPem(), ...body },
      });

    /** A freshly enrolled device with a bearer token. */
    async function device() {
      const keys = deviceKeys();
      const res = await enrol({ token: await token(), publicKey: keys.publicPem, inventory });
      assert.equal(res.statusCode, 200, res.body);
      const deviceId: string = res.json().deviceId;
      // The device pins Center's key from here on.
      assert.equal(res.json().centerKey.keyid, signingKey.keyid);
      assert.equal(keyIdOf(createPublicKey(res.json().centerKey.publicKey)), signingKey.keyid);
      const bearer = await login(deviceId, keys.privateKey);
      return { deviceId, keys, bearer, auth: { authorization: `Bearer ${bearer}` } };
    }

    async function challenge(deviceId: string): Promise<string> {
      const res = await app.inject({
        method: 'POST',
        url: '/api/v1/device/auth/challenge',
        payload: { deviceId },
      });
      assert.equal(res.statusCode, 200, res.body);
      return res.json().challenge;
    }

    function exchange(deviceId: string, ch: string, signature: string) {
      return app.inject({
        method: 'POST',
        url: '/api/v1/device/auth/token',
        payload: { deviceId, challenge: ch, signature },
      });
    }

    async function login(deviceId: string, key: KeyObject): Promise<string> {
      const ch = await challenge(deviceId);
      const res = await exchange(deviceId, ch, signPayload(DOMAINS.deviceAuth, ch, key));
      assert.equal(res.statusCode, 200, res.body);
      return res.json().token;
    }

    return { app, clock, push, groupId, token, enrol, device, challenge, exchange, login };
  }

  function assertError(res: { statusCode: number; json(): unknown }, status: number, code: string) {
    assert.equal(res.statusCode, status);
    const body = res.json() as { error: { code: string; message: string } };
    assert.equal(body.error.code, code, body.error.message);
    assert.equal(typeof body.error.message, 'string');
    assert.doesNotMatch(JSON.stringify(body), /\n\s+at /, 'no stack trace');
    return body.error.message;
  }

  await t.test('enrol: a token, a key and an inventory make a device in the group', async (st) => {
    const s = await setup(st);
    const keys = deviceKeys();
    const token = await s.token(2);
    const res = await s.enrol({
      token,
      publicKey: keys.publicPem,
      inventory,
      name: 'Reception',
    });
    assert.equal(res.statusCode, 200, res.body);
    const { deviceId } = res.json();
    const row = await db
      .selectFrom('devices')
      .selectAll()
      .where('id', '=', deviceId)
      .executeTakeFirstOrThrow();
    assert.equal(row.group_id, s.groupId);
    assert.equal(row.public_key, keys.rawBase64);
    assert.equal(row.name, 'Reception');
    assert.equal(row.state, 'active');
    assert.deepEqual(JSON.parse(row.inventory), inventory);
    const stored = await db.selectFrom('enrolment_tokens').selectAll().execute();
    assert.ok(stored.every((r) => r.token_hash !== token && !r.token_hash.includes(token)));
    const mine = stored.find((r) => r.group_id === s.groupId)!;
    assert.equal(mine.uses_left, 1);

    // A raw base64 key works as well; the name defaults to the host name.
    const raw = deviceKeys();
    const second = await s.enrol({ token, publicKey: raw.rawBase64, inventory });
    assert.equal(second.statusCode, 200, second.body);
    const named = await db
      .selectFrom('devices')
      .select('name')
      .where('id', '=', second.json().deviceId)
      .executeTakeFirstOrThrow();
    assert.equal(named.name, 'pc-0042');
  });

  await t.test('enrol refuses reused, exhausted, expired and unknown tokens', async (st) => {
    const s = await setup(st);
    const once = await s.token(1);
    assert.equal(
      (await s.enrol({ token: once, publicKey: deviceKeys().publicPem, inventory })).statusCode,
      200,
    );
    const reused = await s.enrol({ token: once, publicKey: deviceKeys().publicPem, inventory });
    assert.match(assertError(reused, 401, 'ERR_ENROLMENT_TOKEN_REFUSED'), /used up/);

    const twice = await s.token(2);
    for (let i = 0; i < 2; i++) {
      const ok = await s.enrol({ token: twice, publicKey: deviceKeys().publicPem, inventory });
      assert.equal(ok.statusCode, 200);
    }
    const exhausted = await s.enrol({
      token: twice,
      publicKey: deviceKeys().publicPem,
      inventory,
    });
    assert.match(assertError(exhausted, 401, 'ERR_ENROLMENT_TOKEN_REFUSED'), /used up/);

    const soon = await s.token(5, 10 * MINUTE);
    s.clock.ms += 10 * MINUTE;
    const expired = await s.enrol({ token: soon, publicKey: deviceKeys().publicPem, inventory });
    assert.match(assertError(expired, 401, 'ERR_ENROLMENT_TOKEN_REFUSED'), /expired/);

    const unknown = await s.enrol({
      token: 'A'.repeat(43),
      publicKey: deviceKeys().publicPem,
      inventory,
    });
    assert.match(assertError(unknown, 401, 'ERR_ENROLMENT_TOKEN_REFUSED'), /not known/);
  });

  await t.test('a one-time token enrols exactly one of many concurrent devices', async (st) => {
    const s = await setup(st);
    const token = await s.token(1);
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        s.enrol({ token, publicKey: deviceKeys().publicPem, inventory }),
      ),
    );
    assert.deepEqual(
      results.map((r) => r.statusCode).sort(),
      [200, 401, 401, 401, 401, 401, 401, 401],
    );
    const enrolled = await db
      .selectFrom('devices')
      .select('id')
      .where('group_id', '=', s.groupId)
      .execute();
    assert.equal(enrolled.length, 1);
  });

  await t.test('enrol refuses malformed keys and a key already enrolled', async (st) => {
    const s = await setup(st);
    const token = await s.token(10);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 })
      .publicKey.export({ type: 'spki', format: 'pem' })
      .toString();
    for (const publicKey of ['not a key', 'AAAA', rsa, Buffer.alloc(31).toString('base64')]) {
      assertError(await s.enrol({ token, publicKey, inventory }), 400, 'ERR_KEY_INVALID');
    }
    const keys = deviceKeys();
    assert.equal((await s.enrol({ token, publicKey: keys.publicPem, inventory })).statusCode, 200);
    const again = await s.enrol({ token, publicKey: keys.rawBase64, inventory });
    assertError(again, 409, 'ERR_DEVICE_EXISTS');
    // Neither the bad keys nor the duplicate spent a use.
    const row = await db
      .selectFrom('enrolment_tokens')
      .select('uses_left')
      .where('group_id', '=', s.groupId)
      .executeTakeFirstOrThrow();
    assert.equal(row.uses_left, 9);
  });

  await t.test('enrol attempts are rate-limited per address, by the injected clock', async (st) => {
    const s = await setup(st);
    const body = { token: 'x', publicKey: 'y', inventory };
    for (let i = 0; i < 20; i++) assert.notEqual((await s.enrol(body)).statusCode, 429);
    const limited = await s.enrol(body);
    assertError(limited, 429, 'ERR_RATE_LIMITED');
    assert.equal(limited.headers['retry-after'], '60');
    const other = await s.app.inject({
      method: 'POST',
      url: '/api/v1/device/enrol',
      payload: body,
      remoteAddress: '10.1.2.3',
    });
    assert.notEqual(other.statusCode, 429);
    s.clock.ms += MINUTE;
    assert.notEqual((await s.enrol(body)).statusCode, 429);
  });

  await t.test(
    'a signed challenge buys a token; wrong, stale or foreign ones do not',
    async (st) => {
      const s = await setup(st);
      const a = await s.device();
      const b = await s.device();
      assert.ok(a.bearer.length > 0);

      const ch = await s.challenge(a.deviceId);
      const stranger = generateKeyPairSync('ed25519').privateKey;
      const wrongKey = await s.exchange(
        a.deviceId,
        ch,
        signPayload(DOMAINS.deviceAuth, ch, stranger),
      );
      assertError(wrongKey, 401, 'ERR_UNAUTHENTICATED');
      // The device's own key, but signing under another domain.
      const wrongDomain = await s.exchange(
        a.deviceId,
        ch,
        signPayload(DOMAINS.desiredState, ch, a.keys.privateKey),
      );
      assertError(wrongDomain, 401, 'ERR_UNAUTHENTICATED');
      assertError(await s.exchange(a.deviceId, ch, 'AAAA'), 401, 'ERR_UNAUTHENTICATED');

      // B's challenge, signed by A, presented for A or for B.
      const forB = await s.challenge(b.deviceId);
      const signedByA = signPayload(DOMAINS.deviceAuth, forB, a.keys.privateKey);
      assertError(
        await s.exchange(a.deviceId, forB, signedByA),
        401,
        'ERR_DEVICE_CHALLENGE_INVALID',
      );
      assertError(await s.exchange(b.deviceId, forB, signedByA), 401, 'ERR_UNAUTHENTICATED');

      // A challenge Center did not sign.
      const forged = `${Buffer.from(canonicalJson({ sub: a.deviceId, exp: START * 2, nonce: 'x' })).toString('base64url')}.${'A'.repeat(86)}`;
      assertError(
        await s.exchange(
          a.deviceId,
          forged,
          signPayload(DOMAINS.deviceAuth, forged, a.keys.privateKey),
        ),
        401,
        'ERR_DEVICE_CHALLENGE_INVALID',
      );

      const stale = await s.challenge(a.deviceId);
      s.clock.ms += 61_000;
      const late = await s.exchange(
        a.deviceId,
        stale,
        signPayload(DOMAINS.deviceAuth, stale, a.keys.privateKey),
      );
      assert.match(assertError(late, 401, 'ERR_DEVICE_CHALLENGE_INVALID'), /expired/);

      // An unknown device id gets the same answer as a wrong signature.
      const ghost = newId(s.clock.ms);
      const ghostCh = await s.challenge(ghost);
      assertError(
        await s.exchange(ghost, ghostCh, signPayload(DOMAINS.deviceAuth, ghostCh, stranger)),
        401,
        'ERR_UNAUTHENTICATED',
      );
    },
  );

  await t.test('device routes need a valid, unexpired token', async (st) => {
    const s = await setup(st);
    const a = await s.device();
    const get = (headers: Record<string, string>) =>
      s.app.inject({ url: '/api/v1/device/desired-state', headers });
    assertError(await get({}), 401, 'ERR_UNAUTHENTICATED');
    assertError(await get({ authorization: 'Basic eDp5' }), 401, 'ERR_UNAUTHENTICATED');
    // A token's body altered to name another device no longer verifies.
    const [, sig] = a.bearer.split('.');
    const body = Buffer.from(
      canonicalJson({ sub: newId(s.clock.ms), iat: s.clock.ms, exp: s.clock.ms + MINUTE }),
    ).toString('base64url');
    assertError(await get({ authorization: `Bearer ${body}.${sig}` }), 401, 'ERR_UNAUTHENTICATED');
    // A challenge is signed by Center too, but is not a token.
    const ch = await s.challenge(a.deviceId);
    assertError(await get({ authorization: `Bearer ${ch}` }), 401, 'ERR_UNAUTHENTICATED');
    const report = await s.app.inject({
      method: 'POST',
      url: '/api/v1/device/reports',
      payload: {
        events: [{ id: 'e1', at: START, ...updateEvent('staged', { versionId: 'v' }) }],
      },
    });
    assertError(report, 401, 'ERR_UNAUTHENTICATED');

    assert.equal((await get(a.auth)).statusCode, 200);
    s.clock.ms += 15 * MINUTE;
    assert.match(assertError(await get(a.auth), 401, 'ERR_UNAUTHENTICATED'), /expired/);
  });

  await t.test(
    'desired state: signed, 304 on its ETag, new ETag when a command is queued',
    async (st) => {
      const s = await setup(st);
      const a = await s.device();
      const b = await s.device();
      const url = '/api/v1/device/desired-state';
      const first = await s.app.inject({ url, headers: a.auth });
      assert.equal(first.statusCode, 200, first.body);
      const etag = first.headers.etag as string;
      assert.match(etag, /^"[0-9a-f]{40}"$/);
      const doc = first.json();
      assert.equal(doc.state.deviceId, a.deviceId);
      assert.deepEqual(doc.state.commands, []);
      assert.deepEqual(doc.state.vms, []);
      assert.ok(doc.state.expiresAt > s.clock.ms);
      assert.equal(doc.keyid, signingKey.keyid);
      assert.ok(
        verifyPayload(DOMAINS.desiredState, canonicalJson(doc.state), doc.signature, centerPublic),
      );
      const tampered = {
        ...doc.state,
        commands: [{ id: 'x', kind: 'unlock', profileId: null, issuedAt: 1 }],
      };
      assert.ok(
        !verifyPayload(DOMAINS.desiredState, canonicalJson(tampered), doc.signature, centerPublic),
      );

      s.clock.ms += 30_000;
      const again = await s.app.inject({ url, headers: { ...a.auth, 'if-none-match': etag } });
      assert.equal(again.statusCode, 304);
      assert.equal(again.body, '');
      assert.equal(again.headers.etag, etag);
      // Unchanged, the document is byte for byte the same (a strong ETag).
      const full = await s.app.inject({ url, headers: a.auth });
      assert.equal(full.body, first.body);
      assert.equal(
        (await s.app.inject({ url, headers: { ...a.auth, 'if-none-match': '"other"' } }))
          .statusCode,
        200,
      );

      s.clock.ms += 1000;
      const commandId = newId(s.clock.ms);
      await db
        .insertInto('commands')
        .values({
          id: commandId,
          device_id: a.deviceId,
          kind: 'lock',
          profile_id: null,
          state: 'pending',
          result: null,
          created_by: null,
          created_at: s.clock.ms,
          updated_at: s.clock.ms,
        })
        .execute();
      // The 304 path answers from memory: until the change is announced on the push bus (as
      // every writer of Center does after committing), the device is still told "unchanged".
      const cached = await s.app.inject({ url, headers: { ...a.auth, 'if-none-match': etag } });
      assert.equal(cached.statusCode, 304, 'answered without reading the database');
      s.push.notify([a.deviceId]);
      const changed = await s.app.inject({ url, headers: { ...a.auth, 'if-none-match': etag } });
      assert.equal(changed.statusCode, 200);
      assert.notEqual(changed.headers.etag, etag);
      const next = changed.json();
      assert.ok(next.state.revision > doc.state.revision);
      assert.deepEqual(next.state.commands, [
        { id: commandId, kind: 'lock', profileId: null, issuedAt: s.clock.ms },
      ]);
      assert.ok(
        verifyPayload(
          DOMAINS.desiredState,
          canonicalJson(next.state),
          next.signature,
          centerPublic,
        ),
      );
      // B sees none of A's commands, and cannot ask for A's state.
      const ofB = await s.app.inject({ url, headers: b.auth });
      assert.deepEqual(ofB.json().state.commands, []);
      assert.equal(ofB.json().state.deviceId, b.deviceId);
      const foreign = await s.app.inject({
        url: `${url}?deviceId=${a.deviceId}`,
        headers: b.auth,
      });
      assertError(foreign, 403, 'ERR_FORBIDDEN');

      // A killed device gets nothing more: no state, no new token, only the signed notice of
      // its kill (src/center/devices/cut-off.test.ts has the whole story). Written straight
      // to the database, unannounced: the desired state's own read refuses it all the same.
      await db
        .updateTable('devices')
        .set({ state: 'killed' })
        .where('id', '=', b.deviceId)
        .execute();
      const killed = await s.app.inject({ url, headers: b.auth });
      assertError(killed, 403, 'ERR_DEVICE_KILLED');
      const notice = killed.json().error.details.notice;
      assert.equal(notice.notice.deviceId, b.deviceId);
      assert.ok(
        verifyPayload(
          DOMAINS.killNotice,
          canonicalJson(notice.notice),
          notice.signature,
          centerPublic,
        ),
      );
      const ch = await s.challenge(b.deviceId);
      const signed = signPayload(DOMAINS.deviceAuth, ch, b.keys.privateKey);
      const noToken = await s.exchange(b.deviceId, ch, signed);
      assertError(noToken, 403, 'ERR_DEVICE_KILLED');
      assert.equal(noToken.json().token, undefined);
      // A deleted device's token still verifies for its last minutes, but finds nothing.
      await db.deleteFrom('devices').where('id', '=', b.deviceId).execute();
      assertError(await s.app.inject({ url, headers: b.auth }), 401, 'ERR_UNAUTHENTICATED');
      const report = await s.app.inject({
        method: 'POST',
        url: '/api/v1/device/reports',
        headers: b.auth,
        payload: {
          events: [{ id: 'late', at: START, ...updateEvent('healthy', { versionId: 'v' }) }],
        },
      });
      assertError(report, 401, 'ERR_UNAUTHENTICATED');
    },
  );

  await t.test('reports: a replayed batch is counted once and contact is noted', async (st) => {
    const s = await setup(st);
    const a = await s.device();
    const b = await s.device();
    const events = [
      { id: 'evt-1', at: START - 5000, ...updateEvent('download-progress', { versionId: 'v1' }) },
      { id: 'evt-2', at: START - 4000, ...updateEvent('staged', { versionId: 'v2' }) },
      { id: 'evt-3', at: START - 3000, ...updateEvent('healthy', { versionId: 'v3' }) },
    ];
    const rolledBack = {
      id: 'evt-4',
      at: START,
      ...updateEvent('rolled-back', { versionId: 'v4', reason: 'x' }),
    };
    const post = (auth: Record<string, string>, payload: object) =>
      s.app.inject({ method: 'POST', url: '/api/v1/device/reports', headers: auth, payload });
    s.clock.ms += 5000;
    const first = await post(a.auth, { events });
    assert.equal(first.statusCode, 200, first.body);
    assert.deepEqual(first.json(), { accepted: 3, duplicates: 0 });
    const replay = await post(a.auth, { events: [...events, events[0]] });
    assert.deepEqual(replay.json(), { accepted: 0, duplicates: 4 });
    const more = await post(a.auth, {
      events: [events[2], rolledBack],
    });
    assert.deepEqual(more.json(), { accepted: 1, duplicates: 1 });
    // Event ids are the device's own: B may use the same ones.
    assert.deepEqual((await post(b.auth, { events })).json(), { accepted: 3, duplicates: 0 });

    const stored = await db
      .selectFrom('device_events')
      .selectAll()
      .where('device_id', '=', a.deviceId)
      .orderBy('event_id')
      .execute();
    assert.deepEqual(
      stored.map((e) => [e.event_id, e.type, e.occurred_at, JSON.parse(e.payload)]),
      [...events, rolledBack].map((e) => [e.id, e.type, e.at, e.data]),
    );
    const device = await db
      .selectFrom('devices')
      .select('last_contact_at')
      .where('id', '=', a.deviceId)
      .executeTakeFirstOrThrow();
    assert.equal(device.last_contact_at, s.clock.ms);
  });

  await t.test('bad bodies are 400s naming the field, never stack traces', async (st) => {
    const s = await setup(st);
    const a = await s.device();
    const token = await s.token(5);
    const keys = deviceKeys();
    const unknownTop = await s.enrol({ token, publicKey: keys.publicPem, inventory, colour: 1 });
    assert.match(assertError(unknownTop, 400, 'ERR_VALIDATION'), /colour/);
    const unknownInner = await s.enrol({
      token,
      publicKey: keys.publicPem,
      inventory: { ...inventory, gpu: 'x' },
    });
    assert.match(assertError(unknownInner, 400, 'ERR_VALIDATION'), /inventory.*gpu/);
    const tooManyDisks = await s.enrol({
      token,
      publicKey: keys.publicPem,
      inventory: { ...inventory, disks: Array(33).fill({ name: 'sda', sizeBytes: 1 }) },
    });
    assert.match(assertError(tooManyDisks, 400, 'ERR_VALIDATION'), /inventory\.disks/);
    const noToken = await s.enrol({ publicKey: keys.publicPem, inventory });
    assert.match(assertError(noToken, 400, 'ERR_VALIDATION'), /token/);
    const notJson = await s.app.inject({
      method: 'POST',
      url: '/api/v1/device/enrol',
      headers: { 'content-type': 'application/json' },
      payload: '{"token":',
    });
    assertError(notJson, 400, 'ERR_VALIDATION');
    const huge = await s.app.inject({
      method: 'POST',
      url: '/api/v1/device/enrol',
      payload: { token, publicKey: keys.publicPem, inventory, name: 'x'.repeat(70_000) },
    });
    assertError(huge, 413, 'ERR_OBJECT_TOO_LARGE');

    const post = (payload: object) =>
      s.app.inject({ method: 'POST', url: '/api/v1/device/reports', headers: a.auth, payload });
    const event = (i: number) => ({
      id: `e${i}`,
      type: 'vm-state',
      at: START,
      data: { vm: 'work', profileId: null, state: 'running' },
    });
    const tooMany = await post({ events: Array.from({ length: 501 }, (_, i) => event(i)) });
    assert.match(assertError(tooMany, 400, 'ERR_VALIDATION'), /events/);
    const bigData = await post({
      events: [{ ...event(1), data: { ...event(1).data, reason: 'x'.repeat(9000) } }],
    });
    assert.match(assertError(bigData, 400, 'ERR_VALIDATION'), /events\.0\.data\.reason/);
    const unknownField = await post({
      events: [{ ...event(1), data: { ...event(1).data, blob: 'x' } }],
    });
    assert.match(assertError(unknownField, 400, 'ERR_VALIDATION'), /blob/);
    const unknownType = await post({ events: [{ ...event(1), type: 'telemetry' }] });
    assert.match(assertError(unknownType, 400, 'ERR_VALIDATION'), /events\.0\.type/);
    const missing = await post({
      events: [{ id: 'h', at: START, type: 'healthy', data: { versionId: 'v' } }],
    });
    assert.match(
      assertError(missing, 400, 'ERR_VALIDATION'),
      /events\.0\.data\.(profileId|volumes|image)/,
    );
    const extra = await post({ events: [{ ...event(1), severity: 'high' }] });
    assert.match(assertError(extra, 400, 'ERR_VALIDATION'), /severity/);
    const badId = await post({ events: [{ ...event(1), id: '../x y' }] });
    assert.match(assertError(badId, 400, 'ERR_VALIDATION'), /events\.0\.id/);
    assertError(await post({ events: [] }), 400, 'ERR_VALIDATION');
    // 500 is the limit, and it is accepted.
    const full = await post({ events: Array.from({ length: 500 }, (_, i) => event(i)) });
    assert.deepEqual(full.json(), { accepted: 500, duplicates: 0 });
    const query = await s.app.inject({
      url: '/api/v1/device/desired-state?debug=1',
      headers: a.auth,
    });
    assert.match(assertError(query, 400, 'ERR_VALIDATION'), /debug/);
  });

  await t.test(
    'enrolment tokens: shown once, refused with no uses or a past expiry',
    async (st) => {
      const s = await setup(st);
      const now = new Date(s.clock.ms);
      const made = await createEnrolmentToken(db, {
        groupId: s.groupId,
        uses: 3,
        expiresAt: new Date(s.clock.ms + MINUTE),
        now,
      });
      assert.match(made.token, /^bhe_[A-Za-z0-9_-]{43}$/);
      const row = await db
        .selectFrom('enrolment_tokens')
        .selectAll()
        .where('id', '=', made.id)
        .executeTakeFirstOrThrow();
      assert.equal(row.uses_left, 3);
      assert.match(row.token_hash, /^[0-9a-f]{64}$/);
      for (const bad of [
        { uses: 0, expiresAt: new Date(s.clock.ms + MINUTE) },
        { uses: 1.5, expiresAt: new Date(s.clock.ms + MINUTE) },
        { uses: 1, expiresAt: now },
      ]) {
        await assert.rejects(
          createEnrolmentToken(db, { groupId: s.groupId, now, ...bad }),
          RangeError,
        );
      }
    },
  );

  await t.test(
    'tokens never reach the logs; the routes are in the OpenAPI document',
    async (st) => {
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString());
          done();
        },
      });
      const s = await setup(st, pino({ level: 'trace' }, sink));
      const token = await s.token(1);
      const keys = deviceKeys();
      const res = await s.enrol({ token, publicKey: keys.publicPem, inventory });
      const deviceId: string = res.json().deviceId;
      const bearer = await s.login(deviceId, keys.privateKey);
      const auth = { authorization: `Bearer ${bearer}` };
      await s.app.inject({ url: '/api/v1/device/desired-state', headers: auth });
      await s.app.inject({ url: '/api/v1/device/desired-state?x=1', headers: auth });
      const logs = lines.join('');
      assert.match(logs, /device enrolled/);
      for (const secret of [token, bearer, bearer.split('.')[1]!]) {
        assert.ok(!logs.includes(secret), 'a token was logged');
      }
      const doc = (await s.app.inject({ url: '/api/openapi.json' })).json();
      for (const path of ['enrol', 'auth/challenge', 'auth/token', 'reports', 'desired-state']) {
        assert.ok(doc.paths[`/api/v1/device/${path}`], path);
      }
    },
  );
});
