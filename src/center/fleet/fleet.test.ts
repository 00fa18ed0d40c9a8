import assert from 'node:assert/strict';
import { encryptionKeyPem } from '../../../test/support/keys.ts';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { get, type IncomingMessage } from 'node:http';
import { test, type TestContext } from 'node:test';
import {
  CENTER_TARGETS,
  insertImage,
  insertSession,
  insertVersion,
  startTestCenter,
  type Method,
  type Res,
} from '../../../test/support/center.ts';
import { PATIENCE_MS } from '../../../test/support/wait.ts';
import { canonicalJson, signPayload } from '../../signing/index.ts';
import { DEVICE_SIGNATURE_DOMAINS, type DesiredVm } from '../../protocol/index.ts';
import { newId } from '../db/index.ts';

const START = Date.UTC(2026, 4, 4, 8);

const METRICS_TOKEN = 'metrics-'.repeat(4);

/**
 * A Center with users `root` (admin), `ops` (operator) and `eve` (viewer), a system image and
 * an app image, and a settable clock.
 */
async function center(t: TestContext, url: string) {
  const c = await startTestCenter(t, url, {
    start: START,
    config: { metricsToken: METRICS_TOKEN },
  });
  const { db, clock, call } = c;
  const tokens = {
    admin: await insertSession(db, 'root', 'admin', clock.ms),
    operator: await insertSession(db, 'ops', 'operator', clock.ms),
    viewer: await insertSession(db, 'eve', 'viewer', clock.ms),
  };
  const images = {
    system: await insertImage(db, 'debian', 'system', clock.ms),
    system2: await insertImage(db, 'debian-next', 'system', clock.ms),
    app: await insertImage(db, 'office-vol', 'app', clock.ms),
    app2: await insertImage(db, 'cad-vol', 'app', clock.ms),
  };
  const as =
    (token: string) =>
    async (method: Method, path: string, body?: unknown, status?: number): Promise<Res> => {
      const res = await call(method, path, { token, body });
      if (status !== undefined) assert.equal(res.status, status, JSON.stringify(res.body));
      return res;
    };

  /** The apps `office` (on the app image) and `cad` (on the other), through the admin API. */
  async function catalogApps() {
    const app = (name: string, displayName: string, imageId: string) =>
      as(tokens.admin)('POST', '/apps', { name, displayName, imageId }, 201);
    return {
      office: await app('office', 'Office', images.app),
      cad: await app('cad', 'CAD', images.app2),
    };
  }

  /** Enrols a device through the device API with a token from the admin API. */
  async function enrol(groupId: string, name = 'pc') {
    const created = await as(tokens.operator)('POST', '/enrolment-tokens', { groupId }, 201);
    const { privateKey: key, publicKey } = generateKeyPairSync('ed25519');
    const res = await call('POST', '/api/v1/device/enrol', {
      body: {
        token: created.body.token,
        publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
        encryptionKey: encryptionKeyPem(),
        inventory: { hostname: name },
        name,
      },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const deviceId = res.body.deviceId as string;
    return { deviceId, key, bearer: await deviceLogin(deviceId, key) };
  }

  async function deviceLogin(deviceId: string, key: KeyObject): Promise<Res & { token?: string }> {
    const ch = await call('POST', '/api/v1/device/auth/challenge', { body: { deviceId } });
    const challenge = ch.body.challenge as string;
    const res = await call('POST', '/api/v1/device/auth/token', {
      body: {
        deviceId,
        challenge,
        signature: signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, key),
      },
    });
    return { ...res, token: res.body?.token };
  }

  return {
    app: c.app,
    db,
    clock,
    images,
    call,
    tokens,
    admin: as(tokens.admin),
    operator: as(tokens.operator),
    viewer: as(tokens.viewer),
    enrol,
    deviceLogin,
    catalogApps,
  };
}

function device(token: string | undefined) {
  return { authorization: `Bearer ${token}` };
}

for (const target of CENTER_TARGETS) {
  test(`fleet admin API on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test('groups, apps and profiles: CRUD, audit, conflicts', async (t) => {
      const c = await center(t, await newUrl(t));
      const group = await c.admin('POST', '/groups', { name: 'Sales', description: 'EMEA' }, 201);
      assert.equal(group.body.name, 'Sales');
      assert.equal(group.body.devices, 0);
      assert.equal(
        (await c.admin('POST', '/groups', { name: 'Sales' })).body.error.code,
        'ERR_NAME_TAKEN',
      );
      const renamed = await c.admin('PATCH', `/groups/${group.body.id}`, { name: 'Sales EU' }, 200);
      assert.equal(renamed.body.name, 'Sales EU');
      assert.equal(renamed.body.description, 'EMEA');
      const listed = await c.viewer('GET', '/groups', undefined, 200);
      assert.deepEqual(
        listed.body.groups.map((g: { name: string }) => g.name),
        ['Sales EU'],
      );

      const { office, cad } = await c.catalogApps();
      // An app needs an app image; a system image or a missing one is a 400 naming the field.
      const wrongKind = await c.admin('POST', '/apps', {
        name: 'x',
        displayName: 'X',
        imageId: c.images.system,
      });
      assert.equal(wrongKind.status, 400);
      assert.match(wrongKind.body.error.message, /^body\.imageId: .*system/);
      const missing = await c.admin('POST', '/apps', {
        name: 'x',
        displayName: 'X',
        imageId: newId(START),
      });
      assert.equal(missing.status, 400);
      assert.match(missing.body.error.message, /^body\.imageId: no image/);

      const work = await c.admin(
        'POST',
        '/profiles',
        {
          name: 'work',
          systemImageId: c.images.system,
          apps: [
            { appId: office.body.id, mode: 'default' },
            { appId: cad.body.id, mode: 'optional' },
          ],
          isolation: {
            network: 'restricted',
            allowedEndpoints: [{ host: 'vpn.example', port: 443 }],
            encryptData: true,
          },
          healthCheck: { timeoutSeconds: 60, command: ['/bin/true'] },
          leaseDays: 14,
          cpus: 2,
          memoryMib: 4096,
          resetPolicy: 'on-boot',
        },
        201,
      );
      assert.equal(work.body.isolation.network, 'restricted');
      assert.equal(work.body.isolation.clipboard, false, 'policy defaults filled in');
      assert.equal(work.body.apps.length, 2);
      const got = await c.viewer('GET', `/profiles/${work.body.id}`, undefined, 200);
      assert.deepEqual(got.body, work.body);
      // The profile's system image must be a system image.
      const badSystem = await c.admin('POST', '/profiles', {
        name: 'personal',
        systemImageId: c.images.app,
      });
      assert.equal(badSystem.status, 400);
      assert.match(badSystem.body.error.message, /^body\.systemImageId: /);
      const badApp = await c.admin('POST', '/profiles', {
        name: 'personal',
        systemImageId: c.images.system,
        apps: [{ appId: newId(START), mode: 'optional' }],
      });
      assert.equal(badApp.status, 400);
      assert.match(badApp.body.error.message, /^body\.apps\.0\.appId: no app/);

      // An app a profile offers cannot go; nor a profile a device holds; nor a group with devices.
      assert.equal((await c.admin('DELETE', `/apps/${cad.body.id}`)).body.error.code, 'ERR_IN_USE');
      const pc = await c.enrol(group.body.id);
      await c.operator('PATCH', `/devices/${pc.deviceId}`, { profiles: [work.body.id] }, 200);
      const inUse = await c.admin('DELETE', `/profiles/${work.body.id}`);
      assert.equal(inUse.status, 409);
      assert.equal(inUse.body.error.code, 'ERR_IN_USE');
      const full = await c.admin('DELETE', `/groups/${group.body.id}`);
      assert.equal(full.status, 409);
      assert.match(full.body.error.message, /1 device/);

      // Dropping cad from the profile frees it.
      await c.admin(
        'PATCH',
        `/profiles/${work.body.id}`,
        { apps: [{ appId: office.body.id, mode: 'default' }] },
        200,
      );
      await c.admin('DELETE', `/apps/${cad.body.id}`, undefined, 204);
      assert.equal((await c.viewer('GET', `/apps/${cad.body.id}`)).status, 404);
      const empty = await c.admin('POST', '/groups', { name: 'Empty' }, 201);
      await c.admin('DELETE', `/groups/${empty.body.id}`, undefined, 204);

      const audit = await c.viewer('GET', '/audit?limit=100', undefined, 200);
      const actions = audit.body.entries.map((e: { action: string }) => e.action);
      for (const action of [
        'group.create',
        'group.update',
        'group.delete',
        'app.create',
        'app.delete',
        'profile.create',
        'profile.update',
        'device.update',
        'enrolment-token.create',
      ]) {
        assert.ok(actions.includes(action), `audit has ${action}`);
      }
      const update = audit.body.entries.find(
        (e: { action: string }) => e.action === 'group.update',
      );
      assert.equal(update.actor, 'user:root');
      assert.equal(update.before.name, 'Sales');
      assert.equal(update.after.name, 'Sales EU');
    });

    await t.test('validation names the field; roles are enforced', async (t) => {
      const c = await center(t, await newUrl(t));
      const unknown = await c.admin('POST', '/groups', { name: 'A', colour: 'red' });
      assert.equal(unknown.status, 400);
      assert.match(unknown.body.error.message, /unknown field "colour"/);
      const lease = await c.admin('POST', '/profiles', {
        name: 'work',
        systemImageId: c.images.system,
        leaseDays: 400,
      });
      assert.equal(lease.status, 400);
      assert.match(lease.body.error.message, /body\.leaseDays/);
      const policy = await c.admin('POST', '/profiles', {
        name: 'work',
        systemImageId: c.images.system,
        isolation: { network: 'open' },
      });
      assert.equal(policy.status, 400);
      assert.match(policy.body.error.message, /body\.isolation\.network/);
      const health = await c.admin('POST', '/profiles', {
        name: 'work',
        systemImageId: c.images.system,
        healthCheck: { timeoutSeconds: 1 },
      });
      assert.match(health.body.error.message, /body\.healthCheck\.timeoutSeconds/);
      const badName = await c.admin('POST', '/profiles', {
        name: 'Work VM',
        systemImageId: c.images.system,
      });
      assert.match(badName.body.error.message, /body\.name/);
      const uses = await c.operator('POST', '/enrolment-tokens', {
        groupId: newId(START),
        uses: 0,
      });
      assert.match(uses.body.error.message, /body\.uses/);
      const noGroup = await c.operator('POST', '/enrolment-tokens', { groupId: newId(START) });
      assert.equal(noGroup.status, 400);
      assert.match(noGroup.body.error.message, /^body\.groupId: no device group/);
      const restart = await c.operator('POST', `/devices/${newId(START)}/commands`, {
        kind: 'restart-vm',
      });
      assert.equal(restart.status, 400);
      assert.match(restart.body.error.message, /profileId/);
      assert.equal((await c.viewer('GET', '/devices?limit=501')).status, 400);
      const cursor = await c.viewer('GET', '/devices?cursor=bm9wZQ');
      assert.equal(cursor.status, 400);
      assert.match(cursor.body.error.message, /querystring\.cursor/);
      assert.equal((await c.viewer('GET', '/devices/not-an-id')).status, 400);
      assert.equal((await c.viewer('GET', `/devices/${newId(START)}`)).status, 404);

      // Roles: a viewer reads but changes nothing; an operator runs devices, not the catalog.
      const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
      for (const [method, path, body] of [
        ['POST', '/groups', { name: 'H' }],
        ['POST', '/enrolment-tokens', { groupId: group.body.id }],
        ['POST', `/devices/${newId(START)}/commands`, { kind: 'lock' }],
        ['DELETE', `/devices/${newId(START)}`, undefined],
      ] as const) {
        const res = await c.viewer(method, path, body);
        assert.equal(res.status, 403, `${method} ${path}`);
        assert.equal(res.body.error.code, 'ERR_FORBIDDEN');
      }
      assert.equal((await c.operator('POST', '/groups', { name: 'H' })).status, 403);
      assert.equal(
        (await c.operator('POST', '/profiles', { name: 'w', systemImageId: c.images.system }))
          .status,
        403,
      );
      assert.equal(
        (await c.operator('PATCH', `/groups/${group.body.id}`, { name: 'I' })).status,
        403,
      );
      for (const path of ['/groups', '/apps', '/profiles', '/devices', '/enrolment-tokens']) {
        assert.equal((await c.call('GET', `/api/v1/admin${path}`)).status, 401, path);
        assert.equal((await c.viewer('GET', path)).status, 200, path);
      }
    });

    await t.test(
      "a profile's machine: Secure Boot only with UEFI; the desired VM carries it, with a key for its TPM",
      async (t) => {
        const c = await center(t, await newUrl(t));
        await insertVersion(c.db, c.images.system, '1', c.clock.ms, { release: true });
        const bad = await c.admin('POST', '/profiles', {
          name: 'win',
          systemImageId: c.images.system,
          machine: { secureBoot: true },
        });
        assert.equal(bad.status, 400);
        assert.match(
          bad.body.error.message,
          /body\.machine\.secureBoot: Secure Boot needs firmware uefi/,
        );
        const plain = await c.admin(
          'POST',
          '/profiles',
          { name: 'plain', systemImageId: c.images.system },
          201,
        );
        assert.deepEqual(plain.body.machine, {
          firmware: 'bios',
          secureBoot: false,
          tpm: false,
          os: 'linux',
          devices: 'virtio',
        });
        const win = await c.admin(
          'POST',
          '/profiles',
          {
            name: 'win',
            systemImageId: c.images.system,
            machine: { firmware: 'uefi', secureBoot: true, tpm: true, os: 'windows' },
          },
          201,
        );
        const badEdit = await c.admin('PATCH', `/profiles/${win.body.id}`, {
          machine: { firmware: 'bios', secureBoot: true },
        });
        assert.equal(badEdit.status, 400);
        assert.match(badEdit.body.error.message, /body\.machine\.secureBoot/);

        const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
        const pc = await c.enrol(group.body.id);
        await c.operator(
          'PATCH',
          `/devices/${pc.deviceId}`,
          { profiles: [win.body.id, plain.body.id] },
          200,
        );
        const res = await c.app.inject({
          method: 'GET',
          url: '/api/v1/device/desired-state',
          headers: device(pc.bearer.token),
        });
        assert.equal(res.statusCode, 200);
        const body = res.json() as {
          state: { vms: DesiredVm[] };
          wrappedKeys?: Record<string, string>;
        };
        const vms = body.state.vms;
        const winVm = vms.find((v) => v.name === 'win');
        const plainVm = vms.find((v) => v.name === 'plain');
        assert.ok(winVm && plainVm, `both VMs: ${vms.map((v) => v.name).join(', ')}`);
        assert.deepEqual(winVm.machine, {
          firmware: 'uefi',
          secureBoot: true,
          tpm: true,
          os: 'windows',
          devices: 'virtio',
        });
        assert.equal(winVm.policy.encryptData, false);
        assert.ok(
          winVm.wrappedDataKeyDigest && body.wrappedKeys?.[winVm.profileId],
          'a VM with a TPM gets the key its TPM state is encrypted with',
        );
        assert.equal(plainVm.machine, undefined, 'a default machine leaves the document as it was');
        assert.equal(plainVm.wrappedDataKeyDigest, undefined);
        assert.equal(body.wrappedKeys?.[plainVm.profileId], undefined);
      },
    );

    await t.test(
      "an optional app added or removed changes that device's desired state alone",
      async (t) => {
        const c = await center(t, await newUrl(t));
        await insertVersion(c.db, c.images.system, '1', c.clock.ms, { release: true });
        await insertVersion(c.db, c.images.app2, '1', c.clock.ms, { release: true });
        const { cad } = await c.catalogApps();
        const work = await c.admin(
          'POST',
          '/profiles',
          {
            name: 'work',
            systemImageId: c.images.system,
            apps: [{ appId: cad.body.id, mode: 'optional' }],
          },
          201,
        );
        const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
        const [pc, other] = [await c.enrol(group.body.id, 'pc'), await c.enrol(group.body.id)];
        for (const d of [pc, other]) {
          await c.operator('PATCH', `/devices/${d.deviceId}`, { profiles: [work.body.id] }, 200);
        }
        const desired = (d: typeof pc, etag?: string) =>
          c.app.inject({
            method: 'GET',
            url: '/api/v1/device/desired-state',
            headers: { ...device(d.bearer.token), ...(etag ? { 'if-none-match': etag } : {}) },
          });
        const vmOf = (res: Awaited<ReturnType<typeof desired>>) =>
          (res.json() as { state: { vms: DesiredVm[] } }).state.vms[0]!;
        const systemAt = async () =>
          c.db
            .selectFrom('images')
            .select(['updated_at', 'release_version_id'])
            .where('id', '=', c.images.system)
            .executeTakeFirstOrThrow();
        const base = await systemAt();
        const pcFirst = await desired(pc);
        const otherFirst = await desired(other);
        assert.deepEqual(vmOf(pcFirst).apps, []);
        const otherEtag = otherFirst.headers.etag as string;

        c.clock.ms += 1000;
        await c.operator(
          'PATCH',
          `/devices/${pc.deviceId}`,
          { apps: [{ profileId: work.body.id, appId: cad.body.id }] },
          200,
        );
        const added = await desired(pc, pcFirst.headers.etag as string);
        assert.equal(added.statusCode, 200, 'the device with the app gets a new document');
        assert.deepEqual(
          vmOf(added).apps.map((a) => `${a.name}=${a.image}@${a.version}`),
          ['cad=cad-vol@1'],
        );
        assert.deepEqual(vmOf(added).system, vmOf(pcFirst).system, 'the same base version');
        const untouched = await desired(other, otherEtag);
        assert.equal(untouched.statusCode, 304, "the other device's document is unchanged");
        assert.equal(untouched.headers.etag, otherEtag);

        c.clock.ms += 1000;
        await c.operator('PATCH', `/devices/${pc.deviceId}`, { apps: [] }, 200);
        const removed = await desired(pc, added.headers.etag as string);
        assert.equal(removed.statusCode, 200);
        assert.deepEqual(vmOf(removed).apps, []);
        assert.deepEqual(vmOf(removed).system, vmOf(pcFirst).system);
        assert.equal((await desired(other, otherEtag)).statusCode, 304);
        assert.deepEqual(await systemAt(), base, 'the base image was not republished');
      },
    );

    await t.test(
      "the PC's user chooses optional apps only where the profile lets them, audited as the device",
      async (t) => {
        const c = await center(t, await newUrl(t));
        await insertVersion(c.db, c.images.system, '1', c.clock.ms, { release: true });
        await insertVersion(c.db, c.images.app2, '1', c.clock.ms, { release: true });
        await insertVersion(c.db, c.images.app, '1', c.clock.ms, { release: true });
        const { office, cad } = await c.catalogApps();
        const work = await c.admin(
          'POST',
          '/profiles',
          {
            name: 'work',
            systemImageId: c.images.system,
            apps: [
              { appId: cad.body.id, mode: 'optional' },
              { appId: office.body.id, mode: 'default' },
            ],
          },
          201,
        );
        assert.equal(work.body.userChoosesApps, false, 'administrators choose unless told');
        const other = await c.admin(
          'POST',
          '/profiles',
          { name: 'other', systemImageId: c.images.system, userChoosesApps: true },
          201,
        );
        const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
        const [pc, neighbour] = [await c.enrol(group.body.id, 'pc'), await c.enrol(group.body.id)];
        for (const d of [pc, neighbour]) {
          await c.operator('PATCH', `/devices/${d.deviceId}`, { profiles: [work.body.id] }, 200);
        }
        const choose = (body: unknown, token = pc.bearer.token) =>
          c.app.inject({
            method: 'PUT',
            url: '/api/v1/device/apps',
            headers: device(token),
            payload: body as Record<string, unknown>,
          });
        const desired = (d: typeof pc, etag?: string) =>
          c.app.inject({
            method: 'GET',
            url: '/api/v1/device/desired-state',
            headers: { ...device(d.bearer.token), ...(etag ? { 'if-none-match': etag } : {}) },
          });
        const appsOf = (res: Awaited<ReturnType<typeof desired>>) =>
          (res.json() as { state: { vms: DesiredVm[] } }).state.vms[0]!.apps.map((a) => a.name);

        const refused = await choose({ profileId: work.body.id, apps: ['cad'] });
        assert.equal(refused.statusCode, 403, refused.body);
        assert.equal(refused.json().error.code, 'ERR_FORBIDDEN');
        assert.match(refused.json().error.message, /"work" leaves the choice of apps to admin/);
        assert.equal(
          (await c.app.inject({ method: 'PUT', url: '/api/v1/device/apps', payload: {} }))
            .statusCode,
          401,
          'only a device, with its token',
        );

        const edited = await c.admin(
          'PATCH',
          `/profiles/${work.body.id}`,
          { userChoosesApps: true },
          200,
        );
        assert.equal(edited.body.userChoosesApps, true);
        const pcFirst = await desired(pc);
        assert.deepEqual(appsOf(pcFirst), ['office']);
        const neighbourFirst = await desired(neighbour);

        c.clock.ms += 1000;
        const chosen = await choose({ profileId: work.body.id, apps: ['cad'] });
        assert.equal(chosen.statusCode, 200, chosen.body);
        assert.deepEqual(chosen.json(), {
          profileId: work.body.id,
          chosen: ['cad'],
          offered: ['cad'],
        });
        const after = await desired(pc, pcFirst.headers.etag as string);
        assert.equal(after.statusCode, 200);
        assert.deepEqual(appsOf(after), ['cad', 'office']);
        assert.equal(
          (await desired(neighbour, neighbourFirst.headers.etag as string)).statusCode,
          304,
          "the neighbour's document is unchanged",
        );
        const detail = await c.viewer('GET', `/devices/${pc.deviceId}`, undefined, 200);
        assert.deepEqual(
          detail.body.apps.map((a: { name: string }) => a.name),
          ['cad'],
          'administrators see the choice',
        );

        const notOffered = await choose({ profileId: work.body.id, apps: ['office'] });
        assert.equal(notOffered.statusCode, 400);
        assert.match(
          notOffered.json().error.message,
          /body\.apps\.0: "office" is not an optional app of profile "work"; it offers cad/,
        );
        const notHeld = await choose({ profileId: other.body.id, apps: [] });
        assert.equal(notHeld.statusCode, 400);
        assert.match(notHeld.json().error.message, /body\.profileId: this device does not run/);
        const tooMany = await choose({ profileId: work.body.id, apps: ['cad', 'cad'] });
        assert.equal(tooMany.statusCode, 400);

        assert.equal((await choose({ profileId: work.body.id, apps: [] })).statusCode, 200);
        const audit = await c.viewer('GET', '/audit?limit=100', undefined, 200);
        const entries = audit.body.entries.filter(
          (e: { action: string }) => e.action === 'device.apps.choose',
        );
        assert.equal(entries.length, 2, 'one entry per change, none for refusals');
        for (const entry of entries) {
          assert.equal(entry.actor, `device:${pc.deviceId}`);
          assert.equal(entry.targetId, pc.deviceId);
        }
        assert.ok(
          entries.some(
            (e: { before: unknown; after: unknown }) =>
              JSON.stringify(e.before) === '{"profile":"work","apps":[]}' &&
              JSON.stringify(e.after) === '{"profile":"work","apps":["cad"]}',
          ),
        );
      },
    );

    await t.test(
      'personal profiles: images offered, refused apps and networks, no key in the desired state',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const { office } = await c.catalogApps();
        const mine = await c.admin(
          'POST',
          '/profiles',
          {
            name: 'mine',
            kind: 'personal',
            systemImageId: c.images.system,
            personalImageIds: [c.images.system2],
          },
          201,
        );
        assert.equal(mine.body.kind, 'personal');
        assert.deepEqual(mine.body.personalImageIds, [c.images.system, c.images.system2]);
        const listed = await c.viewer('GET', `/profiles/${mine.body.id}`, undefined, 200);
        assert.deepEqual(listed.body.personalImageIds, [c.images.system, c.images.system2]);
        const work = await c.admin(
          'POST',
          '/profiles',
          { name: 'work', systemImageId: c.images.system, isolation: { encryptData: true } },
          201,
        );
        assert.equal(work.body.kind, 'work');
        assert.deepEqual(work.body.personalImageIds, []);

        // What a personal profile may not have, each named.
        for (const [body, field] of [
          [{ apps: [{ appId: office.body.id, mode: 'default' }] }, 'apps'],
          [{ isolation: { network: 'restricted' } }, 'isolation.network'],
          [{ isolation: { encryptData: true } }, 'isolation.encryptData'],
        ] as const) {
          const res = await c.admin('POST', '/profiles', {
            name: 'bad',
            kind: 'personal',
            systemImageId: c.images.system,
            ...body,
          });
          assert.equal(res.status, 400, JSON.stringify(res.body));
          assert.equal(res.body.error.code, 'ERR_VALIDATION');
          assert.match(res.body.error.message, new RegExp(field.replace('.', '\\.')));
        }
        const offeredToWork = await c.admin('POST', '/profiles', {
          name: 'bad',
          systemImageId: c.images.system,
          personalImageIds: [c.images.system2],
        });
        assert.equal(offeredToWork.status, 400);
        assert.match(offeredToWork.body.error.message, /personalImageIds.*kind personal/);
        const appImage = await c.admin('POST', '/profiles', {
          name: 'bad',
          kind: 'personal',
          systemImageId: c.images.system,
          personalImageIds: [c.images.app],
        });
        assert.equal(appImage.status, 400);
        assert.match(appImage.body.error.message, /^body\.personalImageIds\.0: /);
        const editNet = await c.admin('PATCH', `/profiles/${mine.body.id}`, {
          isolation: { network: 'none' },
        });
        assert.equal(editNet.status, 400);
        assert.match(editNet.body.error.message, /^body\.isolation\.network: /);
        const editWork = await c.admin('PATCH', `/profiles/${work.body.id}`, {
          personalImageIds: [c.images.system2],
        });
        assert.equal(editWork.status, 400);
        const narrowed = await c.admin(
          'PATCH',
          `/profiles/${mine.body.id}`,
          { personalImageIds: [] },
          200,
        );
        assert.deepEqual(narrowed.body.personalImageIds, [c.images.system]);
        await c.admin(
          'PATCH',
          `/profiles/${mine.body.id}`,
          { personalImageIds: [c.images.system2] },
          200,
        );

        // The desired state lists the offered images' released versions, and no key.
        await insertVersion(c.db, c.images.system, '12.1', c.clock.ms, { release: true });
        await insertVersion(c.db, c.images.system2, '13.0', c.clock.ms, { release: true });
        const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
        const pc = await c.enrol(group.body.id);
        await c.operator(
          'PATCH',
          `/devices/${pc.deviceId}`,
          { profiles: [mine.body.id, work.body.id] },
          200,
        );
        const res = await c.app.inject({
          method: 'GET',
          url: '/api/v1/device/desired-state',
          headers: device(pc.bearer.token),
        });
        assert.equal(res.statusCode, 200);
        const vms = (res.json() as { state: { vms: DesiredVm[] } }).state.vms;
        const personalVm = vms.find((v) => v.name === 'mine');
        const workVm = vms.find((v) => v.name === 'work');
        assert.ok(personalVm && workVm);
        assert.deepEqual(
          personalVm.personal?.images.map((i) => `${i.image}@${i.version}`),
          ['debian@12.1', 'debian-next@13.0'],
        );
        assert.equal(
          personalVm.wrappedDataKeyDigest,
          undefined,
          "the personal VM's key is never Center's",
        );
        assert.equal(personalVm.keyUnavailable, undefined, 'nor is one said to be missing');
        assert.equal(personalVm.policy.network, 'nat');
        assert.equal(workVm.personal, undefined);
        assert.ok(
          workVm.wrappedDataKeyDigest ?? workVm.keyUnavailable,
          'the work VM still gets its escrowed key (or the reason it cannot)',
        );
      },
    );

    await t.test('enrolment tokens: shown once, listed without the secret, revoked', async (t) => {
      const c = await center(t, await newUrl(t));
      const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
      const created = await c.operator(
        'POST',
        '/enrolment-tokens',
        { groupId: group.body.id, uses: 3, expiresInHours: 2, note: 'lab' },
        201,
      );
      assert.match(created.body.token, /^bhe_[A-Za-z0-9_-]{43}$/);
      assert.equal(created.body.usesLeft, 3);
      assert.equal(created.body.expiresAt, START + 2 * 3600_000);
      const list = await c.viewer('GET', '/enrolment-tokens', undefined, 200);
      assert.equal(list.body.tokens.length, 1);
      assert.ok(!JSON.stringify(list.body).includes(created.body.token));
      const audit = await c.viewer('GET', '/audit', undefined, 200);
      assert.ok(!JSON.stringify(audit.body).includes(created.body.token), 'secret not audited');
      await c.operator('DELETE', `/enrolment-tokens/${created.body.id}`, undefined, 204);
      const refused = await c.call('POST', '/api/v1/device/enrol', {
        body: {
          token: created.body.token,
          publicKey: generateKeyPairSync('ed25519')
            .publicKey.export({ type: 'spki', format: 'pem' })
            .toString(),
          encryptionKey: encryptionKeyPem(),
          inventory: { hostname: 'x' },
        },
      });
      assert.equal(refused.status, 401);
      assert.equal(
        (await c.operator('DELETE', `/enrolment-tokens/${created.body.id}`)).status,
        404,
      );
    });

    await t.test(
      'devices: detail, profiles and optional apps, bumps, filters, retire',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const g1 = await c.admin('POST', '/groups', { name: 'One' }, 201);
        const g2 = await c.admin('POST', '/groups', { name: 'Two' }, 201);
        const { office, cad } = await c.catalogApps();
        const work = await c.admin(
          'POST',
          '/profiles',
          {
            name: 'work',
            systemImageId: c.images.system,
            apps: [
              { appId: office.body.id, mode: 'default' },
              { appId: cad.body.id, mode: 'optional' },
            ],
          },
          201,
        );
        const personal = await c.admin(
          'POST',
          '/profiles',
          { name: 'personal', systemImageId: c.images.system },
          201,
        );
        const a = await c.enrol(g1.body.id, 'Alpha');
        c.clock.ms += 1000;
        const b = await c.enrol(g1.body.id, 'beta');
        c.clock.ms += 1000;
        const d = await c.enrol(g2.body.id, 'Gamma');

        const updatedAt = async (id: string) =>
          Number(
            (
              await c.db
                .selectFrom('devices')
                .select('updated_at')
                .where('id', '=', id)
                .executeTakeFirstOrThrow()
            ).updated_at,
          );
        const before = await updatedAt(a.deviceId);
        // Only an optional app of a held profile may be chosen.
        const notHeld = await c.operator('PATCH', `/devices/${a.deviceId}`, {
          apps: [{ profileId: work.body.id, appId: cad.body.id }],
        });
        assert.equal(notHeld.status, 400);
        assert.match(notHeld.body.error.message, /^body\.apps\.0\.profileId: /);
        const notOptional = await c.operator('PATCH', `/devices/${a.deviceId}`, {
          profiles: [work.body.id],
          apps: [{ profileId: work.body.id, appId: office.body.id }],
        });
        assert.equal(notOptional.status, 400);
        assert.match(notOptional.body.error.message, /^body\.apps\.0\.appId: not an optional app/);
        const patched = await c.operator(
          'PATCH',
          `/devices/${a.deviceId}`,
          {
            name: 'Alpha 2',
            profiles: [work.body.id, personal.body.id],
            apps: [{ profileId: work.body.id, appId: cad.body.id }],
          },
          200,
        );
        assert.equal(patched.body.name, 'Alpha 2');
        assert.deepEqual(
          patched.body.profiles.map((p: { name: string }) => p.name),
          ['personal', 'work'],
        );
        assert.deepEqual(patched.body.apps, [
          { profileId: work.body.id, appId: cad.body.id, name: 'cad' },
        ]);
        // Each profile with what it should run, by name: released versions of the system image
        // and of the apps (the default one and the chosen one); nothing reported yet.
        const at = c.clock.ms;
        await insertVersion(c.db, c.images.system, '12.1', at, { release: true });
        await insertVersion(c.db, c.images.app, '3', at, { release: true });
        await insertVersion(c.db, c.images.app2, '7', at, { release: true });
        const named = await c.viewer('GET', `/devices/${a.deviceId}`, undefined, 200);
        const target = (p: {
          target: {
            system: { image: string; version: string } | null;
            apps: { image: string; version: string }[];
          };
        }) =>
          [p.target.system, ...p.target.apps].map((v) => (v ? `${v.image}@${v.version}` : null));
        assert.deepEqual(
          named.body.profiles.map(
            (p: { name: string; current: unknown; lease: { days: number } }) => [
              p.name,
              p.current,
              p.lease.days,
              target(p as never),
            ],
          ),
          [
            ['personal', null, 30, ['debian@12.1']],
            ['work', null, 30, ['debian@12.1', 'cad-vol@7', 'office-vol@3']],
          ],
        );
        assert.deepEqual(named.body.versionNames, {});
        const listed = await c.viewer('GET', `/devices?groupId=${g1.body.id}`, undefined, 200);
        const row = listed.body.devices.find((x: { id: string }) => x.id === a.deviceId);
        assert.deepEqual(row.group, { id: g1.body.id, name: 'One' });
        assert.deepEqual(
          row.profiles.map((p: { name: string; current: unknown }) => [p.name, p.current]),
          [
            ['personal', null],
            ['work', null],
          ],
        );
        const bumped = await updatedAt(a.deviceId);
        assert.ok(bumped > before, 'a change moves updated_at');
        // Two changes in one millisecond still move it forward.
        await c.operator('PATCH', `/devices/${a.deviceId}`, { name: 'Alpha 3' }, 200);
        assert.equal(await updatedAt(a.deviceId), bumped + 1);

        // A profile change bumps every device holding it, and only those.
        await c.operator('PATCH', `/devices/${b.deviceId}`, { profiles: [personal.body.id] }, 200);
        const [ta, tb, td] = [
          await updatedAt(a.deviceId),
          await updatedAt(b.deviceId),
          await updatedAt(d.deviceId),
        ];
        c.clock.ms += 1000;
        await c.admin('PATCH', `/profiles/${work.body.id}`, { leaseDays: 7 }, 200);
        assert.ok((await updatedAt(a.deviceId)) > ta);
        assert.equal(await updatedAt(b.deviceId), tb);
        assert.equal(await updatedAt(d.deviceId), td);
        // Dropping a profile drops the app choices within it.
        const dropped = await c.operator(
          'PATCH',
          `/devices/${a.deviceId}`,
          { profiles: [personal.body.id] },
          200,
        );
        assert.deepEqual(dropped.body.apps, []);

        const names = (res: Res) => res.body.devices.map((x: { name: string }) => x.name);
        assert.deepEqual(names(await c.viewer('GET', '/devices', undefined, 200)), [
          'Alpha 3',
          'beta',
          'Gamma',
        ]);
        assert.deepEqual(names(await c.viewer('GET', `/devices?groupId=${g1.body.id}`)), [
          'Alpha 3',
          'beta',
        ]);
        assert.deepEqual(names(await c.viewer('GET', `/devices?profileId=${personal.body.id}`)), [
          'Alpha 3',
          'beta',
        ]);
        assert.deepEqual(names(await c.viewer('GET', '/devices?q=AL')), ['Alpha 3']);
        assert.deepEqual(names(await c.viewer('GET', '/devices?q=%25')), []);
        assert.deepEqual(
          names(await c.viewer('GET', `/devices?lastContactBefore=${START + 1500}`)),
          ['Alpha 3', 'beta'],
        );

        const detail = await c.viewer('GET', `/devices/${d.deviceId}`, undefined, 200);
        assert.equal(detail.body.group.name, 'Two');
        assert.deepEqual(detail.body.inventory, { hostname: 'Gamma' });
        assert.deepEqual(detail.body.pendingCommands, []);

        await c.operator('DELETE', `/devices/${d.deviceId}`, undefined, 204);
        assert.deepEqual(names(await c.viewer('GET', '/devices?state=retired')), ['Gamma']);
        const refused = await c.deviceLogin(d.deviceId, d.key);
        assert.equal(refused.status, 403);
        const retired = (await c.viewer('GET', '/audit')).body.entries.find(
          (e: { action: string }) => e.action === 'device.retire',
        );
        assert.equal(retired.actor, 'user:ops');
        assert.equal(retired.before.state, 'active');
        assert.equal(retired.after.state, 'retired');
      },
    );

    await t.test(
      'commands: lock, a kill cuts off at once, results from the device only',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
        const pc = await c.enrol(group.body.id);
        const other = await c.enrol(group.body.id);
        const desired = (token: string | undefined, etag?: string) =>
          c.app.inject({
            method: 'GET',
            url: '/api/v1/device/desired-state',
            headers: { ...device(token), ...(etag ? { 'if-none-match': etag } : {}) },
          });
        const report = (token: string | undefined, events: unknown[]) =>
          c.app.inject({
            method: 'POST',
            url: '/api/v1/device/reports',
            headers: device(token),
            payload: { events },
          });

        const first = await desired(pc.bearer.token);
        assert.equal(first.statusCode, 200);
        const lock = await c.operator(
          'POST',
          `/devices/${pc.deviceId}/commands`,
          { kind: 'lock' },
          201,
        );
        assert.equal(lock.body.state, 'pending');
        const locked = await desired(pc.bearer.token, first.headers.etag as string);
        assert.equal(locked.statusCode, 200, 'the ETag changed');
        assert.equal(locked.json().state.device.state, 'locked');
        assert.deepEqual(
          locked.json().state.commands.map((x: { id: string }) => x.id),
          [lock.body.id],
        );

        // Another device cannot settle this command; a malformed result is refused whole.
        const foreign = await report(other.bearer.token, [
          {
            id: 'e1',
            type: 'command-result',
            at: START,
            data: { commandId: lock.body.id, kind: 'lock', ok: true, message: 'locked' },
          },
        ]);
        assert.equal(foreign.statusCode, 200, foreign.body);
        const malformed = await report(pc.bearer.token, [
          { id: 'e2', type: 'command-result', at: START, data: { commandId: lock.body.id } },
        ]);
        assert.equal(malformed.statusCode, 400, malformed.body);
        assert.match(malformed.json().error.message, /events\.0\.data\.(kind|ok)/);
        assert.equal(
          (await c.viewer('GET', `/devices/${pc.deviceId}/commands`)).body.commands[0].state,
          'pending',
        );
        const acked = await report(pc.bearer.token, [
          {
            id: 'e3',
            type: 'command-result',
            at: START,
            data: { commandId: lock.body.id, kind: 'lock', ok: true, message: 'locked' },
          },
        ]);
        assert.equal(acked.statusCode, 200, acked.body);
        const commands = (await c.viewer('GET', `/devices/${pc.deviceId}/commands`, undefined, 200))
          .body.commands;
        assert.equal(commands[0].state, 'done');
        assert.deepEqual(commands[0].result, { ok: true, message: 'locked' });
        const after = await desired(pc.bearer.token, locked.headers.etag as string);
        assert.equal(after.statusCode, 200);
        assert.deepEqual(after.json().state.commands, []);

        // A restart must name a VM the device runs.
        const restart = await c.operator('POST', `/devices/${pc.deviceId}/commands`, {
          kind: 'restart-vm',
          profileId: newId(START),
        });
        assert.equal(restart.status, 400);
        assert.match(restart.body.error.message, /^body\.profileId: /);

        // Kill: the device is cut off at once, acknowledged or not; it learns of the kill from
        // a signed notice, and answers it through the one route that takes it.
        const unlock = await c.operator(
          'POST',
          `/devices/${pc.deviceId}/commands`,
          { kind: 'unlock' },
          201,
        );
        const kill = await c.operator(
          'POST',
          `/devices/${pc.deviceId}/commands`,
          { kind: 'kill' },
          201,
        );
        const killedDetail = (await c.viewer('GET', `/devices/${pc.deviceId}`)).body;
        assert.equal(killedDetail.state, 'killed');
        assert.deepEqual(
          killedDetail.pendingCommands.map((x: { id: string }) => x.id),
          [kill.body.id],
        );
        const cancelled = (
          await c.viewer('GET', `/devices/${pc.deviceId}/commands`)
        ).body.commands.find((x: { id: string }) => x.id === unlock.body.id);
        assert.equal(cancelled.state, 'cancelled');
        const again = await c.operator('POST', `/devices/${pc.deviceId}/commands`, {
          kind: 'lock',
        });
        assert.equal(again.status, 409);
        assert.equal(again.body.error.code, 'ERR_DEVICE_STATE');
        const killDoc = await desired(pc.bearer.token);
        assert.equal(killDoc.statusCode, 403, 'no desired state, though its token still lives');
        assert.equal(killDoc.json().error.code, 'ERR_DEVICE_KILLED');
        assert.equal(killDoc.json().error.details.notice.notice.commandId, kill.body.id);
        const relogin = await c.deviceLogin(pc.deviceId, pc.key);
        assert.equal(relogin.status, 403, 'a killed device gets no token');
        assert.equal(relogin.body.error.details.notice.notice.commandId, kill.body.id);
        const event = {
          id: 'e4',
          type: 'command-result',
          at: START,
          data: { commandId: kill.body.id, kind: 'kill', ok: true, message: 'every VM stopped' },
        };
        const refused = await report(pc.bearer.token, [event]);
        assert.equal(refused.statusCode, 403, 'nor are its reports taken');
        const ch = (
          await c.call('POST', '/api/v1/device/auth/challenge', {
            body: { deviceId: pc.deviceId },
          })
        ).body.challenge as string;
        const signed = { challenge: ch, deviceId: pc.deviceId, event };
        const killAcked = await c.call('POST', '/api/v1/device/kill-result', {
          body: {
            ...signed,
            signature: signPayload(
              DEVICE_SIGNATURE_DOMAINS.killResult,
              canonicalJson(signed),
              pc.key,
            ),
          },
        });
        assert.equal(killAcked.status, 200, JSON.stringify(killAcked.body));
        const settled = (
          await c.viewer('GET', `/devices/${pc.deviceId}/commands`)
        ).body.commands.find((x: { id: string }) => x.id === kill.body.id);
        assert.deepEqual(
          [settled.state, settled.result],
          ['done', { ok: true, message: 'every VM stopped' }],
        );
        assert.equal((await desired(pc.bearer.token)).statusCode, 403);
        assert.equal((await c.deviceLogin(pc.deviceId, pc.key)).status, 403);
        const audit = (await c.viewer('GET', '/audit')).body.entries.map(
          (e: { action: string }) => e.action,
        );
        assert.ok(audit.includes('device.kill') && audit.includes('device.lock'));
      },
    );

    await t.test('a settled command is gone from the very next poll of the device', async (t) => {
      const c = await center(t, await newUrl(t));
      const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
      const pc = await c.enrol(group.body.id);
      const headers = (etag?: string) => ({
        ...device(pc.bearer.token),
        ...(etag ? { 'if-none-match': etag } : {}),
      });
      const desired = (etag?: string) =>
        c.app.inject({
          method: 'GET',
          url: '/api/v1/device/desired-state',
          headers: headers(etag),
        });
      // An unlock leaves the device active, whose ETag Center answers from memory.
      const unlock = await c.operator(
        'POST',
        `/devices/${pc.deviceId}/commands`,
        { kind: 'unlock' },
        201,
      );
      const listed = await desired();
      assert.deepEqual(
        listed.json().state.commands.map((x: { id: string }) => x.id),
        [unlock.body.id],
      );
      const etag = listed.headers.etag as string;
      assert.equal((await desired(etag)).statusCode, 304);
      const acked = await c.app.inject({
        method: 'POST',
        url: '/api/v1/device/reports',
        headers: headers(),
        payload: {
          events: [
            {
              id: 'e1',
              type: 'command-result',
              at: START,
              data: { commandId: unlock.body.id, kind: 'unlock', ok: true, message: 'unlocked' },
            },
          ],
        },
      });
      assert.equal(acked.statusCode, 200, acked.body);
      const next = await desired(etag);
      assert.equal(next.statusCode, 200, 'the settled command changed the ETag');
      assert.deepEqual(next.json().state.commands, []);
      assert.ok(next.json().state.revision > listed.json().state.revision);
    });

    await t.test('paging: no duplicates or gaps while devices enrol', async (t) => {
      const c = await center(t, await newUrl(t));
      const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
      // Many devices share an enrolment time, so the id must break ties.
      const insert = async (n: number, at: number) => {
        const rows = Array.from({ length: n }, (_, i) => ({
          id: newId(at),
          name: `pc-${at}-${i}`,
          public_key: `key-${at}-${i}-${Math.random()}`,
          inventory: '{}',
          group_id: group.body.id,
          current_versions: '{}',
          state: 'active' as const,
          enrolled_at: at,
          last_contact_at: at,
          updated_at: at,
        }));
        await c.db.insertInto('devices').values(rows).execute();
        return rows.map((r) => r.id);
      };
      const original = [...(await insert(60, START)), ...(await insert(60, START + 1))];
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const res: Res = await c.viewer(
          'GET',
          `/devices?limit=25${cursor ? `&cursor=${cursor}` : ''}`,
          undefined,
          200,
        );
        seen.push(...res.body.devices.map((x: { id: string }) => x.id));
        cursor = res.body.next;
        pages += 1;
        if (pages === 2) await insert(30, START + 5000);
      } while (cursor !== null);
      assert.equal(new Set(seen).size, seen.length, 'no duplicates');
      for (const id of original) assert.ok(seen.includes(id), 'no gaps');
      assert.equal(seen.length, 150, 'devices enrolled meanwhile come at the end');
    });

    await t.test('the push channel tells a device within a second', async (t) => {
      const c = await center(t, await newUrl(t));
      const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
      const pc = await c.enrol(group.body.id);
      const address = await c.app.listen({ host: '127.0.0.1', port: 0 });
      const open = () =>
        new Promise<IncomingMessage>((resolve, reject) => {
          get(`${address}/api/v1/device/push`, { headers: device(pc.bearer.token) }, resolve).on(
            'error',
            reject,
          );
        });
      const stream = await open();
      assert.equal(stream.statusCode, 200);
      assert.match(String(stream.headers['content-type']), /^text\/event-stream/);
      let text = '';
      const waitFor = (pattern: RegExp, ms: number) =>
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(
            () => reject(new Error(`no ${pattern} in ${ms} ms: ${text}`)),
            ms,
          );
          const check = () => {
            if (pattern.test(text)) {
              clearTimeout(timer);
              stream.off('data', onData);
              resolve();
            }
          };
          const onData = (chunk: Buffer) => {
            text += chunk.toString();
            check();
          };
          stream.on('data', onData);
          check();
        });
      await waitFor(/event: hello\n/, PATIENCE_MS);
      const second = await open();
      assert.equal(second.statusCode, 200);
      const third = await open();
      assert.equal(third.statusCode, 429, 'two connections per device at most');
      third.resume();
      second.destroy();
      const issued = Date.now();
      await c.operator('POST', `/devices/${pc.deviceId}/commands`, { kind: 'lock' }, 201);
      await waitFor(/event: desired-state-changed\n/, PATIENCE_MS);
      // At once, where a poll would take a minute; the margin is for a busy machine.
      assert.ok(Date.now() - issued < 30_000);
      stream.destroy();
      const anonymous = await new Promise<IncomingMessage>((resolve) => {
        get(`${address}/api/v1/device/push`, resolve);
      });
      assert.equal(anonymous.statusCode, 401);
      anonymous.resume();
    });

    await t.test('metrics: devices by state and desired-state checks', async (t) => {
      const c = await center(t, await newUrl(t));
      const group = await c.admin('POST', '/groups', { name: 'G' }, 201);
      const pc = await c.enrol(group.body.id);
      await c.enrol(group.body.id);
      await c.operator('POST', `/devices/${pc.deviceId}/commands`, { kind: 'lock' }, 201);
      const first = await c.app.inject({
        method: 'GET',
        url: '/api/v1/device/desired-state',
        headers: device(pc.bearer.token),
      });
      await c.app.inject({
        method: 'GET',
        url: '/api/v1/device/desired-state',
        headers: { ...device(pc.bearer.token), 'if-none-match': first.headers.etag as string },
      });
      const text = (
        await c.app.inject({
          method: 'GET',
          url: '/metrics',
          headers: { authorization: `Bearer ${METRICS_TOKEN}` },
        })
      ).body;
      assert.match(text, /bulkhead_center_devices\{state="active"\} 1\n/);
      assert.match(text, /bulkhead_center_devices\{state="locked"\} 1\n/);
      assert.match(text, /bulkhead_center_devices\{state="killed"\} 0\n/);
      assert.match(text, /bulkhead_center_desired_state_checks_total\{result="200"\} 1\n/);
      assert.match(text, /bulkhead_center_desired_state_checks_total\{result="304"\} 1\n/);
      assert.match(text, /bulkhead_center_rollouts\{state="halted"\} 0\n/);
    });
  });
}
