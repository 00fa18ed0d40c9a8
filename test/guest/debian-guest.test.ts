// A full Debian 12 system as a real PC would run it, through Center and Engine as real
// processes on real QEMU (TCG): booted by its own loader (shim, then grub, both signed) under
// UEFI with Secure Boot on and a TPM 2.0, with /home on the encrypted data volume; a login on
// its screen typed through Engine's input path; a TPM NV index and a UEFI variable that
// outlive the patch to v2 and the rollback from a v3 whose loader lost its signature, which
// Secure Boot refuses. The steps share one VM and run in order. The file runs in the suite's
// first phase, beside the unit tests, which leave a core to spare for its TCG guest most of the
// time (package.json).
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GuestAgent } from '../../src/engine/guest-agent.ts';
import { systemClock } from '../../src/engine/clock.ts';
import {
  createQemuDriver,
  readBootVerdict,
  type VmSpec,
} from '../../src/engine/hypervisor/index.ts';
import { checkHealth } from '../../src/engine/update/health.ts';
import { IsolationPolicySchema } from '../../src/protocol/index.ts';
import {
  BLANK_VARIANCE,
  brightnessVariance,
  decodePng,
  Screen,
} from '../../src/engine/hypervisor/screen.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import {
  cliJson,
  freePort,
  killProcess,
  runCli,
  startCenterProcess,
  type CenterProcess,
} from '../support/cli.ts';
import { debianGuest, type DebianGuest } from '../support/debian.ts';
import { makeKeys, tool, type Keys } from '../support/fixtures.ts';
import { requireQemu, runInGuest } from '../support/guest.ts';
import { waitFor } from '../support/wait.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));

/** The TPM NV index the guest writes (owner range), and the UEFI variable's vendor GUID. */
const NV_INDEX = '0x1500016';
const VAR_PATH = '/sys/firmware/efi/efivars/BulkheadTest-5b2c1e0a-7d3f-4c8e-9a61-2f4b8d0c6e17';
const SECURE_BOOT_VAR = '/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c';

const w = {
  dir: '',
  url: '',
  token: '',
  storeDir: '',
  engineData: '',
  deviceId: '',
  imageId: '',
  versionIds: {} as Record<string, string>,
  /** What the guest wrote into its TPM and its UEFI variable store at v1. */
  nvSecret: randomBytes(12).toString('hex'),
  varValue: randomBytes(8).toString('hex'),
  guest: undefined as DebianGuest | undefined,
  keys: undefined as Keys | undefined,
};
let center: CenterProcess | undefined;
let engine: ChildProcess | undefined;
const driver = createQemuDriver({ observeOnly: true });

async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${w.url}/api/v1/admin${path}`, {
    method,
    headers: {
      authorization: `Bearer ${w.token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return (text ? JSON.parse(text) : null) as T;
}

interface DeviceDetail {
  currentVersions: Record<string, { system?: string }>;
  recentEvents: { id: string; type: string; data: Record<string, unknown> }[];
}
const device = () => api<DeviceDetail>('GET', `/devices/${w.deviceId}`);

/** Waits for `fn`; a wait that times out says what the device last reported. */
async function until<T>(what: string, fn: () => Promise<T | undefined | false>): Promise<T> {
  try {
    return await waitFor(what, () => fn().catch(() => undefined), { intervalMs: 1000 });
  } catch (err) {
    const latest = await device()
      .then((d) =>
        d.recentEvents
          .slice(0, 8)
          .map((e) => `${e.type} ${JSON.stringify(e.data['reason'] ?? e.data['state'] ?? '')}`)
          .join('; '),
      )
      .catch(() => 'none (Center did not answer)');
    throw new Error(`${(err as Error).message}; the device's latest events: ${latest}`);
  }
}

const runDir = () => volumeLayout(w.engineData, 'work').runDir;

/** Runs a shell script in the guest through its agent (as root); stdout. */
async function sh(script: string): Promise<{ exitCode: number; stdout: string }> {
  return runInGuest(driver, 'work', runDir(), ['/bin/sh', '-c', script]);
}

async function push(version: string, file: string, parent: string | null): Promise<void> {
  const store = new DirectoryStore(w.storeDir);
  await importImage({
    store,
    name: 'debian',
    key: w.keys!.key,
    tempDir: join(w.dir, 'tmp'),
    file,
    version,
    parent,
  });
  await cliJson(
    ['image', 'push', '--center', w.url, '--store', w.storeDir, 'debian', version, '--release'],
    { BULKHEAD_TOKEN: w.token },
  );
  if (!w.imageId) {
    const { images } = await api<{ images: { id: string; name: string }[] }>('GET', '/images');
    w.imageId = images.find((i) => i.name === 'debian')!.id;
  }
  const list = await api<{ versions: { id: string; version: string }[] }>(
    'GET',
    `/images/${w.imageId}/versions`,
  );
  for (const v of list.versions) w.versionIds[v.version] = v.id;
}

const onVersion = (version: string) => async () =>
  Object.values((await device()).currentVersions).some((v) => v.system === w.versionIds[version]);

before(async () => {
  await requireQemu();
  w.guest = await debianGuest();
  w.dir = await mkdtemp(join(tmpdir(), 'bulkhead-debian-'));
  const port = await freePort();
  w.url = `http://127.0.0.1:${port}`;
  w.storeDir = join(w.dir, 'store');
  w.engineData = join(w.dir, 'engine');
  center = await startCenterProcess(
    { after: () => {} },
    ['--data', join(w.dir, 'center'), '--listen', `127.0.0.1:${port}`, '--public-url', w.url],
    { node: nodeBin },
  );
  const admin = center.info.initialAdmin!;
  const res = await fetch(`${w.url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: admin.username, password: admin.password }),
  });
  w.token = ((await res.json()) as { token: string }).token;
  w.keys = await makeKeys(w.dir);
  await api('POST', '/publishers', {
    name: 'debian-publisher',
    publicKey: await readFile(w.keys.publicPath, 'utf8'),
  });
});

after(async () => {
  await killProcess(engine);
  await driver.attach('work', runDir()).catch(() => {});
  await driver.stop('work', { timeoutMs: 10_000 }).catch(() => {});
  await center?.stop();
  if (w.dir) await rm(w.dir, { recursive: true, force: true });
});

/** The size of the PE security directory (the signature) of `path` on the disk's ESP. */
function signatureBytes(disk: string, path: string): number {
  // mtools reads the ESP in place: partition 1 starts at 1 MiB.
  const r = spawnSync('mtype', ['-i', `${disk}@@1M`, path], {
    env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
    maxBuffer: 16 * 1024 * 1024,
  });
  assert.equal(r.status, 0, `mtype ${path}: ${r.stderr?.toString()}`);
  const pe = r.stdout;
  const header = pe.readUInt32LE(0x3c);
  return pe.readUInt32LE(header + 24 + 112 + 32 + 4);
}

test('0. the disks: GPT with an ESP and a root, a signed loader but in v3, and v2 a real upgrade', async () => {
  await tool('mtype', ['--version'], 'mtools');
  const guest = w.guest!;
  for (const version of ['v1', 'v2', 'v3-unsigned'] as const) {
    const dump = spawnSync('sfdisk', ['--dump', guest.disks[version]], { encoding: 'utf8' });
    assert.equal(dump.status, 0, dump.stderr);
    assert.match(dump.stdout, /^label: gpt$/m, `${version} is a GPT disk`);
    assert.match(dump.stdout, /type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B/, `${version} has an ESP`);
    assert.match(dump.stdout, /type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709/, `${version} has a root`);
  }
  assert.ok(signatureBytes(guest.disks.v1, '::/EFI/BOOT/BOOTX64.EFI') > 0, 'v1: shim is signed');
  assert.ok(signatureBytes(guest.disks.v1, '::/EFI/BOOT/grubx64.efi') > 0, 'v1: grub is signed');
  assert.equal(signatureBytes(guest.disks['v3-unsigned'], '::/EFI/BOOT/BOOTX64.EFI'), 0);
  assert.ok(
    guest.changes.added.some((p) => p.startsWith('less ')),
    `v2 adds less: ${guest.changes.added.join(', ')}`,
  );
  assert.deepEqual(guest.changes.etc, [
    '/etc/motd',
    '/etc/systemd/journald.conf.d/50-size.conf',
    '/etc/sysctl.d/90-swappiness.conf',
  ]);
  assert.deepEqual(
    guest.changes.removed.filter((p) => !p.startsWith('linux-image-')),
    [],
  );
});

test('1. v1 boots from its own disk under UEFI with Secure Boot on and a TPM; /home is the data volume', async () => {
  await push('1', w.guest!.disks.v1, null);
  const group = await api<{ id: string }>('POST', '/groups', { name: 'desktops' });
  const profile = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: w.imageId,
    isolation: { network: 'none', encryptData: true },
    machine: { firmware: 'uefi', secureBoot: true, tpm: true, os: 'linux', devices: 'virtio' },
    // A full boot under TCG on a busy machine takes minutes; a refused loader is reported by
    // the firmware at once, so the bound costs nothing when the test passes.
    healthCheck: { timeoutSeconds: 600, command: w.guest!.healthCheck, screen: true },
    cpus: 1,
    memoryMib: 1024,
  });
  const token = await api<{ token: string }>('POST', '/enrolment-tokens', { groupId: group.id });
  const enrolled = (await cliJson([
    'engine',
    'enroll',
    '--center',
    w.url,
    '--token',
    token.token,
    '--data',
    w.engineData,
  ])) as { deviceId: string };
  w.deviceId = enrolled.deviceId;
  await api('PATCH', `/devices/${w.deviceId}`, { profiles: [profile.id] });
  // No --kernel: the VM boots the image's own loader.
  engine = spawn(
    nodeBin,
    [BIN, 'engine', 'run', '--data', w.engineData, '--poll-interval', '2', '--log-level', 'info'],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  engine.stderr!.on('data', (b: Buffer) => process.stderr.write(`[engine] ${b.toString()}`));
  await until('Center to show the device healthy on v1', onVersion('1'));

  const facts = await sh(
    [
      'test -d /sys/firmware/efi && echo efi',
      `od -An -tu1 ${SECURE_BOOT_VAR} | awk '{print "secureboot=" $NF}'`,
      'test -e /sys/class/tpm/tpm0 && echo "tpm=$(cat /sys/class/tpm/tpm0/tpm_version_major)"',
      'echo "home=$(findmnt -n -o SOURCE,FSTYPE /home)"',
      'echo "label=$(lsblk -n -o LABEL "$(findmnt -n -o SOURCE /home)")"',
      'echo "state=$(systemctl is-system-running)"',
      // Debian's kernel locks itself down when it was booted with Secure Boot on.
      'echo "lockdown=$(cat /sys/kernel/security/lockdown)"',
    ].join('; '),
  );
  assert.equal(facts.exitCode, 0, facts.stdout);
  assert.match(facts.stdout, /^efi$/m, 'booted through UEFI');
  assert.match(facts.stdout, /^secureboot=1$/m, 'Secure Boot is enabled');
  assert.match(facts.stdout, /^tpm=2$/m, 'a TPM 2.0');
  assert.match(facts.stdout, /^home=\/dev\/vd\S+ ext4$/m, '/home is mounted');
  assert.match(facts.stdout, /^label=data$/m, '/home is the data volume');
  assert.match(facts.stdout, /^state=running$/m, 'systemd reached running, nothing failed');
  assert.match(facts.stdout, /^lockdown=.*\[integrity\]/m, 'the kernel saw Secure Boot');
});

test('2. the screen shows the console login, and a login typed through Engine works', async () => {
  const shot = join(w.dir, 'screen.png');
  const saved = await runCli([
    'engine',
    'screenshot',
    '--vm',
    'work',
    '--out',
    shot,
    '--data',
    w.engineData,
  ]);
  assert.equal(saved.code, 0, saved.stderr);
  const variance = brightnessVariance(decodePng(await readFile(shot)));
  assert.ok(variance > BLANK_VARIANCE, `the screen is not blank (variance ${variance})`);
  // getty waits on tty1, the VM's screen.
  await until('a login prompt on tty1', async () =>
    /^tty1\b/m.test((await sh('ps -o tty= -C agetty')).stdout),
  );

  const screen = await Screen.open(runDir());
  try {
    const { name, password } = w.guest!.user;
    await screen.type(`${name}\n`);
    // The password prompt follows the user name; typed early, the keys would be read as the
    // name's tail, so wait for login to ask.
    await until('login to ask for the password', async () =>
      (await sh('ps -o args= -C login')).stdout.includes('login'),
    );
    await screen.type(`${password}\n`);
    await until('a shell of the user on tty1', async () =>
      (await sh(`ps -o user=,tty= -C bash`)).stdout.match(new RegExp(`^${name}\\s+tty1`, 'm')),
    );
    await screen.type('echo "Typed at $(tty)" > ~/typed.txt\n');
  } finally {
    screen.close();
  }
  const typed = await until('the typed file', async () => {
    const r = await sh(`cat /home/${w.guest!.user.name}/typed.txt 2>/dev/null`);
    return r.stdout === '' ? undefined : r.stdout;
  });
  assert.equal(typed, 'Typed at /dev/tty1\n');
});

test('3. a TPM NV index and a UEFI variable written at v1 survive the patch to v2', async () => {
  const wrote = await sh(
    [
      'set -e',
      'export TPM2TOOLS_TCTI=device:/dev/tpmrm0',
      `tpm2_nvdefine -C o -s 32 -a "ownerread|ownerwrite" ${NV_INDEX} >/dev/null`,
      `printf %s ${w.nvSecret} | tpm2_nvwrite -C o -i - ${NV_INDEX}`,
      // An EFI variable: 4 bytes of attributes (non-volatile, boot and run time), then data.
      `printf '\\007\\000\\000\\000%s' ${w.varValue} > ${VAR_PATH}`,
      'sync',
    ].join('\n'),
  );
  assert.equal(wrote.exitCode, 0, wrote.stdout);

  await push('2', w.guest!.disks.v2, '1');
  await until('Center to show the device healthy on v2', onVersion('2'));
  await assertPersistentState('after the patch to v2');
  const v2 = await sh(`command -v less; cat /etc/motd; uname -r`);
  assert.match(v2.stdout, /\/less\n/, 'v2 added less');
  assert.match(v2.stdout, /managed system/, "v2's /etc change");
});

test('4. a v3 whose loader is unsigned is refused by Secure Boot and rolled back, saying so; the TPM and UEFI state are kept', async () => {
  const before = Date.now();
  await push('3', w.guest!.disks['v3-unsigned'], '2');
  const failed = await until('the device to report v3 rolled back', async () => {
    const d = await device();
    return d.recentEvents.find(
      (e) => e.type === 'rolled-back' && e.data['versionId'] === w.versionIds['3'],
    );
  });
  const reason = String(failed.data['reason']);
  assert.match(
    reason,
    /^Secure Boot refused the boot loader: 'BdsDxe: failed to load Boot0001 .*: Access Denied'/,
    `the reason names the boot failure: ${reason}`,
  );
  assert.ok(Date.now() - before < 600_000, 'within the health timeout');
  await until('Center to show the device on v2 again', onVersion('2'));
  await assertPersistentState('after the rollback from v3');
});

async function assertPersistentState(when: string): Promise<void> {
  const read = await sh(
    [
      'export TPM2TOOLS_TCTI=device:/dev/tpmrm0',
      `echo "nv=$(tpm2_nvread -C o -s ${w.nvSecret.length} ${NV_INDEX})"`,
      `echo "var=$(cat ${VAR_PATH} | tail -c +5)"`,
      `echo "typed=$(cat /home/${w.guest!.user.name}/typed.txt)"`,
    ].join('\n'),
  );
  assert.match(read.stdout, new RegExp(`^nv=${w.nvSecret}$`, 'm'), `TPM NV ${when}`);
  assert.match(read.stdout, new RegExp(`^var=${w.varValue}$`, 'm'), `UEFI variable ${when}`);
  assert.match(read.stdout, /^typed=Typed at \/dev\/tty1$/m, `/home ${when}`);
}

test('5. under bios the same image fails with a reason that says it has no BIOS loader', async (t) => {
  const dir = join(w.dir, 'bios');
  const runDir = join(dir, 'run');
  const consoleDir = join(dir, 'consoles');
  // An overlay: the cached image itself is never written.
  const overlay = join(dir, 'system.qcow2');
  await mkdir(dir, { recursive: true });
  await tool(
    'qemu-img',
    ['create', '-q', '-f', 'qcow2', '-b', w.guest!.disks.v1, '-F', 'raw', overlay],
    'qemu-utils',
  );
  const spec: VmSpec = {
    name: 'bios',
    cpus: 1,
    memoryMib: 512,
    disks: [{ role: 'system', path: overlay, format: 'qcow2', readOnly: false }],
    policy: IsolationPolicySchema.parse({ network: 'none' }),
    runDir,
    consoleDir,
    version: 'debian@1',
  };
  const vms = createQemuDriver({ accel: 'tcg', startTimeoutMs: 120_000 });
  t.after(async () => {
    await vms.stop('bios', { force: true }).catch(() => {});
    vms.close();
  });
  const startedAt = Date.now();
  const status = await vms.start(spec);
  // The image can never become healthy here, so a short bound costs nothing; the reason is
  // what counts.
  const result = await checkHealth({
    connect: () => GuestAgent.connect(status.guestAgentSocket!, { timeoutMs: 2000 }),
    check: { timeoutSeconds: 60, command: w.guest!.healthCheck },
    startedAt,
    clock: systemClock,
    bootVerdict: () => readBootVerdict(runDir, consoleDir),
  });
  assert.equal(result.healthy, false);
  assert.match(
    result.healthy ? '' : result.reason,
    /the firmware started the disk's boot sector \('Booting from 0000:7c00'\) and nothing has shown on the serial console since: a disk with no BIOS boot loader \(UEFI only\) stops there/,
  );
});
