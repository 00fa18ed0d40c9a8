import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { loadPrivateKey } from '../../src/signing/index.ts';
import { runCli, startCenterProcess, type CliRun } from '../support/cli.ts';
import { ext4Image, osFiles, tempDir } from '../support/fixtures.ts';

// Publishers, Center's images and VM profiles by name, from the CLI as a real process against
// a real `bulkhead center serve`.

/** A failure as a person sees it: the exit code, and one line on stderr matching `message`. */
function assertFails(r: CliRun, code: number, message: RegExp): void {
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr, message);
  assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, 'no stack trace');
}

test('publishers, images and profiles are managed by name from the CLI', async (t) => {
  const dir = await tempDir(t);
  const { info } = await startCenterProcess(t, ['--data', join(dir, 'data')]);
  const env = {
    BULKHEAD_CREDENTIALS: join(dir, 'admin.json'),
    BULKHEAD_CENTER: '',
    BULKHEAD_TOKEN: '',
  };
  const cli = (args: string[], input?: string) => runCli(args, { env, input });
  const ok = async (args: string[]) => {
    const r = await cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const json = async (args: string[]) => JSON.parse(await ok([...args, '--json']));
  const login = await cli(
    ['login', '--center', info.url, '--username', 'admin', '--password-stdin'],
    `${info.initialAdmin!.password}\n`,
  );
  assert.equal(login.code, 0, login.stderr);

  // Publishers: trust the key `keys generate` wrote, by its file.
  assertFails(await cli(['publishers', 'trust']), 2, /--key is required/);
  await ok(['keys', 'generate', '--out', join(dir, 'keys')]);
  const pub = join(dir, 'keys', 'publisher.pub');
  assertFails(
    await cli(['publishers', 'trust', '--key', join(dir, 'keys', 'publisher.key')]),
    1,
    /publisher\.key is a private key; give the public key/,
  );
  const trusted = await ok(['publishers', 'trust', '--key', pub]);
  assert.match(trusted, /^Trusted publisher publisher \(key [0-9a-f]{16}\)/);
  const listed = await ok(['publishers', 'list']);
  assert.match(listed, /^NAME\s+KEY ID\s+STATE\s+ADDED$/m);
  assert.match(listed, /^publisher\s+[0-9a-f]{16}\s+trusted\s+\d{4}-/m);

  // A viewer reads, but cannot trust a key.
  const vera = await json(['users', 'create', 'vera', '--role', 'viewer']);
  const veraEnv = { ...env, BULKHEAD_CREDENTIALS: join(dir, 'vera.json') };
  const veraLogin = await runCli(
    ['login', '--center', info.url, '--username', 'vera', '--password-stdin'],
    { env: veraEnv, input: `${vera.password}\n` },
  );
  assert.equal(veraLogin.code, 0, veraLogin.stderr);
  assert.equal((await runCli(['publishers', 'list'], { env: veraEnv })).code, 0);
  assertFails(
    await runCli(['publishers', 'trust', '--key', pub, '--name', 'other'], { env: veraEnv }),
    1,
    /needs the admin role; vera is viewer/,
  );

  // Two versions of an image, pushed to Center: 1 published (so released), 2 a draft.
  const storeDir = join(dir, 'store');
  const store = new DirectoryStore(storeDir);
  const key = await loadPrivateKey(join(dir, 'keys', 'publisher.key'));
  for (const v of [1, 2] as const) {
    const file = await ext4Image(dir, `v${v}`, osFiles(v), '16M');
    await importImage({ store, name: 'os', version: String(v), file, key, pack: false });
  }
  const ci = await json(['api-tokens', 'create', '--name', 'ci']);
  for (const [version, extra] of [
    ['1', ['--publish']],
    ['2', []],
  ] as const) {
    const push = ['image', 'push', '--center', info.url, '--store', storeDir, 'os', version];
    await ok([...push, '--token', ci.token, ...extra]);
  }

  assert.match(await ok(['images', 'list']), /^os\s+system\s+os@1\s/m);
  const shown = await ok(['images', 'show', 'os']);
  assert.match(shown, /^released: os@1$/m);
  assert.match(shown, /^os@1\s+published\s+released\s+\d+(\.\d)? MiB\s+-\s/m);
  assert.match(shown, /^os@2\s+draft\s+\d+(\.\d)? MiB\s+os@1\s/m);
  assert.doesNotMatch(shown, /[0-9a-f]{8}-[0-9a-f]{4}-7/, 'no ids');

  assertFails(await cli(['images', 'show', 'debian']), 1, /no image debian/);
  assertFails(await cli(['images', 'release', 'debian@9']), 1, /no image debian/);
  assertFails(await cli(['images', 'release', 'os@9']), 1, /os has no version 9/);
  assertFails(await cli(['images', 'release']), 2, /NAME@VERSION/);
  assertFails(await cli(['images', 'retire', 'os']), 2, /NAME@VERSION/);
  // A viewer may look, not release.
  assertFails(
    await runCli(['images', 'release', 'os@2'], { env: veraEnv }),
    1,
    /needs the operator role/,
  );

  const released = await ok(['images', 'release', 'os@2']);
  assert.match(released, /^Published and released os@2 \(was os@1\)/);
  assertFails(await cli(['images', 'retire', 'os@2']), 1, /os@2 is the released version/);
  assert.match(await ok(['images', 'retire', 'os@1']), /^Retired os@1: no new installs/);
  assertFails(await cli(['images', 'release', 'os@1']), 1, /os@1 is retired/);
  const detail = await json(['images', 'show', 'os']);
  assert.deepEqual(
    detail.versions.map((v: { version: string; state: string; released: boolean }) => [
      v.version,
      v.state,
      v.released,
    ]),
    [
      ['1', 'retired', false],
      ['2', 'published', true],
    ],
  );

  // Profiles, in the user's terms.
  assertFails(await cli(['profiles', 'create', '--image', 'os']), 2, /--name is required/);
  assertFails(await cli(['profiles', 'create', '--name', 'work']), 2, /--image is required/);
  assertFails(
    await cli(['profiles', 'create', '--name', 'work', '--image', 'debian']),
    1,
    /no image debian/,
  );
  assertFails(
    await cli(['profiles', 'create', '--name', 'work', '--image', 'os', '--network', 'wifi']),
    2,
    /--network must be one of nat, restricted, none, not "wifi"/,
  );
  assertFails(
    await cli(['profiles', 'create', '--name', 'work', '--image', 'os', '--app', 'office']),
    1,
    /no app office/,
  );
  const created = await ok([
    'profiles',
    'create',
    '--name',
    'work',
    '--image',
    'os',
    '--description',
    'The office desktop',
    '--network',
    'restricted',
    '--allow',
    'vpn.example.org:443',
    '--encrypt-data',
    'on',
    '--health-timeout',
    '60',
    '--health-command',
    '/bin/check --quick',
    '--health-screen',
    'on',
    '--lease-days',
    '14',
    '--cpus',
    '1',
    '--memory',
    '1024',
  ]);
  assert.match(created, /^Created profile work\.$/m);
  const work = await ok(['profiles', 'show', 'work']);
  assert.match(work, /^work: The office desktop$/m);
  assert.match(work, /^ {2}system image +os \(released: os@2\)$/m);
  assert.match(work, /^ {2}network +restricted to vpn\.example\.org:443$/m);
  assert.match(work, /^ {2}data volume +encrypted/m);
  assert.match(
    work,
    /^ {2}health check +guest agent answers within 60 s, then `\/bin\/check --quick` exits 0, and the screen is not blank$/m,
  );
  assert.deepEqual((await json(['profiles', 'show', 'work'])).healthCheck, {
    timeoutSeconds: 60,
    command: ['/bin/check', '--quick'],
    screen: true,
  });
  assertFails(
    await cli(['profiles', 'edit', 'work', '--health-screen', 'yes']),
    2,
    /--health-screen must be on or off, not "yes"/,
  );
  assert.match(work, /^ {2}offline lease +14 days$/m);
  assert.match(work, /^ {2}resources +1 CPU, 1024 MiB$/m);
  assert.doesNotMatch(work, /[0-9a-f]{8}-[0-9a-f]{4}-7/, 'no ids');
  assert.match(work, /^ {2}kind +work \(managed\)$/m);

  // A personal profile: the images its user may choose, no apps, nat only.
  assertFails(
    await cli(['profiles', 'create', '--name', 'mine', '--image', 'os', '--kind', 'own']),
    2,
    /--kind must be one of work, personal, not "own"/,
  );
  assertFails(
    await cli(['profiles', 'create', '--name', 'mine', '--image', 'os', '--personal-image', 'os']),
    2,
    /--personal-image needs --kind personal/,
  );
  assertFails(
    await cli([
      'profiles',
      'create',
      '--name',
      'mine',
      '--image',
      'os',
      '--kind',
      'personal',
      '--network',
      'restricted',
    ]),
    1,
    /isolation\.network: a personal profile has a nat network/,
  );
  await ok(['profiles', 'create', '--name', 'mine', '--image', 'os', '--kind', 'personal']);
  const mine = await ok(['profiles', 'show', 'mine']);
  assert.match(mine, /^ {2}kind +personal \(the user's own VM\)$/m);
  assert.match(mine, /^ {2}images offered +os$/m);
  assert.equal((await json(['profiles', 'show', 'mine'])).kind, 'personal');

  assertFails(await cli(['profiles', 'edit', 'work']), 2, /nothing to change/);
  assertFails(await cli(['profiles', 'edit', 'home', '--cpus', '2']), 1, /no profile home/);
  assertFails(await cli(['profiles', 'edit', 'work', '--usb', 'mouse']), 2, /--usb takes/);
  await ok([
    'profiles',
    'edit',
    'work',
    '--network',
    'nat',
    '--clipboard',
    'on',
    '--require-tpm',
    'on',
    '--usb',
    '046d:c52b',
    '--health-command',
    '',
    '--health-screen',
    'off',
  ]);
  const edited = await json(['profiles', 'show', 'work']);
  assert.deepEqual(edited.isolation, {
    network: 'nat',
    allowedEndpoints: [{ host: 'vpn.example.org', port: 443 }],
    clipboard: true,
    usbDevices: ['046d:c52b'],
    encryptData: true,
    requireTpm: true,
  });
  assert.deepEqual(edited.healthCheck, { timeoutSeconds: 60 });
  assert.match(
    await ok(['profiles', 'show', 'work']),
    /^ {2}host TPM +required \(PCs without one refuse this VM\)$/m,
  );
  assert.equal(edited.leaseDays, 14, 'what was not given stays');
  assert.match(await ok(['profiles', 'list']), /^work\s+os\s+nat\s+encrypted\s+14 d\s/m);

  // The machine: BIOS, no TPM, Linux on virtio until a profile chooses otherwise.
  assert.deepEqual(edited.machine, {
    firmware: 'bios',
    secureBoot: false,
    tpm: false,
    os: 'linux',
    devices: 'virtio',
  });
  assert.match(work, /^ {2}firmware +bios$/m);
  assert.match(work, /^ {2}tpm +none$/m);
  assertFails(
    await cli(['profiles', 'edit', 'work', '--secure-boot', 'on']),
    2,
    /--secure-boot on needs --firmware uefi/,
  );
  assertFails(
    await cli(['profiles', 'edit', 'work', '--firmware', 'efi']),
    2,
    /--firmware must be one of bios, uefi, not "efi"/,
  );
  assertFails(
    await cli(['profiles', 'edit', 'work', '--tpm', 'yes']),
    2,
    /--tpm must be on or off/,
  );
  await ok([
    'profiles',
    'edit',
    'work',
    '--firmware',
    'uefi',
    '--secure-boot',
    'on',
    '--tpm',
    'on',
    '--os',
    'windows',
    '--devices',
    'compat',
  ]);
  const windows = await ok(['profiles', 'show', 'work']);
  assert.match(windows, /^ {2}firmware +uefi, Secure Boot on$/m);
  assert.match(windows, /^ {2}tpm +TPM 2\.0 \(state encrypted at rest\)$/m);
  assert.match(windows, /^ {2}guest +windows, compat devices$/m);
  assertFails(
    await cli(['profiles', 'edit', 'work', '--firmware', 'bios']),
    2,
    /the profile has Secure Boot on; add --secure-boot off/,
  );
  await ok(['profiles', 'edit', 'work', '--firmware', 'bios', '--secure-boot', 'off']);
  assert.deepEqual((await json(['profiles', 'show', 'work'])).machine, {
    firmware: 'bios',
    secureBoot: false,
    tpm: true,
    os: 'windows',
    devices: 'compat',
  });
  const osCreated = await json([
    'profiles',
    'create',
    '--name',
    'uefi-vm',
    '--image',
    'os',
    '--firmware',
    'uefi',
    '--tpm',
    'on',
  ]);
  assert.deepEqual(osCreated.machine, {
    firmware: 'uefi',
    secureBoot: false,
    tpm: true,
    os: 'linux',
    devices: 'virtio',
  });
  await ok(['profiles', 'delete', 'uefi-vm']);
  assert.match(await ok(['profiles', 'delete', 'work']), /^Deleted profile work\.$/m);
  assertFails(await cli(['profiles', 'show', 'work']), 1, /no profile work/);

  // Revoking, by name or key id.
  assertFails(await cli(['publishers', 'revoke']), 2, /give the publisher/);
  assertFails(await cli(['publishers', 'revoke', 'nobody']), 1, /no publisher nobody/);
  const { publishers } = await json(['publishers', 'list']);
  const revoked = await ok(['publishers', 'revoke', publishers[0].keyid.slice(0, 12)]);
  assert.match(revoked, /^Revoked publisher publisher \(key [0-9a-f]{16}\)/);
  const after = await json(['publishers', 'list']);
  assert.notEqual(after.publishers[0].revokedAt, null);
  assert.match(await ok(['publishers', 'list']), /^publisher\s+[0-9a-f]{16}\s+revoked \d{4}-/m);
});
