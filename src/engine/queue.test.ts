import assert from 'node:assert/strict';
import { appendFile, readdir, readFile, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { fixedClock, recordingLog } from '../../test/support/engine.ts';
import { sampleEvent as ev, tagOf } from '../../test/support/events.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { waitFor } from '../../test/support/wait.ts';
import { isBulkheadError, type NewEvent } from '../protocol/index.ts';
import { EventQueue, readQueueDepth } from './queue.ts';

const START = Date.parse('2026-03-02T09:15:00Z');

const segmentOf = async (dir: string) =>
  (await readdir(dir)).find((n) => n.startsWith('segment-')) as string;

test('events come back in order with time-ordered UUIDv7 ids, across a reopen', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const clock = fixedClock();
  const q = await EventQueue.open({ dir, clock });
  const appended = await q.append([ev('staged', 'n1'), ev('switched', 'n2')]);
  clock.ms -= 5000; // a clock step back keeps ids increasing
  appended.push(...(await q.append(ev('healthy', 'n3'))));
  for (const e of appended) {
    assert.match(e.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  }
  const ids = appended.map((e) => e.id);
  assert.deepEqual([...ids].sort(), ids, 'ids sort in append order');
  assert.equal(appended[0]!.at, START);
  assert.deepEqual(q.peek(10).map(tagOf), ['n1', 'n2', 'n3']);
  assert.equal(q.depth(), 3);
  await q.close();

  const again = await EventQueue.open({ dir, clock });
  assert.deepEqual(again.peek(10), appended);
  assert.deepEqual(
    again.peek(2).map((e) => e.id),
    ids.slice(0, 2),
  );
  await again.close();
});

test('acknowledged events never come back, also after a restart and out-of-order acks', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const q = await EventQueue.open({ dir, clock: fixedClock() });
  const events = await q.append(Array.from({ length: 6 }, (_, i) => ev('vm-state', String(i))));
  await q.ack([events[0]!.id, events[1]!.id, events[4]!.id]);
  assert.deepEqual(
    q.peek(10).map((e) => Number(tagOf(e))),
    [2, 3, 5],
  );
  await q.close();
  assert.equal(await readQueueDepth(dir), 3, 'read-only depth agrees');

  const again = await EventQueue.open({ dir, clock: fixedClock() });
  assert.deepEqual(
    again.peek(10).map((e) => Number(tagOf(e))),
    [2, 3, 5],
  );
  await again.ack([events[2]!.id, events[3]!.id, events[5]!.id, 'unknown-id']);
  assert.equal(again.depth(), 0);
  await again.close();
  assert.equal(await readQueueDepth(dir), 0);
});

test('a torn last line (kill -9 mid-append) is ignored with a warning, later appends are whole', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const q = await EventQueue.open({ dir, clock: fixedClock() });
  const [first] = await q.append(ev('staged', 's'));
  await q.close();
  const segment = join(dir, await segmentOf(dir));
  await appendFile(segment, '{"id":"0190-torn","type":"heal');

  // The read-only view ignores it as well.
  assert.equal(await readQueueDepth(dir), 1);
  const log = recordingLog();
  const again = await EventQueue.open({ dir, clock: fixedClock(), log });
  assert.ok(
    log.warnings.some((w) => /torn last line/.test(w)),
    log.warnings.join('; '),
  );
  assert.deepEqual(again.peek(10), [first]);
  const [second] = await again.append(ev('healthy', 'h'));
  await again.close();
  const lines = (await readFile(segment, 'utf8')).trimEnd().split('\n');
  assert.deepEqual(
    lines.map((l) => JSON.parse(l).id),
    [first!.id, second!.id],
  );
  const reopened = await EventQueue.open({ dir, clock: fixedClock() });
  assert.equal(reopened.depth(), 2);
  await reopened.close();
});

test('a lost cursor replays what is on disk rather than losing it', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const q = await EventQueue.open({ dir, clock: fixedClock() });
  const events = await q.append([ev('staged', 's'), ev('healthy', 'h')]);
  await q.ack([events[0]!.id]);
  await q.close();
  await writeFile(join(dir, 'cursor.json'), '{ broken');
  await writeFile(join(dir, 'cursor.json.bak'), '{ broken');
  const again = await EventQueue.open({ dir, clock: fixedClock(), log: recordingLog() });
  assert.deepEqual(
    again.peek(10).map((e) => e.id),
    events.map((e) => e.id),
  );
  await again.close();
});

test('acked heads are compacted into a new segment; the old one is removed', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const q = await EventQueue.open({ dir, clock: fixedClock(), compactBytes: 1024 });
  const events = await q.append(Array.from({ length: 40 }, (_, i) => ev('vm-state', String(i))));
  const before = await segmentOf(dir);
  await q.ack(events.slice(0, 30).map((e) => e.id));
  const after = await segmentOf(dir);
  assert.notEqual(after, before);
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n.startsWith('segment-')),
    [after],
  );
  await q.append(ev('healthy', 'h'));
  await q.close();
  const again = await EventQueue.open({ dir, clock: fixedClock() });
  assert.deepEqual(
    again.peek(100).map((e) => (e.type === 'vm-state' ? Number(tagOf(e)) : e.type)),
    [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 'healthy'],
  );
  await again.close();
});

test('bounded: oldest download-progress goes first, then other kinds, never outcomes', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const log = recordingLog();
  const q = await EventQueue.open({ dir, clock: fixedClock(), maxEvents: 10, log });
  await q.append([
    ev('healthy', 'h1'),
    ev('download-progress', 'p1'),
    ev('staged', 's1'),
    ev('download-progress', 'p2'),
    ev('command-result', 'c1'),
    ev('rolled-back', 'r1'),
    ev('download-progress', 'p3'),
    ev('staged', 's2'),
    ev('download-progress', 'p4'),
    ev('healthy', 'h2'),
  ]);
  assert.equal(q.depth(), 10);
  // One more: down to 9 (90%) by dropping the two oldest progress events.
  await q.append(ev('download-progress', 'p5'));
  const kinds = () => q.peek(100).map(tagOf);
  assert.deepEqual(kinds(), ['h1', 's1', 'c1', 'r1', 'p3', 's2', 'p4', 'h2', 'p5']);
  assert.ok(log.warnings.some((w) => /queue full/.test(w)));
  // Many outcomes: every progress and staged event goes before any of them.
  await q.append(Array.from({ length: 6 }, (_, i) => ev('healthy', `x${i}`)));
  assert.deepEqual(kinds(), ['h1', 'c1', 'r1', 'h2', 'x0', 'x1', 'x2', 'x3', 'x4', 'x5']);
  // Only outcomes left: the bound gives way rather than lose one.
  await q.append(ev('rolled-back', 'r2'));
  assert.equal(q.depth(), 11);
  await q.close();
  const again = await EventQueue.open({ dir, clock: fixedClock(), maxEvents: 10 });
  assert.equal(again.depth(), 11, 'drops are durable');
  await again.close();
});

test('an event Center would refuse is refused at append, not stuck in the queue', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const q = await EventQueue.open({ dir, clock: fixedClock() });
  // Engine's own code cannot build these (the type system refuses them); a caller outside it
  // that bypasses the types still gets a clear refusal.
  const unknownType = { type: 'Bad Type', data: {} } as unknown as NewEvent;
  await assert.rejects(q.append(unknownType), (err) => isBulkheadError(err, 'ERR_VALIDATION'));
  const tooLong = ev('vm-state', 'y'.repeat(9000));
  await assert.rejects(q.append(tooLong), (err) => isBulkheadError(err, 'ERR_VALIDATION'));
  // Every field within its bound, the whole over MAX_EVENT_BYTES (which Center enforces).
  const name = 'n'.repeat(128);
  const volume = { role: 'app', image: name, imageId: 'i', version: name, versionId: 'v' };
  const tooLarge: NewEvent = {
    type: 'failed',
    data: {
      profileId: 'p',
      image: name,
      version: name,
      versionId: 'v',
      volumes: Array.from({ length: 65 }, () => ({ ...volume, role: 'app', isNew: true })),
      reason: '\u0001'.repeat(2000),
    },
  };
  await assert.rejects(
    q.append(tooLarge),
    (err) => isBulkheadError(err, 'ERR_VALIDATION') && /more than the 32768/.test(err.message),
  );
  const missingField = { type: 'healthy', data: { versionId: 'v' } } as unknown as NewEvent;
  await assert.rejects(q.append(missingField), (err) => isBulkheadError(err, 'ERR_VALIDATION'));
  assert.equal(q.depth(), 0);
  await q.append(ev('vm-state', 'ok'));
  assert.equal(q.depth(), 1);
  await q.close();
});

test('kill -9 during a stream of appends loses no acknowledged append and leaves a readable queue', async (t) => {
  const dir = await tempDir(t, 'bulkhead-queue-');
  const queueUrl = new URL('./queue.ts', import.meta.url).href;
  const script = `
    const { EventQueue } = await import(${JSON.stringify(queueUrl)});
    const q = await EventQueue.open({ dir: ${JSON.stringify(dir)} });
    for (let i = 0; ; i++) {
      const [e] = await q.append({ type: 'vm-state', data: { vm: 'work', profileId: null, state: String(i), reason: 'x'.repeat(i % 700) } });
      process.stdout.write(e.id + '\\n');
    }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  await waitFor(
    '200 acknowledged appends',
    () => out.split('\n').length > 200 || (child.exitCode !== null && assert.fail('it exited')),
    { intervalMs: 5 },
  );
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('close', resolve));
  const confirmed = out.split('\n').filter((l) => l.length > 0 && l.length === 36);

  const q = await EventQueue.open({ dir, log: recordingLog() });
  const ids = q.peek(1_000_000).map((e) => e.id);
  await q.close();
  assert.ok(confirmed.length >= 200);
  assert.deepEqual(ids.slice(0, confirmed.length), confirmed, 'every confirmed append survived');
  assert.ok(ids.length <= confirmed.length + 1, 'at most the one unconfirmed append more');
  assert.deepEqual([...ids].sort(), ids, 'still in order');
});

test('what a tool printed into a reason costs a bad character, not the event', async (t) => {
  // Center refuses NUL and unpaired surrogates in every string (PostgreSQL cannot store them);
  // an event carrying QEMU's garbled stderr must still be queued and reported.
  const dir = await tempDir(t, 'bulkhead-queue-');
  const q = await EventQueue.open({ dir, clock: fixedClock() });
  const failed = ev('failed', 'v9') as Extract<NewEvent, { type: 'failed' }>;
  const [queued] = await q.append({
    ...failed,
    data: { ...failed.data, reason: 'qemu: \u0000\u0001 bad \ud800 bytes' },
  });
  assert.equal((queued!.data as { reason: string }).reason, 'qemu: \ufffd\u0001 bad \ufffd bytes');
  await q.close();
});
