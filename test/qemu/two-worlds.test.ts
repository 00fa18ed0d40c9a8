import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, readlink, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GuestAgent } from '../../src/engine/guest-agent.ts';
import { createQemuDriver, type VmSpec } from '../../src/engine/hypervisor/index.ts';
import { sandboxName } from '../../src/engine/hypervisor/netns.ts';
import { ensureDataVolume, volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { IsolationPolicySchema } from '../../src/protocol/index.ts';
import { BIN, cliJson, freePort, killProcess, startCenterProcess } from '../support/cli.ts';
import { exec, filesUnder, makeKeys, tempDir, tool } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest, type GuestArtifacts } from '../support/guest.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

/*
 * The two worlds on one PC, with real guests side by side: the work VM (restricted network,
 * encrypted data) and the personal VM (nat, in its own network namespace). An "internet" is a
 * network namespace of its own, reached from the host through a veth pair, with two servers.
 */

const INTERNET_HOST = '10.214.0.1';
const INTERNET = '10.214.0.2';

async function overlay(dir: string, name: string, backing: string): Promise<string> {
  const path = join(dir, `${name}.qcow2`);
  await tool(
    'qemu-img',
    ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw', path],
    'qemu-utils',
  );
  return path;
}

function vmSpec(name: string, dir: string, guest: GuestArtifacts, disks: VmSpec['disks']): VmSpec {
  return {
    name,
    cpus: 1,
    memoryMib: 256,
    kernel: { path: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline },
    disks,
    policy: IsolationPolicySchema.parse({ network: 'nat' }),
    runDir: join(dir, `run-${name}`),
    version: 'os@1',
  };
}

async function sh(agent: GuestAgent, script: string) {
  const r = await agent.exec(['/bin/sh', '-c', script], { timeoutMs: PATIENCE_MS });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

/** A TCP server on the host that greets each connection with `hello from <name>`. */
async function hostServer(t: TestContext, name: string, host: string): Promise<number> {
  const server = createServer((socket) => socket.end(`hello from ${name}\n`));
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  t.after(() => server.close());
  return (server.address() as AddressInfo).port;
}

/**
 * The "internet": a namespace `bhd-t<n>` with 10.214.0.2, the host on 10.214.0.1, and a server
 * there greeting with the name of the port it was reached on.
 */
async function internet(t: TestContext, ports: Record<string, number>): Promise<void> {
  const ns = `bhd-t${process.pid % 100000}`;
  const ip = (...args: string[]) => tool('ip', args, 'iproute2');
  await ip('netns', 'add', ns);
  t.after(async () => {
    await exec('ip', ['netns', 'delete', ns]).catch(() => {});
    await exec('ip', ['link', 'delete', ns]).catch(() => {});
  });
  await ip('link', 'add', ns, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
  await ip('addr', 'add', `${INTERNET_HOST}/30`, 'dev', ns);
  await ip('link', 'set', ns, 'up');
  await ip('-n', ns, 'addr', 'add', `${INTERNET}/30`, 'dev', 'eth0');
  await ip('-n', ns, 'link', 'set', 'eth0', 'up');
  await ip('-n', ns, 'link', 'set', 'lo', 'up');
  const script = `const net = require('node:net');
    const ports = ${JSON.stringify(ports)};
    let n = 0;
    for (const [name, port] of Object.entries(ports))
      net.createServer((s) => s.end('hello from ' + name + '\\n')).listen(port, '0.0.0.0', () => {
        if (++n === Object.keys(ports).length) process.stdout.write('ready\\n');
      });`;
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`the internet's server exited (${code})`)));
  });
}

/** The host's first IPv4 address that is neither loopback nor one of Bulkhead's links. */
function hostAddress(): string {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name.startsWith('bhd-')) continue;
    const a = addrs?.find((x) => x.family === 'IPv4' && !x.internal);
    if (a) return a.address;
  }
  throw new Error('the host has no non-loopback IPv4 address to test against');
}

async function cmdline(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' ');
}

async function namespaces(): Promise<string> {
  return (await exec('ip', ['netns', 'list'])).stdout;
}

test("the personal VM reaches the internet but none of the host's services; the work VM only its endpoint; neither has the other's disks", async (t) => {
  await requireQemu();
  await tool('nft', ['--version'], 'nftables');
  // Hooks run first in, first out: the VMs must be stopped before their directory goes.
  const stops: (() => Promise<void>)[] = [];
  t.after(async () => {
    for (const stop of stops) await stop();
  });
  const { guest, volumes } = await testGuest();
  const dir = await tempDir(t);
  // Engine turns IPv4 forwarding on for its VMs; the test leaves the machine as it found it.
  const forwarding = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
  t.after(() => writeFile('/proc/sys/net/ipv4/ip_forward', forwarding));
  t.after(() => exec('nft', ['delete', 'table', 'inet', 'bhd-isolation']).catch(() => {}));

  const loopbackPort = await hostServer(t, 'host-loopback', '127.0.0.1');
  const anyPort = await hostServer(t, 'host-any', '0.0.0.0');
  const host = hostAddress();
  const allowed = 20000 + (process.pid % 10000);
  const other = allowed + 1;
  await internet(t, { allowed, other });

  const work = vmSpec('work', dir, guest, [
    {
      role: 'system',
      path: await overlay(dir, 'work-system', volumes.system['v1']),
      format: 'qcow2',
      readOnly: false,
    },
  ]);
  const workKey = randomBytes(32);
  const workData = join(dir, 'work-data.qcow2');
  await ensureDataVolume(workData, { sizeBytes: 64 * 1024 * 1024, key: workKey });
  work.disks.push({
    role: 'data',
    path: workData,
    format: 'qcow2',
    readOnly: false,
    encryptionKey: workKey,
  });
  work.policy = IsolationPolicySchema.parse({
    network: 'restricted',
    allowedEndpoints: [{ host: INTERNET, port: allowed }],
    encryptData: true,
  });
  const personalData = join(dir, 'personal-data.qcow2');
  await ensureDataVolume(personalData, { sizeBytes: 64 * 1024 * 1024 });
  const personal = vmSpec('personal', dir, guest, [
    {
      role: 'system',
      path: await overlay(dir, 'personal-system', volumes.system['v1']),
      format: 'qcow2',
      readOnly: false,
    },
    { role: 'data', path: personalData, format: 'qcow2', readOnly: false },
  ]);

  const driver = createQemuDriver({ accel: 'tcg' });
  stops.push(async () => {
    await driver.stop('work', { force: true }).catch(() => {});
    await driver.stop('personal', { force: true }).catch(() => {});
  });
  const [workVm, personalVm] = await Promise.all([driver.start(work), driver.start(personal)]);

  // Neither QEMU names the other's disks or run directory; the personal one runs in its own
  // network namespace, the work one (restricted: slirp without any host forward) in the host's.
  const workCmd = await cmdline(workVm.pid!);
  const personalCmd = await cmdline(personalVm.pid!);
  for (const disk of personal.disks) assert.ok(!workCmd.includes(disk.path), disk.path);
  assert.ok(!workCmd.includes(personal.runDir));
  for (const disk of work.disks) assert.ok(!personalCmd.includes(disk.path), disk.path);
  assert.ok(!personalCmd.includes(work.runDir));
  assert.doesNotMatch(workCmd, /hostfwd/);
  assert.doesNotMatch(personalCmd, /hostfwd/);
  const hostNet = await readlink('/proc/self/ns/net');
  assert.notEqual(await readlink(`/proc/${personalVm.pid}/ns/net`), hostNet);
  assert.equal(await readlink(`/proc/${workVm.pid}/ns/net`), hostNet);
  assert.match(await namespaces(), new RegExp(`^${sandboxName(personal.runDir)}\\b`, 'm'));

  const [workAgent, personalAgent] = await Promise.all(
    [workVm, personalVm].map((vm) =>
      GuestAgent.waitUntilResponsive(vm.guestAgentSocket!, PATIENCE_MS),
    ),
  );
  t.after(() => {
    workAgent!.close();
    personalAgent!.close();
  });
  const B = 'B=/bin/busybox; ';
  // A guest on a busy machine may be slow to answer: nc gives up on a reply once its stdin ends.
  // Each attempt in the background, all at once: a dropped one waits out its timeout.
  const reach = (to: string, port: number, label: string) =>
    `($B sleep 10 | $B nc -w 15 ${to} ${port} || echo "blocked ${label}") & `;
  const personalNet = await sh(
    personalAgent!,
    B +
      '$B ip link set eth0 up && $B ip addr add 10.0.2.15/24 dev eth0 && ' +
      // The set-up ends (;) before the attempts go to the background together.
      '$B ip route add default via 10.0.2.2; ' +
      reach(INTERNET, allowed, 'internet') +
      reach('10.0.2.2', loopbackPort, 'host-loopback') +
      reach('10.0.2.2', anyPort, 'host-any-through-gateway') +
      reach(host, anyPort, 'host-address') +
      reach(INTERNET_HOST, anyPort, 'host-internet-side') +
      'wait',
  );
  assert.match(personalNet.out, /^hello from allowed$/m, personalNet.out + personalNet.err);
  assert.doesNotMatch(personalNet.out, /hello from host/);
  // Refused or timed out at the host, not failed for want of a route in the guest.
  assert.doesNotMatch(personalNet.err, /unreachable/i, personalNet.err);
  for (const label of [
    'host-loopback',
    'host-any-through-gateway',
    'host-address',
    'host-internet-side',
  ]) {
    assert.match(personalNet.out, new RegExp(`^blocked ${label}$`, 'm'), personalNet.out);
  }

  const workNet = await sh(
    workAgent!,
    B +
      '$B ip link set eth0 up && $B ip addr add 10.0.2.15/24 dev eth0 && ' +
      '$B ip route add default via 10.0.2.2; ' +
      reach('10.0.2.100', allowed, 'allowed') +
      reach(INTERNET, other, 'other') +
      reach(INTERNET, allowed, 'direct') +
      reach('10.0.2.2', loopbackPort, 'host-loopback') +
      'wait',
  );
  assert.match(workNet.out, /^hello from allowed$/m, workNet.out + workNet.err);
  assert.doesNotMatch(workNet.out, /hello from (other|host)/);
  assert.doesNotMatch(workNet.err, /unreachable/i, workNet.err);
  for (const label of ['other', 'direct', 'host-loopback']) {
    assert.match(workNet.out, new RegExp(`^blocked ${label}$`, 'm'), workNet.out);
  }

  // The personal VM's namespace and uplink go with it.
  await driver.stop('personal', { timeoutMs: PATIENCE_MS });
  await waitFor(
    'the personal VM namespace to be removed',
    async () => !(await namespaces()).includes(sandboxName(personal.runDir)),
  );
  const links = (await exec('ip', ['-o', 'link', 'show'])).stdout;
  assert.ok(!links.includes(sandboxName(personal.runDir)), 'the uplink is gone');
});

test('Engine runs the work and the personal VM from Center; Center holds nothing of the personal VM but its state', async (t) => {
  await requireQemu();
  await tool('nft', ['--version'], 'nftables');
  // Hooks run first in, first out: the VMs must be stopped before their directory goes.
  const stops: (() => Promise<void>)[] = [];
  t.after(async () => {
    for (const stop of stops) await stop();
  });
  const { guest, volumes } = await testGuest();
  const dir = await tempDir(t);
  const forwarding = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
  t.after(() => writeFile('/proc/sys/net/ipv4/ip_forward', forwarding));
  t.after(() => exec('nft', ['delete', 'table', 'inet', 'bhd-isolation']).catch(() => {}));
  const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));

  // Two system images: the personal profile offers both, the user picks the second.
  const keys = await makeKeys(dir);
  const storeDir = join(dir, 'store');
  const store = new DirectoryStore(storeDir);
  for (const [name, file] of [
    ['os', volumes.system.v1],
    ['os-next', volumes.system.v2],
  ] as const) {
    await importImage({
      store,
      name,
      key: keys.key,
      tempDir: join(dir, 'tmp'),
      file,
      version: '1',
      parent: null,
    });
  }
  const centerDir = join(dir, 'center');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  // The URL Engine fetches the store from is the one Center says it is reached at.
  const center = await startCenterProcess(
    t,
    ['--data', centerDir, '--listen', `127.0.0.1:${port}`, '--public-url', url],
    { node: nodeBin },
  );
  const login = await fetch(`${url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(center.info.initialAdmin),
  });
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
  for (const name of ['os', 'os-next']) {
    await cliJson(['image', 'push', '--center', url, '--store', storeDir, name, '1', '--release'], {
      BULKHEAD_TOKEN: token,
    });
  }
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
    systemImageId: imageId('os'),
    personalImageIds: [imageId('os-next')],
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
    '--personal-image',
    'os-next',
  ])) as { deviceId: string };
  await api('PATCH', `/devices/${enrolled.deviceId}`, { profiles: [work.id, mine.id] });

  const engine = spawn(
    nodeBin,
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
    ],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let engineLog = '';
  engine.stderr.on('data', (b: Buffer) => (engineLog += b.toString()));
  const observer = createQemuDriver({ observeOnly: true });
  stops.push(async () => {
    await killProcess(engine);
    // A driver that owns the VMs now: stopping them removes the personal VM's namespace.
    const owner = createQemuDriver();
    for (const vm of ['work', 'mine']) {
      await owner.attach(vm, volumeLayout(engineData, vm).runDir).catch(() => {});
      await owner.stop(vm, { timeoutMs: 5000 }).catch(() => {});
    }
  });

  type Detail = { currentVersions: Record<string, { system?: string }> };
  const versionsOf = async (name: string) =>
    (await api<{ versions: { id: string }[] }>('GET', `/images/${imageId(name)}/versions`))
      .versions[0]!.id;
  const [osV1, nextV1] = [await versionsOf('os'), await versionsOf('os-next')];
  await waitFor(
    'Center to show both VMs healthy',
    async () => {
      const d = await api<Detail>('GET', `/devices/${enrolled.deviceId}`).catch(() => undefined);
      return d?.currentVersions[work.id]?.system === osV1 &&
        d.currentVersions[mine.id]?.system === nextV1
        ? d
        : undefined;
    },
    { intervalMs: 1000 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; Engine's log ends: ${engineLog.slice(-3000)}`);
  });

  // The user's VM booted the image the user chose, in its own network namespace.
  const mineRun = volumeLayout(engineData, 'mine').runDir;
  const marker = `personal-marker-${randomBytes(8).toString('hex')}`;
  const wrote = await runInGuest(observer, 'mine', mineRun, [
    '/bin/sh',
    '-c',
    `cat /etc/os-release; grep -q ' /data ' /proc/mounts && echo ${marker} > /data/marker && sync && cat /data/marker`,
  ]);
  assert.match(wrote.stdout, /VERSION_ID=2\n/, 'os-next was built from the v2 volume');
  assert.match(wrote.stdout, new RegExp(marker));
  const minePid = (await observer.status('mine')).pid!;
  assert.notEqual(await readlink(`/proc/${minePid}/ns/net`), await readlink('/proc/self/ns/net'));
  const workPid = (await observer.attach('work', volumeLayout(engineData, 'work').runDir)).pid!;
  const mineData = volumeLayout(engineData, 'mine').data;
  assert.ok(!(await cmdline(workPid)).includes(volumeLayout(engineData, 'mine').vmDir));
  assert.ok(!(await cmdline(minePid)).includes(volumeLayout(engineData, 'work').vmDir));

  // Center now holds every report of both VMs becoming healthy; Engine sends no more about
  // an unchanged VM, so the marker search below covers what was reported before it existed.
  await killProcess(engine);
  await center.stop();
  // The VMs outlive Engine; stopped by a driver that takes them over, the personal VM's network
  // namespace goes with it.
  const owner = createQemuDriver();
  for (const vm of ['work', 'mine']) {
    await owner.attach(vm, volumeLayout(engineData, vm).runDir);
    assert.equal((await owner.stop(vm, { timeoutMs: PATIENCE_MS })).state, 'stopped');
  }
  await waitFor(
    'the personal namespace to go',
    async () => !(await namespaces()).includes(sandboxName(mineRun)),
  );

  const key = await readFile(join(engineData, 'personal', 'data.key'));
  assert.equal(key.length, 32);
  const centerBytes = Buffer.concat((await filesUnder(centerDir)).map((f) => f.bytes));
  const desiredState = await readFile(join(engineData, 'desired-state.json'));
  for (const [what, needle] of [
    ['the marker written in the personal guest', marker],
    ["the personal VM's key", key],
    ["the personal VM's key in base64", key.toString('base64')],
    ["the personal VM's data volume", mineData],
    ["the user's choice file", join(engineData, 'personal')],
  ] as const) {
    assert.equal(centerBytes.indexOf(needle), -1, `Center's data holds ${what}`);
    assert.equal(desiredState.indexOf(needle), -1, `the desired state holds ${what}`);
  }
  // The marker is not in the clear on the PC's disk either: the data volume is encrypted.
  assert.equal((await readFile(mineData)).indexOf(marker), -1, 'the personal data volume');
});
