// Per-address limits under attack on several replicas (issue 10): an address that spreads its
// requests over the replicas of one PostgreSQL database gets the limit once, not once a replica.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startTestCenter } from '../../../test/support/center.ts';
import { startPostgres } from '../../../test/support/postgres.ts';

const START = Date.UTC(2026, 2, 2, 9, 0);
const ATTACKER = '203.0.113.7';

test('replicas on PostgreSQL share the per-address login limit', async (t) => {
  const url = await startPostgres(t);
  // The replicas belong to a subtest: its hooks close them before the parent's stop the server.
  await t.test('an address gets the limit once, whichever replica it asks', async (t) => {
    // The replicas share their counts when the test says so, not also on a one-second timer
    // that a busy machine lets fire between any two of its steps.
    const options = { start: START, config: { loginPerMinute: 10 }, rateLimitFlushMs: null };
    const a = await startTestCenter(t, url, options);
    const b = await startTestCenter(t, url, options);
    let tried = 0;
    // Each attempt under another username, so that only the per-address limit can refuse it.
    const login = (replica: typeof a) =>
      replica.call('POST', '/login', {
        body: { username: `user-${++tried}`, password: 'guess' },
        ip: ATTACKER,
      });

    for (let i = 0; i < 6; i++) assert.equal((await login(a)).status, 401, `attempt ${tried} on A`);
    await a.app.flushRateLimits();
    // B learns the address's total when it shares a count of its own for it (within a second).
    assert.equal((await login(b)).status, 401, 'the 7th, on B');
    await b.app.flushRateLimits();
    const answers: number[] = [];
    for (let i = 0; i < 5; i++) answers.push((await login(b)).status);
    assert.deepEqual(answers, [401, 401, 401, 429, 429], 'the 11th and 12th are refused');

    const limited = await login(b);
    assert.equal(limited.status, 429);
    assert.equal(limited.body.error.code, 'ERR_RATE_LIMITED');
    assert.equal(limited.headers['retry-after'], '60');
    // A judges on the six it last read until it shares a count of its own for the address.
    await b.app.flushRateLimits();
    assert.equal((await login(a)).status, 401, 'A has not read the total yet');
    await a.app.flushRateLimits();
    assert.equal((await login(a)).status, 429, 'A refuses too');
    // Another address is counted apart, and a new minute starts afresh on both.
    assert.equal(
      (
        await a.call('POST', '/login', {
          body: { username: 'root', password: 'guess' },
          ip: '198.51.100.1',
        })
      ).status,
      401,
    );
    a.clock.ms += 60_000;
    b.clock.ms += 60_000;
    assert.equal((await login(a)).status, 401);
    assert.equal((await login(b)).status, 401);
  });
});
