// A device that reports too much (one wrote 86 MB in 7 s) is held to its quota of events and
// bytes per minute: 429 with Retry-After, nothing past the quota stored, other devices unhurt.
import assert from 'node:assert/strict';
import { encryptionKeyPem } from '../../../test/support/keys.ts';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import type { TestContext } from 'node:test';
import { pino } from 'pino';
import { forEachDatabase } from '../../../test/support/databases.ts';
import { sampleEvent, updateEvent } from '../../../test/support/events.ts';
import { insertGroup } from '../../../test/support/center.ts';
import { tempDir } from '../../../test/support/fixtures.ts';
import {
  ErrorBodySchema,
  eventBytes,
  MAX_EVENT_BYTES,
  MAX_REPORT_BYTES,
  MAX_REPORT_EVENTS,
  REPORT_ENVELOPE_BYTES,
  type NewEvent,
} from '../../protocol/index.ts';
import { generateKeyPair, signPayload } from '../../signing/index.ts';
import { resolveConfig } from '../config.ts';
import { newId, type CenterDatabase } from '../db/index.ts';
import { createCenterApp } from '../server.ts';
import { createEnrolmentToken, DEVICE_SIGNATURE_DOMAINS as DOMAINS } from './index.ts';

const START = Date.parse('2026-03-02T09:15:00Z');

forEachDatabase('device report quota', async (t, databases) => {
  const database: CenterDatabase = await databases.open(t);
  const { db } = database;
  const pair = generateKeyPair();
  const signingKey = { key: createPrivateKey(pair.privatePem), keyid: pair.keyid };

  /** A Center on the default settings, its clock standing still until a test moves it. */
  async function setup(st: TestContext) {
    const config = resolveConfig([{ dataDir: await tempDir(st), listen: '127.0.0.1:0' }]);
    const clock = { ms: START };
    const app = await createCenterApp({
      config,
      log: pino({ level: 'silent' }),
      database,
      signingKey,
      now: () => new Date(clock.ms),
    });
    st.after(() => app.close());
    const groupId = await insertGroup(db, `group-${newId(clock.ms)}`, clock.ms);

    /** An enrolled device and a bearer token of its own. */
    async function device() {
      const { token } = await createEnrolmentToken(db, {
        groupId,
        uses: 1,
        expiresAt: new Date(clock.ms + 3_600_000),
        now: new Date(clock.ms),
      });
      const { privateKey, publicKey } = generateKeyPairSync('ed25519');
      const enrolled = await app.inject({
        method: 'POST',
        url: '/api/v1/device/enrol',
        payload: {
          token,
          publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
          encryptionKey: encryptionKeyPem(),
          inventory: { hostname: 'pc-quota' },
        },
      });
      assert.equal(enrolled.statusCode, 200, enrolled.body);
      const deviceId: string = enrolled.json().deviceId;
      const challenge: string = (
        await app.inject({
          method: 'POST',
          url: '/api/v1/device/auth/challenge',
          payload: { deviceId },
        })
      ).json().challenge;
      const signature = signPayload(DOMAINS.deviceAuth, challenge, privateKey);
      const answer = await app.inject({
        method: 'POST',
        url: '/api/v1/device/auth/token',
        payload: { deviceId, challenge, signature },
      });
      assert.equal(answer.statusCode, 200, answer.body);
      const auth = { authorization: `Bearer ${answer.json().token}` };
      let seq = 0;
      return {
        deviceId,
        /** Reports `count` new events made by `make` (ids never repeat). */
        report: (count: number, make: (i: number) => NewEvent) =>
          app.inject({
            method: 'POST',
            url: '/api/v1/device/reports',
            headers: auth,
            payload: {
              events: Array.from({ length: count }, (_, i) => ({
                id: `evt-${seq++}`,
                at: START,
                ...make(i),
              })),
            },
          }),
        stored: async () =>
          Number(
            (
              await db
                .selectFrom('device_events')
                .select((eb) => eb.fn.countAll().as('n'))
                .where('device_id', '=', deviceId)
                .executeTakeFirstOrThrow()
            ).n,
          ),
      };
    }
    return { app, clock, device };
  }

  const progress = (i: number) => sampleEvent('download-progress', `v${i}`);

  await t.test(
    'events per minute: past the quota, 429 with Retry-After and nothing stored',
    async (st) => {
      const s = await setup(st);
      const a = await s.device();
      const b = await s.device();
      // 2,000 a minute by default: four full batches at once, then the fifth is refused whole.
      for (let i = 0; i < 4; i++) {
        const ok = await a.report(MAX_REPORT_EVENTS, progress);
        assert.equal(ok.statusCode, 200, ok.body);
      }
      const refused = await a.report(MAX_REPORT_EVENTS, progress);
      assert.equal(refused.statusCode, 429, refused.body);
      // Room for 500 events refills in 15 s.
      assert.equal(refused.headers['retry-after'], '15');
      const { error } = ErrorBodySchema.parse(refused.json());
      assert.equal(error.code, 'ERR_RATE_LIMITED');
      assert.equal(error.retryAfterMs, 15_000);
      assert.match(error.message, /report quota \(2000 events and 4194304 bytes a minute\)/);
      assert.equal(await a.stored(), 4 * MAX_REPORT_EVENTS, 'nothing past the quota is stored');
      // Another device has a quota of its own.
      assert.equal((await b.report(10, progress)).statusCode, 200);
      // Not quite refilled: still refused; then, at Retry-After, accepted.
      s.clock.ms += 14_000;
      assert.equal((await a.report(MAX_REPORT_EVENTS, progress)).statusCode, 429);
      s.clock.ms += 1_000;
      const later = await a.report(MAX_REPORT_EVENTS, progress);
      assert.equal(later.statusCode, 200, later.body);
      assert.deepEqual(later.json(), { accepted: MAX_REPORT_EVENTS, duplicates: 0 });
      assert.equal(await a.stored(), 5 * MAX_REPORT_EVENTS);
    },
  );

  await t.test('bytes per minute: large events reach the quota first', async (st) => {
    const s = await setup(st);
    const a = await s.device();
    // A reason of control characters is six bytes a character as JSON: ~12 KB an event.
    const large = (i: number) =>
      updateEvent('failed', { versionId: `v${i}`, reason: '\u0001'.repeat(2000) });
    const size = eventBytes({ id: 'evt-1000', at: START, ...large(0) }) + 1;
    assert.ok(size > 12_000 && size <= MAX_EVENT_BYTES);
    const perBatch = Math.floor((MAX_REPORT_BYTES - REPORT_ENVELOPE_BYTES) / size);
    // 4 MiB a minute by default: four batches of ~1 MB fit, not a fifth.
    for (let i = 0; i < 4; i++) {
      const ok = await a.report(perBatch, large);
      assert.equal(ok.statusCode, 200, ok.body);
    }
    const refused = await a.report(perBatch, large);
    assert.equal(refused.statusCode, 429, refused.body);
    const retryAfter = Number(refused.headers['retry-after']);
    assert.ok(retryAfter >= 1 && retryAfter <= 15, `Retry-After ${retryAfter}`);
    assert.equal(await a.stored(), 4 * perBatch);
    s.clock.ms += retryAfter * 1000;
    assert.equal((await a.report(perBatch, large)).statusCode, 200);
  });

  await t.test('an event over MAX_EVENT_BYTES is refused with 400 naming it', async (st) => {
    const s = await setup(st);
    const a = await s.device();
    // Every field within its own bound, the whole over MAX_EVENT_BYTES: names at their 128
    // characters, and a reason of control characters (six bytes each as JSON).
    const name = 'n'.repeat(128);
    const id = 'i'.repeat(64);
    const volume = { role: 'app', image: name, imageId: id, version: name, versionId: id };
    const huge = (): NewEvent => ({
      type: 'rolled-back',
      data: {
        profileId: id,
        image: name,
        version: name,
        versionId: id,
        volumes: Array.from({ length: 65 }, () => ({ ...volume, role: 'app', isNew: true })),
        reason: '\u0001'.repeat(2000),
        runningVersionId: null,
      },
    });
    assert.ok(eventBytes({ id: 'evt-0', at: START, ...huge() }) > MAX_EVENT_BYTES);
    const res = await a.report(1, huge);
    assert.equal(res.statusCode, 400, res.body);
    const { error } = ErrorBodySchema.parse(res.json());
    assert.equal(error.code, 'ERR_VALIDATION');
    assert.match(error.message, /events\.0: the event is \d+ bytes as JSON, more than the 32768/);
    assert.equal(await a.stored(), 0);
  });
});
