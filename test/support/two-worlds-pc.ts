import { spawn, type ChildProcess } from 'node:child_process';
import { access, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createQemuDriver, type Accelerator } from '../../src/engine/hypervisor/index.ts';
import { SWITCHER_WEB_DIR } from '../../src/engine/index.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import {
  BIN,
  cliJson,
  freePort,
  killProcess,
  runCli,
  startCenterProcess,
  type CenterProcess,
} from './cli.ts';
import { exec, makeKeys, tempDir, tool, type Cleanups } from './fixtures.ts';
import { requireQemu, runInGuest, testGuest } from './guest.ts';
import { waitFor } from './wait.ts';

/*
 * A PC with two worlds, as the switcher's test and benchmark need it: a real Center (a process)
 * holding `os` v1 and v2 and `home` v1 signed by a trusted publisher, profiles `work` (os,
 * restricted network, encrypted data) and `mine` (personal, home), a device enrolled in group
 * `lab` with both, and Engine running as a process on QEMU with its switcher on a free loopback
 * port. Only os v1 and home v1 are released at first: os v2 is the update a caller publishes
 * with `push('os', '2')`.
 */

export interface TwoWorldsPcOptions {
  /** The accelerator Engine's VMs get (BULKHEAD_ACCEL); default `tcg`, as the tests run. */
  accel?: Accelerator;
  /** How long a staged update waits for the user (`--switch-deadline`); default a day. */
  switchDeadlineSeconds?: number;
}

export interface TwoWorldsPc {
  /** Center's address and its process. */
  url: string;
  center: CenterProcess;
  /** The first administrator's bearer token. */
  token: string;
  /** Center's admin API with that token; a status other than 2xx fails with the body. */
  api<T>(method: string, path: string, body?: unknown): Promise<T>;
  /** `bulkhead image push NAME VERSION --release` from the store into Center. */
  push(name: 'os' | 'home', version: string): Promise<unknown>;
  /** Center's id of image `name` (`os` or `home`). */
  imageId(name: 'os' | 'home'): string;
  /** Center's ids of the two profiles. */
  profiles: { work: string; mine: string };
  /** Center's ids of os v1 and home v1, the versions both VMs run once healthy. */
  versions: { osV1: string; homeV1: string };
  deviceId: string;
  /** Engine's data directory, its process and everything it wrote on stderr so far. */
  engineData: string;
  engine: ChildProcess;
  engineLog(): string;
  /** Rethrows `err` with the end of Engine's log appended: what went wrong on the PC. */
  failWithLog(err: Error): never;
  /** Runs `/bin/sh -c SCRIPT` in VM `vm` (`work` or `mine`) through its guest agent. */
  guestSh(vm: string, script: string): Promise<{ exitCode: number; stdout: string }>;
  /** The switcher's address with its key, as `bulkhead engine switcher` printed it. */
  switcherAddress: string;
  /**
   * Stops Engine, then the VMs, then Center, undoes the host's forwarding and isolation rules,
   * and removes the directory; every step runs even when one before it failed (the first
   * failure is thrown at the end). A second call does nothing.
   */
  stop(): Promise<void>;
}

const NODE = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));
const VMS = ['work', 'mine'] as const;

/**
 * Sets up the PC and waits until Center reports both VMs healthy on os v1 and home v1. Fails
 * naming the Debian package when QEMU, nftables or the guest's build tools are missing, and
 * when the switcher's page is not built. On a failure part-way, what was started is stopped.
 */
export async function startTwoWorldsPc(options: TwoWorldsPcOptions = {}): Promise<TwoWorldsPc> {
  await requireQemu();
  await tool('nft', ['--version'], 'nftables');
  await access(join(SWITCHER_WEB_DIR, 'index.html')).catch(() => {
    throw new Error(`${SWITCHER_WEB_DIR} is not built: run \`npm run setup\` (it builds it)`);
  });
  // Undone last in, first out: Engine before its VMs' directory, Center after Engine.
  const undo: (() => unknown)[] = [];
  const cleanups: Cleanups = { after: (release) => void undo.push(release) };
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    let first: unknown;
    for (const release of undo.reverse()) {
      try {
        await release();
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  };
  try {
    return { ...(await setUp(options, cleanups)), stop };
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }
}

async function setUp(
  options: TwoWorldsPcOptions,
  cleanups: Cleanups,
): Promise<Omit<TwoWorldsPc, 'stop'>> {
  const { guest, volumes } = await testGuest();
  const dir = await tempDir(cleanups, 'bulkhead-two-worlds-');
  // Engine turns forwarding on and adds its isolation table; both are the host's, not the PC's.
  const forwarding = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
  cleanups.after(() => writeFile('/proc/sys/net/ipv4/ip_forward', forwarding));
  cleanups.after(() => exec('nft', ['delete', 'table', 'inet', 'bhd-isolation']).catch(() => {}));

  // `os` for the work VM (v1, then v2), `home` for the personal one.
  const keys = await makeKeys(dir);
  const storeDir = join(dir, 'store');
  const store = new DirectoryStore(storeDir);
  const common = { store, key: keys.key, tempDir: join(dir, 'tmp') };
  await importImage({ ...common, name: 'os', file: volumes.system.v1, version: '1', parent: null });
  await importImage({ ...common, name: 'os', file: volumes.system.v2, version: '2', parent: '1' });
  await importImage({
    ...common,
    name: 'home',
    file: volumes.system.v1,
    version: '1',
    parent: null,
  });
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const center = await startCenterProcess(
    cleanups,
    ['--data', join(dir, 'center'), '--listen', `127.0.0.1:${port}`, '--public-url', url],
    { node: NODE },
  );
  if (!center.info.initialAdmin) throw new Error('Center printed no first administrator');
  const login = await fetch(`${url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(center.info.initialAdmin),
  });
  if (!login.ok) throw new Error(`login: HTTP ${login.status} ${await login.text()}`);
  const token = ((await login.json()) as { token: string }).token;
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const res = await fetch(`${url}/api/v1/admin${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
    return (text ? JSON.parse(text) : null) as T;
  };
  await api('POST', '/publishers', {
    name: 'test-publisher',
    publicKey: await readFile(keys.publicPath, 'utf8'),
  });
  const push = (name: string, version: string) =>
    cliJson(['image', 'push', '--center', url, '--store', storeDir, name, version, '--release'], {
      BULKHEAD_TOKEN: token,
    });
  await push('os', '1');
  await push('home', '1');
  const { images } = await api<{ images: { id: string; name: string }[] }>('GET', '/images');
  const imageId = (name: string) => images.find((i) => i.name === name)!.id;
  const health = { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] };
  const work = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: imageId('os'),
    isolation: { network: 'restricted', encryptData: true },
    healthCheck: health,
    cpus: 1,
    memoryMib: 256,
  });
  const mine = await api<{ id: string }>('POST', '/profiles', {
    name: 'mine',
    kind: 'personal',
    systemImageId: imageId('home'),
    healthCheck: health,
    cpus: 1,
    memoryMib: 256,
  });
  const group = await api<{ id: string }>('POST', '/groups', { name: 'lab' });
  const enrolment = await api<{ token: string }>('POST', '/enrolment-tokens', {
    groupId: group.id,
  });
  const engineData = join(dir, 'engine');
  const enrolled = (await cliJson([
    'engine',
    'enroll',
    '--center',
    url,
    '--token',
    enrolment.token,
    '--data',
    engineData,
  ])) as { deviceId: string };
  await api('PATCH', `/devices/${enrolled.deviceId}`, { profiles: [work.id, mine.id] });

  // A day to switch by default: an update waits for the user (or for the VM to be off).
  const engine = spawn(
    NODE,
    [
      BIN,
      'engine',
      'run',
      '--data',
      engineData,
      '--kernel',
      guest.kernel,
      '--initrd',
      guest.initrd,
      '--cmdline',
      guest.cmdline,
      '--poll-interval',
      '2',
      '--switch-deadline',
      String(options.switchDeadlineSeconds ?? 86_400),
      '--switcher-port',
      '0',
    ],
    {
      env: { ...process.env, BULKHEAD_ACCEL: options.accel ?? 'tcg' },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let engineLog = '';
  engine.stderr.on('data', (b: Buffer) => (engineLog += b.toString()));
  const failWithLog = (err: Error): never => {
    throw new Error(`${err.message}; Engine's log ends: ${engineLog.slice(-3000)}`);
  };
  cleanups.after(async () => {
    await killProcess(engine);
    // A driver that owns the VMs now: stopping them removes the personal VM's namespace.
    const owner = createQemuDriver();
    for (const vm of VMS) {
      await owner.attach(vm, volumeLayout(engineData, vm).runDir).catch(() => {});
      await owner.stop(vm, { timeoutMs: 5000 }).catch(() => {});
    }
  });

  type Detail = { currentVersions: Record<string, { system?: string }> };
  const versionIds = async (name: string) =>
    (
      await api<{ versions: { id: string; version: string }[] }>(
        'GET',
        `/images/${imageId(name)}/versions`,
      )
    ).versions;
  const osV1 = (await versionIds('os')).find((v) => v.version === '1')!.id;
  const homeV1 = (await versionIds('home')).find((v) => v.version === '1')!.id;
  await waitFor(
    'Center to show both VMs healthy',
    async () => {
      const d = await api<Detail>('GET', `/devices/${enrolled.deviceId}`).catch(() => undefined);
      return d?.currentVersions[work.id]?.system === osV1 &&
        d.currentVersions[mine.id]?.system === homeV1
        ? d
        : undefined;
    },
    { intervalMs: 1000 },
  ).catch(failWithLog);

  const observer = createQemuDriver({ observeOnly: true });
  const guestSh = (vm: string, script: string) =>
    runInGuest(observer, vm, volumeLayout(engineData, vm).runDir, ['/bin/sh', '-c', script]);

  // The address the PC's kiosk opens, as `bulkhead engine switcher` prints it.
  const printed = await runCli(['engine', 'switcher', '--data', engineData]);
  if (printed.code !== 0) {
    throw new Error(`bulkhead engine switcher exited ${printed.code}: ${printed.stderr}`);
  }
  return {
    url,
    center,
    token,
    api,
    push,
    imageId,
    profiles: { work: work.id, mine: mine.id },
    versions: { osV1, homeV1 },
    deviceId: enrolled.deviceId,
    engineData,
    engine,
    engineLog: () => engineLog,
    failWithLog,
    guestSh,
    switcherAddress: printed.stdout.trim(),
  };
}
