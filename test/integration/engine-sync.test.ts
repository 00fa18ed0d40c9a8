// Engine against a real Center (SQLite, listening on 127.0.0.1): enrolment, the verified
// desired state, reports, refusals of tampered, replayed and stale documents, the sync loop
// through an outage, push, and `bulkhead engine enroll|status` as a real process.
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import { resolveConfig } from '../../src/center/config.ts';
import { migrateToLatest, newId, openDatabase } from '../../src/center/db/index.ts';
import {
  createEnrolmentToken,
  DEVICE_SIGNATURE_DOMAINS as CENTER_DOMAINS,
} from '../../src/center/devices/index.ts';
import { createLocalPushBus } from '../../src/center/push.ts';
import { createCenterApp, type CenterApp } from '../../src/center/server.ts';
import {
  CenterClient,
  createEngine,
  createSyncLoop,
  engineFiles,
  enroll,
  EventQueue,
  loadIdentity,
  readEngineStatus,
  resolveEngineConfig,
  startEngineRun,
  type Clock,
  type Log,
} from '../../src/engine/index.ts';
import { generateKeyPair } from '../../src/signing/index.ts';
import {
  DEVICE_SIGNATURE_DOMAINS,
  isBulkheadError,
  LocalVmsResponseSchema,
  type DeviceCommand,
} from '../../src/protocol/index.ts';
import { insertImage, insertProfile, insertVersion } from '../support/center.ts';
import { runCli as cli } from '../support/cli.ts';
import { fixedClock, recordingLog } from '../support/engine.ts';
import { sampleEvent } from '../support/events.ts';
import { tempDir } from '../support/fixtures.ts';
import { startTestTpm } from '../support/swtpm.ts';
import { qcow2LuksHeader } from '../../src/engine/crypto-erase.ts';
import { ensureDataVolume, volumeLayout } from '../../src/engine/volumes/index.ts';
import { PATIENCE_MS, waitFor, withTimeout } from '../support/wait.ts';

const START = Date.parse('2026-03-02T09:15:00Z');
const HOUR = 3_600_000;

const inventory = { hostname: 'pc-engine', cpu: { model: 'Test CPU', cores: 2 } };

/** A real Center on SQLite, listening on 127.0.0.1; it can be stopped and started again. */
async function startCenter(t: TestContext) {
  const dir = await tempDir(t, 'bulkhead-engine-sync-');
  const database = await openDatabase({ url: `sqlite:${join(dir, 'center.db')}` });
  t.after(() => database.close());
  await migrateToLatest(database.db);
  const config = resolveConfig([
    { dataDir: join(dir, 'center'), listen: '127.0.0.1:0', pollIntervalSeconds: 45 },
  ]);
  const pair = generateKeyPair();
  const signingKey = { key: createPrivateKey(pair.privatePem), keyid: pair.keyid };
  const clock = { ms: START };
  const push = createLocalPushBus();
  const groupId = newId(clock.ms);
  await database.db
    .insertInto('device_groups')
    .values({ id: groupId, name: 'lab', description: '', created_at: START, updated_at: START })
    .execute();
  let app: CenterApp | undefined;
  let port = 0;
  const up = async () => {
    app = await createCenterApp({
      config,
      log: pino({ level: 'silent' }),
      database,
      signingKey,
      now: () => new Date(clock.ms),
      push,
    });
    await app.listen({ host: '127.0.0.1', port });
    port = (app.server.address() as AddressInfo).port;
  };
  const down = async () => {
    await app?.close();
    app = undefined;
  };
  await up();
  t.after(down);
  return {
    dir,
    db: database.db,
    clock,
    push,
    signingKey,
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    up,
    down,
    token: async (uses = 1) =>
      (
        await createEnrolmentToken(database.db, {
          groupId,
          uses,
          expiresAt: new Date(clock.ms + HOUR),
          now: new Date(clock.ms),
        })
      ).token,
    async addCommand(deviceId: string, kind: DeviceCommand['kind'] = 'lock') {
      clock.ms += 1000;
      const id = newId(clock.ms);
      await database.db
        .insertInto('commands')
        .values({
          id,
          device_id: deviceId,
          kind,
          profile_id: null,
          state: 'pending',
          result: null,
          created_by: null,
          created_at: clock.ms,
          updated_at: clock.ms,
        })
        .execute();
      // As Center's command route does after committing.
      push.notify([deviceId]);
      return id;
    },
    database,
    events: (deviceId: string) =>
      database.db
        .selectFrom('device_events')
        .select(['event_id', 'type', 'occurred_at', 'payload'])
        .where('device_id', '=', deviceId)
        .orderBy('occurred_at')
        .orderBy('event_id')
        .execute(),
  };
}
type TestCenter = Awaited<ReturnType<typeof startCenter>>;

/** An enrolled device: its data dir, queue and client (clock of its own). */
async function device(t: TestContext, center: TestCenter, clock = fixedClock()) {
  const dataDir = join(await tempDir(t, 'bulkhead-engine-'), 'engine');
  const identity = await enroll({
    centerUrl: center.url,
    token: await center.token(),
    dataDir,
    inventory,
    clock,
  });
  const { privateKey } = await loadIdentity(dataDir);
  const files = engineFiles(dataDir, { clock });
  const queue = await EventQueue.open({ dir: files.queueDir, clock });
  t.after(() => queue.close().catch(() => {}));
  const client = (centerUrl?: string, log: Log = recordingLog()) =>
    new CenterClient({
      identity,
      privateKey,
      clock,
      log,
      events: queue,
      timeoutMs: PATIENCE_MS,
      ...(centerUrl === undefined ? {} : { centerUrl }),
    });
  return { dataDir, identity, files, queue, clock, client };
}

type Tamper = 'pass' | 'flip-signature' | 'replay';

/** An HTTP proxy in front of Center that can tamper with desired-state answers. */
async function proxy(t: TestContext, target: () => string) {
  const state = { mode: 'pass' as Tamper, replay: '' };
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (typeof v === 'string' && k !== 'host' && k !== 'connection') headers[k] = v;
    }
    const upstream = await fetch(`${target()}${req.url}`, {
      method: req.method,
      headers,
      body: chunks.length > 0 ? Buffer.concat(chunks) : undefined,
    });
    let body = await upstream.text();
    let status = upstream.status;
    if (req.url?.startsWith('/api/v1/device/desired-state')) {
      if (state.mode === 'flip-signature' && status === 200) {
        const doc = JSON.parse(body);
        const sig = Buffer.from(doc.signature, 'base64');
        sig[10] = (sig[10] as number) ^ 0x01;
        doc.signature = sig.toString('base64');
        body = JSON.stringify(doc);
      } else if (state.mode === 'replay') {
        status = 200;
        body = state.replay;
      } else if (status === 200) {
        state.replay ||= body;
      }
    }
    const out: Record<string, string> = { 'content-type': 'application/json' };
    const etag = upstream.headers.get('etag');
    if (etag !== null) out.etag = etag;
    res.writeHead(status, out).end(status === 304 ? undefined : body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, state };
}

test('Engine and Center agree on the signature domains', () => {
  assert.deepEqual(DEVICE_SIGNATURE_DOMAINS, CENTER_DOMAINS);
});

test('enrol → token → verified desired state → 304 → reports accepted; re-auth on 401', async (t) => {
  const center = await startCenter(t);
  const d = await device(t, center);
  assert.equal((await stat(d.files.privateKeyPath)).mode & 0o777, 0o600);
  assert.equal((await stat(d.dataDir)).mode & 0o777, 0o700);
  assert.equal(d.identity.centerKey.keyid, center.signingKey.keyid);
  const row = await center.database.db
    .selectFrom('devices')
    .select(['name', 'inventory'])
    .where('id', '=', d.identity.deviceId)
    .executeTakeFirstOrThrow();
  assert.equal(row.name, 'pc-engine');
  assert.deepEqual(JSON.parse(row.inventory), inventory);

  const client = d.client();
  const first = await client.getDesiredState();
  assert.ok(first.changed);
  assert.equal(first.document.state.deviceId, d.identity.deviceId);
  assert.match(first.etag ?? '', /^"[0-9a-f]{40}"$/);
  const second = await client.getDesiredState({
    etag: first.etag,
    revision: first.document.state.revision,
  });
  assert.deepEqual(second, { changed: false, etag: first.etag });

  const [e1, e2] = await d.queue.append([
    sampleEvent('staged', 'v1'),
    sampleEvent('healthy', 'v1'),
  ]);
  assert.deepEqual(await client.sendReports([e1!, e2!]), { accepted: 2, duplicates: 0 });
  assert.deepEqual(await client.sendReports([e1!]), { accepted: 0, duplicates: 1 });

  // Center's clock passes the token's expiry while Engine's does not: the 401 is answered
  // with a fresh challenge and the request goes through.
  center.clock.ms += 16 * 60_000;
  const after = await client.getDesiredState({ etag: first.etag });
  assert.equal(after.changed, false);
});

test('lease: renewed on contact through the ETag cache: a 304 within the hour, a newer signed document with a later lease after it', async (t) => {
  const center = await startCenter(t);
  const d = await device(t, center);
  const at = center.clock.ms;
  const imageId = await insertImage(center.db, 'os', 'system', at);
  await insertVersion(center.db, imageId, '1.0.0', at, { release: true });
  const profileId = await insertProfile(
    center.db,
    { name: 'work', systemImageId: imageId, leaseDays: 3 },
    at,
  );
  await center.db
    .insertInto('device_profiles')
    .values({ device_id: d.identity.deviceId, profile_id: profileId })
    .execute();
  await center.db
    .updateTable('devices')
    .set({ updated_at: at })
    .where('id', '=', d.identity.deviceId)
    .execute();
  center.push.notify([d.identity.deviceId]);
  center.clock.ms += 1000;

  const client = d.client();
  const first = await client.getDesiredState();
  assert.ok(first.changed);
  const lease = first.document.state.vms.find((v) => v.name === 'work')?.lease;
  assert.equal(lease?.expiresAt, first.document.state.generatedAt + 3 * 24 * HOUR);

  // Within the same hour nothing changed: a 304, the lease the PC holds stands.
  center.clock.ms += 30 * 60_000;
  d.clock.ms += 30 * 60_000;
  const same = await client.getDesiredState({ etag: first.etag });
  assert.equal(same.changed, false);

  // Contact in the next hour, with the old ETag: a new document (verified by the client against
  // Center's pinned key) whose lease runs from this hour: every contact renews the lease to
  // within an hour, signed with the rest of the document.
  center.clock.ms += HOUR;
  d.clock.ms += HOUR;
  const renewed = await client.getDesiredState({ etag: first.etag });
  assert.ok(renewed.changed, 'not a 304');
  const next = renewed.document.state.vms.find((v) => v.name === 'work')?.lease;
  assert.ok(next && lease);
  assert.ok(next.expiresAt > lease.expiresAt);
  // The lease runs from the start of the hour of contact: at most an hour of it is lost.
  assert.equal(next.expiresAt, renewed.document.state.generatedAt + 3 * 24 * HOUR);
  assert.ok(center.clock.ms - renewed.document.state.generatedAt <= HOUR);
  assert.equal(renewed.document.state.revision, first.document.state.revision);
});

test('tampered, replayed and stale desired states are refused, each with its code and an event', async (t) => {
  const center = await startCenter(t);
  const d = await device(t, center);
  const p = await proxy(t, () => center.url);
  const client = d.client(p.url);

  const r1 = await client.getDesiredState();
  assert.ok(r1.changed);

  p.state.mode = 'flip-signature';
  await assert.rejects(client.getDesiredState(), (err) =>
    isBulkheadError(err, 'ERR_DESIRED_STATE_SIGNATURE'),
  );

  // A newer revision, then the older document replayed at the device.
  p.state.mode = 'pass';
  await center.addCommand(d.identity.deviceId);
  const r2 = await client.getDesiredState({ etag: r1.etag, revision: r1.document.state.revision });
  assert.ok(r2.changed);
  assert.ok(r2.document.state.revision > r1.document.state.revision);
  p.state.mode = 'replay';
  await assert.rejects(
    client.getDesiredState({ etag: r2.etag, revision: r2.document.state.revision }),
    (err) => isBulkheadError(err, 'ERR_DESIRED_STATE_ROLLBACK') && !err.retryable,
  );

  // Signed and current at Center, but the device's clock is past its expiry.
  p.state.mode = 'pass';
  d.clock.ms = r2.document.state.expiresAt + 1;
  await assert.rejects(client.getDesiredState(), (err) =>
    isBulkheadError(err, 'ERR_DESIRED_STATE_EXPIRED'),
  );

  const refused = d.queue.peek(10).filter((e) => e.type === 'desired-state-refused');
  assert.deepEqual(
    refused.map((e) => e.data['code']),
    ['ERR_DESIRED_STATE_SIGNATURE', 'ERR_DESIRED_STATE_ROLLBACK', 'ERR_DESIRED_STATE_EXPIRED'],
  );
});

test('sync loop: commands once, Center down → backoff grows and events wait, back → delivered once in order', async (t) => {
  const center = await startCenter(t);
  const d = await device(t, center);
  const seen: { revision: number; source: string }[] = [];
  const handled: string[] = [];
  const makeLoop = () =>
    createSyncLoop({
      client: d.client(),
      queue: d.queue,
      store: d.files,
      clock: d.clock,
      log: recordingLog(),
      push: false,
      random: () => 0.999,
      onDesiredState: (desired, source) => {
        seen.push({ revision: desired.revision, source });
      },
      handleCommand: async (command) => {
        handled.push(command.id);
        return { ok: true, message: `${command.kind} done` };
      },
    });
  const loop = makeLoop();
  const first = await loop.syncNow();
  assert.equal(first.ok, true);
  assert.equal(first.nextDelayMs, 45_000, "the interval Center's desired state names");
  assert.equal(seen.length, 1);
  assert.equal(loop.connectivity().online, true);
  assert.equal(loop.connectivity().lastContactAt, START);
  const stored = await d.files.desiredState.read();
  assert.equal(stored?.document.state.deviceId, d.identity.deviceId);

  // A lock: handled once, its result reported, never re-run (not even by a restarted loop).
  const lockId = await center.addCommand(d.identity.deviceId, 'lock');
  await loop.syncNow();
  await loop.syncNow();
  assert.deepEqual(handled, [lockId]);
  const results = (await center.events(d.identity.deviceId)).filter(
    (e) => e.type === 'command-result',
  );
  assert.deepEqual(
    results.map((e) => JSON.parse(e.payload)),
    [{ commandId: lockId, kind: 'lock', ok: true, message: 'lock done' }],
  );
  const restarted = makeLoop();
  await restarted.start();
  await restarted.stop();
  assert.deepEqual(handled, [lockId]);
  assert.equal(seen.at(-1)?.source, 'disk');

  // Center goes away; events pile up and the waits grow.
  await center.down();
  const before = await center.events(d.identity.deviceId);
  const queued = await d.queue.append(
    Array.from({ length: 1_100 }, (_, i) =>
      sampleEvent(i % 100 === 99 ? 'healthy' : 'download-progress', `v${i}`, { at: START + i }),
    ),
  );
  const delays: number[] = [];
  for (let i = 0; i < 5; i++) {
    const outcome = await loop.syncNow();
    assert.equal(outcome.ok, false);
    delays.push(outcome.nextDelayMs);
  }
  for (let i = 1; i < delays.length; i++) {
    assert.ok(delays[i]! > delays[i - 1]!, `backoff grows: ${delays.join(', ')}`);
  }
  assert.ok(delays.every((ms) => ms <= 5 * 60_000));
  const offline = loop.connectivity();
  assert.equal(offline.online, false);
  assert.equal(offline.consecutiveFailures, 5);
  assert.equal(offline.lastError?.code, 'ERR_CENTER_UNREACHABLE');
  assert.equal(offline.lastContactAt, START);
  assert.equal(d.queue.depth(), 1_100);
  // A restart while Center is down starts from the stored desired state.
  const seenBefore = seen.length;
  const offlineStart = makeLoop();
  await offlineStart.start();
  await offlineStart.stop();
  assert.equal(seen[seenBefore]?.source, 'disk');
  // `engine status` sees the outage from the files.
  const status = await readEngineStatus(d.dataDir);
  assert.equal(status.connectivity.online, false);
  assert.equal(status.queueDepth, 1_100);

  // Center is back: everything is delivered, in order, once (three batches of ≤ 500).
  await center.up();
  const back = await loop.syncNow();
  assert.equal(back.ok, true);
  assert.equal(back.nextDelayMs, 45_000, "online again, the loop polls at Center's interval");
  assert.equal(back.delivered, 1_100);
  assert.equal(d.queue.depth(), 0);
  assert.equal((await loop.syncNow()).delivered, 0);
  const after = await center.events(d.identity.deviceId);
  const added = after.filter((e) => !before.some((b) => b.event_id === e.event_id));
  assert.equal(added.length, 1_100);
  assert.deepEqual(
    added.map((e) => e.event_id),
    queued.map((e) => e.id),
  );
  assert.equal(loop.connectivity().consecutiveFailures, 0);
  assert.equal((await readEngineStatus(d.dataDir)).connectivity.online, true);
});

test('killed: Engine learns it from the signed notice, stops for good, and its kill is settled', async (t) => {
  const center = await startCenter(t);
  const d = await device(t, center);
  const handled: { id: string; kind: string; state: string }[] = [];
  const loop = createSyncLoop({
    client: d.client(),
    queue: d.queue,
    store: d.files,
    clock: d.clock,
    log: recordingLog(),
    push: false,
    onDesiredState: () => {},
    handleCommand: async (command, desired) => {
      handled.push({ id: command.id, kind: command.kind, state: desired.device.state });
      return { ok: true, message: 'every VM is stopped' };
    },
  });
  assert.equal((await loop.syncNow()).ok, true);
  // Killed as Center's command route does it: the state, the command, then the notification.
  await center.db
    .updateTable('devices')
    .set({ state: 'killed' })
    .where('id', '=', d.identity.deviceId)
    .execute();
  const killId = await center.addCommand(d.identity.deviceId, 'kill');
  // The token the client holds is refused as well: the notice comes with the refusal.
  const outcome = await loop.syncNow();
  assert.equal(outcome.ok, true, JSON.stringify(loop.connectivity().lastError));
  assert.equal(loop.killed()?.notice.notice.commandId, killId);
  assert.deepEqual(handled, [{ id: killId, kind: 'kill', state: 'killed' }]);
  const command = await center.db
    .selectFrom('commands')
    .select(['state', 'result'])
    .where('id', '=', killId)
    .executeTakeFirstOrThrow();
  assert.equal(command.state, 'done', 'the result reached Center though the device is killed');
  assert.deepEqual(JSON.parse(command.result ?? 'null'), {
    ok: true,
    message: 'every VM is stopped',
  });
  assert.equal(d.queue.depth(), 0);
  // After a restart too, it stays killed without asking Center anything.
  const restarted = createSyncLoop({
    client: d.client(),
    queue: d.queue,
    store: d.files,
    clock: d.clock,
    log: recordingLog(),
    push: false,
    onDesiredState: (desired) =>
      void handled.push({ id: '', kind: '', state: desired.device.state }),
  });
  await restarted.start();
  await restarted.stop();
  assert.equal(handled.at(-1)?.state, 'killed');
  assert.equal((await readEngineStatus(d.dataDir)).killedAt, loop.killed()?.notice.notice.killedAt);
});

test('push: a change at Center wakes the loop at once', async (t) => {
  const center = await startCenter(t);
  const d = await device(t, center);
  const revisions: number[] = [];
  let changed: () => void = () => {};
  const loop = createSyncLoop({
    client: d.client(),
    queue: d.queue,
    store: d.files,
    // Real sleeps: the poll interval is an hour, so only push can bring the change quickly.
    clock: { now: () => d.clock.now(), sleep: (ms, signal) => systemSleep(ms, signal) },
    log: recordingLog(),
    pollIntervalMs: HOUR,
    onDesiredState: (desired) => {
      revisions.push(desired.revision);
      changed();
    },
  });
  await loop.start();
  try {
    await waitFor('connected', () => revisions.length === 1 && center.push.connections() === 1);
    const next = new Promise<void>((resolve) => (changed = resolve));
    await center.addCommand(d.identity.deviceId, 'unlock');
    center.push.notify([d.identity.deviceId]);
    // Long before the hour's poll: only push can have brought it.
    await withTimeout('the pushed change', next);
    assert.equal(revisions.length, 2);
    assert.ok(revisions[1]! > revisions[0]!);
  } finally {
    // Before the temp dirs go: the loop writes its files until it stops.
    await loop.stop();
  }
});

test('createEngine: the sync loop feeds reconcile one run at a time, newest state last', async (t) => {
  const center = await startCenter(t);
  const dataDir = join(await tempDir(t, 'bulkhead-engine-agent-'), 'engine');
  await enroll({ centerUrl: center.url, token: await center.token(), dataDir, inventory });
  let running = 0;
  let overlapped = false;
  const reconciled: number[] = [];
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  const engine = await createEngine({
    dataDir,
    // Center's time, so its documents are current; real sleeps.
    clock: { now: () => center.clock.ms, sleep: systemSleep },
    push: false,
    pollIntervalMs: HOUR,
    reconcile: async (desired) => {
      running += 1;
      overlapped ||= running > 1;
      // The first run is slow; the states that arrive meanwhile collapse into the newest.
      if (reconciled.length === 0) await gate;
      reconciled.push(desired.revision);
      running -= 1;
    },
  });
  try {
    await engine.start();
    await waitFor('the first reconcile', () => running === 1);
    for (let i = 0; i < 3; i++) {
      await center.addCommand(engine.client.deviceId, 'restart-vm');
      await engine.sync.syncNow();
    }
    const newest = engine.sync.current()!.document.state.revision;
    release();
    await engine.idle();
    assert.equal(overlapped, false);
    assert.equal(reconciled.length, 2);
    assert.equal(reconciled[1], newest);
    assert.equal((await readEngineStatus(dataDir)).desired?.revision, newest);
  } finally {
    release();
    await engine.stop();
  }
});

test('engine run: built from one configuration, it syncs, follows the poll interval Center sends, and stops', async (t) => {
  const center = await startCenter(t);
  const dataDir = join(await tempDir(t, 'bulkhead-engine-run-'), 'engine');
  await enroll({ centerUrl: center.url, token: await center.token(), dataDir, inventory });
  // Center's time stands at START; Engine's moves on from there in real time.
  const t0 = Date.now();
  const clock: Clock = { now: () => START + (Date.now() - t0), sleep: systemSleep };
  const config = resolveEngineConfig([{ dataDir, hypervisor: 'sim' }]);
  const running = await startEngineRun(config, { clock, log: recordingLog() });
  try {
    // The document is stored before the contact ends (its events are flushed after it): wait
    // for the contact to be recorded too.
    await waitFor(
      'a desired state and the contact recorded',
      () =>
        running.engine.sync.current() !== undefined &&
        running.engine.sync.connectivity().lastContactAt != null,
    );
    assert.equal(running.engine.sync.connectivity().online, true);
    assert.equal(running.engine.sync.current()?.document.state.pollIntervalSeconds, 45);
    const { lastContactAt, nextAttemptAt } = running.engine.sync.connectivity();
    assert.equal(nextAttemptAt! - lastContactAt!, 45_000, 'the next poll is 45 s after contact');
    // The switcher's local API answers on its unix socket.
    assert.equal(running.localApi, join(dataDir, 'run', 'engine.sock'));
    const vms = await getOverSocket(running.localApi!, '/v1/vms');
    assert.equal(vms.status, 200);
    assert.deepEqual(LocalVmsResponseSchema.parse(JSON.parse(vms.body)), { vms: [] });
  } finally {
    await withTimeout('engine run to stop', running.stop());
  }
  assert.equal((await readEngineStatus(dataDir)).desired?.deviceState, 'active');
  await assert.rejects(stat(join(dataDir, 'run', 'engine.sock')), { code: 'ENOENT' });
});

test('engine run finishes a kill cut short before anything else (crypto-erase resumes)', async (t) => {
  const center = await startCenter(t);
  const dataDir = join(await tempDir(t, 'bulkhead-engine-erase-'), 'engine');
  const identity = await enroll({
    centerUrl: center.url,
    token: await center.token(),
    dataDir,
    inventory,
    tpm: 'off',
  });
  // As a kill -9 right after the notice was stored leaves the PC: keys, a LUKS data volume.
  const layout = volumeLayout(dataDir, 'work');
  await ensureDataVolume(layout.data, { key: Buffer.alloc(32, 3), sizeBytes: 64 * 1024 ** 2 });
  await writeFile(layout.overlay('system'), 'overlay');
  const files = engineFiles(dataDir);
  await files.killNotice.write({
    notice: {
      notice: { deviceId: identity.deviceId, killedAt: START, issuedAt: START, commandId: null },
      keyid: 'k',
      signature: 's',
    },
    verifiedAt: START,
  });
  const luks = Buffer.from('LUKS\xba\xbe', 'latin1');
  const header = await qcow2LuksHeader(layout.data);
  assert.ok(header, 'an encrypted volume');
  const magicAt = async () =>
    (await readFile(layout.data)).subarray(header.offset, header.offset + luks.length);
  assert.deepEqual(await magicAt(), luks, 'a LUKS header before');
  const config = resolveEngineConfig([{ dataDir, hypervisor: 'sim', tpm: 'off' }]);
  const running = await startEngineRun(config, { log: recordingLog() });
  await withTimeout('engine run to stop', running.stop());
  await assert.rejects(stat(join(dataDir, 'keys')), { code: 'ENOENT' });
  await assert.rejects(stat(layout.overlay('system')), { code: 'ENOENT' });
  assert.notDeepEqual(await magicAt(), luks, 'the LUKS header is overwritten');
});

test('bulkhead engine enroll and status as a real process', async (t) => {
  const center = await startCenter(t);
  const dataDir = join(await tempDir(t, 'bulkhead-engine-cli-'), 'engine');
  const token = await center.token();
  const enrol = (...more: string[]) =>
    cli(['engine', 'enroll', '--center', center.url, '--data', dataDir, ...more]);
  const run = await enrol('--token', token, '--json');
  assert.equal(run.code, 0, run.stderr);
  const out = JSON.parse(run.stdout);
  assert.match(out.deviceId, /^[0-9a-f-]{36}$/);
  assert.equal(out.centerKeyId, center.signingKey.keyid);
  assert.equal((await stat(join(dataDir, 'device.key'))).mode & 0o777, 0o600);
  assert.equal((await stat(dataDir)).mode & 0o777, 0o700);
  assert.ok(!run.stdout.includes(token) && !run.stderr.includes(token), 'the token is not echoed');
  const identity = JSON.parse(await readFile(join(dataDir, 'identity.json'), 'utf8'));
  assert.equal(identity.deviceId, out.deviceId);

  const again = await enrol('--token', token);
  assert.equal(again.code, 1);
  assert.match(
    again.stderr.trim(),
    /^bulkhead engine enroll: this device is already enrolled .* --force/,
  );
  assert.equal(again.stderr.trim().split('\n').length, 1);

  const status = await cli(['engine', 'status', '--data', dataDir, '--json']);
  assert.equal(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout);
  assert.equal(s.deviceId, out.deviceId);
  assert.equal(s.queueDepth, 0);
  const human = await cli(['engine', 'status', '--data', dataDir]);
  assert.match(human.stdout, new RegExp(`Device\\s+${out.deviceId}`));
  // An enrolled PC that has no desired state yet says so in words, and what to check.
  assert.match(
    human.stdout,
    /^VMs\s+none yet: no desired state from Center yet \(is `bulkhead engine run` running\?\)$/m,
  );
  assert.deepEqual(s.vms, []);

  const forced = await enrol('--token', await center.token(), '--force', '--json');
  assert.equal(forced.code, 0, forced.stderr);
  assert.notEqual(JSON.parse(forced.stdout).deviceId, out.deviceId);
});

test('bulkhead engine enroll --tpm seals the encryption key with the TPM; --tpm off keeps a key file', async (t) => {
  const center = await startCenter(t);
  const tpm = await startTestTpm(t);
  const dataDir = join(await tempDir(t, 'bulkhead-engine-tpm-'), 'engine');
  const enrol = async (...more: string[]) =>
    cli([
      'engine',
      'enroll',
      '--center',
      center.url,
      '--data',
      dataDir,
      '--token',
      await center.token(),
      ...more,
    ]);
  const sealed = await enrol('--tpm', tpm.tcti, '--json');
  assert.equal(sealed.code, 0, sealed.stderr);
  assert.equal(JSON.parse(sealed.stdout).keyProtection, 'tpm');
  assert.deepEqual((await readdir(join(dataDir, 'keys'))).sort(), [
    'encryption.json',
    'sealed.priv',
    'sealed.pub',
  ]);
  const filed = await enrol('--tpm', 'off', '--force');
  assert.equal(filed.code, 0, filed.stderr);
  assert.match(filed.stdout, /encryption key is in a key file \(no TPM: the weaker fallback/);
  assert.deepEqual((await readdir(join(dataDir, 'keys'))).sort(), [
    'encryption.json',
    'encryption.key',
  ]);
  const row = await center.database.db
    .selectFrom('devices')
    .select('encryption_key')
    .where(
      'id',
      '=',
      JSON.parse((await cli(['engine', 'status', '--data', dataDir, '--json'])).stdout).deviceId,
    )
    .executeTakeFirstOrThrow();
  assert.match(row.encryption_key ?? '', /^[A-Za-z0-9+/]{43}=$/, 'Center keeps the public key');
});

/** A GET over a unix socket: status and body as text. */
function getOverSocket(
  socketPath: string,
  path: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (part: string) => (body += part));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function systemSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}
