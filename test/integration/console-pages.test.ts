import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { build } from 'vite';
import { DEVICE_SIGNATURE_DOMAINS } from '../../src/center/devices/index.ts';
import { signPayload } from '../../src/signing/index.ts';
import { launchBrowser } from '../support/browser.ts';
import { runCli, startCenterProcess } from '../support/cli.ts';
import { updateEvent } from '../support/events.ts';
import { tempDir } from '../support/fixtures.ts';
import { encryptionKeyPem } from '../support/keys.ts';

/*
 * The console's catalog, rollout and audit pages in Debian's Chromium against a real `center
 * serve`, driven by clicks as an administrator would: trust a publisher key, publish a pushed
 * version, create a group (and see the API's own sentence beside the form when the name is
 * taken), create an enrolment token shown once with the command a PC enrols with, a profile and
 * a rollout by their forms, and filter the audit log. A viewer, signed in in a page of their own,
 * sees no button that changes anything, and a request forged with their token is refused. Last,
 * the token from the page enrols a PC through the device API, whose rollback halts a rollout:
 * its page, left open, shows the reason without a reload.
 */

const ROOT = join(import.meta.dirname, '../..');

/** Buttons and links that change something; a viewer must see none of them. */
const MUTATING =
  /^(Trust key|Revoke|Create|Publish|Release|Retire|Delete|Rename|Add|Disable|Enable|Pause|Resume|Abort|Promote|New rollout|Roll out)/;

type Groups = { groups: { id: string; name: string }[] };

async function signIn(page: Page, url: string, username: string, password: string) {
  await page.goto(url);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

/** Follows a link of the navigation and waits until that page's data is in. */
async function openSection(page: Page, nav: string, title: string) {
  await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: nav }).click();
  await page.getByRole('heading', { level: 1, name: title }).waitFor();
  await page.locator('main[aria-busy="false"]').waitFor();
}

test('the catalog pages in Chromium: an admin trusts, publishes and enrols; a viewer changes nothing', async (t) => {
  const dir = await tempDir(t);
  const dist = join(dir, 'console');
  await build({
    configFile: join(ROOT, 'web/console/vite.config.ts'),
    logLevel: 'silent',
    build: { outDir: dist, emptyOutDir: true },
  });
  const center = await startCenterProcess(t, ['--data', join(dir, 'data')], {
    env: { BULKHEAD_CONSOLE_DIR: dist },
  });
  const { url, initialAdmin } = center.info;
  assert.ok(initialAdmin, 'a first start creates the first admin');

  /** Center's API as a script sees it, with the first admin's own session. */
  const api = async <T>(method: string, path: string, token: string, body?: unknown) => {
    const res = await fetch(`${url}/api/v1/admin${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json().catch(() => null)) as T };
  };
  const login = await fetch(`${url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(initialAdmin),
  });
  const adminToken = ((await login.json()) as { token: string }).token;

  const keys = join(dir, 'keys');
  const generated = await runCli(['keys', 'generate', '--out', keys]);
  assert.equal(generated.code, 0, generated.stderr);
  const publicKey = await readFile(join(keys, 'publisher.pub'), 'utf8');

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const admin = await browser.newPage();
  const problems: string[] = [];
  admin.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await admin.addInitScript({
    content: `window.violations = [];
      document.addEventListener('securitypolicyviolation', (e) =>
        window.violations.push(e.violatedDirective + ' ' + e.blockedURI));`,
  });
  await signIn(admin, url, initialAdmin.username, initialAdmin.password);

  // Trust a publisher key by pasting its .pub file.
  await openSection(admin, 'Keys', 'Publisher keys');
  await admin.getByLabel('Name').fill('release-team');
  await admin.getByLabel('Public key').fill(publicKey);
  await admin.getByRole('button', { name: 'Trust key' }).click();
  await admin.getByRole('row', { name: /release-team/ }).waitFor();
  const publishers = await api<{ publishers: { name: string }[] }>(
    'GET',
    '/publishers',
    adminToken,
  );
  assert.deepEqual(
    publishers.body.publishers.map((p: { name: string }) => p.name),
    ['release-team'],
  );

  // Versions signed by that key upload (drafts), and one is published with a click.
  const store = join(dir, 'store');
  for (const version of ['1', '2']) {
    const disk = join(dir, `disk${version}.raw`);
    await writeFile(disk, randomBytes(1 << 20));
    const imported = await runCli([
      ...['image', 'import', disk, '--store', store, '--name', 'os', '--version', version],
      ...['--key', join(keys, 'publisher.key'), '--no-pack', '--format', 'raw'],
    ]);
    assert.equal(imported.code, 0, imported.stderr);
    const pushed = await runCli([
      ...['image', 'push', '--store', store, 'os', version],
      ...['--center', url, '--token', adminToken],
    ]);
    assert.equal(pushed.code, 0, pushed.stderr);
  }
  await openSection(admin, 'Images', 'Images');
  await admin.getByRole('link', { name: 'os' }).click();
  await admin.getByRole('heading', { level: 1, name: 'Image os' }).waitFor();
  await admin.locator('main[aria-busy="false"]').waitFor();
  const v1 = admin.getByRole('row', { name: /^1 / });
  await v1.getByRole('button', { name: 'Publish' }).click();
  const dialog = admin.getByRole('dialog', { name: 'Publish os@1?' });
  await dialog.getByText('every device on os without a rollout gets 1').waitFor();
  await dialog.getByRole('button', { name: 'Publish' }).click();
  await v1.getByText('published').waitFor();
  await v1.getByText('released').waitFor();
  // The draft beside it still offers Publish: the viewer's check below can fail.
  assert.equal(
    await admin.getByRole('row', { name: /^2 / }).getByRole('button', { name: 'Publish' }).count(),
    1,
  );
  const image = await api<{ id: string; release: { id: string; version: string } | null }>(
    'GET',
    '/images/os',
    adminToken,
  );
  assert.equal(image.body.release?.version, '1');

  // A group; the same name again shows the API's own sentence beside the form.
  await openSection(admin, 'Groups', 'Groups');
  const createGroup = admin.getByRole('region', { name: 'Create a group' });
  await createGroup.getByLabel('Name').fill('lab');
  await createGroup.getByRole('button', { name: 'Create group' }).click();
  await admin.getByRole('row', { name: /lab/ }).waitFor();
  await createGroup.getByLabel('Name').fill('lab');
  await createGroup.getByRole('button', { name: 'Create group' }).click();
  const again = await api<{ error: { message: string } }>('POST', '/groups', adminToken, {
    name: 'lab',
  });
  assert.equal(again.status, 409);
  const message: string = again.body.error.message;
  const alert = createGroup.getByRole('alert');
  await alert.waitFor();
  assert.equal(await alert.textContent(), `${message.charAt(0).toUpperCase()}${message.slice(1)}.`);
  assert.equal((await api<Groups>('GET', '/groups', adminToken)).body.groups.length, 1);

  // An enrolment token, shown once with the command a PC runs.
  await openSection(admin, 'Enrolment', 'Enrolment');
  await admin.getByLabel('Group').selectOption({ label: 'lab' });
  await admin.getByLabel('Uses').fill('3');
  await admin.getByRole('button', { name: 'Create token' }).click();
  const secret = admin.getByLabel('Enrolment token', { exact: true });
  await secret.waitFor();
  const token = (await secret.textContent()) ?? '';
  assert.match(token, /^\S{20,}$/);
  assert.equal(
    await admin.getByLabel('Enrol command').textContent(),
    `bulkhead engine enroll --center ${url} --token ${token} --name <pc-name>`,
  );
  const tokens = await api<{ tokens: { usesLeft: number }[] }>(
    'GET',
    '/enrolment-tokens',
    adminToken,
  );
  assert.deepEqual(
    tokens.body.tokens.map((x: { usesLeft: number }) => x.usesLeft),
    [3],
  );
  assert.doesNotMatch(JSON.stringify(tokens.body), new RegExp(token), 'the list has no secret');
  await admin.reload();
  await admin.locator('main[aria-busy="false"]').waitFor();
  await admin.getByRole('row', { name: /lab/ }).waitFor();
  assert.equal(await admin.getByLabel('Enrolment token', { exact: true }).count(), 0);
  assert.doesNotMatch((await admin.locator('main').textContent()) ?? '', new RegExp(token));

  // A profile, then a rollout of os@1 to the group: a field's error beside the field, then a
  // rollout paused, resumed and aborted with a reason.
  await openSection(admin, 'Profiles', 'Profiles');
  await admin.getByLabel('Name').fill('work');
  await admin.getByLabel('System image').selectOption({ label: 'os' });
  await admin.getByLabel('Lease (days offline)').fill('14');
  await admin.getByRole('button', { name: 'Create profile' }).click();
  await admin.getByRole('heading', { level: 1, name: 'Profile work' }).waitFor();
  await admin.getByText('Lease: 14 days offline').waitFor();
  await admin.getByText('Internet through NAT').waitFor();
  const profileUrl = admin.url();

  // From the version's row of its image: the form opens with that version chosen.
  await openSection(admin, 'Images', 'Images');
  await admin.getByRole('link', { name: 'os' }).click();
  await admin.locator('main[aria-busy="false"]').waitFor();
  await admin.getByRole('row', { name: /^1 / }).getByRole('link', { name: 'Roll out' }).click();
  await admin.getByRole('heading', { level: 1, name: 'New rollout' }).waitFor();
  await admin.locator('main[aria-busy="false"]').waitFor();
  assert.equal(await admin.getByLabel('Image version').inputValue(), image.body.release!.id);
  await admin.getByLabel('Target group').selectOption({ label: 'lab (0 devices)' });
  await admin.getByLabel('Phases (%)').fill('50, 10');
  await admin.getByRole('button', { name: 'Create rollout' }).click();
  const phasesError = admin.getByRole('alert');
  await phasesError.waitFor();
  assert.match((await phasesError.textContent()) ?? '', /^Phases must be strictly increasing/);
  // Beside the phases field: the next row after it holds the error, not the foot of the form.
  assert.equal(
    await admin.locator('.form-row:has(input[value="50, 10"]) + [role="alert"]').count(),
    1,
  );
  await admin.getByLabel('Phases (%)').fill('1, 10, 100');
  await admin.getByLabel('Soak (minutes)').fill('30');
  await admin.getByRole('button', { name: 'Create rollout' }).click();
  await admin.getByRole('heading', { level: 1, name: 'Rollout of os@1' }).waitFor();
  const rolloutUrl = admin.url();
  const rolloutId = rolloutUrl.split('/').at(-1)!;
  const facts = admin.getByRole('region', { name: /Phase 1 of 3/ });
  await facts.getByText('running').waitFor();
  assert.equal(await admin.locator('ol.phases > li').count(), 3);
  await admin.getByRole('button', { name: 'Pause' }).click();
  await admin
    .getByRole('region', { name: /Phase 1 of 3/ })
    .getByText('paused')
    .waitFor();
  await admin.getByRole('button', { name: 'Resume' }).click();
  await admin
    .getByRole('region', { name: /Phase 1 of 3/ })
    .getByText('running')
    .waitFor();
  await admin.getByRole('button', { name: 'Abort' }).click();
  const abort = admin.getByRole('dialog', { name: 'Abort the rollout of os@1?' });
  await abort.getByLabel('Reason').fill('wrong version chosen');
  await abort.getByRole('button', { name: 'Abort rollout' }).click();
  await admin.getByText('wrong version chosen').waitFor();
  // One more, not started: its page offers Resume and Abort to the admin, to nobody else.
  const pending = await api<{ id: string }>('POST', '/rollouts', adminToken, {
    imageVersionId: image.body.release!.id,
    groupId: (await api<Groups>('GET', '/groups', adminToken)).body.groups[0]!.id,
  });
  assert.equal(pending.status, 201, JSON.stringify(pending.body));
  await admin.goto(`${url}/rollouts/${pending.body.id}`);
  await admin.locator('main[aria-busy="false"]').waitFor();
  await admin.getByRole('button', { name: 'Resume' }).waitFor();

  const rollout = await api<{ state: string; stateReason: string; phases: number[] }>(
    'GET',
    `/rollouts/${rolloutId}`,
    adminToken,
  );
  assert.deepEqual(
    [rollout.body.state, rollout.body.stateReason, rollout.body.phases],
    ['aborted', 'wrong version chosen', [1, 10, 100]],
  );

  // The audit log filters on the server, the filter in the URL.
  await openSection(admin, 'Audit', 'Audit log');
  await admin.getByLabel('Action').fill('rollout');
  await admin.getByRole('button', { name: 'Filter' }).click();
  await admin.waitForURL(/\/audit\?action=rollout$/);
  await admin.locator('main[aria-busy="false"]').waitFor();
  await admin.getByRole('cell', { name: 'rollout.abort' }).waitFor();
  const actions = await admin.locator('tbody tr td:nth-child(3)').allTextContents();
  assert.deepEqual(actions, [
    'rollout.create',
    'rollout.abort',
    'rollout.resume',
    'rollout.pause',
    'rollout.create',
  ]);

  // A viewer, in a page of their own: every page reads, none offers a change.
  const viewerPassword = 'a viewer password, long enough';
  const made = await api<unknown>('POST', '/users', adminToken, {
    username: 'vera',
    role: 'viewer',
    password: viewerPassword,
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const viewer = await browser.newPage();
  viewer.on('pageerror', (e) => problems.push(`viewer page error: ${e.message}`));
  await signIn(viewer, url, 'vera', viewerPassword);
  assert.equal(await viewer.getByRole('link', { name: 'People' }).count(), 0);
  const seen: Record<string, RegExp> = {
    '/publishers': /release-team/,
    '/images': /os/,
    '/images/os': /published/,
    '/groups': /lab/,
    '/tokens': /lab/,
    '/apps': /No apps/,
    '/profiles': /\bwork\b/,
    '/rollouts': /os@1/,
    [new URL(rolloutUrl).pathname]: /wrong version chosen/,
    [new URL(profileUrl).pathname]: /Clipboard: off/,
    '/users': /vera/,
    [`/rollouts/${pending.body.id}`]: /Not started/,
    '/audit': /group\.create/,
  };
  for (const [path, content] of Object.entries(seen)) {
    await viewer.goto(`${url}${path}`);
    await viewer.locator('main[aria-busy="false"]').waitFor();
    await viewer.locator('main').getByText(content).first().waitFor();
    const buttons = await viewer.getByRole('button').allTextContents();
    const links = await viewer.getByRole('link').allTextContents();
    const offered = [...buttons, ...links].map((s) => s.trim()).filter((s) => MUTATING.test(s));
    assert.deepEqual(offered, [], `${path}: a viewer is offered ${offered.join(', ')}`);
    assert.equal(await viewer.getByRole('heading', { name: 'Trust a publisher key' }).count(), 0);
    assert.equal(await viewer.getByRole('textbox', { name: 'Public key' }).count(), 0);
  }
  // The admin's own pages do offer them (so the check above can fail).
  await admin.goto(`${url}/publishers`);
  await admin.locator('main[aria-busy="false"]').waitFor();
  assert.equal(await admin.getByRole('button', { name: 'Trust key' }).count(), 1);

  // A change forged in the viewer's page, with the viewer's own token, is refused.
  const forged = await viewer.evaluate(async () => {
    const token = sessionStorage.getItem('bulkhead.session');
    const res = await fetch('/api/v1/admin/groups', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'forged' }),
    });
    return { status: res.status, body: (await res.json()) as { error: { code: string } } };
  });
  assert.equal(forged.status, 403);
  assert.equal(forged.body.error.code, 'ERR_FORBIDDEN');
  assert.deepEqual(
    (await api<Groups>('GET', '/groups', adminToken)).body.groups.map(
      (g: { name: string }) => g.name,
    ),
    ['lab'],
  );

  // The token the page showed enrols a PC; a rollout of os@2 to its group halts on the PC's
  // rollback, and the rollout's page, left open, shows why without a reload.
  const { privateKey, publicKey: deviceKey } = generateKeyPairSync('ed25519');
  const enrol = await fetch(`${url}/api/v1/device/enrol`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      token,
      publicKey: deviceKey.export({ type: 'spki', format: 'pem' }).toString(),
      encryptionKey: encryptionKeyPem(),
      name: 'pc-lab-1',
      inventory: { hostname: 'pc-lab-1' },
    }),
  });
  assert.equal(enrol.status, 200, await enrol.clone().text());
  const { deviceId } = (await enrol.json()) as { deviceId: string };
  const device = async (path: string, body: unknown, bearer?: string) => {
    const res = await fetch(`${url}/api/v1/device${path}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
      },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${path}: ${await res.clone().text()}`);
    return (await res.json()) as Record<string, string>;
  };
  const { challenge } = await device('/auth/challenge', { deviceId });
  const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge!, privateKey);
  const deviceToken = (await device('/auth/token', { deviceId, challenge, signature })).token!;
  const profileId = new URL(profileUrl).pathname.split('/').at(-1)!;
  const assigned = await api('PATCH', `/devices/${deviceId}`, adminToken, {
    profiles: [profileId],
  });
  assert.equal(assigned.status, 200, JSON.stringify(assigned.body));
  const published = await api<{ id: string }>(
    'POST',
    '/images/os/versions/2/publish',
    adminToken,
    {},
  );
  assert.equal(published.status, 200, JSON.stringify(published.body));
  const halting = await api<{ id: string }>('POST', '/rollouts', adminToken, {
    imageVersionId: published.body.id,
    groupId: (await api<Groups>('GET', '/groups', adminToken)).body.groups[0]!.id,
    phases: [100],
    failureThreshold: 0,
    start: true,
  });
  assert.equal(halting.status, 201, JSON.stringify(halting.body));
  await admin.goto(`${url}/rollouts/${halting.body.id}`);
  await admin.locator('main[aria-busy="false"]').waitFor();
  await admin
    .getByRole('region', { name: /Phase 1 of 1/ })
    .getByText('running')
    .waitFor();
  assert.equal(await admin.locator('.halt').count(), 0);
  const reason = 'qemu-ga did not answer within 300 s';
  await device(
    '/reports',
    {
      events: [
        {
          id: randomUUID(),
          at: Date.now(),
          ...updateEvent('rolled-back', {
            profileId,
            versionId: published.body.id,
            reason,
            volumes: [
              { role: 'system', versionId: published.body.id, imageId: image.body.id, isNew: true },
            ],
          }),
        },
      ],
    },
    deviceToken,
  );
  const halt = admin.locator('.halt[role="alert"]');
  await halt.waitFor();
  assert.match((await halt.textContent()) ?? '', /Halted by Center: .*rolled back/);
  await admin.getByRole('img', { name: /Phase 1: 0 healthy, 0 failed, 1 rolled back/ }).waitFor();
  await admin
    .getByRole('row', { name: /pc-lab-1/ })
    .getByText(reason)
    .waitFor();
  assert.deepEqual(await admin.locator('main .page-actions button').allTextContents(), ['Abort']);

  // A group that holds a device is not deleted: the dialog says why, in the API's words.
  await openSection(admin, 'Groups', 'Groups');
  await admin.getByRole('button', { name: 'Delete lab' }).click();
  const deleting = admin.getByRole('dialog', { name: 'Delete the group lab?' });
  await deleting.getByText('It still holds 1 device').waitFor();
  await deleting.getByRole('button', { name: 'Delete group' }).click();
  const inUse = await api<{ error: { code: string; message: string } }>(
    'DELETE',
    `/groups/${(await api<Groups>('GET', '/groups', adminToken)).body.groups[0]!.id}`,
    adminToken,
  );
  assert.equal(inUse.body.error.code, 'ERR_IN_USE');
  const refusal = deleting.getByRole('alert');
  await refusal.waitFor();
  assert.equal(
    await refusal.textContent(),
    `${inUse.body.error.message.charAt(0).toUpperCase()}${inUse.body.error.message.slice(1)}.`,
  );

  assert.deepEqual(await admin.evaluate<string[]>(`window.violations`), [], 'CSP violations');
  assert.deepEqual(problems, []);
  assert.equal(await center.stop(), 0);
});
