import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { generateKeyPairSync } from 'node:crypto';
import { encryptionKeyPem } from '../../../test/support/keys.ts';
import {
  CENTER_TARGETS,
  insertGroup,
  insertImage,
  insertProfile,
  insertSession,
  insertVersion,
  startTestCenter,
  type Res,
} from '../../../test/support/center.ts';
import { updateEvent } from '../../../test/support/events.ts';
import { DEVICE_SIGNATURE_DOMAINS, type NewEvent } from '../../protocol/index.ts';
import { signPayload } from '../../signing/index.ts';
import { createEnrolmentToken } from '../devices/index.ts';

/*
 * What the web console reads of the fleet: status words, the lease a device holds, the
 * dashboard's summary, versions over time, the timeline's sentences, the device list's sorts,
 * status filter and total, and conditional GETs, through the admin API on both databases.
 */

const START = Date.UTC(2026, 5, 1, 9);
const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

async function consoleCenter(t: TestContext, url: string) {
  const c = await startTestCenter(t, url, { start: START });
  const viewer = await insertSession(c.db, 'eve', 'viewer', START);
  const operator = await insertSession(c.db, 'ops', 'operator', START);
  const image = await insertImage(c.db, 'debian', 'system', START);
  const v1 = await insertVersion(c.db, image, '1.0', START, { release: true });
  const v2 = await insertVersion(c.db, image, '2.0', START);
  const work = await insertProfile(
    c.db,
    { name: 'work', systemImageId: image, leaseDays: 5 },
    START,
  );

  const get = async (path: string, headers: Record<string, string> = {}): Promise<Res> =>
    c.call('GET', path, { token: viewer, headers });
  const ok = async (path: string): Promise<Res> => {
    const res = await get(path);
    assert.equal(res.status, 200, `${path}: ${JSON.stringify(res.body)}`);
    return res;
  };

  let seq = 0;
  const group = await insertGroup(c.db, 'office', START);
  /** A device named `name`, enrolled now, holding the work profile; it logs in when it calls. */
  async function device(name: string) {
    const { token: enrolmentToken } = await createEnrolmentToken(c.db, {
      groupId: group,
      uses: 1,
      expiresAt: new Date(c.clock.ms + 3600_000),
      now: c.now(),
    });
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const enrolled = await c.call('POST', '/api/v1/device/enrol', {
      body: {
        token: enrolmentToken,
        publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
        encryptionKey: encryptionKeyPem(),
        inventory: { hostname: 'pc', memoryBytes: 8 * 2 ** 30, cpu: { model: 'Test', cores: 4 } },
      },
    });
    assert.equal(enrolled.status, 200, JSON.stringify(enrolled.body));
    const id = enrolled.body.deviceId as string;
    const patched = await c.call('PATCH', `/devices/${id}`, {
      token: operator,
      body: { name, profiles: [work] },
    });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    /** A fresh device token, as Engine gets one (this notes the contact). */
    const login = async () => {
      const ch = await c.call('POST', '/api/v1/device/auth/challenge', { body: { deviceId: id } });
      const challenge = ch.body.challenge as string;
      const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, privateKey);
      const issued = await c.call('POST', '/api/v1/device/auth/token', {
        body: { deviceId: id, challenge, signature },
      });
      assert.equal(issued.status, 200, JSON.stringify(issued.body));
      return { authorization: `Bearer ${issued.body.token as string}` };
    };
    await login();
    return {
      id,
      async report(...events: NewEvent[]) {
        const res = await c.app.inject({
          method: 'POST',
          url: '/api/v1/device/reports',
          headers: await login(),
          payload: {
            events: events.map((e) => ({ id: `e-${(seq += 1)}`, at: c.clock.ms + seq, ...e })),
          },
        });
        assert.equal(res.statusCode, 200, res.body);
      },
      async desired(etag?: string) {
        return c.app.inject({
          method: 'GET',
          url: '/api/v1/device/desired-state',
          headers: {
            ...(await login()),
            ...(etag === undefined ? {} : { 'if-none-match': etag }),
          },
        });
      },
    };
  }
  const release = (versionId: string, version: string) => ({
    versionId,
    profileId: work,
    volumes: [{ role: 'system' as const, versionId, imageId: image, isNew: true }],
    version,
  });
  /** An update event about debian@`version`, its payload naming the image as Engine does. */
  const event = (
    type: Parameters<typeof updateEvent>[0],
    versionId: string,
    version: string,
    reason?: string,
  ): NewEvent => {
    const e = updateEvent(type, { ...release(versionId, version), reason });
    const data = e.data as unknown as Record<string, unknown>;
    data['image'] = 'debian';
    data['version'] = version;
    for (const v of data['volumes'] as Record<string, unknown>[]) {
      v['image'] = 'debian';
      v['version'] = version;
    }
    return e;
  };
  return { ...c, get, ok, device, event, operator, image, v1, v2, work };
}

for (const target of CENTER_TARGETS) {
  test(`the console's reads on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test('status words, summary counts, filters and the lease', async (t) => {
      const c = await consoleCenter(t, await newUrl(t));
      const healthy = await c.device('healthy');
      const updating = await c.device('updating');
      const failed = await c.device('failed');
      const locked = await c.device('locked');
      const retired = await c.device('retired');
      const quiet = await c.device('quiet');

      await healthy.report(c.event('healthy', c.v1, '1.0'));
      await updating.report(c.event('healthy', c.v1, '1.0'), c.event('staged', c.v2, '2.0'));
      // Progress after a failure does not hide it; only a healthy report does.
      await failed.report(
        c.event('switched', c.v2, '2.0'),
        c.event('rolled-back', c.v2, '2.0', 'qemu-ga did not answer'),
        c.event('download-progress', c.v2, '2.0'),
      );
      const lock = await c.call('POST', `/devices/${locked.id}/commands`, {
        token: c.operator,
        body: { kind: 'lock' },
      });
      assert.equal(lock.status, 201);
      assert.equal(
        (await c.call('DELETE', `/devices/${retired.id}`, { token: c.operator })).status,
        204,
      );

      // The lease: what the last document sent says, not moved by a 304.
      const first = await healthy.desired();
      assert.equal(first.statusCode, 200);
      const issued = first.json().state.vms[0].lease.expiresAt as number;
      assert.equal(issued, START + 5 * DAY);
      c.clock.ms += 10 * MINUTE;
      assert.equal((await healthy.desired(first.headers.etag as string)).statusCode, 304);

      // Everyone but `quiet` keeps in touch; `quiet` was last seen at enrolment.
      c.clock.ms += 20 * MINUTE;
      for (const pc of [healthy, updating, failed]) {
        await pc.report({
          type: 'vm-state',
          data: { vm: 'work', profileId: c.work, state: 'running' },
        });
      }

      const detail = (await c.ok(`/devices/${healthy.id}`)).body;
      assert.equal(detail.status, 'online');
      assert.equal(detail.leaseExpiresAt, issued);
      assert.deepEqual(detail.hardware, {
        hostname: 'pc',
        memoryBytes: 8 * 2 ** 30,
        cpu: { model: 'Test', cores: 4 },
      });
      const words = async (id: string) => (await c.ok(`/devices/${id}`)).body.status;
      assert.equal(await words(updating.id), 'updating');
      assert.equal(await words(failed.id), 'failed');
      assert.equal(await words(locked.id), 'locked');
      assert.equal(await words(retired.id), 'retired');
      assert.equal(await words(quiet.id), 'offline');
      assert.equal((await c.ok(`/devices/${retired.id}`)).body.leaseExpiresAt, null);

      const summary = (await c.ok('/fleet/summary')).body;
      assert.deepEqual(summary.devices, {
        total: 6,
        online: 1,
        offline: 1,
        updating: 1,
        failed: 1,
        locked: 1,
        killed: 0,
        retired: 1,
      });
      assert.equal(summary.generatedAt, c.clock.ms);
      const work = summary.versionsByProfile.find(
        (p: { profile: { name: string } }) => p.profile.name === 'work',
      );
      // Killed and retired devices are not counted; VMs never healthy have no version.
      assert.deepEqual(
        work.versions.map((v: { version: { version: string } | null; devices: number }) => [
          v.version?.version ?? null,
          v.devices,
        ]),
        [
          [null, 3],
          ['1.0', 2],
        ],
      );
      assert.deepEqual(summary.recentFailures, [
        {
          device: { id: failed.id, name: 'failed' },
          at: summary.recentFailures[0].at,
          type: 'rolled-back',
          reason: 'qemu-ga did not answer',
          version: 'debian@2.0',
        },
      ]);
      assert.deepEqual(summary.leasesExpiringSoon, []);

      // Each word filters the list, and `total` counts the matches.
      for (const [status, names] of [
        ['online', ['healthy']],
        ['offline', ['quiet']],
        ['updating', ['updating']],
        ['failed', ['failed']],
        ['locked', ['locked']],
        ['retired', ['retired']],
        ['killed', []],
      ] as const) {
        const page = (await c.ok(`/devices?status=${status}`)).body;
        assert.deepEqual(
          page.devices.map((d: { name: string; status: string }) => [d.name, d.status]),
          names.map((n) => [n, status]),
          status,
        );
        assert.equal(page.total, names.length, status);
      }
      assert.equal((await c.get('/devices?status=asleep')).status, 400);

      // Two days before it runs out, the lease is listed; once run out, first.
      c.clock.ms += 60 * MINUTE;
      await updating.desired();
      c.clock.ms = issued - 2 * DAY;
      const soon = (await c.ok('/fleet/summary')).body.leasesExpiringSoon;
      assert.deepEqual(
        soon.map((l: { device: { name: string } }) => l.device.name),
        ['healthy', 'updating'],
      );
      assert.equal(soon[0].expiresAt, issued);

      // A healthy report clears a failure.
      await failed.report(c.event('healthy', c.v2, '2.0'));
      assert.equal(await words(failed.id), 'online');
    });

    await t.test('the list: name and last-contact orders, cursors, totals', async (t) => {
      const c = await consoleCenter(t, await newUrl(t));
      const names = ['delta', 'Alpha', 'charlie', 'Bravo', 'echo'];
      const ids: Record<string, string> = {};
      for (const name of names) {
        ids[name] = (await c.device(name)).id;
        c.clock.ms += MINUTE;
      }
      const walk = async (query: string) => {
        const seen: string[] = [];
        let cursor: string | null = null;
        do {
          const res: Res = await c.ok(
            `/devices?limit=2&${query}${cursor === null ? '' : `&cursor=${cursor}`}`,
          );
          assert.equal(res.body.total, 5);
          seen.push(...res.body.devices.map((d: { name: string }) => d.name));
          cursor = res.body.next;
        } while (cursor !== null);
        return seen;
      };
      assert.deepEqual(await walk(''), ['Alpha', 'Bravo', 'charlie', 'delta', 'echo']);
      assert.deepEqual(await walk('sort=name'), ['Alpha', 'Bravo', 'charlie', 'delta', 'echo']);
      // Newest contact first: each enrolled (and got its token) a minute after the previous.
      assert.deepEqual(await walk('sort=lastContact'), [...names].reverse());
      assert.deepEqual(await walk('sort=enrolled'), names);

      // A cursor belongs to its order.
      const byName = (await c.ok('/devices?limit=2')).body.next as string;
      const wrong = await c.get(`/devices?sort=lastContact&cursor=${byName}`);
      assert.equal(wrong.status, 400);
      assert.equal(wrong.body.error.code, 'ERR_VALIDATION');
      const filtered = (await c.ok('/devices?q=b&limit=1')).body;
      assert.equal(filtered.total, 1);
      assert.equal(filtered.devices[0].name, 'Bravo');
    });

    await t.test('the timeline speaks in sentences', async (t) => {
      const c = await consoleCenter(t, await newUrl(t));
      const pc = await c.device('pc');
      await pc.report(
        c.event('staged', c.v2, '2.0'),
        c.event('rolled-back', c.v2, '2.0', 'the health check timed out'),
      );
      const page = (await c.ok(`/devices/${pc.id}/events?limit=1`)).body;
      assert.equal(page.events.length, 1);
      const [rolledBack] = page.events;
      assert.equal(rolledBack.type, 'rolled-back');
      assert.equal(rolledBack.reason, 'the health check timed out');
      assert.deepEqual(rolledBack.profile, { id: c.work, name: 'work' });
      assert.equal(rolledBack.summary, 'debian@2.0 failed on the work VM, which rolled back.');
      const older = (await c.ok(`/devices/${pc.id}/events?limit=1&cursor=${page.next}`)).body;
      assert.match(older.events[0].summary, /^debian@2\.0 is ready for the work VM \(/);
    });

    await t.test('versions over time: a point a day, from hourly snapshots', async (t) => {
      const c = await consoleCenter(t, await newUrl(t));
      const a = await c.device('a');
      const b = await c.device('b');
      await a.report(c.event('healthy', c.v1, '1.0'));
      await b.report(c.event('healthy', c.v1, '1.0'));
      const before = (await c.ok('/fleet/history?days=3')).body.points;
      assert.equal(before.length, 3);
      assert.deepEqual(
        before.map((p: { at: number }) => p.at),
        [c.clock.ms - 2 * DAY, c.clock.ms - DAY, c.clock.ms],
      );
      assert.deepEqual(before[0].versions, []);
      assert.deepEqual(before[2].versions, [{ version: 'debian@1.0', devices: 2 }]);

      c.clock.ms += DAY;
      await b.report(c.event('healthy', c.v2, '2.0'));
      const after = (await c.ok('/fleet/history?days=3')).body.points;
      assert.deepEqual(after[1].versions, [{ version: 'debian@1.0', devices: 2 }]);
      assert.deepEqual(after[2].versions, [
        { version: 'debian@1.0', devices: 1 },
        { version: 'debian@2.0', devices: 1 },
      ]);
      // Within the hour, the snapshot stands: no second one is taken.
      await a.report(c.event('healthy', c.v2, '2.0'));
      const same = (await c.ok('/fleet/history?days=1')).body.points;
      assert.deepEqual(same[0].versions, after[2].versions);
      assert.equal((await c.get('/fleet/history?days=91')).status, 400);
      assert.equal((await c.ok('/fleet/history')).body.points.length, 30);
    });

    await t.test('admin GETs answer If-None-Match with 304', async (t) => {
      const c = await consoleCenter(t, await newUrl(t));
      const pc = await c.device('pc');
      const first = await c.ok('/fleet/summary');
      const etag = first.headers.etag as string;
      assert.match(etag, /^W\/"[A-Za-z0-9_-]+"$/);
      const again = await c.app.inject({
        method: 'GET',
        url: '/api/v1/admin/fleet/summary',
        headers: {
          authorization: `Bearer ${await insertSession(c.db, 'v2', 'viewer', START)}`,
          'if-none-match': etag,
        },
      });
      assert.equal(again.statusCode, 304);
      assert.equal(again.body, '');
      assert.equal(again.headers.etag, etag);
      // A change makes a new body, so a new ETag.
      await pc.report(c.event('healthy', c.v1, '1.0'));
      const changed = await c.get('/fleet/summary', { 'if-none-match': etag });
      assert.equal(changed.status, 200);
      assert.notEqual(changed.headers.etag, etag);
      // Every admin GET carries one; errors and other methods do not.
      const list = await c.ok('/devices');
      assert.equal(
        (await c.get('/devices', { 'if-none-match': list.headers.etag as string })).status,
        304,
      );
      const missing = await c.get('/devices/00000000-0000-7000-8000-000000000000');
      assert.equal(missing.status, 404);
      assert.equal(missing.headers.etag, undefined);
      // Without credentials, no 304 tells anything.
      const anonymous = await c.app.inject({
        method: 'GET',
        url: '/api/v1/admin/fleet/summary',
        headers: { 'if-none-match': etag },
      });
      assert.equal(anonymous.statusCode, 401);
    });
  });
}
