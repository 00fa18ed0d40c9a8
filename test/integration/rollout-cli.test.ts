import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEVICE_SIGNATURE_DOMAINS } from '../../src/center/devices/index.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { signPayload } from '../../src/signing/index.ts';
import { runCli, startCenterProcess } from '../support/cli.ts';
import { updateEvent } from '../support/events.ts';
import { bytesFrom, makeKeys, tempDir } from '../support/fixtures.ts';
import { waitFor } from '../support/wait.ts';

// `bulkhead rollout …` as an administrator types it, each a real process, against a real
// `bulkhead center serve` whose devices report through the device API: a rollout driven to
// completion by a healthy report releases its version (a PC enrolled later gets it), one
// created with --keep-release does not, and both say so in words; bad flags exit 2 naming them.

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

test('rollout create, list and status: names, release on completion, usage errors', async (t) => {
  const dir = await tempDir(t, 'bulkhead-rollout-cli-');
  const { info } = await startCenterProcess(t, ['--data', join(dir, 'data')]);
  const url = info.url;
  const credentials = join(dir, 'credentials.json');
  const env = { BULKHEAD_CREDENTIALS: credentials, BULKHEAD_CENTER: '', BULKHEAD_TOKEN: '' };
  const cli = (args: string[], input?: string) => runCli(args, { env, input });
  const json = async (args: string[]) => {
    const r = await cli([...args, '--json']);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  const human = async (args: string[]) => {
    const r = await cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const login = await cli(
    ['login', '--center', url, '--username', 'admin', '--password-stdin'],
    `${info.initialAdmin!.password}\n`,
  );
  assert.equal(login.code, 0, login.stderr);
  const { token } = JSON.parse(await readFile(credentials, 'utf8')) as { token: string };
  const api = async (method: string, path: string, body?: unknown, bearer = token) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${bearer}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };

  // Three versions of `os`, signed by a publisher Center trusts; 1 is released.
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  for (const version of ['1', '2', '3']) {
    const file = join(dir, `os-${version}.img`);
    await writeFile(file, bytesFrom(`os-${version}`, 1 << 20));
    await importImage({
      store,
      name: 'os',
      version,
      file,
      key: keys.key,
      tempDir: join(dir, 'tmp'),
      pack: false,
    });
  }
  await api('POST', '/api/v1/admin/publishers', {
    name: 'build',
    publicKey: await readFile(keys.publicPath, 'utf8'),
  });
  for (const [version, how] of [
    ['1', '--release'],
    ['2', '--publish'],
    ['3', '--publish'],
  ] as const) {
    const push = ['image', 'push', '--center', url, '--token', token, '--store', store.location];
    await json([...push, 'os', version, how]);
  }
  const image = await api('GET', '/api/v1/admin/images/os');
  const versionId = (v: string) =>
    (image.versions as { id: string; version: string }[]).find((x) => x.version === v)!.id;
  const profile = await api('POST', '/api/v1/admin/profiles', {
    name: 'work',
    systemImageId: image.id,
  });
  await json(['groups', 'create', '--name', 'finance']);
  await json(['groups', 'create', '--name', 'lab']);

  /** A PC enrolled through the device API into `group`, holding the work profile. */
  async function enrolPc(group: string, name: string) {
    const { token: enrolment } = await json(['tokens', 'create', '--group', group, '--uses', '1']);
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const { deviceId } = await api('POST', '/api/v1/device/enrol', {
      token: enrolment,
      publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      name,
      inventory: { hostname: name },
    });
    const { challenge } = await api('POST', '/api/v1/device/auth/challenge', { deviceId });
    const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, privateKey);
    const issued = await api('POST', '/api/v1/device/auth/token', {
      deviceId,
      challenge,
      signature,
    });
    await json(['devices', 'assign', deviceId, '--profile', 'work']);
    const device = issued.token as string;
    return {
      deviceId,
      /** The system version its work VM should run, by name. */
      wants: async () => {
        const { state } = await api('GET', '/api/v1/device/desired-state', undefined, device);
        return (state.vms as { name: string; system: { version: string } }[]).find(
          (vm) => vm.name === 'work',
        )?.system.version;
      },
      /** Reports its work VM healthy on `version` of os, or rolled back from it. */
      report: (type: 'healthy' | 'rolled-back', version: string) =>
        api(
          'POST',
          '/api/v1/device/reports',
          {
            events: [
              {
                id: randomUUID(),
                at: Date.now(),
                ...updateEvent(type, {
                  profileId: profile.id,
                  versionId: versionId(version),
                  reason: 'qemu-ga did not answer within 300 s',
                  volumes: [
                    {
                      role: 'system',
                      versionId: versionId(version),
                      imageId: image.id,
                      isNew: true,
                    },
                  ],
                }),
              },
            ],
          },
          device,
        ),
    };
  }
  const pc = await enrolPc('finance', 'pc-finance');
  assert.equal(await pc.wants(), '1');

  // Every bad flag value is a usage error naming its flag; an unknown rollout is "no rollout".
  const usage = [
    [
      ['--image', 'os@2', '--group', 'finance', '--phases', '10,5'],
      /--phases must be .*increasing/,
    ],
    [['--image', 'os@2', '--group', 'finance', '--phases', '0,100'], /--phases must be/],
    [['--image', 'os@2', '--version', '3', '--group', 'finance'], /--image os@2 and --version 3/],
    [['--image', 'os', '--group', 'finance'], /--version is required/],
    [['--image', 'os@2'], /--group or --profile/],
    [['--image', 'os@2', '--group', 'finance', '--failure-threshold', 'lots'], /--failure-thr/],
    [['--image', 'os@2', '--group', 'finance', '--soak-minutes', '-1'], /--soak-minutes/],
    [['--image', 'os@2', '--group', 'finance', '--min-reports', '0'], /--min-reports/],
  ] as const;
  for (const [args, message] of usage) {
    const r = await cli(['rollout', 'create', ...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  const badState = await cli(['rollout', 'list', '--state', 'bogus']);
  assert.equal(badState.code, 2);
  assert.match(badState.stderr, /--state must be one of pending, running, .*, not "bogus"/);
  for (const id of ['nonexistent', 'x'.repeat(100), '0190a0a0-0000-7000-8000-000000000000']) {
    const r = await cli(['rollout', 'status', id]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr.trim(), `bulkhead rollout status: no rollout ${id}`);
  }
  const noGroup = await cli(['rollout', 'create', '--image', 'os@2', '--group', 'nowhere']);
  assert.equal(noGroup.code, 1);
  assert.match(noGroup.stderr, /--group: no device group "nowhere"/);
  assert.deepEqual((await json(['rollout', 'list'])).rollouts, []);

  // A rollout that releases (the default), completed by the PC's healthy report.
  const created = await cli([
    'rollout',
    'create',
    '--image',
    'os@2',
    '--group',
    'finance',
    '--phases',
    '100',
    '--soak-minutes',
    '0',
    '--start',
  ]);
  assert.equal(created.code, 0, created.stderr);
  assert.match(created.stdout, /of os@2 to group finance: running, phase 1 of 1 \(100%\)/);
  assert.match(created.stdout, /On completion os@2 becomes the released version \(now os@1\)/);
  const [first] = (await json(['rollout', 'list'])).rollouts;
  assert.equal(await pc.wants(), '2');
  const running = await human(['rollout', 'status', first.id]);
  assert.match(running, /on completion\s+os@2 becomes the released version \(now os@1\)/);
  await pc.report('healthy', '2');
  await waitFor('the rollout to complete', async () => {
    const r = await json(['rollout', 'status', first.id]);
    return r.state === 'completed' ? r : undefined;
  });
  // IMAGE@VERSION names the newest rollout of that version.
  const done = await json(['rollout', 'status', 'os@2']);
  assert.equal(done.id, first.id);
  const none = await cli(['rollout', 'pause', 'os@1']);
  assert.equal(none.code, 1, none.stderr);
  assert.match(none.stderr, /no rollout of os@1 — start one with/);
  const noImage = await cli(['rollout', 'status', 'nothing@1']);
  assert.match(noImage.stderr, /no rollout nothing@1: no image nothing/);
  assert.equal(done.releaseOnCompletion, true);
  assert.equal(typeof done.releasedAt, 'number');
  assert.deepEqual(done.imageRelease, { id: versionId('2'), version: '2' });
  assert.equal(done.group, 'finance');
  assert.equal(done.totals.healthy, 1);
  const completed = await human(['rollout', 'status', first.id]);
  assert.match(completed, /state\s+completed; os@2 is now the released version/);
  assert.match(completed, /to group finance/);
  assert.match(completed, /1 targeted, 1 included: 1 healthy/);
  // Names, not ids: the rollout's own id (on its first line) is the only one shown.
  assert.deepEqual([...new Set(completed.match(UUID))], [first.id]);
  // A PC enrolled after completion, in a group the rollout never targeted, gets os@2.
  const later = await enrolPc('lab', 'pc-lab');
  assert.equal(await later.wants(), '2');

  // --keep-release: completing leaves the released version as it is, and says so.
  const kept = await json([
    'rollout',
    'create',
    '--image',
    'os',
    '--version',
    '3',
    '--group',
    'finance',
    '--phases',
    '100',
    '--soak-minutes',
    '0',
    '--keep-release',
    '--start',
  ]);
  assert.equal(kept.releaseOnCompletion, false);
  assert.match(
    await human(['rollout', 'status', kept.id]),
    /on completion\s+the released version stays os@2 \(--keep-release\)/,
  );
  assert.equal(await pc.wants(), '3');
  await pc.report('healthy', '3');
  await waitFor('the --keep-release rollout to complete', async () => {
    const r = await json(['rollout', 'status', kept.id]);
    return r.state === 'completed' ? r : undefined;
  });
  assert.match(
    await human(['rollout', 'status', kept.id]),
    /state\s+completed; the released version stays os@2 \(this rollout does not release\)/,
  );
  assert.equal(await later.wants(), '2');
  assert.equal((await api('GET', '/api/v1/admin/images/os')).release.version, '2');

  // A rollout that halts on a rolled-back report says why, in the PC's words.
  const halting = await json([
    'rollout',
    'create',
    '--image',
    'os@2',
    '--group',
    'finance',
    '--phases',
    '100',
    '--failure-threshold',
    '0',
    '--start',
  ]);
  await pc.report('rolled-back', '2');
  const halted = await human(['rollout', 'status', halting.id]);
  assert.match(halted, /state\s+halted, phase 1 of 1 \(100%\)/);
  assert.match(halted, /reason\s+1 of 1 devices that reported failed or rolled back \(100%/);
  assert.match(halted, /\n1 \(100%\)\s+yes\s+1\s+1\s+0\s+0\s+1\s/);
  assert.doesNotMatch(halted, /on completion/);
  // `rollout show` is `rollout status` by another name: the halt reason is there too.
  assert.match(
    await human(['rollout', 'show', halting.id]),
    /reason\s+1 of 1 devices that reported failed or rolled back/,
  );

  // The outcome trail, per rollout: each device by phase with what it reported, by name.
  const trail = await human(['rollout', 'devices', halting.id]);
  assert.match(trail, new RegExp(`^Rollout ${halting.id} of os@2: 1 device\\(s\\)\n`));
  assert.match(
    trail,
    /\npc-finance {2}phase 1 {2}rolled-back: qemu-ga did not answer within 300 s\n/,
  );
  assert.match(trail, /\n {4}\S+Z {2}rolled-back: qemu-ga did not answer within 300 s\n/);
  assert.deepEqual([...new Set(trail.match(UUID))], [halting.id]);
  const trailJson = await json(['rollout', 'devices', 'os@2', '--status', 'rolled-back']);
  assert.equal(trailJson.rolloutId, halting.id);
  assert.deepEqual(
    trailJson.devices.map((d: { device: string; status: string; trail: unknown[] }) => [
      d.device,
      d.status,
      d.trail.length,
    ]),
    [['pc-finance', 'rolled-back', 1]],
  );
  assert.deepEqual(
    (await json(['rollout', 'devices', halting.id, '--status', 'healthy'])).devices,
    [],
  );
  // … and per device: newest first, all of them or those of one version or rollout.
  const events = await human(['devices', 'events', 'pc-finance']);
  assert.match(
    events,
    /^Events of pc-finance, newest first:\n {2}\S+Z {2}rolled-back os@2: qemu-ga did not answer within 300 s {2}\(vm work\)\n {2}\S+Z {2}healthy os@3 {2}\(vm work\)\n {2}\S+Z {2}healthy os@2 {2}\(vm work\)\n$/,
  );
  assert.equal(events.match(UUID), null);
  const ofThree = await json(['devices', 'events', 'pc-finance', '--version', 'os@3']);
  assert.deepEqual(
    ofThree.events.map((e: { type: string }) => e.type),
    ['healthy'],
  );
  const ofRollout = await json(['devices', 'events', 'pc-finance', '--rollout', halting.id]);
  assert.deepEqual(
    ofRollout.events.map((e: { type: string; reason: string }) => [e.type, e.reason]),
    [['rolled-back', 'qemu-ga did not answer within 300 s']],
  );
  for (const [args, code, message] of [
    [
      ['rollout', 'devices', halting.id, '--status', 'lost'],
      2,
      /--status must be one of pending, /,
    ],
    [['rollout', 'devices'], 2, /give the rollout/],
    [['devices', 'events'], 2, /give the device name or id/],
    [['devices', 'events', 'pc-finance', '--version', 'os'], 2, /--version must be IMAGE@VERSION/],
    [
      ['devices', 'events', 'pc-finance', '--version', 'os@2', '--rollout', halting.id],
      2,
      /not both/,
    ],
    [['devices', 'events', 'pc-finance', '--limit', '0'], 2, /--limit/],
    [['devices', 'events', 'nobody'], 1, /no device/],
    [['devices', 'events', 'pc-finance', '--version', 'os@9'], 1, /has no version 9/],
  ] as const) {
    const r = await cli([...args]);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }

  // The list: newest first, image@version, target, state, progress; no ids but each row's own.
  const [header, ...rows] = (await human(['rollout', 'list'])).trim().split('\n');
  assert.match(header!, /^ID\s+IMAGE\s+TARGET\s+STATE\s+PROGRESS\s+CREATED$/);
  const expected = [
    [halting.id, 'os@2', 'halted', 'phase 1 of 1 \\(100%\\)'],
    [kept.id, 'os@3', 'completed', 'done: phase 1 of 1 \\(100%\\)'],
    [first.id, 'os@2', 'completed', 'done: phase 1 of 1 \\(100%\\)'],
  ];
  assert.equal(rows.length, expected.length, rows.join('\n'));
  expected.forEach(([id, ref, state, progress], i) =>
    assert.match(
      rows[i]!,
      new RegExp(`^${id}\\s+${ref}\\s+group finance\\s+${state}\\s+${progress}\\s`),
    ),
  );
  // A second rollout of os@2 under way (to lab, beside the halted one to finance): os@2 no
  // longer names one rollout, and an action by it is refused, naming both.
  const second = await json(['rollout', 'create', '--image', 'os@2', '--group', 'lab']);
  const ambiguous = await cli(['rollout', 'abort', 'os@2']);
  assert.equal(ambiguous.code, 2, ambiguous.stderr);
  assert.match(ambiguous.stderr, /os@2 has 2 rollouts under way; name one by its id: /);
  assert.ok(ambiguous.stderr.includes(`${second.id} (group lab, pending)`), ambiguous.stderr);
  assert.ok(ambiguous.stderr.includes(`${halting.id} (group finance, halted)`), ambiguous.stderr);
  assert.equal((await json(['rollout', 'status', second.id])).state, 'pending');
});
