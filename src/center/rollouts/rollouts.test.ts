import assert from 'node:assert/strict';
import { unwrapDataKey, wrappedKeyDigest } from '../../signing/index.ts';
import { TEST_DEVICE_KEYS } from '../../../test/support/keys.ts';
import { createPublicKey, hkdfSync, randomUUID } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { sql } from 'kysely';
import { pino } from 'pino';
import { updateEvent, type UpdateFields } from '../../../test/support/events.ts';
import {
  CENTER_TARGETS,
  insertApp,
  insertDevices,
  insertGroup,
  insertImage,
  insertProfile,
  insertSession,
  insertVersion,
  startTestCenter,
} from '../../../test/support/center.ts';
import {
  SignedDesiredStateSchema,
  type DesiredVm,
  type UpdateEventType,
} from '../../protocol/index.ts';
import { canonicalJson, verifyPayload } from '../../signing/index.ts';
import { newId } from '../db/index.ts';
import { releaseVersion, retireVersion } from '../images/images.ts';
import { DeviceCredentials, DOMAINS } from '../devices/credentials.ts';
import { createLocalPushBus, type PushBus } from '../push.ts';
import { bucketOf, firstPhaseOf, isInPhase, phaseBound } from './bucket.ts';
import { createRolloutScheduler, SCHEDULER_LOCK } from './scheduler.ts';

const START = Date.UTC(2026, 2, 2, 9, 0);
const MINUTE = 60_000;

test('buckets are deterministic, cumulative and proportional', () => {
  const rolloutId = newId(START);
  const ids = Array.from({ length: 10_000 }, () => newId(START));
  const phases = [1, 10, 50, 100];
  assert.equal(bucketOf(rolloutId, ids[0]!), bucketOf(rolloutId, ids[0]!));
  for (const id of ids) {
    const bucket = bucketOf(rolloutId, id);
    assert.ok(bucket >= 0 && bucket < 10_000);
    const first = firstPhaseOf(bucket, phases);
    phases.forEach((_, k) => assert.equal(isInPhase(bucket, phases, k), k >= first, id));
  }
  for (const p of [1, 10, 50]) {
    const share = ids.filter((id) => bucketOf(rolloutId, id) < phaseBound(p)).length / ids.length;
    assert.ok(Math.abs(share - p / 100) <= 0.02, `${p}% phase took ${share * 100}%`);
  }
  // Another rollout draws another sample.
  const other = newId(START);
  const first = ids.filter((id) => bucketOf(rolloutId, id) < 1000);
  const again = first.filter((id) => bucketOf(other, id) < 1000);
  assert.ok(again.length < first.length / 2);
  // A last phase below 100 leaves the rest out.
  assert.equal(isInPhase(9_999, [10, 90], 1), false);
  assert.equal(firstPhaseOf(9_999, [10, 90]), -1);
});

/** A push bus that also records what it was told. */
function recordingBus(): PushBus & { told: string[][] } {
  const bus = createLocalPushBus();
  const told: string[][] = [];
  return {
    ...bus,
    told,
    notify(ids) {
      told.push(ids === 'all' ? ['all'] : [...ids]);
      bus.notify(ids);
    },
  };
}

/** A Center over a fresh database with a catalog: images, versions, apps, profiles. */
async function center(t: TestContext, url: string) {
  const push = recordingBus();
  const c = await startTestCenter(t, url, { start: START, logLevel: 'info', push });
  const { app, db, database, clock, now, log, signingKey } = c;
  const scheduler = createRolloutScheduler({
    db,
    dialect: database.dialect,
    push,
    now,
    log,
  });
  const tokens = {
    ops: await insertSession(db, 'ops', 'operator', clock.ms),
    eve: await insertSession(db, 'eve', 'viewer', clock.ms),
  };

  const at = clock.ms;
  const systemImage = await insertImage(db, 'debian-work', 'system', at);
  const v1 = await insertVersion(db, systemImage, '1.0', at, { release: true });
  const v2 = await insertVersion(db, systemImage, '2.0', at);
  const v3 = await insertVersion(db, systemImage, '3.0', at);
  const draft = await insertVersion(db, systemImage, '4.0-rc', at, { state: 'draft' });
  const officeImage = await insertImage(db, 'office', 'app', at);
  const office1 = await insertVersion(db, officeImage, '2026.1', at, { release: true });
  const cadImage = await insertImage(db, 'cad', 'app', at);
  const cad1 = await insertVersion(db, cadImage, '7', at, { release: true });
  const office = await insertApp(db, 'office', officeImage, at);
  const cad = await insertApp(db, 'cad', cadImage, at);
  const paint = await insertApp(db, 'paint', cadImage, at);
  const work = await insertProfile(
    db,
    {
      name: 'work',
      systemImageId: systemImage,
      policy: { network: 'restricted', encryptData: true },
      healthCheck: { timeoutSeconds: 90, command: ['/usr/libexec/ok'], screen: true },
      leaseDays: 30,
      apps: [
        { appId: office, mode: 'default' },
        { appId: cad, mode: 'optional' },
        { appId: paint, mode: 'optional' },
      ],
    },
    at,
  );
  const personal = await insertProfile(db, { name: 'personal', systemImageId: systemImage }, at);
  const credentials = new DeviceCredentials(signingKey, now);

  async function desiredState(deviceId: string, etag?: string) {
    const res = await app.inject({
      method: 'GET',
      url: '/api/v1/device/desired-state',
      headers: {
        authorization: `Bearer ${credentials.issueToken(deviceId).token}`,
        ...(etag === undefined ? {} : { 'if-none-match': etag }),
      },
    });
    assert.ok(res.statusCode === 200 || res.statusCode === 304, res.body);
    return {
      status: res.statusCode,
      etag: res.headers.etag as string,
      body: res.statusCode === 200 ? SignedDesiredStateSchema.parse(res.json()) : undefined,
    };
  }

  /** The system version id the device's `work` VM should run now. */
  async function systemVersionOf(deviceId: string) {
    const { body } = await desiredState(deviceId);
    return body!.state.vms.find((vm) => vm.name === 'work')?.system.versionId;
  }

  async function report(deviceId: string, type: UpdateEventType, fields: UpdateFields) {
    const event = { id: randomUUID(), at: clock.ms, ...updateEvent(type, fields) };
    const res = await app.inject({
      method: 'POST',
      url: '/api/v1/device/reports',
      headers: { authorization: `Bearer ${credentials.issueToken(deviceId).token}` },
      payload: { events: [event] },
    });
    assert.equal(res.statusCode, 200, res.body);
  }

  async function admin(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    as: 'ops' | 'eve' | null = 'ops',
  ) {
    const res = await app.inject({
      method,
      // A path of its own (`/api/…`), else one under the rollouts.
      url: path.startsWith('/api/') ? path : `/api/v1/admin/rollouts${path}`,
      headers: as === null ? {} : { authorization: `Bearer ${tokens[as]}` },
      ...(body === undefined ? {} : { payload: body as object }),
    });
    return { status: res.statusCode, body: res.body ? res.json() : null };
  }

  return {
    app,
    db,
    database,
    clock,
    push,
    scheduler,
    signingKey,
    logs: c.logs,
    catalog: { systemImage, v1, v2, v3, draft, office, cad, paint, work, personal, office1, cad1 },
    desiredState,
    systemVersionOf,
    report,
    admin,
  };
}

for (const target of CENTER_TARGETS) {
  test(`rollouts on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test('the desired state lists the VMs of the profiles, signed', async (t) => {
      const c = await center(t, await newUrl(t));
      const { db, catalog } = c;
      const group = await insertGroup(db, 'office', c.clock.ms);
      const [device] = await insertDevices(
        db,
        group,
        1,
        [catalog.work, catalog.personal],
        c.clock.ms,
      );
      await db
        .insertInto('device_apps')
        .values({ device_id: device!, profile_id: catalog.work, app_id: catalog.cad })
        .execute();
      // A profile whose image has no version at all is left out, with one warning.
      const bare = await insertImage(db, 'bare', 'system', c.clock.ms);
      const kiosk = await insertProfile(db, { name: 'kiosk', systemImageId: bare }, c.clock.ms);
      await db
        .insertInto('device_profiles')
        .values({ device_id: device!, profile_id: kiosk })
        .execute();
      c.clock.ms += MINUTE;

      const first = await c.desiredState(device!);
      assert.equal(first.status, 200);
      const signed = first.body!;
      const centerPublic = createPublicKey(c.signingKey.key);
      assert.ok(
        verifyPayload(
          DOMAINS.desiredState,
          canonicalJson(signed.state),
          signed.signature,
          centerPublic,
        ),
      );
      const { state } = signed;
      assert.deepEqual(
        state.vms.map((vm) => vm.name),
        ['personal', 'work'],
      );
      assert.ok(state.mirrors.length >= 1 && state.mirrors[0]!.endsWith('/store/'));
      const work = state.vms.find((vm) => vm.name === 'work')!;
      assert.equal(work.profileId, catalog.work);
      assert.deepEqual(
        {
          image: work.system.image,
          versionId: work.system.versionId,
          version: work.system.version,
        },
        { image: 'debian-work', versionId: catalog.v1, version: '1.0' },
      );
      assert.match(work.system.manifestId, /^[0-9a-f]{64}$/);
      // The default app and the optional one chosen, not the one not chosen; by name.
      assert.deepEqual(
        work.apps.map((a) => [a.name, a.appId, a.versionId]),
        [
          ['cad', catalog.cad, catalog.cad1],
          ['office', catalog.office, catalog.office1],
        ],
      );
      assert.equal(work.policy.network, 'restricted');
      assert.equal(work.policy.encryptData, true);
      // The screen check travels to Engine with the rest of the health check.
      assert.deepEqual(work.healthCheck, {
        timeoutSeconds: 90,
        command: ['/usr/libexec/ok'],
        screen: true,
      });
      assert.deepEqual(work.resources, { cpus: 2, memoryMib: 2048 });
      assert.equal(work.resetPolicy, 'on-update');
      assert.deepEqual(work.lease, { days: 30, expiresAt: state.generatedAt + 30 * 86_400_000 });
      const ikm = c.signingKey.key.export({ type: 'pkcs8', format: 'der' });
      const expected = Buffer.from(
        hkdfSync(
          'sha256',
          ikm,
          Buffer.alloc(0),
          `bulkhead data-key v1:${device}:${catalog.work}`,
          32,
        ),
      ).toString('base64');
      // Only wrapped to the device's encryption key, bound to device and profile; beside the
      // signature, vouched for by the digest the signed body carries.
      const wrapped = signed.wrappedKeys?.[catalog.work];
      assert.ok(wrapped, 'the work VM gets its key wrapped');
      assert.equal(work.wrappedDataKeyDigest, wrappedKeyDigest(wrapped));
      assert.ok(!JSON.stringify(state).includes(wrapped), 'the signed body has only the digest');
      assert.ok(!JSON.stringify(signed).includes(expected), 'never the key in the clear');
      assert.equal(
        unwrapDataKey(TEST_DEVICE_KEYS.privateKey, wrapped, {
          deviceId: device!,
          profileId: catalog.work,
        }).toString('base64'),
        expected,
      );
      const personal = state.vms.find((vm) => vm.name === 'personal')!;
      assert.equal(personal.wrappedDataKeyDigest, undefined);
      assert.deepEqual(Object.keys(signed.wrappedKeys ?? {}), [catalog.work]);
      assert.deepEqual(personal.apps, []);
      assert.equal(personal.policy.network, 'nat');

      // 304 while nothing changes; the kiosk warning was logged once, and no key was logged.
      assert.equal((await c.desiredState(device!, first.etag)).status, 304);
      const again = await c.desiredState(device!);
      assert.equal(
        c
          .logs()
          .split('\n')
          .filter((l) => l.includes(kiosk)).length,
        1,
      );
      assert.ok(!c.logs().includes(expected));
      assert.equal(
        again.body!.wrappedKeys?.[catalog.work],
        wrapped,
        'the same wrapped key in every document (stable ETags)',
      );

      // A device enrolled before encryption keys gets no key, and the reason.
      const [old] = await insertDevices(db, group, 1, [catalog.work], c.clock.ms);
      await db
        .updateTable('devices')
        .set({ encryption_key: null })
        .where('id', '=', old!)
        .execute();
      const oldWork = (await c.desiredState(old!)).body!.state.vms.find(
        (vm: DesiredVm) => vm.name === 'work',
      ) as DesiredVm;
      assert.equal(oldWork.wrappedDataKeyDigest, undefined);
      assert.match(oldWork.keyUnavailable ?? '', /enrolled before devices had encryption keys/);
      assert.match(oldWork.keyUnavailable ?? '', /bulkhead engine enroll --force/);

      // Releasing another version changes the ETag and the document.
      c.clock.ms += MINUTE;
      await db
        .updateTable('images')
        .set({ release_version_id: catalog.v2, updated_at: c.clock.ms })
        .where('id', '=', catalog.systemImage)
        .execute();
      // As the release route does after committing: the ETags devices hold may all be stale.
      c.push.notify('all');
      const released = await c.desiredState(device!, first.etag);
      assert.equal(released.status, 200);
      assert.notEqual(released.etag, first.etag);
      assert.ok(released.body!.state.revision > state.revision);
      assert.equal(
        released.body!.state.vms.find((vm) => vm.name === 'work')!.system.versionId,
        catalog.v2,
      );
      assert.equal((await c.desiredState(device!, released.etag)).status, 304);
    });

    await t.test('a rollout goes phase by phase, then completes', async (t) => {
      const c = await center(t, await newUrl(t));
      const { db, catalog } = c;
      const group = await insertGroup(db, 'office', c.clock.ms);
      const other = await insertGroup(db, 'lab', c.clock.ms);
      const devices = await insertDevices(db, group, 30, [catalog.work], c.clock.ms);
      const outsider = (await insertDevices(db, other, 1, [catalog.work], c.clock.ms))[0]!;
      c.clock.ms += MINUTE;

      // Validation: a draft version, an unknown group, no target, bad phases, unknown field.
      const bad = [
        [{ imageVersionId: catalog.draft, groupId: group }, /body\.imageVersionId: .*draft/],
        [{ imageVersionId: catalog.v2, groupId: newId(START) }, /body\.groupId/],
        [{ imageVersionId: catalog.v2 }, /groupId or profileId/],
        [{ imageVersionId: catalog.v2, groupId: group, phases: [10, 5] }, /increasing/],
        [{ imageVersionId: catalog.v2, groupId: group, phases: [0, 100] }, /phases/],
        [{ imageVersionId: catalog.v2, groupId: group, soakMinuts: 5 }, /soakMinuts/],
      ] as const;
      for (const [body, message] of bad) {
        const res = await c.admin('POST', '', body);
        assert.equal(res.status, 400, JSON.stringify(body));
        assert.equal(res.body.error.code, 'ERR_VALIDATION');
        assert.match(res.body.error.message, message);
      }
      // Roles: a viewer reads but cannot create; no token is 401.
      assert.equal(
        (await c.admin('POST', '', { imageVersionId: catalog.v2, groupId: group }, 'eve')).status,
        403,
      );
      assert.equal(
        (await c.admin('POST', '', { imageVersionId: catalog.v2, groupId: group }, null)).status,
        401,
      );

      const revisions = new Map<string, number>();
      const etags = new Map<string, string>();
      const versions = new Map<string, string | undefined>();
      const workSystem = (body: {
        state: { vms: { name: string; system: { versionId: string } }[] };
      }) => body.state.vms.find((vm) => vm.name === 'work')?.system.versionId;
      /** Each device's revision, ETag and version now, before the next phase change. */
      async function snapshot() {
        for (const id of devices) {
          const { etag, body } = await c.desiredState(id);
          etags.set(id, etag);
          revisions.set(id, body!.state.revision);
          versions.set(id, workSystem(body!));
        }
      }
      await snapshot();
      const created = await c.admin('POST', '', {
        imageVersionId: catalog.v2,
        groupId: group,
        phases: [5, 20, 50, 100],
        soakMinutes: 60,
        failureThreshold: 0.5,
        minReports: 1,
        start: true,
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const rollout = created.body;
      assert.equal(rollout.state, 'running');
      assert.equal(rollout.totals.targeted, 30);

      const bucket = new Map(devices.map((id) => [id, bucketOf(rollout.id, id)]));
      const phases = [5, 20, 50, 100];
      let included = new Set<string>();
      /**
       * Every device's desired state matches phase `k`; only the devices it added got a new
       * document (and a push), the others still get 304 for the ETag they had.
       */
      async function expectPhase(k: number) {
        const now = new Set(devices.filter((id) => bucket.get(id)! < phaseBound(phases[k]!)));
        const added = [...now].filter((id) => !included.has(id));
        const told = c.push.told.flat();
        for (const id of devices) {
          const cached = await c.desiredState(id, etags.get(id));
          const isAdded = added.includes(id);
          assert.equal(cached.status, isAdded ? 200 : 304, `phase ${k}, added: ${isAdded}`);
          assert.equal(told.includes(id), isAdded);
          if (isAdded) {
            assert.ok(cached.body!.state.revision > revisions.get(id)!);
            etags.set(id, cached.etag);
            versions.set(id, workSystem(cached.body!));
          }
          assert.equal(versions.get(id), now.has(id) ? catalog.v2 : catalog.v1);
        }
        c.push.told.length = 0;
        // The devices added report, and are healthy on v2.
        for (const id of added) {
          await c.report(id, 'staged', { versionId: catalog.v2 });
          await c.report(id, 'healthy', { profileId: catalog.work, versionId: catalog.v2 });
        }
        included = now;
        return added;
      }

      await expectPhase(0);
      assert.equal(await c.systemVersionOf(outsider), catalog.v1);
      // Soak not over: nothing moves.
      c.clock.ms += 30 * MINUTE;
      assert.deepEqual((await c.scheduler.tick()).advanced, []);
      c.clock.ms += 30 * MINUTE;
      await snapshot();
      assert.deepEqual((await c.scheduler.tick()).advanced, [rollout.id]);
      await expectPhase(1);
      c.clock.ms += 60 * MINUTE;
      await snapshot();
      assert.deepEqual((await c.scheduler.tick()).advanced, [rollout.id]);
      const added = await expectPhase(2);

      // A healthy report records what the device runs without changing its desired state.
      const sample = added[0]!;
      const row = await db
        .selectFrom('devices')
        .selectAll()
        .where('id', '=', sample)
        .executeTakeFirstOrThrow();
      assert.deepEqual(JSON.parse(row.current_versions), {
        [catalog.work]: { system: catalog.v2, apps: {} },
      });
      assert.equal((await c.desiredState(sample, etags.get(sample))).status, 304);

      // Promote: the next phase now, soak or not.
      await snapshot();
      const promoted = await c.admin('POST', `/${rollout.id}/promote`);
      assert.equal(promoted.status, 200, JSON.stringify(promoted.body));
      assert.equal(promoted.body.currentPhase, 3);
      await expectPhase(3);
      const detail = await c.admin('GET', `/${rollout.id}`, undefined, 'eve');
      assert.equal(detail.status, 200);
      assert.equal(detail.body.totals.targeted, 30);
      assert.equal(detail.body.totals.included, 30);
      assert.equal(detail.body.totals.healthy, 30);
      assert.deepEqual(
        detail.body.phaseCounts.map(
          (p: { targeted: number; healthy: number }) => p.targeted === p.healthy,
        ),
        [true, true, true, true],
      );
      // After the last phase's soak: completed, and it keeps applying.
      c.clock.ms += 60 * MINUTE;
      assert.deepEqual((await c.scheduler.tick()).completed, [rollout.id]);
      assert.equal(await c.systemVersionOf(devices[0]!), catalog.v2);
      const listed = await c.admin('GET', '?state=completed', undefined, 'eve');
      assert.deepEqual(
        listed.body.rollouts.map((r: { id: string }) => r.id),
        [rollout.id],
      );
      const actions = await db
        .selectFrom('audit_log')
        .select(['action', 'actor'])
        .where('target_id', '=', rollout.id)
        .orderBy('id')
        .execute();
      // Sorted: the promote and the advance before it share a millisecond.
      assert.deepEqual(
        actions.map((a) => `${a.actor} ${a.action}`).sort(),
        [
          'user:ops rollout.create',
          'system rollout.advance',
          'system rollout.advance',
          'user:ops rollout.promote',
          'system rollout.complete',
        ].sort(),
      );
    });

    await t.test('failures halt a rollout, at ingestion or at the next tick', async (t) => {
      const c = await center(t, await newUrl(t));
      const { db, catalog } = c;
      const group = await insertGroup(db, 'office', c.clock.ms);
      const devices = await insertDevices(db, group, 40, [catalog.work], c.clock.ms);
      c.clock.ms += MINUTE;
      const created = await c.admin('POST', '', {
        imageVersionId: catalog.v3,
        profileId: catalog.work,
        phases: [50, 100],
        soakMinutes: 10,
        failureThreshold: 0.25,
        minReports: 4,
        start: true,
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const id = created.body.id;
      const inFirst = devices.filter((d) => bucketOf(id, d) < 5000);
      const later = devices.filter((d) => bucketOf(id, d) >= 5000);
      assert.ok(inFirst.length >= 6 && later.length >= 1, 'a usable split');
      for (const d of inFirst.slice(0, 3)) {
        await c.report(d, 'healthy', { profileId: catalog.work, versionId: catalog.v3 });
      }
      // Three outcomes, fewer than minReports: no verdict yet, and no advance either.
      c.clock.ms += 10 * MINUTE;
      const tick = await c.scheduler.tick();
      assert.deepEqual([tick.halted, tick.advanced], [[], []]);
      // A late report from a device that was offline: 1 of 4 is not above 25 %, 2 of 5 is.
      await c.report(inFirst[3]!, 'failed', {
        versionId: catalog.v3,
        reason: 'chunk digest mismatch',
      });
      assert.equal((await c.admin('GET', `/${id}`)).body.state, 'running');
      await c.report(inFirst[4]!, 'rolled-back', {
        profileId: catalog.work,
        versionId: catalog.v3,
        reason: 'qemu-ga did not answer',
      });
      const halted = await c.admin('GET', `/${id}`);
      assert.equal(halted.body.state, 'halted');
      assert.match(halted.body.stateReason, /2 of 5 devices .*40%.*25%/);
      assert.equal(halted.body.totals.failed, 1);
      assert.equal(halted.body.totals.rolledBack, 1);
      const reason = await db
        .selectFrom('rollout_devices')
        .select('reason')
        .where('device_id', '=', inFirst[4]!)
        .executeTakeFirstOrThrow();
      assert.equal(reason.reason, 'qemu-ga did not answer');
      // Halted: devices in keep the version, no new ones are added, even past the soak.
      c.clock.ms += 60 * MINUTE;
      assert.deepEqual((await c.scheduler.tick()).advanced, []);
      assert.equal(await c.systemVersionOf(inFirst[0]!), catalog.v3);
      assert.equal(await c.systemVersionOf(later[0]!), catalog.v1);
      for (const action of ['promote', 'resume', 'pause']) {
        const res = await c.admin('POST', `/${id}/${action}`);
        assert.equal(res.status, 409, `${action}: ${JSON.stringify(res.body)}`);
        assert.equal(res.body.error.code, 'ERR_ROLLOUT_STATE');
        assert.match(res.body.error.message, /halted/);
      }
      // Abort: the devices fall back to the released version, and are told.
      c.push.told.length = 0;
      const aborted = await c.admin('POST', `/${id}/abort`, { reason: 'bad build' });
      assert.equal(aborted.status, 200);
      assert.deepEqual([aborted.body.state, aborted.body.stateReason], ['aborted', 'bad build']);
      assert.equal(await c.systemVersionOf(inFirst[0]!), catalog.v1);
      assert.deepEqual(new Set(c.push.told.flat()), new Set(inFirst));
      assert.match((await c.admin('POST', `/${id}/abort`)).body.error.message, /aborted/);

      // Pending, paused, resumed: the scheduler halts what ingestion could not (it was paused).
      const second = await c.admin('POST', '', {
        imageVersionId: catalog.v2,
        groupId: group,
        phases: [50, 100],
        failureThreshold: 0.1,
      });
      const sid = second.body.id;
      assert.equal(second.body.state, 'pending');
      assert.equal(await c.systemVersionOf(devices[0]!), catalog.v1);
      assert.match((await c.admin('POST', `/${sid}/pause`)).body.error.message, /pending/);
      assert.equal((await c.admin('POST', `/${sid}/pause`, undefined, 'eve')).status, 403);
      assert.equal((await c.admin('POST', `/${sid}/resume`)).body.state, 'running');
      const member = devices.find((d) => bucketOf(sid, d) < 5000)!;
      assert.equal(await c.systemVersionOf(member), catalog.v2);
      assert.equal((await c.admin('POST', `/${sid}/pause`)).body.state, 'paused');
      await c.report(member, 'rolled-back', {
        profileId: catalog.work,
        versionId: catalog.v2,
        reason: 'boot loop',
      });
      assert.equal((await c.admin('GET', `/${sid}`)).body.state, 'paused');
      assert.equal((await c.admin('POST', `/${sid}/resume`)).body.state, 'running');
      assert.deepEqual((await c.scheduler.tick()).halted, [sid]);
      const final = await c.admin('GET', `/${sid}`);
      assert.equal(final.body.state, 'halted');
      assert.match(final.body.stateReason, /1 of 1 devices/);
      assert.equal((await c.admin('POST', `/${newId(START)}/pause`)).status, 404);
      assert.equal((await c.admin('POST', `/${sid}/explode`)).status, 400);
      const halts = await db
        .selectFrom('audit_log')
        .select('actor')
        .where('action', '=', 'rollout.halt')
        .execute();
      assert.deepEqual(
        halts.map((h) => h.actor),
        ['system', 'system'],
      );
    });

    await t.test('outcome trails, per rollout and per device', async (t) => {
      const c = await center(t, await newUrl(t));
      const { db, catalog } = c;
      const group = await insertGroup(db, 'office', c.clock.ms);
      const devices = await insertDevices(db, group, 16, [catalog.work], c.clock.ms);
      const work = { profileId: catalog.work };
      // Before the rollout, each device reported about v2 (a failed try by another path) and
      // about v1; neither is part of the rollout's trail.
      for (const d of devices) {
        await c.report(d, 'failed', { ...work, versionId: catalog.v2, reason: 'early' });
      }
      c.clock.ms += MINUTE;
      for (const d of devices) await c.report(d, 'healthy', { ...work, versionId: catalog.v1 });
      c.clock.ms += MINUTE;
      const created = await c.admin('POST', '', {
        imageVersionId: catalog.v2,
        groupId: group,
        phases: [50, 100],
        soakMinutes: 30,
        failureThreshold: 0,
        start: true,
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const id = created.body.id;
      const inFirst = devices.filter((d) => bucketOf(id, d) < 5000).sort();
      const later = devices.filter((d) => bucketOf(id, d) >= 5000);
      assert.ok(inFirst.length >= 3 && later.length >= 1, 'a usable split');
      const [good, bad] = [inFirst[0]!, inFirst[1]!];
      for (const type of ['download-progress', 'staged', 'switched', 'healthy'] as const) {
        c.clock.ms += 1000;
        await c.report(good, type, { ...work, versionId: catalog.v2 });
      }
      for (const type of ['download-progress', 'staged', 'switched'] as const) {
        c.clock.ms += 1000;
        await c.report(bad, type, { ...work, versionId: catalog.v2 });
      }
      c.clock.ms += 1000;
      await c.report(bad, 'rolled-back', {
        ...work,
        versionId: catalog.v2,
        reason: 'health check command exited 1',
      });
      const rollout = (await c.admin('GET', `/${id}`, undefined, 'eve')).body;
      assert.equal(rollout.state, 'halted');

      // Per rollout: the devices of the first phase only, each with its trail in order.
      const page = await c.admin('GET', `/${id}/devices`, undefined, 'eve');
      assert.equal(page.status, 200, JSON.stringify(page.body));
      assert.deepEqual(
        [page.body.image, page.body.version, page.body.next],
        ['debian-work', '2.0', null],
      );
      assert.deepEqual(
        page.body.devices.map((d: { deviceId: string }) => d.deviceId),
        inFirst,
      );
      const byId = new Map(
        page.body.devices.map((d: { deviceId: string }) => [d.deviceId, d] as const),
      );
      type Trail = { trail: { type: string; reason: string | null }[] };
      const trailOf = (d: string) =>
        (byId.get(d) as Trail).trail.map((e) => (e.reason ? `${e.type}: ${e.reason}` : e.type));
      assert.deepEqual(trailOf(good), ['download-progress', 'staged', 'switched', 'healthy']);
      assert.deepEqual(trailOf(bad), [
        'download-progress',
        'staged',
        'switched',
        'rolled-back: health check command exited 1',
      ]);
      assert.deepEqual(trailOf(inFirst[2]!), []);
      assert.deepEqual(
        [byId.get(bad)].map((d) => {
          const x = d as { status: string; reason: string; phase: number; device: string };
          return [x.status, x.reason, x.phase, typeof x.device];
        }),
        [['rolled-back', 'health check command exited 1', 0, 'string']],
      );
      // Filtered by status, and paged.
      const rolled = await c.admin('GET', `/${id}/devices?status=rolled-back`, undefined, 'eve');
      assert.deepEqual(
        rolled.body.devices.map((d: { deviceId: string }) => d.deviceId),
        [bad],
      );
      const seen: string[] = [];
      let cursor: string | null = '';
      while (cursor !== null) {
        const q: string = cursor ? `&cursor=${cursor}` : '';
        const p = await c.admin('GET', `/${id}/devices?limit=2${q}`, undefined, 'eve');
        assert.equal(p.status, 200, JSON.stringify(p.body));
        seen.push(...p.body.devices.map((d: { deviceId: string }) => d.deviceId));
        cursor = p.body.next;
      }
      assert.deepEqual(seen, inFirst);
      for (const [path, status, code] of [
        [`/${id}/devices?cursor=nonsense`, 400, 'ERR_VALIDATION'],
        [`/${id}/devices?limit=0`, 400, 'ERR_VALIDATION'],
        [`/${id}/devices?status=lost`, 400, 'ERR_VALIDATION'],
        [`/${newId(START)}/devices`, 404, 'ERR_NOT_FOUND'],
      ] as const) {
        const res = await c.admin('GET', path, undefined, 'eve');
        assert.deepEqual([res.status, res.body.error.code], [status, code], path);
      }
      assert.equal((await c.admin('GET', `/${id}/devices`, undefined, null)).status, 401);

      // Per device: newest first; by rollout, by version, by type; paged.
      const events = (d: string, query = '', as: 'eve' | null = 'eve') =>
        c.admin('GET', `/api/v1/admin/devices/${d}/events${query}`, undefined, as);
      const types = (body: { events: { type: string }[] }) => body.events.map((e) => e.type);
      const all = await events(good);
      assert.equal(all.status, 200, JSON.stringify(all.body));
      assert.deepEqual(types(all.body), [
        'healthy',
        'switched',
        'staged',
        'download-progress',
        'healthy',
        'failed',
      ]);
      assert.equal(all.body.events[0].vm, 'work');
      assert.equal(all.body.versionNames[catalog.v2], 'debian-work@2.0');
      assert.equal(all.body.versionNames[catalog.v1], 'debian-work@1.0');
      const ofRollout = await events(good, `?rolloutId=${id}`);
      assert.deepEqual(types(ofRollout.body), [
        'healthy',
        'switched',
        'staged',
        'download-progress',
      ]);
      const ofV2 = await events(good, `?versionId=${catalog.v2}`);
      assert.deepEqual(types(ofV2.body), [
        'healthy',
        'switched',
        'staged',
        'download-progress',
        'failed',
      ]);
      assert.equal(ofV2.body.events.at(-1).reason, 'early');
      const ofV1 = await events(good, `?versionId=${catalog.v1}`);
      assert.deepEqual(types(ofV1.body), ['healthy']);
      assert.deepEqual(types((await events(good, '?type=healthy')).body), ['healthy', 'healthy']);
      assert.deepEqual(types((await events(later[0]!, `?rolloutId=${id}`)).body), []);
      assert.deepEqual(types((await events(later[0]!)).body), ['healthy', 'failed']);
      const paged: string[] = [];
      let next: string | null = '';
      while (next !== null) {
        const p = await events(good, `?limit=4${next ? `&cursor=${next}` : ''}`);
        paged.push(...types(p.body));
        next = p.body.next;
      }
      assert.deepEqual(paged, types(all.body));
      for (const [d, query, status] of [
        [good, '?cursor=nonsense', 400],
        [good, '?limit=501', 400],
        [good, `?rolloutId=${newId(START)}`, 404],
        [newId(START), '', 404],
        ['not-an-id', '', 400],
      ] as const) {
        assert.equal((await events(d, query)).status, status, `${d}${query}`);
      }
      assert.equal((await events(good, '', null)).status, 401);
    });

    await t.test('a completed rollout releases its version, unless told not to', async (t) => {
      const c = await center(t, await newUrl(t));
      const { db, catalog } = c;
      const office = await insertGroup(db, 'office', c.clock.ms);
      const lab = await insertGroup(db, 'lab', c.clock.ms);
      const devices = await insertDevices(db, office, 3, [catalog.work], c.clock.ms);
      const outsider = (await insertDevices(db, lab, 1, [catalog.work], c.clock.ms))[0]!;
      c.clock.ms += MINUTE;
      const released = async () =>
        (
          await db
            .selectFrom('images')
            .select('release_version_id')
            .where('id', '=', catalog.systemImage)
            .executeTakeFirstOrThrow()
        ).release_version_id;
      const audit = (action: string) =>
        db
          .selectFrom('audit_log')
          .select(['actor', 'target_id', 'at', 'before', 'after'])
          .where('action', '=', action)
          .orderBy('id')
          .execute();
      const oneRollout = (body: object) =>
        c.admin('POST', '', {
          groupId: office,
          phases: [100],
          soakMinutes: 0,
          minReports: 1,
          start: true,
          ...body,
        });

      // By default a rollout releases on completion, and says so before it completes.
      const created = await oneRollout({ imageVersionId: catalog.v2 });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const first = created.body;
      assert.deepEqual(
        [first.releaseOnCompletion, first.releasedAt, first.group, first.profile],
        [true, null, 'office', null],
      );
      assert.deepEqual(first.imageRelease, { id: catalog.v1, version: '1.0' });
      for (const id of devices) {
        await c.report(id, 'healthy', { profileId: catalog.work, versionId: catalog.v2 });
      }
      assert.equal(await c.systemVersionOf(outsider), catalog.v1);
      c.push.told.length = 0;
      c.clock.ms += MINUTE;
      assert.deepEqual((await c.scheduler.tick()).completed, [first.id]);
      const completed = (await c.admin('GET', `/${first.id}`, undefined, 'eve')).body;
      assert.equal(completed.state, 'completed');
      assert.equal(completed.releasedAt, c.clock.ms);
      assert.equal(completed.stateReason, null);
      assert.deepEqual(completed.imageRelease, { id: catalog.v2, version: '2.0' });
      assert.equal(await released(), catalog.v2);
      // Devices outside the rollout were told, and get it; so does a device enrolled later.
      assert.ok(c.push.told.flat().includes(outsider));
      assert.equal(await c.systemVersionOf(outsider), catalog.v2);
      const later = (await insertDevices(db, lab, 1, [catalog.work], c.clock.ms))[0]!;
      assert.equal(await c.systemVersionOf(later), catalog.v2);
      // The release is audited as the release route audits it, by the scheduler, in the
      // completing transaction (same time as the completion).
      const [release] = await audit('image.release');
      assert.deepEqual([release!.actor, release!.target_id], ['system', catalog.systemImage]);
      assert.equal(JSON.parse(release!.before!).release.id, catalog.v1);
      assert.equal(JSON.parse(release!.after!).release.id, catalog.v2);
      const [complete] = await audit('rollout.complete');
      assert.equal(Number(complete!.at), Number(release!.at));
      assert.equal(JSON.parse(complete!.after!).releasedAt, c.clock.ms);

      // `releaseOnCompletion: false`: completing (here by promote) leaves the release alone.
      const kept = await oneRollout({ imageVersionId: catalog.v3, releaseOnCompletion: false });
      assert.equal(kept.body.releaseOnCompletion, false);
      c.clock.ms += MINUTE;
      const promoted = await c.admin('POST', `/${kept.body.id}/promote`);
      assert.equal(promoted.status, 200, JSON.stringify(promoted.body));
      assert.deepEqual(
        [promoted.body.state, promoted.body.releasedAt, promoted.body.imageRelease.version],
        ['completed', null, '2.0'],
      );
      assert.equal(await released(), catalog.v2);
      assert.equal(await c.systemVersionOf(devices[0]!), catalog.v3, 'the rollout still applies');
      assert.equal(await c.systemVersionOf(outsider), catalog.v2);
      assert.equal((await audit('image.release')).length, 1);

      // A version released by hand since, and newer, stays the released one.
      c.clock.ms += MINUTE;
      const v5 = await insertVersion(db, catalog.systemImage, '5.0', c.clock.ms);
      const v6 = await insertVersion(db, catalog.systemImage, '6.0', c.clock.ms + 1);
      const older = await oneRollout({ imageVersionId: v5 });
      await releaseVersion({ db, nowMs: c.clock.ms }, { label: 'user:ops' }, 'debian-work', v6);
      const done = await c.admin('POST', `/${older.body.id}/promote`);
      assert.equal(done.body.state, 'completed');
      assert.equal(done.body.releasedAt, null);
      assert.match(done.body.stateReason, /^not released: debian-work@6\.0 is newer than 5\.0/);
      assert.equal(await released(), v6);

      // A version retired meanwhile cannot be released: the rollout completes all the same.
      c.clock.ms += MINUTE;
      const v7 = await insertVersion(db, catalog.systemImage, '7.0', c.clock.ms);
      const retiring = await oneRollout({ imageVersionId: v7 });
      await retireVersion({ db, nowMs: c.clock.ms }, { label: 'user:ops' }, 'debian-work', '7.0');
      const retired = await c.admin('POST', `/${retiring.body.id}/promote`);
      assert.equal(retired.status, 200, JSON.stringify(retired.body));
      assert.equal(retired.body.state, 'completed');
      assert.match(retired.body.stateReason, /^not released: .*7\.0 is retired/);
      assert.equal(await released(), v6);

      // An operator's promote that completes is the operator's release in the trail.
      c.clock.ms += MINUTE;
      const v8 = await insertVersion(db, catalog.systemImage, '8.0', c.clock.ms);
      const last = await oneRollout({ imageVersionId: v8 });
      assert.equal((await c.admin('POST', `/${last.body.id}/promote`)).body.imageRelease.id, v8);
      assert.deepEqual(
        (await audit('image.release')).map((a) => a.actor),
        ['system', 'user:ops', 'user:ops'],
      );
    });

    if (target.dialect === 'postgres') {
      await t.test('one scheduler at a time: the advisory lock', async (t) => {
        const c = await center(t, await newUrl(t));
        const { db, catalog } = c;
        const group = await insertGroup(db, 'office', c.clock.ms);
        const devices = await insertDevices(db, group, 20, [catalog.work], c.clock.ms);
        const created = await c.admin('POST', '', {
          imageVersionId: catalog.v2,
          groupId: group,
          phases: [1, 10, 50, 100],
          soakMinutes: 1,
          start: true,
        });
        const id = created.body.id;
        // The first phase's devices, if any, report: the phase may end after its soak.
        for (const d of devices.filter((d) => bucketOf(id, d) < 100)) {
          await c.report(d, 'healthy', { profileId: catalog.work, versionId: catalog.v2 });
        }
        c.clock.ms += MINUTE;
        // Another replica holds the lock: this one skips its tick.
        await db.transaction().execute(async (tx) => {
          await sql`select pg_advisory_xact_lock(${SCHEDULER_LOCK})`.execute(tx);
          const skipped = await c.scheduler.tick();
          assert.equal(skipped.ran, false);
        });
        assert.equal((await c.admin('GET', `/${id}`)).body.currentPhase, 0);
        // Two schedulers at once: one phase advance, not two.
        const twin = createRolloutScheduler({
          db,
          dialect: 'postgres',
          push: c.push,
          now: () => new Date(c.clock.ms),
          log: pino({ level: 'silent' }),
        });
        const results = await Promise.all([c.scheduler.tick(), twin.tick()]);
        assert.equal(results.flatMap((r) => r.advanced).length, 1);
        assert.equal((await c.admin('GET', `/${id}`)).body.currentPhase, 1);
      });
    }
  });
}
