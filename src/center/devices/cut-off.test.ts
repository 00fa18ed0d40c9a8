// Devices that must be cut off (issue 10): a killed device gets no token, no desired state and
// no data key from the moment it is killed, acknowledged or not, only a signed notice of its
// kill; a killed or retired device's tokens die with it on every device route and every
// replica; its open push channel closes.
import assert from 'node:assert/strict';
import { rawX25519 } from '../../signing/index.ts';
import { TEST_DEVICE_KEYS } from '../../../test/support/keys.ts';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import {
  CENTER_TARGETS,
  insertGroup,
  insertImage,
  insertProfile,
  insertSession,
  insertVersion,
  startTestCenter,
} from '../../../test/support/center.ts';
import { updateEvent } from '../../../test/support/events.ts';
import { tempDir } from '../../../test/support/fixtures.ts';
import { startPostgres } from '../../../test/support/postgres.ts';
import { waitFor, withTimeout } from '../../../test/support/wait.ts';
import {
  DEVICE_SIGNATURE_DOMAINS as DOMAINS,
  killResultSigned,
  SignedKillNoticeSchema,
  type SignedKillNotice,
} from '../../protocol/index.ts';
import { canonicalJson, generateKeyPair, signPayload, verifyPayload } from '../../signing/index.ts';
import { resolveConfig } from '../config.ts';
import { migrateToLatest, newId, openDatabase, type Database } from '../db/index.ts';
import { createLocalPushBus } from '../push.ts';
import { createPgPushBus } from '../push-pg.ts';
import { createCenterApp, type CenterApp } from '../server.ts';
import { DeviceCredentials } from './credentials.ts';
import type { Kysely } from 'kysely';

const START = Date.UTC(2026, 2, 2, 9, 0);
const MINUTE = 60_000;
const D = '/api/v1/device';

interface Answer {
  statusCode: number;
  body: string;
  headers: Record<string, unknown>;
  json(): unknown;
}

/** The refusal's code, checked to be a 403 with no stack trace. */
function refusal(res: Answer): { code: string; message: string; details?: { notice?: unknown } } {
  assert.equal(res.statusCode, 403, res.body);
  assert.doesNotMatch(res.body, /\n\s+at /, 'no stack trace');
  return (res.json() as { error: { code: string; message: string } }).error;
}

/**
 * The signed kill notice a refusal carries, checked: ERR_DEVICE_KILLED, signed by Center's key
 * under its own domain, naming the device, and holding no key and no VM.
 */
function killNotice(res: Answer, deviceId: string, centerKey: KeyObject): SignedKillNotice {
  const error = refusal(res);
  assert.equal(error.code, 'ERR_DEVICE_KILLED', error.message);
  const signed = SignedKillNoticeSchema.parse(error.details?.notice);
  assert.ok(
    verifyPayload(DOMAINS.killNotice, canonicalJson(signed.notice), signed.signature, centerKey),
    'the notice is signed by Center under the kill-notice domain',
  );
  assert.ok(
    !verifyPayload(DOMAINS.desiredState, canonicalJson(signed.notice), signed.signature, centerKey),
    'it cannot pass for a desired state',
  );
  assert.equal(signed.notice.deviceId, deviceId);
  assert.doesNotMatch(res.body, /dataKey|"vms"|"token"/, 'no key, no VM, no token');
  return signed;
}

/** A device row with a real key pair, holding `profiles`. */
async function insertKeyedDevice(
  db: Kysely<Database>,
  groupId: string,
  profiles: readonly string[],
  at: number,
) {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const id = newId(at);
  await db
    .insertInto('devices')
    .values({
      id,
      name: `pc-${id.slice(-6)}`,
      public_key: publicKey
        .export({ type: 'spki', format: 'der' })
        .subarray(-32)
        .toString('base64'),
      encryption_key: rawX25519(TEST_DEVICE_KEYS.publicKey).toString('base64'),
      inventory: '{}',
      group_id: groupId,
      current_versions: '{}',
      state: 'active',
      enrolled_at: at,
      last_contact_at: at,
      updated_at: at,
    })
    .execute();
  for (const profile of profiles) {
    await db.insertInto('device_profiles').values({ device_id: id, profile_id: profile }).execute();
  }
  return { id, key: privateKey };
}

/** Device calls against one Center app, and its admin API as an operator. */
function deviceCalls(app: CenterApp, credentials: DeviceCredentials, opsToken: string) {
  const ops = { authorization: `Bearer ${opsToken}` };
  return {
    /** A token as Center issues it to the device now (it lives 15 minutes). */
    bearer: (deviceId: string) => ({
      authorization: `Bearer ${credentials.issueToken(deviceId).token}`,
    }),
    desired: (auth: object, etag?: string) =>
      app.inject({
        url: `${D}/desired-state`,
        headers: { ...auth, ...(etag === undefined ? {} : { 'if-none-match': etag }) },
      }),
    report: (auth: object, events: object[]) =>
      app.inject({
        method: 'POST',
        url: `${D}/reports`,
        headers: { ...auth },
        payload: { events },
      }),
    /** Opens the push channel; resolves once Center ends it. */
    push: (auth: object) => app.inject({ url: `${D}/push`, headers: { ...auth } }),
    async challenge(deviceId: string): Promise<string> {
      const res = await app.inject({
        method: 'POST',
        url: `${D}/auth/challenge`,
        payload: { deviceId },
      });
      assert.equal(res.statusCode, 200, res.body);
      return (res.json() as { challenge: string }).challenge;
    },
    async token(deviceId: string, key: KeyObject) {
      const challenge = await this.challenge(deviceId);
      const signature = signPayload(DOMAINS.deviceAuth, challenge, key);
      return app.inject({
        method: 'POST',
        url: `${D}/auth/token`,
        payload: { deviceId, challenge, signature },
      });
    },
    async killResult(
      deviceId: string,
      key: KeyObject,
      event: object,
      domain: string = DOMAINS.killResult,
    ) {
      const challenge = await this.challenge(deviceId);
      const body = { deviceId, challenge, event } as Parameters<typeof killResultSigned>[0];
      const signature = signPayload(domain, canonicalJson(killResultSigned(body)), key);
      return app.inject({
        method: 'POST',
        url: `${D}/kill-result`,
        payload: { ...body, signature },
      });
    },
    async kill(deviceId: string): Promise<string> {
      const res = await app.inject({
        method: 'POST',
        url: `/api/v1/admin/devices/${deviceId}/commands`,
        headers: ops,
        payload: { kind: 'kill' },
      });
      assert.equal(res.statusCode, 201, res.body);
      return (res.json() as { id: string }).id;
    },
    async retire(deviceId: string): Promise<void> {
      const res = await app.inject({
        method: 'DELETE',
        url: `/api/v1/admin/devices/${deviceId}`,
        headers: ops,
      });
      assert.equal(res.statusCode, 204, res.body);
    },
    async commands(deviceId: string) {
      const res = await app.inject({
        url: `/api/v1/admin/devices/${deviceId}/commands`,
        headers: ops,
      });
      assert.equal(res.statusCode, 200, res.body);
      return (res.json() as { commands: { id: string; state: string; result: unknown }[] })
        .commands;
    },
  };
}

/** A Center over a fresh database with a work profile whose data is encrypted. */
async function center(t: TestContext, url: string, queries?: { count: number }) {
  const push = createLocalPushBus();
  const c = await startTestCenter(t, url, {
    start: START,
    push,
    ...(queries === undefined
      ? {}
      : {
          databaseLog: {
            debug: () => void (queries.count += 1),
            warn: () => void (queries.count += 1),
          },
        }),
  });
  const opsToken = await insertSession(c.db, 'ops', 'operator', START);
  const group = await insertGroup(c.db, 'office', START);
  const image = await insertImage(c.db, 'debian-work', 'system', START);
  const v1 = await insertVersion(c.db, image, '1', START, { release: true });
  const v2 = await insertVersion(c.db, image, '2', START);
  const work = await insertProfile(
    c.db,
    { name: 'work', systemImageId: image, policy: { encryptData: true } },
    START,
  );
  const credentials = new DeviceCredentials(c.signingKey, c.now);
  const calls = deviceCalls(c.app, credentials, opsToken);
  return {
    ...c,
    ...calls,
    bus: push,
    opsToken,
    group,
    catalog: { image, v1, v2, work },
    centerKey: createPublicKey(c.signingKey.key),
    device: () => insertKeyedDevice(c.db, group, [work], c.clock.ms),
  };
}

for (const target of CENTER_TARGETS) {
  test(`devices cut off on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test(
      'a killed device gets nothing from the moment it is killed, only a signed notice',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const pc = await c.device();
        const other = await c.device();
        const auth = c.bearer(pc.id);
        const before = await c.desired(auth);
        assert.equal(before.statusCode, 200, before.body);
        assert.match(
          before.body,
          /"wrappedKeys":\{"[^"]+":"bhwk1\./,
          'the work VM gets its wrapped data key while active',
        );

        // The PC holds its push channel; the kill closes it at once.
        const stream = c.push(auth);
        await waitFor('the push channel to open', () => c.bus.connections() === 1);
        c.clock.ms += MINUTE;
        const killId = await c.kill(pc.id);
        const closed = await withTimeout('the killed device’s push channel to close', stream);
        assert.match(closed.body, /event: desired-state-changed/, 'it was told first');
        assert.equal(c.bus.connections(), 0);

        // Not acknowledged, and the token it holds has 14 minutes to live: no desired state
        // (no data key), no new token; each answer is the signed notice of the kill.
        const notice = killNotice(await c.desired(auth), pc.id, c.centerKey);
        assert.deepEqual(notice.notice, {
          deviceId: pc.id,
          killedAt: c.clock.ms,
          issuedAt: c.clock.ms,
          commandId: killId,
        });
        killNotice(await c.desired(auth, before.headers.etag as string), pc.id, c.centerKey);
        const token = await c.token(pc.id, pc.key);
        assert.equal(killNotice(token, pc.id, c.centerKey).notice.commandId, killId);
        const report = await c.report(auth, [
          { id: 'late', at: c.clock.ms, ...updateEvent('healthy', { versionId: c.catalog.v1 }) },
        ]);
        assert.equal(refusal(report).code, 'ERR_DEVICE_KILLED');
        assert.equal(refusal(await c.push(auth)).code, 'ERR_DEVICE_KILLED');
        const stored = await c.db
          .selectFrom('device_events')
          .select('event_id')
          .where('device_id', '=', pc.id)
          .execute();
        assert.deepEqual(stored, [], 'nothing it sent was taken');
        // Another device is not touched.
        assert.equal((await c.desired(c.bearer(other.id))).statusCode, 200);

        // It answers its kill through the one route that takes it, proved by its key.
        const result = {
          id: `command-result-${killId}`,
          type: 'command-result',
          at: c.clock.ms,
          data: { commandId: killId, kind: 'kill', ok: true, message: 'every VM is stopped' },
        };
        const stranger = generateKeyPairSync('ed25519').privateKey;
        assert.equal((await c.killResult(pc.id, stranger, result)).statusCode, 401);
        assert.equal((await c.killResult(other.id, other.key, result)).statusCode, 400);
        assert.equal(
          (await c.killResult(pc.id, pc.key, result, DOMAINS.deviceAuth)).statusCode,
          401,
          'a signature under another domain does not count',
        );
        const lock = { ...result, data: { ...result.data, kind: 'lock' } };
        const notKill = await c.killResult(pc.id, pc.key, lock);
        assert.equal(notKill.statusCode, 400, notKill.body);
        assert.match(notKill.body, /body\.event\.data\.kind/);
        const acked = await c.killResult(pc.id, pc.key, result);
        assert.equal(acked.statusCode, 200, acked.body);
        assert.deepEqual(acked.json(), { accepted: 1, duplicates: 0 });
        const [kill] = await c.commands(pc.id);
        assert.deepEqual([kill?.id, kill?.state], [killId, 'done']);
        assert.deepEqual(kill?.result, { ok: true, message: 'every VM is stopped' });
        const again = await c.killResult(pc.id, pc.key, { ...result, id: 'another-id' });
        assert.deepEqual(again.json(), { accepted: 0, duplicates: 1 }, 'one result, once');

        // Acknowledged, it still gets nothing but the notice.
        killNotice(await c.token(pc.id, pc.key), pc.id, c.centerKey);
        killNotice(await c.desired(auth), pc.id, c.centerKey);
      },
    );

    await t.test(
      "a retired device's token dies with it: its late report halts no rollout",
      async (t) => {
        const c = await center(t, await newUrl(t));
        const pc = await c.device();
        const auth = c.bearer(pc.id);
        const rollout = await c.app.inject({
          method: 'POST',
          url: '/api/v1/admin/rollouts',
          headers: { authorization: `Bearer ${c.opsToken}` },
          payload: {
            imageVersionId: c.catalog.v2,
            groupId: c.group,
            phases: [100],
            failureThreshold: 0,
            minReports: 1,
            start: true,
          },
        });
        assert.equal(rollout.statusCode, 201, rollout.body);
        const rolloutId = (rollout.json() as { id: string }).id;
        const stream = c.push(auth);
        await waitFor('the push channel to open', () => c.bus.connections() === 1);

        await c.retire(pc.id);
        await withTimeout('the retired device’s push channel to close', stream);
        const failed = {
          id: 'failed-after-retire',
          at: c.clock.ms,
          ...updateEvent('failed', {
            versionId: c.catalog.v2,
            profileId: c.catalog.work,
            reason: 'disk full',
            volumes: [
              { role: 'system', versionId: c.catalog.v2, imageId: c.catalog.image, isNew: true },
            ],
          }),
        };
        const report = await c.report(auth, [failed]);
        assert.equal(refusal(report).code, 'ERR_DEVICE_RETIRED', report.body);
        const state = await c.app.inject({
          url: `/api/v1/admin/rollouts/${rolloutId}`,
          headers: { authorization: `Bearer ${c.opsToken}` },
        });
        assert.equal((state.json() as { state: string }).state, 'running', 'not halted');
        assert.equal(refusal(await c.desired(auth)).code, 'ERR_DEVICE_RETIRED');
        assert.equal(refusal(await c.push(auth)).code, 'ERR_DEVICE_RETIRED');
        const token = await c.token(pc.id, pc.key);
        const error = refusal(token);
        assert.equal(error.code, 'ERR_DEVICE_RETIRED');
        assert.match(error.message, /retired.*enrol it again/);

        // Killed, then retired: when the lost PC comes back it still learns it was killed.
        const lost = await c.device();
        const killId = await c.kill(lost.id);
        await c.retire(lost.id);
        const back = await c.token(lost.id, lost.key);
        assert.equal(killNotice(back, lost.id, c.centerKey).notice.commandId, killId);
      },
    );

    await t.test('the steady 304 poll reads nothing; a kill still reaches it', async (t) => {
      const queries = { count: 0 };
      const c = await center(t, await newUrl(t), queries);
      const pc = await c.device();
      const auth = c.bearer(pc.id);
      const first = await c.desired(auth);
      assert.equal(first.statusCode, 200, first.body);
      const etag = first.headers.etag as string;
      assert.equal((await c.desired(auth, etag)).statusCode, 304);
      queries.count = 0;
      for (let i = 0; i < 5; i++) assert.equal((await c.desired(auth, etag)).statusCode, 304);
      assert.equal(queries.count, 0, 'no query on the steady path');
      await c.kill(pc.id);
      killNotice(await c.desired(auth, etag), pc.id, c.centerKey);
    });
  });
}

/** One Center replica on the shared PostgreSQL database, with the relaying push bus. */
async function replica(
  t: TestContext,
  url: string,
  signingKey: { key: KeyObject; keyid: string },
  clock: { ms: number },
) {
  const database = await openDatabase({ url });
  const push = createPgPushBus({ connectionString: url });
  const app = await createCenterApp({
    config: resolveConfig([{ dataDir: await tempDir(t), listen: '127.0.0.1:0' }]),
    log: pino({ level: 'silent' }),
    database,
    signingKey,
    now: () => new Date(clock.ms),
    push,
  });
  t.after(async () => {
    await app.close();
    await push.close();
    await database.close();
  });
  await push.ready;
  return { app, push, db: database.db };
}

test('replicas on PostgreSQL: a kill or retirement through one reaches the caches and push channels of the others', async (t) => {
  const url = await startPostgres(t);
  // The replicas belong to a subtest: its hooks close them before the parent's stop the server.
  await t.test('through one replica, seen by the others', async (t) => {
    const setup = await openDatabase({ url });
    await migrateToLatest(setup.db);
    await setup.close();
    const pair = generateKeyPair();
    const signingKey = { key: createPrivateKey(pair.privatePem), keyid: pair.keyid };
    const clock = { ms: START };
    const a = await replica(t, url, signingKey, clock);
    const b = await replica(t, url, signingKey, clock);
    const opsToken = await insertSession(a.db, 'ops', 'operator', START);
    const group = await insertGroup(a.db, 'office', START);
    const credentials = new DeviceCredentials(signingKey, () => new Date(clock.ms));
    const onA = deviceCalls(a.app, credentials, opsToken);
    const onB = deviceCalls(b.app, credentials, opsToken);
    const centerKey = createPublicKey(signingKey.key);

    for (const cut of ['kill', 'retire'] as const) {
      const pc = await insertKeyedDevice(a.db, group, [], clock.ms);
      const auth = onB.bearer(pc.id);
      // Replica B knows the device in good standing and answers its polls from memory.
      const first = await onB.desired(auth);
      assert.equal(first.statusCode, 200, first.body);
      const etag = first.headers.etag as string;
      assert.equal((await onB.desired(auth, etag)).statusCode, 304);
      const stream = onB.push(auth);
      await waitFor('the push channel on B', () => b.push.connections() === 1);

      // Through replica A.
      if (cut === 'kill') await onA.kill(pc.id);
      else await onA.retire(pc.id);
      // The notification crossed to B, which closed the channel and forgot the device.
      await withTimeout(`B to close the channel after the ${cut} on A`, stream);
      const polled = await onB.desired(auth, etag);
      if (cut === 'kill') killNotice(polled, pc.id, centerKey);
      else assert.equal(refusal(polled).code, 'ERR_DEVICE_RETIRED');
      const report = await onB.report(auth, [
        { id: `late-${cut}`, at: clock.ms, ...updateEvent('healthy', { versionId: 'v' }) },
      ]);
      assert.match(refusal(report).code, /^ERR_DEVICE_(KILLED|RETIRED)$/);
    }
  });
});
