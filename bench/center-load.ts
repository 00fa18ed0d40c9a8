// Center under load (`npm run bench:center`): 100,000 enrolled devices, Center as its own
// process, and wrk (Debian's package) in a second process on loopback driving the device API:
//
//   - desired-state checks that hit the 304 path (the device sends the ETag it has),
//   - desired-state checks that get the signed document (200),
//   - report batches of 10 events, each event new,
//
// each on SQLite and on PostgreSQL, with requests/s and p50/p99 latency. Every request names
// one of the 100,000 devices at random with its own token, so token and row caches see what a
// real fleet gives them. Prints one JSON document on stdout (also written to bench/out/).
//
//   node bench/center-load.ts [--devices=100000] [--seconds=15] [--connections=64]
//                             [--databases=sqlite,postgres] [--profile]
//
// `--profile` runs Center with `--cpu-prof` and prints the heaviest functions, to say where the
// time goes.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { availableParallelism, cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { generateKeyPair, loadPrivateKey } from '../src/signing/index.ts';
import { resolveConfig } from '../src/center/config.ts';
import { migrateToLatest, newId, openDatabase, type DevicesTable } from '../src/center/db/index.ts';
import type { Insertable } from 'kysely';
import { DeviceCredentials } from '../src/center/devices/credentials.ts';
import { readDesiredStateHead } from '../src/center/devices/desired-state.ts';
import { startPostgres } from '../test/support/postgres.ts';
import { run } from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');
const nodeBin = join(repoRoot, 'node_modules', '.bin', 'node');
const bulkheadJs = join(repoRoot, 'bin', 'bulkhead.js');

interface Options {
  devices: number;
  seconds: number;
  connections: number;
  databases: ('sqlite' | 'postgres')[];
  profile: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    devices: 100_000,
    seconds: 15,
    connections: 64,
    databases: ['sqlite', 'postgres'],
    profile: false,
  };
  for (const arg of argv) {
    const [flag, value = ''] = arg.split('=', 2);
    const int = () => {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer`);
      return n;
    };
    if (flag === '--devices') o.devices = int();
    else if (flag === '--seconds') o.seconds = int();
    else if (flag === '--connections') o.connections = int();
    else if (flag === '--profile') o.profile = true;
    else if (flag === '--databases') {
      o.databases = value.split(',').filter(Boolean) as Options['databases'];
      for (const d of o.databases) {
        if (d !== 'sqlite' && d !== 'postgres') throw new Error(`--databases: unknown ${d}`);
      }
    } else {
      throw new Error(
        `unknown argument ${arg}; usage: node bench/center-load.ts [--devices=N] [--seconds=N] ` +
          '[--connections=N] [--databases=sqlite,postgres] [--profile]',
      );
    }
  }
  return o;
}

const log = (msg: string) => console.error(`[center-load] ${msg}`);

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
  });
}

/**
 * Migrates the database and enrols `count` devices straight into it (one group, one system
 * image with a released version, one `work` profile each), as many enrolments would have.
 */
async function seed(url: string, count: number): Promise<string[]> {
  const database = await openDatabase({ url });
  try {
    await migrateToLatest(database.db);
    const db = database.db;
    const at = Date.now();
    const groupId = newId(at);
    const imageId = newId(at);
    const versionId = newId(at);
    const profileId = newId(at);
    await db
      .insertInto('device_groups')
      .values({ id: groupId, name: 'bench', description: '', created_at: at, updated_at: at })
      .execute();
    await db
      .insertInto('images')
      .values({
        id: imageId,
        name: 'bench-os',
        kind: 'system',
        description: '',
        release_version_id: null,
        created_at: at,
        updated_at: at,
      })
      .execute();
    await db
      .insertInto('image_versions')
      .values({
        id: versionId,
        image_id: imageId,
        version: '1',
        manifest_id: randomBytes(32).toString('hex'),
        signatures: '[]',
        size: 2 ** 31,
        sha256: randomBytes(32).toString('hex'),
        parent_version: null,
        state: 'published',
        created_at: at,
        published_at: at,
        retired_at: null,
      })
      .execute();
    await db
      .updateTable('images')
      .set({ release_version_id: versionId })
      .where('id', '=', imageId)
      .execute();
    await db
      .insertInto('profiles')
      .values({
        id: profileId,
        name: 'work',
        description: '',
        system_image_id: imageId,
        isolation_policy: JSON.stringify({ network: 'nat', encryptData: true }),
        health_check: JSON.stringify({ timeoutSeconds: 120 }),
        lease_days: 30,
        cpus: 2,
        memory_mib: 4096,
        reset_policy: 'on-update',
        firmware: 'bios',
        secure_boot: 'off',
        tpm: 'off',
        guest_os: 'linux',
        guest_devices: 'virtio',
        created_at: at,
        updated_at: at,
      })
      .execute();
    const ids: string[] = [];
    const inventory = JSON.stringify({
      hostname: 'pc',
      cpu: { model: 'bench', cores: 4 },
      memoryBytes: 8 * 2 ** 30,
    });
    const BATCH = 500;
    for (let i = 0; i < count; i += BATCH) {
      const rows: Insertable<DevicesTable>[] = [];
      for (let j = i; j < Math.min(count, i + BATCH); j++) {
        const id = newId(at + j);
        ids.push(id);
        rows.push({
          id,
          name: `pc-${j}`,
          public_key: randomBytes(32).toString('base64'),
          inventory,
          group_id: groupId,
          current_versions: '{}',
          state: 'active' as const,
          enrolled_at: at,
          last_contact_at: at,
          updated_at: at,
        });
      }
      await db.transaction().execute(async (tx) => {
        await tx.insertInto('devices').values(rows).execute();
        await tx
          .insertInto('device_profiles')
          .values(rows.map((r) => ({ device_id: r.id, profile_id: profileId })))
          .execute();
      });
    }
    if (database.dialect === 'postgres') await sql`analyze`.execute(db);
    return ids;
  } finally {
    await database.close();
  }
}

interface WrkResult {
  requestsPerSecond: number;
  requests: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  non2xx3xx: number;
  socketErrors: number;
}

/** wrk's duration text (`1.23ms`, `450.00us`, `1.02s`) in milliseconds. */
function ms(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text);
  if (!m) throw new Error(`unreadable wrk duration ${text}`);
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : n * 60_000;
}

function parseWrk(out: string): WrkResult {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : 0;
  };
  const latency = (pct: string) => {
    const m = new RegExp(`^\\s+${pct}%\\s+(\\S+)`, 'm').exec(out);
    if (!m) throw new Error(`wrk printed no ${pct}th percentile:\n${out}`);
    return ms(m[1] as string);
  };
  const max = /Latency\s+\S+\s+\S+\s+(\S+)/.exec(out);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    requestsPerSecond: num(/Requests\/sec:\s+([\d.]+)/),
    requests: num(/(\d+) requests in/),
    p50Ms: latency('50'),
    p99Ms: latency('99'),
    maxMs: max ? ms(max[1] as string) : 0,
    non2xx3xx: num(/Non-2xx or 3xx responses: (\d+)/),
    socketErrors: socket ? socket.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
  };
}

/**
 * The wrk script: each request picks a device at random from `devices.txt` (token and ETag per
 * line). `mode` is `304`, `200` or `reports`. A response of the wrong kind counts as an error,
 * so a run that was not measuring what it says fails loudly.
 */
function wrkScript(devicesFile: string, mode: string): string {
  return `
local mode = "${mode}"
local devices = {}
for line in io.lines("${devicesFile}") do
  local token, etag = line:match("^(%S+) (%S+)$")
  devices[#devices + 1] = { token = token, etag = etag }
end
local counter = 0
local prefix = ""
local bad = 0
function setup(thread) thread:set("id", tostring(math.random(1, 1e9))) end
function init(args) prefix = id; math.randomseed(tonumber(id)) end
local next_device = 0
function request()
  local d
  if mode == "warm" then
    -- Every device once, in order: what the fleet's polls leave behind after one interval.
    next_device = next_device % #devices + 1
    d = devices[next_device]
  else
    d = devices[math.random(1, #devices)]
  end
  local headers = { ["Authorization"] = "Bearer " .. d.token }
  if mode == "304" or mode == "warm" then
    headers["If-None-Match"] = d.etag
    return wrk.format("GET", "/api/v1/device/desired-state", headers)
  elseif mode == "200" then
    return wrk.format("GET", "/api/v1/device/desired-state", headers)
  end
  headers["Content-Type"] = "application/json"
  local events = {}
  for i = 1, 10 do
    counter = counter + 1
    events[i] = string.format('{"id":"b-%s-%d","type":"vm-state","at":%d,"data":{"vm":"work","profileId":null,"state":"running"}}',
      prefix, counter, 1700000000000 + counter)
  end
  return wrk.format("POST", "/api/v1/device/reports", headers, '{"events":[' .. table.concat(events, ",") .. ']}')
end
local expected = ({ ["304"] = 304, warm = 304, ["200"] = 200, reports = 200 })[mode]
function response(status, headers, body)
  if status ~= expected then
    bad = bad + 1
    if bad <= 3 then io.stderr:write("unexpected status " .. status .. ": " .. body:sub(1, 200) .. "\\n") end
  end
end
`;
}

async function waitHealthy(url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`Center exited early:\n${stderr()}`);
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`Center did not become healthy within 60 s:\n${stderr()}`);
}

/** The heaviest functions of a V8 CPU profile by self time. */
async function topFunctions(dir: string, n = 15): Promise<{ fn: string; selfPct: number }[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) return [];
  interface Node {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
  }
  const profile = JSON.parse(await readFile(join(dir, files[0] as string), 'utf8')) as {
    nodes: Node[];
    samples: number[];
  };
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map<string, number>();
  for (const id of profile.samples) {
    const f = byId.get(id)?.callFrame;
    if (!f) continue;
    const where = f.url ? `${f.url.replace(/^.*node_modules\//, '').replace(repoRoot, '')}` : '';
    const key = `${f.functionName || '(anonymous)'} ${where}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + 1);
  }
  const total = profile.samples.length;
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([fn, count]) => ({ fn, selfPct: Math.round((count / total) * 1000) / 10 }));
}

async function measureDatabase(
  dialect: 'sqlite' | 'postgres',
  o: Options,
  cleanups: (() => Promise<unknown>)[],
) {
  const dataDir = await mkdtemp(join(tmpdir(), `bulkhead-load-${dialect}-`));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  let url = `sqlite:${join(dataDir, 'center.db')}`;
  if (dialect === 'postgres') {
    // The test support starts a throwaway cluster; it only needs somewhere to hang cleanups.
    url = await startPostgres({ after: (fn) => void cleanups.push(async () => fn()) });
  }
  log(`${dialect}: enrolling ${o.devices} devices`);
  const seedStart = Date.now();
  const ids = await seed(url, o.devices);
  const seedSeconds = (Date.now() - seedStart) / 1000;

  // Center's signing key, made here so tokens can be minted for every device up front.
  const pair = generateKeyPair();
  await writeFile(join(dataDir, 'center.key'), pair.privatePem, { mode: 0o600 });
  await writeFile(join(dataDir, 'center.pub'), pair.publicPem);
  const signingKey = await loadPrivateKey(join(dataDir, 'center.key'));
  const credentials = new DeviceCredentials(signingKey, () => new Date());
  const config = resolveConfig([{ dataDir, database: url }]);
  const database = await openDatabase({ url: config.database });
  const lines: string[] = [];
  try {
    for (const id of ids) {
      const head = await readDesiredStateHead(database.db, id, new Date(), signingKey.keyid);
      if (!head) throw new Error(`seeded device ${id} is missing`);
      lines.push(`${credentials.issueToken(id).token} ${head.etag}`);
    }
  } finally {
    await database.close();
  }
  const devicesFile = join(dataDir, 'devices.txt');
  await writeFile(devicesFile, lines.join('\n') + '\n');

  const port = await freePort();
  const profDir = join(dataDir, 'prof');
  await mkdir(profDir);
  const args = [
    ...(o.profile ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : []),
    bulkheadJs,
    'center',
    'serve',
    '--data',
    dataDir,
    '--database',
    url,
    '--listen',
    `127.0.0.1:${port}`,
  ];
  const child = spawn(nodeBin, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, BULKHEAD_LOG_LEVEL: 'warn' },
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8192);
  });
  const base = `http://127.0.0.1:${port}`;
  const results: Record<string, WrkResult> = {};
  try {
    await waitHealthy(base, child, () => stderr);
    // First the 304 path on a fresh process (every poll misses the in-memory ETags and reads
    // the database), then once every device has polled (the steady state of a fleet: each
    // device's ETag is in memory), then full documents, then report batches.
    const plan = [
      { name: '304-cold', mode: '304' },
      { name: 'warm', mode: 'warm' },
      { name: '304', mode: '304' },
      { name: '200', mode: '200' },
      { name: 'reports', mode: 'reports' },
    ];
    for (const { name, mode } of plan) {
      const script = join(dataDir, `wrk-${name}.lua`);
      await writeFile(script, wrkScript(devicesFile, mode));
      // Warm up (JIT, caches) for a few seconds, then measure.
      const wrkArgs = (seconds: number) => [
        '-t1',
        `-c${o.connections}`,
        `-d${seconds}s`,
        '--latency',
        '-s',
        script,
        base,
      ];
      if (name === 'warm') {
        // Long enough to poll every device once at the cold rate, with a margin.
        const cold = results['304-cold']?.requestsPerSecond ?? 1000;
        const seconds = Math.ceil((o.devices / Math.max(cold, 100)) * 1.3) + 2;
        log(`${dialect}: every device polls once (${seconds} s)`);
        await run('wrk', wrkArgs(seconds), { timeoutMs: (seconds + 60) * 1000 });
        continue;
      }
      // Warm up (JIT) for a few seconds, except before the cold run, which must stay cold.
      if (name !== '304-cold') await run('wrk', wrkArgs(3));
      log(`${dialect}: ${name} for ${o.seconds} s`);
      const out = await run('wrk', wrkArgs(o.seconds));
      const r = parseWrk(out.stdout);
      if (/unexpected status/.test(out.stderr) || r.non2xx3xx > 0) {
        throw new Error(`${dialect} ${name}: wrong responses:\n${out.stderr}\n${out.stdout}`);
      }
      results[name] = r;
      log(
        `${dialect} ${name}: ${Math.round(r.requestsPerSecond)}/s p50 ${r.p50Ms} ms p99 ${r.p99Ms} ms`,
      );
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
  const eventRows = await countEvents(url);
  return {
    database: dialect,
    devices: o.devices,
    seedSeconds,
    desiredState304ColdCache: results['304-cold'],
    desiredState304: results['304'],
    desiredState200: results['200'],
    reports10Events: results['reports'],
    eventsStored: eventRows,
    ...(o.profile ? { hottestFunctions: await topFunctions(profDir) } : {}),
  };
}

async function countEvents(url: string): Promise<number> {
  const database = await openDatabase({ url });
  try {
    const row = await database.db
      .selectFrom('device_events')
      .select(sql<number>`count(*)`.as('n'))
      .executeTakeFirstOrThrow();
    return Number(row.n);
  } finally {
    await database.close();
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const wrk = await run('wrk', ['--version'], { okCodes: [0, 1] }).catch(() => undefined);
  if (!wrk || !/wrk/.test(wrk.stdout + wrk.stderr)) {
    throw new Error('wrk is missing: install the Debian package wrk (apt-get install wrk)');
  }
  const cleanups: (() => Promise<unknown>)[] = [];
  const runs = [];
  try {
    for (const dialect of o.databases) runs.push(await measureDatabase(dialect, o, cleanups));
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  }
  const result = {
    benchmark: 'center-load',
    date: new Date().toISOString(),
    machine: {
      cpus: availableParallelism(),
      cpuModel: cpus()[0]?.model,
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      kernel: release(),
      node: process.version,
    },
    options: o,
    target: { desiredStateChecksPerSecond: 5000, p99Ms: 50 },
    runs,
  };
  const json = JSON.stringify(result, null, 2);
  const outDir = join(benchDir, 'out');
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, `center-load-${result.date.slice(0, 10)}.json`), json + '\n');
  console.log(json);
}

await main();
