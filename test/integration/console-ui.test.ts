import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { build } from 'vite';
import { migrateToLatest, openDatabase } from '../../src/center/db/index.ts';
import { launchBrowser } from '../support/browser.ts';
import {
  insertDevices,
  insertGroup,
  insertImage,
  insertProfile,
  insertVersion,
} from '../support/center.ts';
import { startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';
import { waitFor } from '../support/wait.ts';

/*
 * The console's dashboard and device pages in Debian's Chromium, served by a real `center
 * serve` over a fleet seeded straight into its database: an administrator signs in through the
 * form, reads the fleet by status and follows a card to the filtered list, pages the device
 * table on the server, searches and filters it (the view in the address), and locks and kills a
 * PC through confirmations that name it; a viewer sees no Lock, Unlock or Kill and a command
 * forged with the viewer's session is refused. No page breaks Center's CSP.
 */

const ROOT = join(import.meta.dirname, '../..');
const DAY = 86_400_000;

interface Fleet {
  ids: Map<string, string>;
}

/**
 * 120 office PCs `desk-001`… holding the profile `work` (on demo-os 2, three of them locked,
 * one lease running out), 15 lab PCs `lab-01`… without one; lab-02's update rolled back with its
 * reason; two days of version history.
 */
async function seed(url: string, now: number): Promise<Fleet> {
  const database = await openDatabase({ url });
  try {
    const db = database.db;
    await migrateToLatest(db);
    const at = now - 10 * DAY;
    const office = await insertGroup(db, 'office', at);
    const lab = await insertGroup(db, 'lab', at);
    const image = await insertImage(db, 'demo-os', 'system', at);
    await insertVersion(db, image, '1', at);
    const v2 = await insertVersion(db, image, '2', at, { release: true });
    const work = await insertProfile(db, { name: 'work', systemImageId: image }, at);
    const ids = new Map<string, string>();
    const name = async (list: string[], label: (i: number) => string) => {
      for (const [i, id] of list.entries()) {
        ids.set(label(i), id);
        await db
          .updateTable('devices')
          .set({ name: label(i), last_contact_at: now, lease_expires_at: now + 14 * DAY })
          .where('id', '=', id)
          .execute();
      }
    };
    const desks = await insertDevices(db, office, 120, [work], at);
    await name(desks, (i) => `desk-${String(i + 1).padStart(3, '0')}`);
    await db.updateTable('device_profiles').set({ system_version_id: v2 }).execute();
    await name(
      await insertDevices(db, lab, 15, [], at),
      (i) => `lab-${String(i + 1).padStart(2, '0')}`,
    );
    await db
      .updateTable('devices')
      .set({ state: 'locked' })
      .where('name', 'in', ['desk-007', 'desk-008', 'desk-009'])
      .execute();
    await db
      .updateTable('devices')
      .set({ lease_expires_at: now + DAY })
      .where('name', '=', 'desk-042')
      .execute();
    const lab02 = ids.get('lab-02')!;
    await db
      .updateTable('devices')
      .set({ update_status: 'failed' })
      .where('id', '=', lab02)
      .execute();
    await db
      .insertInto('device_events')
      .values({
        device_id: lab02,
        event_id: `${lab02}-1`,
        type: 'rolled-back',
        payload: JSON.stringify({
          vm: 'work',
          versionId: v2,
          reason: 'health check failed: the guest agent did not answer',
        }),
        occurred_at: now - 60_000,
        received_at: now - 60_000,
      })
      .execute();
    await db
      .insertInto('fleet_version_snapshots')
      .values([
        { at: now - 2 * DAY, version_id: v2, devices: 40 },
        { at: now - DAY, version_id: v2, devices: 120 },
      ])
      .execute();
    return { ids };
  } finally {
    await database.close();
  }
}

/** Signs in through the login form and waits for the dashboard. */
async function signIn(page: Page, url: string, username: string, password: string) {
  await page.goto(url);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  await settled(page);
}

/** Waits until the page's main region holds its data. */
async function settled(page: Page) {
  await page.waitForSelector('main[aria-busy="false"]');
}

/** The device names in the table, in order. */
async function names(page: Page): Promise<string[]> {
  return page.locator('main table tbody tr td:first-child a').allTextContents();
}

async function countText(page: Page, text: string) {
  await waitFor(`"${text}"`, async () =>
    (await page.locator('#device-count').textContent())?.includes(text),
  );
}

test('the dashboard and the devices in Chromium: paging, filters, lock and kill, roles', async (t) => {
  const dir = await tempDir(t);
  const dist = join(dir, 'console');
  await build({
    configFile: join(ROOT, 'web/console/vite.config.ts'),
    logLevel: 'silent',
    build: { outDir: dist, emptyOutDir: true },
  });
  const data = join(dir, 'data');
  await mkdir(data);
  const fleet = await seed(`sqlite://${join(data, 'center.db')}`, Date.now());
  const center = await startCenterProcess(t, ['--data', data], {
    env: { BULKHEAD_CONSOLE_DIR: dist },
  });
  const { url, initialAdmin } = center.info;
  assert.ok(initialAdmin, 'the first start prints the first administrator');

  // The admin API, to check what the pages did (one session: logins are throttled).
  const adminToken = await login(url, 'admin', initialAdmin.password);
  const stateOf = (id: string) => deviceState(url, id, adminToken);

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const problems: string[] = [];
  const watch = async (page: Page) => {
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    await page.addInitScript({
      content: `window.violations = [];
        document.addEventListener('securitypolicyviolation', (e) =>
          window.violations.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber + ':' + e.columnNumber + ' ' + e.sample));`,
    });
  };
  const violations = (page: Page) => page.evaluate<string[]>('window.violations');

  const page = await browser.newPage();
  await watch(page);
  await signIn(page, url, 'admin', initialAdmin.password);
  assert.match((await page.locator('.whoami').textContent()) ?? '', /admin\s*\(admin\)/);

  // The dashboard: counts by status, each a link to the list filtered by it.
  await page.getByRole('link', { name: 'Online: 131 devices' }).waitFor();
  await page.getByRole('link', { name: 'Failed: 1 device' }).waitFor();
  await page.getByText('health check failed: the guest agent did not answer').waitFor();
  await page.getByRole('link', { name: 'desk-042' }).waitFor(); // its lease runs out tomorrow
  const chart = page.getByRole('img', { name: /Devices per system version/ });
  assert.match((await chart.getAttribute('aria-label')) ?? '', /demo-os@2 120/);
  await page.getByRole('link', { name: 'Locked: 3 devices' }).click();
  await settled(page);
  await countText(page, 'of 3 devices matching the filters');
  assert.deepEqual(await names(page), ['desk-007', 'desk-008', 'desk-009']);
  assert.equal(new URL(page.url()).searchParams.get('status'), 'locked');
  assert.equal(await page.getByLabel('Status').inputValue(), 'locked');

  // Paged on the server, 50 by name by default; the page and its cursor in the address.
  await page.getByRole('button', { name: 'Clear filters' }).click();
  await countText(page, 'Showing 1–50 of 135 devices');
  const first = await names(page);
  assert.equal(first.length, 50);
  assert.deepEqual(first, [...first].sort(), 'by name');
  assert.equal(first[0], 'desk-001');
  await page.getByRole('button', { name: 'Next page' }).click();
  await countText(page, 'Showing 51–100 of 135 devices');
  const second = await names(page);
  assert.equal(second[0], 'desk-051');
  assert.ok(new URL(page.url()).searchParams.get('cursor'), 'the cursor is in the address');
  await page.getByRole('button', { name: 'Next page' }).click();
  await countText(page, 'Showing 101–135 of 135 devices');
  assert.ok(await page.getByRole('button', { name: 'Next page' }).isDisabled());
  await page.getByRole('button', { name: 'Previous page' }).click();
  await countText(page, 'Showing 51–100 of 135 devices');
  assert.deepEqual(await names(page), second);
  await page.getByLabel('Per page').selectOption('100');
  await countText(page, 'Showing 1–100 of 135 devices');

  // Search by name prefix, filter by group and status; a reload keeps the view.
  await page.getByLabel('Search by name').fill('lab-0');
  await countText(page, 'Showing 1–9 of 9 devices matching the filters');
  assert.equal(new URL(page.url()).searchParams.get('q'), 'lab-0');
  await page.reload();
  await countText(page, 'Showing 1–9 of 9 devices matching the filters');
  assert.equal(await page.getByLabel('Search by name').inputValue(), 'lab-0');
  await page.getByLabel('Search by name').fill('');
  await countText(page, 'of 135 devices');
  await page.getByLabel('Group').selectOption({ label: 'lab' });
  await countText(page, 'Showing 1–15 of 15 devices matching the filters');
  await page.getByLabel('Status').selectOption('failed');
  await countText(page, 'Showing 1–1 of 1 device matching the filters');
  assert.deepEqual(await names(page), ['lab-02']);
  await page.getByLabel('Status').selectOption('locked');
  await page.getByText('No device matches these filters.').waitFor();

  // lab-02: its rollback and reason on the timeline.
  await page.goto(`${url}/devices/${fleet.ids.get('lab-02')}`);
  await settled(page);
  await page.getByRole('heading', { name: 'lab-02', level: 1 }).waitFor();
  await page
    .getByRole('list', { name: 'Events, newest first' })
    .getByText(/health check failed: the guest agent did not answer/)
    .first()
    .waitFor();

  // Lock lab-01 behind a confirmation naming it; Escape closes it without a change.
  const lab01 = fleet.ids.get('lab-01')!;
  await page.goto(`${url}/devices/${lab01}`);
  await settled(page);
  await page.getByRole('heading', { name: 'lab-01', level: 1 }).waitFor();
  await page.getByRole('button', { name: 'Lock', exact: true }).click();
  const dialog = page.getByRole('dialog', { name: 'Lock lab-01?' });
  await dialog.getByText('Every VM on lab-01 stops').waitFor();
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached' });
  assert.equal(await stateOf(lab01), 'active');
  await page.getByRole('button', { name: 'Lock', exact: true }).click();
  await dialog.getByRole('button', { name: 'Lock device' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Unlock', exact: true }).waitFor();
  await page
    .getByRole('region', { name: 'Pending commands' })
    .getByRole('cell', { name: 'lock', exact: true })
    .waitFor();
  await page.getByRole('cell', { name: 'admin', exact: true }).waitFor(); // who sent it
  assert.equal(await stateOf(lab01), 'locked');

  // Kill: the device's name typed out first; then no action is left.
  await page.getByRole('button', { name: 'Kill', exact: true }).click();
  const kill = page.getByRole('dialog', { name: 'Kill lab-01?' });
  await kill.getByText(/crypto-erases the work VM's data on lab-01.*cannot be undone/).waitFor();
  await kill.getByText(/stops contacting Center/).waitFor();
  assert.ok(await kill.getByRole('button', { name: 'Kill device' }).isDisabled());
  await kill.getByLabel('Type lab-01 to confirm').fill('lab-1');
  assert.ok(await kill.getByRole('button', { name: 'Kill device' }).isDisabled());
  await kill.getByLabel('Type lab-01 to confirm').fill('lab-01');
  await kill.getByRole('button', { name: 'Kill device' }).click();
  await kill.waitFor({ state: 'detached' });
  await waitFor('lab-01 killed', async () =>
    (await page.getByRole('button', { name: /^(Lock|Unlock|Kill)$/ }).count()) === 0 ? true : null,
  );
  assert.equal(await stateOf(lab01), 'killed');

  // An API error as a sentence where it happened: a device that does not exist.
  await page.goto(`${url}/devices/0190a0b0-0000-7000-8000-000000000001`);
  await settled(page);
  const alert = await page.getByRole('alert').textContent();
  assert.match(alert ?? '', /^[A-Z].*\.$/, 'a sentence');
  assert.match(alert ?? '', /device/i);
  assert.deepEqual(await violations(page), [], 'no CSP violation');

  // A viewer: the same pages without a mutating button, and a forged command refused.
  const created = await fetch(`${url}/api/v1/admin/users`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'vera', role: 'viewer', password: 'a viewer password' }),
  });
  assert.equal(created.status, 201);
  const viewer = await browser.newPage();
  await watch(viewer);
  await signIn(viewer, url, 'vera', 'a viewer password');
  assert.match((await viewer.locator('.whoami').textContent()) ?? '', /vera\s*\(viewer\)/);
  const desk = fleet.ids.get('desk-007')!; // locked: an operator would see Unlock and Kill
  await viewer.goto(`${url}/devices/${desk}`);
  await settled(viewer);
  await viewer.getByRole('heading', { name: 'desk-007', level: 1 }).waitFor();
  await viewer.getByText('Locked by an administrator').waitFor();
  assert.equal(await viewer.getByRole('button', { name: /^(Lock|Unlock|Kill)$/ }).count(), 0);
  await page.goto(`${url}/devices/${desk}`);
  await settled(page);
  await page.getByRole('button', { name: 'Unlock', exact: true }).waitFor();
  assert.equal(await page.getByRole('button', { name: /^(Lock|Unlock|Kill)$/ }).count(), 2);

  // In the page, with the viewer's own session. (A string: this code runs in the page, whose
  // DOM types the server's type-check does not load.)
  const forged = await viewer.evaluate<{ status: number; code: string }>(`(async () => {
    const token = sessionStorage.getItem('bulkhead.session');
    const res = await fetch('/api/v1/admin/devices/${desk}/commands', {
      method: 'POST',
      headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'kill' }),
    });
    return { status: res.status, code: (await res.json()).error.code };
  })()`);
  assert.deepEqual(forged, { status: 403, code: 'ERR_FORBIDDEN' });
  assert.equal(await stateOf(desk), 'locked');

  await viewer.goto(`${url}/devices?status=locked`);
  await settled(viewer);
  await countText(viewer, 'of 3 devices matching the filters');
  assert.deepEqual(await violations(viewer), [], 'no CSP violation');
  assert.deepEqual(problems, []);
  assert.equal(await center.stop(), 0);
});

async function login(url: string, username: string, password: string): Promise<string> {
  const res = await fetch(`${url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  assert.equal(res.status, 200);
  return ((await res.json()) as { token: string }).token;
}

/** A device's state as the admin API says (not as the page shows it). */
async function deviceState(url: string, id: string, token: string): Promise<string> {
  const res = await fetch(`${url}/api/v1/admin/devices/${id}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  return ((await res.json()) as { state: string }).state;
}
