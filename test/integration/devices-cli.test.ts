import assert from 'node:assert/strict';
import { encryptionKeyPem } from '../support/keys.ts';
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  createApiClient,
  DEVICE_SIGNATURE_DOMAINS,
  endpoints,
  type ApiClient,
  type DeviceEvent,
  type Inventory,
} from '../../src/protocol/index.ts';
import { signPayload } from '../../src/signing/index.ts';
import { runCli, startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

// Devices as an administrator reads them, the CLI a real process against a real Center
// (`center serve --demo`, so demo-os@1 is released and demo-os@2 published): devices named by
// name, `devices show` in sections with versions by name, `devices list`, `tokens list` and
// `groups list` without ids, usage mistakes that name their flag, and a token from the
// environment sent to the saved session's Center.

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;

interface Pc {
  id: string;
  client: ApiClient;
  auth: { authorization: string };
}

/** Enrols a PC through the device API as Engine does, and gets it a bearer token. */
async function enrolPc(url: string, token: string, name: string, inventory: Inventory) {
  const client = createApiClient({ baseUrl: url });
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const { deviceId } = await client.call(endpoints.enrol, {
    body: {
      token,
      name,
      publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      encryptionKey: encryptionKeyPem(),
      inventory,
    },
  });
  const bearer = await deviceToken(client, deviceId, privateKey);
  return { id: deviceId, client, auth: { authorization: `Bearer ${bearer}` } } satisfies Pc;
}

async function deviceToken(client: ApiClient, deviceId: string, key: KeyObject) {
  const { challenge } = await client.call(endpoints.challenge, { body: { deviceId } });
  const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, key);
  const { token } = await client.call(endpoints.token, {
    body: { deviceId, challenge, signature },
  });
  return token;
}

test('devices by name, shown in sections; lists with names; flags and errors in the user’s terms', async (t) => {
  const dir = await tempDir(t);
  const { info } = await startCenterProcess(t, ['--demo', '--data', join(dir, 'data')]);
  const credentials = join(dir, 'config', 'credentials.json');
  const env = { BULKHEAD_CREDENTIALS: credentials, BULKHEAD_CENTER: '', BULKHEAD_TOKEN: '' };
  const cli = (args: string[], input?: string, extra: NodeJS.ProcessEnv = {}) =>
    runCli(args, { env: { ...env, ...extra }, input });
  const ok = async (args: string[]) => {
    const r = await cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const json = async (args: string[]) => JSON.parse((await ok([...args, '--json'])).stdout);

  const login = await cli(
    ['login', '--center', info.url, '--username', 'admin', '--password-stdin'],
    `${info.initialAdmin!.password}\n`,
  );
  assert.equal(login.code, 0, login.stderr);
  const session = JSON.parse(await readFile(credentials, 'utf8')) as { token: string };
  const admin = createApiClient({
    baseUrl: info.url,
    headers: { authorization: `Bearer ${session.token}` },
  });

  const group = await json(['groups', 'create', '--name', 'finance', '--description', 'Floor 3']);
  const token = await json(['tokens', 'create', '--group', 'finance', '--uses', '3']);
  const demo = await admin.call(endpoints.getImage, { params: { id: 'demo-os' } });
  const v1 = demo.versions.find((v) => v.version === '1')!;
  const v2 = demo.versions.find((v) => v.version === '2')!;
  const work = await admin.call(endpoints.createProfile, {
    body: { name: 'work', systemImageId: demo.id },
  });

  const pc = await enrolPc(info.url, token.token, 'lab-pc', {
    hostname: 'lab-pc',
    cpu: { model: 'Test CPU 3000', cores: 4 },
    memoryBytes: 8 * 2 ** 30,
    disks: [{ name: 'nvme0n1', model: 'Disk X', sizeBytes: 512 * 2 ** 30 }],
    vendor: 'Acme',
    model: 'Desk 1',
    serial: 'SN123',
    hypervisor: 'QEMU/TCG on Linux',
    engineVersion: '9.9.9',
  });
  const twinA = await enrolPc(info.url, token.token, 'twin', { hostname: 'twin' });
  const twinB = await enrolPc(info.url, token.token, 'twin', { hostname: 'twin' });

  // Assigned by its name, not its id.
  const assigned = await ok(['devices', 'assign', 'lab-pc', '--profile', 'work']);
  assert.match(assigned.stdout, /lab-pc: group finance, profiles work/);

  // The PC reports: healthy on 1, then 2 is tried and rolled back with a reason.
  const at = Date.now() - 60_000;
  const release = (v: typeof v1) => ({
    profileId: work.id,
    image: 'demo-os',
    version: v.version,
    versionId: v.id,
    volumes: [
      {
        role: 'system' as const,
        image: 'demo-os',
        imageId: demo.id,
        version: v.version,
        versionId: v.id,
        isNew: true,
      },
    ],
  });
  const events: DeviceEvent[] = [
    { id: randomUUID(), type: 'healthy', at, data: release(v1) },
    {
      id: randomUUID(),
      type: 'switched',
      at: at + 1000,
      data: { ...release(v2), fromVersionId: v1.id },
    },
    {
      id: randomUUID(),
      type: 'rolled-back',
      at: at + 2000,
      data: {
        ...release(v2),
        reason: 'the guest agent did not answer within 60 s',
        runningVersionId: v1.id,
      },
    },
  ];
  const reported = await pc.client.call(
    endpoints.reports,
    { body: { events } },
    { headers: pc.auth },
  );
  assert.equal(reported.accepted, 3);
  // After the report, version 2 goes out to the group: the PC should run it, runs 1.
  await ok([
    'rollout',
    'create',
    '--image',
    'demo-os',
    '--version',
    '2',
    '--group',
    'finance',
    '--phases',
    '100',
    '--start',
  ]);
  await ok(['devices', 'lock', 'lab-pc']);

  await t.test('devices show: sections, names and versions, no ids but its own', async () => {
    const shown = await ok(['devices', 'show', 'lab-pc']);
    const out = shown.stdout;
    for (const title of ['Inventory', 'Profiles', 'Lease', 'Recent events', 'Pending commands']) {
      assert.match(out, new RegExp(`^${title}$`, 'm'), `section ${title}:\n${out}`);
    }
    assert.match(out, /^Device lab-pc$/m);
    assert.match(out, new RegExp(`^  id +${pc.id}$`, 'm'));
    assert.match(out, /^ {2}group +finance$/m);
    assert.match(out, /^ {2}state +locked$/m);
    assert.match(out, /^ {2}last seen +\S+Z \(.* ago\)$/m);
    assert.match(out, /^ {2}Engine +9\.9\.9 \(at enrolment\)$/m);
    assert.match(out, /^ {2}CPU +Test CPU 3000, 4 cores$/m);
    assert.match(out, /^ {2}memory +8\.0 GiB$/m);
    assert.match(out, /^ {2}hardware +Acme Desk 1 serial SN123$/m);
    assert.match(out, /^ {2}disks +nvme0n1 512\.0 GiB \(Disk X\)$/m);
    // The VM runs 1 and should run 2 (the rollout).
    assert.match(out, /^ {2}VM +RUNS +SHOULD RUN +STATUS/m);
    assert.match(out, /^ {2}work +demo-os@1 +demo-os@2 +behind/m);
    assert.match(out, /^ {2}work +30 days offline; runs out by \S+Z/m);
    assert.match(out, /^ {2}TIME +VM +EVENT +VERSIONS +REASON$/m);
    assert.match(
      out,
      /^ {2}\S+Z +work +rolled back +demo-os@2 → back to demo-os@1 +the guest agent did not answer within 60 s$/m,
    );
    assert.match(out, /^ {2}\S+Z +work +switched +demo-os@1 → demo-os@2 +-$/m);
    assert.match(out, /^ {2}\S+Z +work +healthy +demo-os@1 +-$/m);
    assert.match(out, /^ {2}ISSUED +COMMAND +VM +STATE$/m);
    assert.match(out, /^ {2}\S+Z +lock +- +pending$/m);
    const ids = [...out.matchAll(UUID)].map((m) => m[0]);
    assert.deepEqual(ids, [pc.id], `only the device's own id appears:\n${out}`);

    // By id too, and --json keeps every field, with names beside the ids.
    const detail = await json(['devices', 'show', pc.id]);
    assert.equal(detail.id, pc.id);
    assert.equal(detail.group.id, group.id);
    assert.equal(detail.inventory.serial, 'SN123');
    assert.deepEqual(detail.currentVersions, { [work.id]: { system: v1.id, apps: {} } });
    const [profile] = detail.profiles;
    assert.deepEqual(
      [profile.id, profile.name, profile.current.system.version, profile.target.system.version],
      [work.id, 'work', '1', '2'],
    );
    assert.equal(profile.lease.days, 30);
    assert.equal(detail.recentEvents.length, 3);
    assert.equal(detail.recentEvents[0].type, 'rolled-back');
    assert.equal(detail.recentEvents[0].vm, 'work');
    assert.equal(detail.recentEvents[0].data.runningVersionId, v1.id);
    assert.deepEqual(detail.versionNames, { [v1.id]: 'demo-os@1', [v2.id]: 'demo-os@2' });
    assert.deepEqual(
      detail.pendingCommands.map((c: { kind: string }) => c.kind),
      ['lock'],
    );
  });

  await t.test('a device named by what the user typed, or refused in their terms', async () => {
    const missing = await cli(['devices', 'show', 'nonexistent']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^bulkhead devices show: no device nonexistent/);
    assert.doesNotMatch(missing.stderr, /params\.id/);
    // An id no device has reads the same; so does a well-formed one.
    const unknownId = '0190a0a0-0000-7000-8000-000000000000';
    const gone = await cli(['devices', 'lock', unknownId]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, new RegExp(`no device ${unknownId}`));
    for (const verb of ['commands', 'unlock', 'restart-vm']) {
      const r = await cli([
        'devices',
        verb,
        'nonexistent',
        ...(verb === 'restart-vm' ? ['--vm', 'work'] : []),
      ]);
      assert.equal(r.code, 1, `${verb}: ${r.stderr}`);
      assert.match(r.stderr, /no device nonexistent/, verb);
      assert.doesNotMatch(r.stderr, /params\.id/, verb);
    }

    const twins = await cli(['devices', 'show', 'twin']);
    assert.equal(twins.code, 2, twins.stderr);
    assert.match(twins.stderr, /2 devices are named "twin"/);
    assert.ok(twins.stderr.includes(twinA.id) && twins.stderr.includes(twinB.id), twins.stderr);
    const one = await ok(['devices', 'show', twinB.id]);
    assert.match(one.stdout, /^Device twin$/m);
    assert.match(one.stdout, /^Profiles\n {2}none/m);

    const commands = await ok(['devices', 'commands', 'lab-pc']);
    assert.match(commands.stdout, /^ISSUED +KIND +VM +STATE +ANSWER$/m);
    assert.match(commands.stdout, /^\S+Z +lock +- +pending +-$/m);
  });

  await t.test(
    'devices list: group, profiles and versions by name; its flags checked',
    async () => {
      const listed = await ok(['devices', 'list', '--group', 'finance']);
      assert.match(listed.stdout, /^NAME +GROUP +STATE +PROFILES \(RUNNING\) +LAST CONTACT$/m);
      assert.match(listed.stdout, /^lab-pc +finance +locked +work demo-os@1 +\S+Z$/m);
      assert.match(listed.stdout, /^twin +finance +active +- +\S+Z$/m);
      assert.doesNotMatch(listed.stdout, UUID);
      const page = await json(['devices', 'list']);
      const lab = page.devices.find((d: { id: string }) => d.id === pc.id);
      assert.deepEqual(lab.group, { id: group.id, name: 'finance' });
      assert.deepEqual(
        lab.profiles.map((p: { name: string; current: { version: string } }) => [
          p.name,
          p.current.version,
        ]),
        [['work', '1']],
      );

      const bogus = await cli(['devices', 'list', '--state', 'bogus']);
      assert.equal(bogus.code, 2);
      assert.match(
        bogus.stderr,
        /--state must be one of active, locked, killed, retired, not "bogus"/,
      );
      const longName = await cli(['devices', 'list', '--name', 'x'.repeat(300)]);
      assert.equal(longName.code, 2, longName.stderr);
      assert.match(longName.stderr, /--name/);
      assert.doesNotMatch(longName.stderr, /querystring/);
      const rename = await cli(['devices', 'assign', 'lab-pc', '--name', 'y'.repeat(300)]);
      assert.equal(rename.code, 2, rename.stderr);
      assert.match(rename.stderr, /--name/);
      assert.doesNotMatch(rename.stderr, /body\./);
      const note = await cli(['tokens', 'create', '--group', 'finance', '--note', 'n'.repeat(600)]);
      assert.equal(note.code, 2, note.stderr);
      assert.match(note.stderr, /--note/);
      const groupName = await cli(['groups', 'create', '--name', ' padded ']);
      assert.equal(groupName.code, 2, groupName.stderr);
      assert.match(groupName.stderr, /--name/);
      const noGroup = await cli(['devices', 'list', '--group', 'nowhere']);
      assert.equal(noGroup.code, 1);
      assert.match(noGroup.stderr, /--group: no device group "nowhere"/);
    },
  );

  await t.test('tokens list and groups list name groups, not ids', async () => {
    const tokens = await ok(['tokens', 'list']);
    assert.match(tokens.stdout, /^ID +GROUP +USES LEFT +EXPIRES +NOTE$/m);
    assert.match(tokens.stdout, new RegExp(`^${token.id} +finance +0 +\\S+Z`, 'm'));
    assert.ok(!tokens.stdout.includes(group.id), tokens.stdout);
    const groups = await ok(['groups', 'list']);
    assert.match(groups.stdout, /^NAME +DEVICES +CREATED +DESCRIPTION$/m);
    assert.match(groups.stdout, /^finance +3 +\S+Z +Floor 3$/m);
    assert.doesNotMatch(groups.stdout, UUID);
    const revoke = await cli(['tokens', 'revoke', 'nonsense']);
    assert.equal(revoke.code, 1);
    assert.match(revoke.stderr, /no enrolment token nonsense/);
    assert.doesNotMatch(revoke.stderr, /params\.id/);
  });

  await t.test('BULKHEAD_TOKEN goes to the saved session’s Center', async () => {
    const apiToken = await json(['api-tokens', 'create', '--name', 'ci', '--expires-in-days', '1']);
    const viaToken = await cli(['whoami'], undefined, { BULKHEAD_TOKEN: apiToken.token });
    assert.equal(viaToken.code, 0, viaToken.stderr);
    assert.match(viaToken.stdout, /^admin \(admin, by token\) at /);
    const shown = await cli(['devices', 'show', 'lab-pc'], undefined, {
      BULKHEAD_TOKEN: apiToken.token,
    });
    assert.equal(shown.code, 0, shown.stderr);

    // --center and BULKHEAD_CENTER come first: a Center that is not there is tried, not the
    // session's.
    const elsewhere = await cli(['whoami', '--center', 'http://127.0.0.1:9'], undefined, {
      BULKHEAD_TOKEN: apiToken.token,
    });
    assert.equal(elsewhere.code, 1);
    assert.match(elsewhere.stderr, /127\.0\.0\.1:9/);

    const nowhere = await cli(['whoami'], undefined, {
      BULKHEAD_TOKEN: apiToken.token,
      BULKHEAD_CREDENTIALS: join(dir, 'none.json'),
    });
    assert.equal(nowhere.code, 2);
    assert.match(nowhere.stderr, /no Center to send the token to .*--center URL.*BULKHEAD_CENTER/);
  });
});
