import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Clock } from '../clock.ts';
import { checkHealth, type GuestAgentLink } from './health.ts';

/** A clock that moves only when someone sleeps. */
function manualClock(): Clock & { t: number } {
  const c = {
    t: 0,
    now: () => c.t,
    sleep: async (ms: number) => {
      c.t += ms;
    },
  };
  return c;
}

function link(
  answersAfter: number,
  clock: { t: number },
  exitCode = 0,
): () => Promise<GuestAgentLink> {
  return async () => ({
    ping: async () => {
      if (clock.t < answersAfter) throw new Error('no answer');
    },
    exec: async () => ({ exitCode }),
    close: () => {},
  });
}

test('health: the agent answering in time and the command exiting 0 is healthy', async () => {
  const clock = manualClock();
  const r = await checkHealth({
    connect: link(8000, clock),
    check: { timeoutSeconds: 30, command: ['/bin/check'] },
    startedAt: 0,
    clock,
  });
  assert.deepEqual(r, { healthy: true });
});

test('health: the reasons name what failed', async () => {
  const clock = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(60_000, clock),
      check: { timeoutSeconds: 20 },
      startedAt: 0,
      clock,
    }),
    { healthy: false, reason: 'guest agent did not answer within 20 s' },
  );
  const clock2 = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(0, clock2, 1),
      check: { timeoutSeconds: 20, command: ['/bin/false'] },
      startedAt: 0,
      clock: clock2,
    }),
    { healthy: false, reason: 'health check command exited 1' },
  );
  const clock3 = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: async () => {
        throw new Error('no socket yet');
      },
      check: { timeoutSeconds: 5 },
      startedAt: 0,
      clock: clock3,
    }),
    { healthy: false, reason: 'guest agent did not answer within 5 s' },
  );
});

test('health with screen: blank until the guest draws, then healthy; blank to the end is a reason', async () => {
  const clock = manualClock();
  // The screen shows something from 12 s on.
  const screenVariance = async () => (clock.t < 12_000 ? 0 : 350);
  assert.deepEqual(
    await checkHealth({
      connect: link(8000, clock),
      check: { timeoutSeconds: 30, screen: true },
      startedAt: 0,
      clock,
      screenVariance,
    }),
    { healthy: true },
  );
  assert.ok(clock.t >= 12_000, 'it waited for the screen');

  const clock2 = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(0, clock2),
      check: { timeoutSeconds: 20, screen: true },
      startedAt: 0,
      clock: clock2,
      screenVariance: async () => 0,
    }),
    {
      healthy: false,
      reason: 'the screen was still blank 20 s after boot (pixel variance 0.00, at most 0.5)',
    },
  );
  // A screen that cannot be captured says why.
  const clock3 = manualClock();
  const failed = await checkHealth({
    connect: link(0, clock3),
    check: { timeoutSeconds: 5, screen: true },
    startedAt: 0,
    clock: clock3,
    screenVariance: async () => {
      throw new Error('no display surface');
    },
  });
  assert.deepEqual(failed, {
    healthy: false,
    reason: 'the screen was still blank 5 s after boot (no screenshot: no display surface)',
  });
  // Without screen in the check, the screen is never looked at.
  const clock4 = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(0, clock4),
      check: { timeoutSeconds: 5 },
      startedAt: 0,
      clock: clock4,
      screenVariance: async () => 0,
    }),
    { healthy: true },
  );
  const clock5 = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(0, clock5),
      check: { timeoutSeconds: 5, screen: true },
      startedAt: 0,
      clock: clock5,
    }),
    { healthy: false, reason: 'the health check looks at the screen, but this VM has none' },
  );
});

test('health: a firmware that gave up ends the check at once, with its reason', async () => {
  const clock = manualClock();
  const asked: number[] = [];
  const r = await checkHealth({
    connect: link(Infinity, clock),
    check: { timeoutSeconds: 300 },
    startedAt: 0,
    clock,
    // The firmware gives up 4 s into the boot.
    bootVerdict: async () => {
      asked.push(clock.t);
      return clock.t < 4000
        ? null
        : {
            reason: "Secure Boot refused the boot loader: 'BdsDxe: … Access Denied'",
            isFinal: true,
          };
    },
  });
  assert.deepEqual(r, {
    healthy: false,
    reason: "Secure Boot refused the boot loader: 'BdsDxe: … Access Denied'",
  });
  assert.ok(clock.t <= 5000, `ended ${clock.t} ms into a 300 s timeout`);
  assert.ok(asked.length >= 2, 'asked while waiting');
});

test('health: a firmware still trying at the timeout adds its words to the reason; a broken log says nothing', async () => {
  const clock = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(Infinity, clock),
      check: { timeoutSeconds: 20 },
      startedAt: 0,
      clock,
      bootVerdict: async () => ({
        reason: "the firmware could not boot: 'Boot failed: not a bootable disk'",
        isFinal: false,
      }),
    }),
    {
      healthy: false,
      reason:
        "guest agent did not answer within 20 s; the firmware could not boot: 'Boot failed: not a bootable disk'",
    },
  );
  const clock2 = manualClock();
  assert.deepEqual(
    await checkHealth({
      connect: link(Infinity, clock2),
      check: { timeoutSeconds: 20 },
      startedAt: 0,
      clock: clock2,
      bootVerdict: async () => {
        throw new Error('EACCES');
      },
    }),
    { healthy: false, reason: 'guest agent did not answer within 20 s' },
  );
});

test('health: an agent that answers wins over anything the firmware logged', async () => {
  const clock = manualClock();
  const r = await checkHealth({
    connect: link(3000, clock),
    check: { timeoutSeconds: 30 },
    startedAt: 0,
    clock,
    bootVerdict: async () => ({ reason: 'not final', isFinal: false }),
  });
  assert.deepEqual(r, { healthy: true });
});
