// An administrator's first day, in the console only where a person clicks: sign in, trust the
// publisher's key, create an enrolment token, and watch a real PC (Engine with a QEMU VM, the
// busybox test guest) enrolled with it appear; publish a patch, roll it out with the form and
// watch the rollout complete on the PC; then roll out a broken patch and see the rollout halt
// itself with its reason on screen, the PC back on the good version. What a person does on
// another machine (the publisher pushing images, the PC enrolling) runs through the CLI, as it
// would there.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Page } from 'playwright-core';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { launchBrowser } from '../support/browser.ts';
import { cliJson, freePort, killProcess, startCenterProcess } from '../support/cli.ts';
import { makeKeys, tempDir } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { waitFor } from '../support/wait.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));
const CONSOLE_DIR = fileURLToPath(new URL('../../web/console/dist', import.meta.url));

/** Goes to a section through the navigation, as a person would, and waits for its page. */
async function open(page: Page, nav: string, title: string | RegExp): Promise<void> {
  await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: nav }).click();
  await page.getByRole('heading', { level: 1, name: title }).waitFor();
  await page.locator('main[aria-busy="false"]').waitFor();
}

test("an administrator's first day in the console: key, token, a real PC, a rollout that completes and one that halts itself", async (t) => {
  await requireQemu();
  await readFile(join(CONSOLE_DIR, 'index.html')).catch(() => {
    throw new Error(`${CONSOLE_DIR} is not built: run \`npm run setup\` (it builds it)`);
  });
  // Hooks run first in, first out: Engine and its VM stop before their directory goes.
  const stops: (() => Promise<void>)[] = [];
  t.after(async () => {
    for (const stop of stops) await stop();
  });
  const { guest, volumes } = await testGuest();
  const dir = await tempDir(t);

  // The publisher's side: a key pair and three versions of `os` in a store (v3 is broken: its
  // health check fails on the guest).
  const keys = await makeKeys(dir);
  const storeDir = join(dir, 'store');
  const store = new DirectoryStore(storeDir);
  const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp') };
  await importImage({ ...common, file: volumes.system.v1, version: '1', parent: null });
  await importImage({ ...common, file: volumes.system.v2, version: '2', parent: '1' });
  await importImage({ ...common, file: volumes.system['v3-broken'], version: '3', parent: '2' });

  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const center = await startCenterProcess(
    t,
    ['--data', join(dir, 'center'), '--listen', `127.0.0.1:${port}`, '--public-url', url],
    { node: nodeBin },
  );
  const admin = center.info.initialAdmin!;

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(err.message));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(m.text());
  });

  // 1. Sign in with the first start's one-time password.
  await page.goto(url);
  await page.getByText('First time here?').waitFor();
  await page.getByLabel('Username').fill(admin.username);
  await page.getByLabel('Password').fill(admin.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  await page.getByRole('heading', { level: 1, name: 'Dashboard' }).waitFor();
  const token = await page.evaluate(() => sessionStorage.getItem('bulkhead.session'));
  assert.ok(token, 'the session is kept in the tab');
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

  // 2. Trust the publisher's key by pasting its .pub file.
  await open(page, 'Keys', /publisher keys/i);
  await page.getByLabel('Name').fill('release-team');
  await page.getByLabel('Public key').fill(await readFile(keys.publicPath, 'utf8'));
  await page.getByRole('button', { name: 'Trust key' }).click();
  await page.getByRole('row', { name: /release-team/ }).waitFor();

  // The publisher pushes v1 (released) and v2 (a draft) from their machine.
  const push = (version: string, ...flags: string[]) =>
    cliJson(['image', 'push', '--center', url, '--store', storeDir, 'os', version, ...flags], {
      BULKHEAD_TOKEN: token,
    });
  await push('1', '--release');
  await push('2');
  const image = await api<{ id: string }>('GET', '/images/os');
  // The VM profile and the group (their forms are tested in console-pages.test.ts).
  const profile = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: image.id,
    isolation: { network: 'none', encryptData: true },
    healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
    cpus: 1,
    memoryMib: 256,
  });
  await api('POST', '/groups', { name: 'finance' });

  // 3. An enrolment token for the group, shown once with the command a PC enrols with.
  await open(page, 'Enrolment', /enrolment/i);
  await page.getByLabel('Group').selectOption({ label: 'finance' });
  await page.getByRole('button', { name: 'Create token' }).click();
  const secret = (await page.getByLabel('Enrolment token', { exact: true }).textContent())!.trim();
  assert.match(secret, /^\S{20,}$/);
  const command = (await page.getByLabel('Enrol command').textContent())!;
  assert.ok(command.includes(secret) && command.includes(url), command);

  // 4. A real PC enrols with it and runs Engine; it appears in the console, healthy on os@1.
  const engineData = join(dir, 'pc-0042');
  const enrolled = (await cliJson([
    'engine',
    'enroll',
    '--center',
    url,
    '--token',
    secret,
    '--name',
    'pc-0042',
    '--data',
    engineData,
  ])) as { deviceId: string };
  await api('PATCH', `/devices/${enrolled.deviceId}`, { profiles: [profile.id] });
  let engine: ChildProcess | undefined = spawn(
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
      '--switcher-port',
      '0',
    ],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let engineLog = '';
  engine.stderr!.on('data', (b: Buffer) => (engineLog += b.toString()));
  const runDir = volumeLayout(engineData, 'work').runDir;
  stops.push(async () => {
    await killProcess(engine);
    engine = undefined;
    const owner = createQemuDriver();
    await owner.attach('work', runDir).catch(() => {});
    await owner.stop('work', { timeoutMs: 5000 }).catch(() => {});
  });
  const withLog = (err: Error): never => {
    throw new Error(`${err.message}; Engine's log ends: ${engineLog.slice(-3000)}`);
  };

  await open(page, 'Devices', 'Devices');
  const row = page.getByRole('row', { name: /pc-0042/ });
  await row.waitFor();
  // The list refreshes by itself: no reload between the enrolment and the healthy VM.
  await row
    .getByText('os@1')
    .waitFor({ timeout: 10 * 60_000 })
    .catch(withLog);

  // 5. Publish the patch.
  await open(page, 'Images', 'Images');
  await page.getByRole('link', { name: 'os' }).click();
  await page.getByRole('heading', { level: 1, name: 'Image os' }).waitFor();
  await page.getByRole('row', { name: /^2 / }).getByRole('button', { name: 'Publish' }).click();
  await page
    .getByRole('dialog', { name: 'Publish os@2?' })
    .getByRole('button', { name: 'Publish' })
    .click();
  await page.getByRole('row', { name: /^2 / }).getByText('published').waitFor();

  // 6. Roll it out with the form, started at once, and watch it complete.
  const rollOut = async (version: string) => {
    await open(page, 'Rollouts', 'Rollouts');
    await page.getByRole('link', { name: 'New rollout' }).click();
    await page.getByRole('heading', { level: 1, name: 'New rollout' }).waitFor();
    await page.getByLabel('Image version').selectOption({ label: `os@${version}` });
    await page.getByLabel('Target group').selectOption({ label: 'finance (1 device)' });
    await page.getByLabel('Phases (%)').fill('100');
    await page.getByLabel('Failure threshold (%)').fill('0');
    await page.getByLabel('Soak (minutes)').fill('0');
    await page.getByLabel('Start now').check();
    await page.getByRole('button', { name: 'Create rollout' }).click();
    await page.getByRole('heading', { level: 1, name: `Rollout of os@${version}` }).waitFor();
  };
  await rollOut('2');
  const facts = page.getByRole('region', { name: /Phase 1 of 1/ });
  await facts
    .getByText('completed')
    .waitFor({ timeout: 10 * 60_000 })
    .catch(withLog);
  const v2 = await runInGuest(createQemuDriver({ observeOnly: true }), 'work', runDir, [
    '/bin/cat',
    '/etc/os-release',
  ]);
  assert.match(v2.stdout, /VERSION_ID=2\n/, 'the PC runs the patch');

  // 7. A broken patch: its rollout halts itself, the reason on screen, the PC back on os@2.
  await push('3', '--publish');
  await rollOut('3');
  const halt = page.locator('.halt[role="alert"]');
  await halt.waitFor({ timeout: 10 * 60_000 }).catch(withLog);
  const reason = (await halt.textContent()) ?? '';
  assert.match(reason, /Halted by Center/);
  const { rollouts } = await api<{ rollouts: { id: string; state: string }[] }>('GET', '/rollouts');
  const halted = rollouts.find((r) => r.state === 'halted');
  assert.ok(halted, 'the API has the halted rollout');
  const rollout = await api<{ stateReason: string | null }>('GET', `/rollouts/${halted.id}`);
  assert.ok(rollout.stateReason, 'Center gave a reason');
  assert.ok(reason.includes(rollout.stateReason), `the console shows "${rollout.stateReason}"`);
  await waitFor('the PC back on os@2', async () => {
    const r = await runInGuest(createQemuDriver({ observeOnly: true }), 'work', runDir, [
      '/bin/cat',
      '/etc/os-release',
    ]).catch(() => undefined);
    return r?.stdout.includes('VERSION_ID=2\n');
  });
  assert.deepEqual(problems, [], 'no page error and no CSP violation');
});
