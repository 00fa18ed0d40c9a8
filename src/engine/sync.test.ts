// The sync loop against a Center that holds the device to its report quota (429 with
// Retry-After): events stay queued, nothing is sent before Retry-After whatever wakes the loop,
// then every event is delivered once, in order. Time is a clock the test moves.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { recordingLog } from '../../test/support/engine.ts';
import { sampleEvent, updateEvent } from '../../test/support/events.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { waitFor } from '../../test/support/wait.ts';
import {
  BulkheadError,
  ErrorCodes,
  MAX_REPORT_BYTES,
  MAX_REPORT_EVENTS,
  REPORT_ENVELOPE_BYTES,
  type DeviceEvent,
} from '../protocol/index.ts';
import type { Clock } from './clock.ts';
import { EventQueue } from './queue.ts';
import { engineFiles } from './state.ts';
import { createSyncLoop, type SyncLoopDeps } from './sync.ts';

const START = Date.parse('2026-03-02T09:15:00Z');
const RETRY_AFTER_MS = 30_000;

interface ManualClock extends Clock {
  ms: number;
  /** When the one sleeper wakes, or undefined when nobody (or more than one) sleeps. */
  wakesAt(): number | undefined;
  /** Moves time on, waking the sleepers whose time has come. */
  advance(ms: number): void;
}

/** A clock that stands still until the test moves it; sleepers wake when it passes their time. */
function manualClock(start: number): ManualClock {
  const sleepers = new Set<{ until: number; wake: () => void }>();
  const clock: ManualClock = {
    ms: start,
    now: () => clock.ms,
    sleep(ms: number, signal?: AbortSignal) {
      return new Promise<void>((resolve) => {
        if (signal?.aborted) return resolve();
        const sleeper = {
          until: clock.ms + ms,
          wake: () => {
            sleepers.delete(sleeper);
            resolve();
          },
        };
        sleepers.add(sleeper);
        signal?.addEventListener('abort', sleeper.wake, { once: true });
      });
    },
    wakesAt: () => (sleepers.size === 1 ? [...sleepers][0]!.until : undefined),
    advance(ms: number) {
      clock.ms += ms;
      for (const s of [...sleepers]) if (s.until <= clock.ms) s.wake();
    },
  };
  return clock;
}

/**
 * A Center that takes one batch, then answers 429 with Retry-After 30 s to every batch until
 * its Retry-After has passed (noting any batch sent before then), then takes everything.
 */
function quotaCenter(clock: { now(): number }) {
  const center = {
    polls: [] as number[],
    sends: [] as { at: number; count: number; bytes: number; accepted: boolean }[],
    received: [] as string[],
    heldUntil: undefined as number | undefined,
    onPush: undefined as (() => void) | undefined,
  };
  const client: SyncLoopDeps['client'] = {
    async getDesiredState() {
      center.polls.push(clock.now());
      return { changed: false, etag: null };
    },
    async sendReports(events: readonly DeviceEvent[]) {
      const bytes = Buffer.byteLength(JSON.stringify({ events }));
      const first = center.sends.length === 0;
      const held = center.heldUntil !== undefined && clock.now() < center.heldUntil;
      const accepted = first || (center.heldUntil !== undefined && !held);
      center.sends.push({ at: clock.now(), count: events.length, bytes, accepted });
      if (!accepted) {
        center.heldUntil ??= clock.now() + RETRY_AFTER_MS;
        throw new BulkheadError(ErrorCodes.RATE_LIMITED, 'this device is over its report quota', {
          retryable: true,
          details: { status: 429, retryAfterMs: center.heldUntil - clock.now() },
        });
      }
      center.received.push(...events.map((e) => e.id));
      return { accepted: events.length, duplicates: 0 };
    },
    subscribePush(onChange) {
      center.onPush = onChange;
      return { state: 'open', close() {} };
    },
  };
  return { center, client };
}

async function engineOf(t: TestContext, clock: Clock) {
  const files = engineFiles(join(await tempDir(t, 'bulkhead-sync-'), 'engine'), { clock });
  const queue = await EventQueue.open({ dir: files.queueDir, clock });
  t.after(() => queue.close());
  return { files, queue };
}

test('a 429 on reports: the events wait Retry-After, pushes and polls included, then go once, in order', async (t) => {
  const clock = manualClock(START);
  const { files, queue } = await engineOf(t, clock);
  const queued = await queue.append(
    Array.from({ length: 1_200 }, (_, i) => sampleEvent('download-progress', `v${i}`)),
  );
  const { center, client } = quotaCenter(clock);
  const log = recordingLog();
  const loop = createSyncLoop({
    client,
    queue,
    store: files,
    clock,
    log,
    onDesiredState: () => {},
    // Shorter than Retry-After: the loop keeps polling while reports wait.
    pollIntervalMs: 10_000,
    random: () => 0,
  });
  const contacts = (n: number) => () =>
    center.polls.length === n && clock.wakesAt() !== undefined ? true : undefined;
  await loop.start();
  t.after(() => loop.stop());

  // First contact: one batch taken, the second refused; the rest stays queued.
  await waitFor('the first contact', contacts(1));
  assert.deepEqual(
    center.sends.map((s) => [s.at - START, s.count, s.accepted]),
    [
      [0, MAX_REPORT_EVENTS, true],
      [0, MAX_REPORT_EVENTS, false],
    ],
  );
  assert.equal(queue.depth(), 1_200 - MAX_REPORT_EVENTS);

  // A push wakes the loop at once: it polls, but sends no report.
  center.onPush?.();
  await waitFor('the contact a push brings', contacts(2));
  assert.equal(center.sends.length, 2, 'a push brings no report before Retry-After');
  assert.equal(clock.wakesAt(), START + 10_000, 'the next poll, before Retry-After');
  assert.equal(loop.connectivity().online, true, 'Center answered: the device is online');
  assert.equal(loop.connectivity().lastError?.code, ErrorCodes.RATE_LIMITED);
  assert.match(log.warnings.join('\n'), /the events wait/);
  // Polls at the interval, each short of Retry-After: still no report.
  clock.advance(10_000);
  await waitFor('the poll 10 s later', contacts(3));
  clock.advance(10_000);
  await waitFor('the poll 20 s later', contacts(4));
  assert.equal(center.sends.length, 2, 'no report before Retry-After');
  assert.equal(queue.depth(), 1_200 - MAX_REPORT_EVENTS);

  // At Retry-After, the rest goes.
  clock.advance(10_000);
  await waitFor('the contact at Retry-After', contacts(5));
  for (const s of center.sends.slice(2)) {
    assert.ok(s.at >= START + RETRY_AFTER_MS, `a batch sent ${s.at - START} ms in`);
    assert.ok(s.accepted);
    assert.ok(s.count <= MAX_REPORT_EVENTS && s.bytes <= MAX_REPORT_BYTES);
  }
  assert.equal(queue.depth(), 0);
  assert.deepEqual(
    center.received,
    queued.map((e) => e.id),
    'every event once, in order',
  );
  assert.equal(loop.connectivity().lastError, null);
  assert.equal(clock.wakesAt(), START + RETRY_AFTER_MS + 10_000, 'back to the poll interval');
});

test('a Retry-After shorter than the poll interval brings the next contact forward to it', async (t) => {
  const clock = manualClock(START);
  const { files, queue } = await engineOf(t, clock);
  await queue.append(
    Array.from({ length: 600 }, (_, i) => sampleEvent('download-progress', `v${i}`)),
  );
  const { center, client } = quotaCenter(clock);
  const loop = createSyncLoop({
    client,
    queue,
    store: files,
    clock,
    log: recordingLog(),
    onDesiredState: () => {},
    pollIntervalMs: 300_000,
    push: false,
  });
  const first = await loop.syncNow();
  assert.deepEqual([first.ok, first.delivered, first.nextDelayMs], [true, 500, RETRY_AFTER_MS]);
  assert.equal(loop.connectivity().nextAttemptAt, START + RETRY_AFTER_MS);
  // Called early (as `engine run` might): still nothing is sent.
  clock.advance(RETRY_AFTER_MS - 1);
  const early = await loop.syncNow();
  assert.deepEqual([early.delivered, early.nextDelayMs], [0, 1]);
  assert.equal(center.sends.length, 2);
  clock.advance(1);
  const due = await loop.syncNow();
  assert.deepEqual([due.delivered, due.nextDelayMs, queue.depth()], [100, 300_000, 0]);
});

test('batches are cut by bytes as well as by count, so Center never finds one too large', async (t) => {
  const clock = manualClock(START);
  const { files, queue } = await engineOf(t, clock);
  // ~12 KB each as JSON (control characters are escaped to six bytes): ~85 fit in 1 MiB.
  const reason = '\u0001'.repeat(2000);
  await queue.append(
    Array.from({ length: 300 }, (_, i) => updateEvent('failed', { versionId: `v${i}`, reason })),
  );
  const sizes: number[] = [];
  const loop = createSyncLoop({
    client: {
      getDesiredState: async () => ({ changed: false, etag: null }),
      sendReports: async (events) => {
        sizes.push(Buffer.byteLength(JSON.stringify({ events })));
        return { accepted: events.length, duplicates: 0 };
      },
      subscribePush: () => ({ state: 'open', close() {} }),
    },
    queue,
    store: files,
    clock,
    log: recordingLog(),
    onDesiredState: () => {},
    push: false,
  });
  assert.equal((await loop.syncNow()).delivered, 300);
  assert.ok(sizes.length >= 3, `${sizes.length} batches`);
  for (const size of sizes) assert.ok(size <= MAX_REPORT_BYTES, `a batch of ${size} bytes`);
  assert.ok(sizes[0]! > MAX_REPORT_BYTES - 13_000 - REPORT_ENVELOPE_BYTES, 'batches are full');
});
