// The console in a real browser against a fleet of 100,000 PCs (`npm run bench -- console`).
//
// Center runs as its own process on a SQLite database seeded as a fleet of that size looks after
// months of use: 100,000 devices in 20 groups on two profiles, each with a lease, a last
// contact spread over a month, a version per profile, three events in its timeline, a few
// hundred locked, killed or retired, some updating and some failed; three system versions and a
// rollout. Debian's Chromium (playwright-core) then loads each main page of the console, cold
// (a new browser context: nothing cached) and warm (the same context again), and the time
// counted is from the start of the navigation to the page showing its data: the moment the
// page's main region stops being busy (`main[aria-busy="false"]`) with its content in it.
// The target (issue 14) is under one second for every page.
//
//   node bench/run.ts console [--devices=100000] [--runs=5] [--screenshots=docs/screenshots]
//
// Prints one JSON document on stdout (also written to bench/out/).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Insertable } from 'kysely';
import {
  migrateToLatest,
  newId,
  openDatabase,
  type DevicesTable,
  type DeviceEventsTable,
} from '../src/center/db/index.ts';
import { launchBrowser } from '../test/support/browser.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');
const nodeBin = join(repoRoot, 'node_modules', '.bin', 'node');
const bulkheadJs = join(repoRoot, 'bin', 'bulkhead.js');

const log = (msg: string) => console.error(`[console] ${msg}`);

interface Options {
  devices: number;
  runs: number;
  screenshots: string | null;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { devices: 100_000, runs: 5, screenshots: null };
  for (const arg of argv) {
    const [flag, value = ''] = arg.split('=', 2);
    if (flag === '--devices' || flag === '--runs') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer`);
      if (flag === '--devices') o.devices = n;
      else o.runs = n;
    } else if (flag === '--screenshots') o.screenshots = resolve(value || 'docs/screenshots');
    else if (flag !== 'console') throw new Error(`unknown argument ${arg}`);
  }
  return o;
}

const DAY = 86_400_000;

/** A deterministic spread of numbers in [0, 1) for device `i` (no randomness between runs). */
const spread = (i: number, salt: number) => (((i + 1) * 2654435761 + salt * 40503) % 1000) / 1000;

interface Seeded {
  deviceIds: string[];
  versionIds: string[];
  groupIds: string[];
  rolloutIds: string[];
}

/** Writes the fleet straight into Center's database, as months of enrolments and reports would. */
export async function seed(url: string, count: number): Promise<Seeded> {
  const database = await openDatabase({ url });
  try {
    await migrateToLatest(database.db);
    const db = database.db;
    const now = Date.now();
    const at = now - 120 * DAY;
    const groupIds = Array.from({ length: 20 }, (_, i) => newId(at + i));
    await db
      .insertInto('device_groups')
      .values(
        groupIds.map((id, i) => ({
          id,
          name: `site-${String(i + 1).padStart(2, '0')}`,
          description: `Branch office ${i + 1}`,
          created_at: at,
          updated_at: at,
        })),
      )
      .execute();
    const imageId = newId(at);
    await db
      .insertInto('images')
      .values({
        id: imageId,
        name: 'win11-desktop',
        kind: 'system',
        description: 'Windows 11 desktop',
        release_version_id: null,
        created_at: at,
        updated_at: at,
      })
      .execute();
    const versionIds: string[] = [];
    for (const [i, version] of ['2026.09', '2026.10', '2026.11'].entries()) {
      const id = newId(at + DAY * 30 * i);
      versionIds.push(id);
      await db
        .insertInto('image_versions')
        .values({
          id,
          image_id: imageId,
          version,
          manifest_id: randomBytes(32).toString('hex'),
          signatures: '[]',
          size: 64 * 2 ** 30,
          sha256: randomBytes(32).toString('hex'),
          parent_version: i === 0 ? null : ['2026.09', '2026.10'][i - 1]!,
          state: 'published',
          created_at: at + DAY * 30 * i,
          published_at: at + DAY * 30 * i,
          retired_at: null,
          chunks: 180_000 + i * 900,
          added_chunks: i === 0 ? 180_000 : 4_100 + i * 300,
          added_bytes: i === 0 ? 21 * 2 ** 30 : (190 + i * 20) * 2 ** 20,
        })
        .execute();
    }
    await db
      .updateTable('images')
      .set({ release_version_id: versionIds[2]! })
      .where('id', '=', imageId)
      .execute();
    const profileIds = [newId(at), newId(at + 1)];
    for (const [i, name] of ['work', 'kiosk'].entries()) {
      await db
        .insertInto('profiles')
        .values({
          id: profileIds[i]!,
          name,
          description: '',
          system_image_id: imageId,
          isolation_policy: JSON.stringify({ network: 'nat', encryptData: true }),
          health_check: JSON.stringify({ timeoutSeconds: 300 }),
          lease_days: 30,
          cpus: 2,
          memory_mib: 4096,
          reset_policy: 'on-update',
          firmware: 'uefi',
          secure_boot: 'on',
          tpm: 'on',
          guest_os: 'windows',
          guest_devices: 'virtio',
          created_at: at,
          updated_at: at,
        })
        .execute();
    }
    const inventory = JSON.stringify({
      hostname: 'pc',
      cpu: { model: 'Intel(R) Core(TM) i5-1345U', cores: 12 },
      memoryBytes: 16 * 2 ** 30,
    });
    const deviceIds: string[] = [];
    const BATCH = 500;
    for (let i = 0; i < count; i += BATCH) {
      const rows: Insertable<DevicesTable>[] = [];
      const events: Insertable<DeviceEventsTable>[] = [];
      const profiles: { device_id: string; profile_id: string; system_version_id: string }[] = [];
      for (let j = i; j < Math.min(count, i + BATCH); j++) {
        const id = newId(at + j);
        deviceIds.push(id);
        const r = spread(j, 1);
        const state =
          r < 0.003 ? 'retired' : r < 0.005 ? 'killed' : r < 0.012 ? 'locked' : 'active';
        const u = spread(j, 2);
        const lastContact = now - Math.floor(spread(j, 3) ** 3 * 30 * DAY);
        const version = versionIds[u < 0.7 ? 2 : u < 0.95 ? 1 : 0]!;
        rows.push({
          id,
          name: `pc-${String(j).padStart(6, '0')}`,
          public_key: randomBytes(32).toString('base64'),
          inventory,
          group_id: groupIds[j % groupIds.length]!,
          current_versions: '{}',
          state,
          enrolled_at: at + j,
          last_contact_at: lastContact,
          updated_at: lastContact,
          update_status: u < 0.02 ? 'failed' : u > 0.97 ? 'updating' : 'idle',
          lease_expires_at: lastContact + 30 * DAY,
        });
        profiles.push({
          device_id: id,
          profile_id: profileIds[j % 10 === 0 ? 1 : 0]!,
          system_version_id: version,
        });
        for (const [k, type] of [
          'staged',
          'switched',
          u < 0.02 ? 'rolled-back' : 'healthy',
        ].entries()) {
          events.push({
            device_id: id,
            event_id: `${id}-${k}`,
            type,
            payload: JSON.stringify({
              vm: 'work',
              versionId: version,
              ...(type === 'rolled-back'
                ? { reason: 'health check failed: explorer.exe not running' }
                : {}),
            }),
            occurred_at: lastContact - (3 - k) * 60_000,
            received_at: lastContact - (3 - k) * 60_000,
          });
        }
      }
      await db.transaction().execute(async (tx) => {
        await tx.insertInto('devices').values(rows).execute();
        await tx.insertInto('device_profiles').values(profiles).execute();
        await tx.insertInto('device_events').values(events).execute();
      });
      if (i % 20_000 === 0) log(`seeded ${i + rows.length} devices`);
    }
    // Two rollouts of the newest version: one running through a site of 5,000 PCs (its first
    // phases done, devices at every step), one halted by its failure threshold.
    const rolloutIds = [newId(now - 3 * DAY), newId(now - 2 * DAY)];
    for (const [i, state] of (['running', 'halted'] as const).entries()) {
      await db
        .insertInto('rollouts')
        .values({
          id: rolloutIds[i]!,
          image_version_id: versionIds[2]!,
          group_id: groupIds[i]!,
          profile_id: null,
          phases: JSON.stringify([1, 10, 50, 100]),
          current_phase: i === 0 ? 2 : 0,
          phase_started_at: now - DAY,
          soak_ms: 3_600_000,
          failure_threshold: 0.1,
          min_reports: 1,
          state,
          state_reason:
            state === 'halted'
              ? '3 of 18 devices failed or rolled back in phase 1 (17 %, over the 10 % threshold)'
              : null,
          on_completion: 'release',
          released_at: null,
          created_by: null,
          created_at: now - (3 - i) * DAY,
          updated_at: now - DAY,
        })
        .execute();
      const members = deviceIds.filter((_, j) => j % groupIds.length === i);
      const statuses = ['healthy', 'healthy', 'healthy', 'switched', 'staged', 'downloading'];
      for (let k = 0; k < members.length; k += BATCH) {
        await db
          .insertInto('rollout_devices')
          .values(
            members.slice(k, k + BATCH).map((id, n) => {
              const j = k + n;
              const phase = j < 50 ? 0 : j < 500 ? 1 : j < 2500 ? 2 : 3;
              const inPlay = i === 0 ? phase <= 2 : phase === 0;
              const status = !inPlay
                ? 'pending'
                : i === 1 && j % 6 === 0
                  ? 'rolled-back'
                  : statuses[j % statuses.length]!;
              return {
                rollout_id: rolloutIds[i]!,
                device_id: id,
                phase,
                status: status as 'pending',
                reason: status === 'rolled-back' ? 'health check failed' : null,
                updated_at: now - DAY,
              };
            }),
          )
          .execute();
      }
    }
    return { deviceIds, versionIds, groupIds, rolloutIds };
  } finally {
    await database.close();
  }
}

interface CenterInfo {
  url: string;
  initialAdmin?: { username: string; password: string };
}

function startCenter(dataDir: string): Promise<{ child: ChildProcess; info: CenterInfo }> {
  const child = spawn(
    nodeBin,
    [bulkheadJs, 'center', 'serve', '--json', '--data', dataDir, '--listen', '127.0.0.1:0'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((ok, fail) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('\n')) ok({ child, info: JSON.parse(out.split('\n')[0]!) as CenterInfo });
    });
    child.once('exit', (code) => fail(new Error(`center serve exited with ${code}: ${err}`)));
  });
}

interface PageTiming {
  page: string;
  path: string;
  coldMs: number[];
  warmMs: number[];
  coldP50Ms: number;
  warmP50Ms: number;
  worstMs: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-console-bench-'));
  let center: ChildProcess | undefined;
  const browser = await launchBrowser();
  try {
    const dataDir = join(dir, 'center');
    await mkdir(dataDir, { recursive: true });
    log(`seeding ${o.devices} devices`);
    const seedStart = Date.now();
    const seeded = await seed(`sqlite://${join(dataDir, 'center.db')}`, o.devices);
    log(`seeded in ${((Date.now() - seedStart) / 1000).toFixed(1)} s; starting Center`);
    const started = await startCenter(dataDir);
    center = started.child;
    const { url, initialAdmin } = started.info;
    if (!initialAdmin) throw new Error('Center printed no first administrator');
    const login = await fetch(`${url}/api/v1/admin/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(initialAdmin),
    });
    if (!login.ok) throw new Error(`login: HTTP ${login.status} ${await login.text()}`);
    const { token } = (await login.json()) as { token: string };
    const api = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${url}/api/v1/admin${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${await res.text()}`);
      return res.json() as Promise<Record<string, unknown>>;
    };
    const device = seeded.deviceIds[Math.floor(seeded.deviceIds.length / 2)]!;
    // The API answers the pages wait for, timed alone (the second of two: caches warm).
    const apiMs: Record<string, number> = {};
    for (const path of [
      '/fleet/summary',
      '/fleet/history?days=30',
      '/devices?limit=50&sort=name',
      '/devices?limit=50&sort=name&q=pc-04242',
      '/devices?limit=50&sort=name&status=failed',
      `/devices?limit=50&sort=lastContact&groupId=${seeded.groupIds[3]}`,
      `/devices/${device}`,
      `/devices/${device}/events?limit=25`,
    ]) {
      for (let i = 0; i < 2; i++) {
        const t0 = performance.now();
        await api('GET', path);
        apiMs[path] = Math.round(performance.now() - t0);
      }
      log(`GET ${path}: ${apiMs[path]} ms`);
    }
    const pages: [string, string][] = [
      ['dashboard', '/'],
      ['devices', '/devices'],
      ['devices, search', '/devices?q=pc-04242'],
      ['devices, failed', '/devices?status=failed'],
      [
        'devices, one site by last contact',
        `/devices?groupId=${seeded.groupIds[3]}&sort=lastContact`,
      ],
      ['device', `/devices/${device}`],
      ['images', '/images'],
      ['rollouts', '/rollouts'],
      ['rollout, running', `/rollouts/${seeded.rolloutIds[0]}`],
      ['rollout, halted', `/rollouts/${seeded.rolloutIds[1]}`],
      ['audit', '/audit'],
    ];
    const results: PageTiming[] = [];
    for (const [name, path] of pages) {
      const cold: number[] = [];
      const warm: number[] = [];
      for (let run = 0; run < o.runs; run++) {
        const page = await browser.newPage();
        // Signed in as the console keeps a session: the token in this tab's sessionStorage.
        await page.addInitScript((t) => sessionStorage.setItem('bulkhead.session', t), token);
        const problems: string[] = [];
        page.on('pageerror', (e) => problems.push(String(e)));
        page.on('console', (m) => {
          if (m.type() === 'error') problems.push(m.text());
        });
        for (const times of [cold, warm]) {
          await page.goto(`${url}${path}`, { waitUntil: 'commit' });
          await page
            .waitForSelector('main[aria-busy="false"]', { timeout: 60_000 })
            .catch(async (err: unknown) => {
              const text = (await page.textContent('body').catch(() => '')) ?? '';
              throw new Error(
                `${name} (${path}) did not finish loading: ${String(err)}\npage: ${text.slice(0, 500)}\nerrors: ${problems.join('\n')}`,
              );
            });
          times.push(await page.evaluate(() => performance.now()));
        }
        if (run === 0 && o.screenshots) {
          await mkdir(o.screenshots, { recursive: true });
          const file = join(o.screenshots, `${name.replace(/[^a-z]+/g, '-')}.png`);
          await page.screenshot({ path: file });
        }
        await page.context().close();
      }
      const timing: PageTiming = {
        page: name,
        path,
        coldMs: cold.map(Math.round),
        warmMs: warm.map(Math.round),
        coldP50Ms: Math.round(median(cold)),
        warmP50Ms: Math.round(median(warm)),
        worstMs: Math.round(Math.max(...cold, ...warm)),
      };
      log(`${name}: cold ${timing.coldP50Ms} ms, warm ${timing.warmP50Ms} ms (p50 of ${o.runs})`);
      results.push(timing);
    }
    const report = {
      benchmark: 'console',
      date: new Date().toISOString(),
      machine: {
        cpu: cpus()[0]?.model,
        cores: availableParallelism(),
        memoryGiB: Math.round(totalmem() / 2 ** 30),
        kernel: release(),
      },
      devices: o.devices,
      runsPerPage: o.runs,
      apiMs,
      targetMs: 1000,
      pages: results,
      allUnderTarget: results.every((r) => r.coldP50Ms < 1000 && r.warmP50Ms < 1000),
    };
    const json = JSON.stringify(report, null, 2);
    await mkdir(join(benchDir, 'out'), { recursive: true });
    await writeFile(join(benchDir, 'out', `console-${report.date.slice(0, 10)}.json`), json);
    console.log(json);
  } finally {
    center?.kill('SIGTERM');
    await browser.close();
    await rm(dir, { recursive: true, force: true });
  }
}
