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
