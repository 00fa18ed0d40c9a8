import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, readFile, writeFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import { SWITCHER_WEB_DIR } from '../../src/engine/index.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { launchBrowser } from '../support/browser.ts';
import { BIN, cliJson, freePort, killProcess, runCli, startCenterProcess } from '../support/cli.ts';
import { exec, makeKeys, tempDir, tool } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { screenVariance, timeToScreen } from '../support/switcher.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

/*
 * The person at the PC and the switcher, for real: Engine (a process, as on a PC) runs a work
 * VM and a personal VM from Center on QEMU; Debian's Chromium opens the address `bulkhead
 * engine switcher` prints, sees both VMs, clicks the work VM, sees its screen (pixels read
 * back from noVNC's canvas), types into it and finds the typed command's effect through the
 * guest agent, in that VM only. Neither guest reaches the switcher's port. A v2 published with
 * a day's switch deadline waits for the user; "Restart now" on the page installs it.
 */

/** The host's IPv4 addresses other than loopback and Bulkhead's own links. */
function hostAddresses(): string[] {
  return Object.entries(networkInterfaces())
    .filter(([name]) => !name.startsWith('bhd-'))
    .flatMap(([, addrs]) => addrs ?? [])
    .filter((a) => a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
}

test('the user sees both VMs, uses the work VM through its screen, and restarts it for an update; no guest reaches the switcher', async (t) => {
  await requireQemu();
  await tool('nft', ['--version'], 'nftables');
  await access(join(SWITCHER_WEB_DIR, 'index.html')).catch(() => {
    throw new Error(`${SWITCHER_WEB_DIR} is not built: run \`npm run setup\` (it builds it)`);
  });
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
  const centerDir = join(dir, 'center');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
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

  // A day to switch: the update waits for the user (or for the VM to be off).
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
      '--switch-deadline',
      '86400',
      '--switcher-port',
      '0',
    ],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let engineLog = '';
  engine.stderr.on('data', (b: Buffer) => (engineLog += b.toString()));
  const failWithLog = (err: Error): never => {
    throw new Error(`${err.message}; Engine's log ends: ${engineLog.slice(-3000)}`);
  };
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

  const guestSh = async (vm: string, script: string) =>
    runInGuest(observer, vm, volumeLayout(engineData, vm).runDir, ['/bin/sh', '-c', script]);
  // The shell on the work VM's screen has opened tty1: typed text has somewhere to go.
  await waitFor('the shell on tty1 of the work VM', async () =>
    (await guestSh('work', 'ls -l /proc/[0-9]*/fd/ 2>/dev/null')).stdout.includes('/dev/tty1'),
  );

  // The address the PC's kiosk opens, as `bulkhead engine switcher` prints it.
  const printed = await runCli(['engine', 'switcher', '--data', engineData]);
  assert.equal(printed.code, 0, printed.stderr);
  const address = printed.stdout.trim();
  const switcher = /^http:\/\/127\.0\.0\.1:(\d+)\/\?key=[A-Za-z0-9_-]{43}$/.exec(address);
  assert.ok(switcher, address);
  const switcherPort = Number(switcher[1]);
  assert.ok(!engineLog.includes(new URL(address).searchParams.get('key')!), 'key in the log');

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });
  await page.goto(address);
  assert.equal(page.url(), `http://127.0.0.1:${switcherPort}/`, 'the key left the address bar');

  // Both VMs, with their kind, state and version in words.
  const workCard = page.locator('li.card', {
    has: page.getByRole('button', { name: 'Open work' }),
  });
  const mineCard = page.locator('li.card', {
    has: page.getByRole('button', { name: 'Open mine' }),
  });
  await workCard.waitFor();
  await mineCard.waitFor();
  assert.match(await workCard.innerText(), /Work[\s\S]*Running[\s\S]*os@1/);
  assert.match(await mineCard.innerText(), /Personal[\s\S]*Running[\s\S]*home@1/);
  assert.match(await page.locator('.connection').innerText(), /^Online$/);

  // One click: the work VM's screen, full-page, not blank.
  const ms = await timeToScreen(page, 'work', { timeoutMs: PATIENCE_MS });
  t.diagnostic(`the work VM's screen showed ${Math.round(ms)} ms after the click`);
  assert.ok((await screenVariance(page, 'work')) > 0.5);
  assert.equal(await page.locator('.screen canvas').count(), 1, 'one VM connected at a time');

  // Typed on the page's keyboard: the command runs in the work VM, and only there.
  const marker = `/data/typed-on-the-switcher`;
  await page.keyboard.type(`touch ${marker}\n`);
  await waitFor(
    'the typed command to run in the work VM',
    async () => (await guestSh('work', `ls ${marker}`)).exitCode === 0,
  );
  assert.notEqual((await guestSh('mine', `ls ${marker}`)).exitCode, 0, 'typed into mine too');

  // The shortcut switches VMs (it never reaches a guest); one connection again.
  await page.keyboard.press('Control+Alt+ArrowRight');
  await page.locator('.screen[data-vm="mine"][data-state="connected"]').waitFor();
  assert.equal(await page.locator('.screen canvas').count(), 1);
  await page.keyboard.press('Control+Alt+1');
  await page.locator('.screen[data-vm="work"][data-state="connected"]').waitFor();

  // Neither guest reaches the switcher: not through slirp's gateway (the host's loopback for
  // slirp), not at the host's addresses. The personal VM is nat, in its own namespace; the work
  // VM restricted.
  const reach = (to: string, label: string) =>
    `($B sleep 10 | $B nc -w 15 ${to} ${switcherPort} 2>&1 && echo "reached ${label}" || echo "blocked ${label}") & `;
  const targets = [['10.0.2.2', 'gateway'], ...hostAddresses().map((a) => [a, `host ${a}`])];
  for (const vm of ['mine', 'work']) {
    const out = await guestSh(
      vm,
      'B=/bin/busybox; ' +
        '$B ip link set eth0 up && $B ip addr add 10.0.2.15/24 dev eth0 && ' +
        '$B ip route add default via 10.0.2.2; ' +
        targets.map(([to, label]) => reach(to!, label!)).join('') +
        'wait',
    );
    assert.doesNotMatch(out.stdout, /^reached/m, `${vm}: ${out.stdout}`);
    // Refused or timed out at the host, not failed for want of a route in the guest.
    assert.doesNotMatch(out.stdout, /unreachable/i, `${vm}: ${out.stdout}`);
    for (const [, label] of targets) {
      assert.match(out.stdout, new RegExp(`^blocked ${label}$`, 'm'), `${vm}: ${out.stdout}`);
    }
  }

  // A v2 of the work VM's image: staged, it waits for the user, who restarts now.
  await push('os', '2');
  const prompt = page.getByRole('group', { name: 'Update for work' });
  await prompt.waitFor({ timeout: PATIENCE_MS }).catch(failWithLog);
  assert.match(await prompt.innerText(), /An update is ready for work \(os@2\)/);
  assert.match(await prompt.innerText(), /restarts by itself/);
  assert.match(
    (await guestSh('work', 'cat /etc/os-release')).stdout,
    /VERSION_ID=1\n/,
    'the update waits for the user',
  );
  await prompt.getByRole('button', { name: 'Restart now' }).click();
  await page.getByText('Restarting work to install the update').waitFor();
  await page
    .getByText(/^Updated to os@2 /)
    .waitFor({ timeout: PATIENCE_MS })
    .catch(failWithLog);
  assert.match((await guestSh('work', 'cat /etc/os-release')).stdout, /VERSION_ID=2\n/);
  // The screen comes back by itself after the restart.
  await page.locator('.screen[data-vm="work"][data-state="connected"]').waitFor();
  await waitFor('the restarted screen', async () => (await screenVariance(page, 'work')) > 0.5);

  // Back on the overview: the card says what happened.
  await page.keyboard.press('Control+Alt+0');
  await workCard.waitFor();
  assert.match(await workCard.innerText(), /os@2[\s\S]*Updated to os@2/);
  assert.deepEqual(pageErrors, [], 'the page ran without errors');
});
