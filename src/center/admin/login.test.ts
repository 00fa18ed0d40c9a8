import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { CENTER_TARGETS, startTestCenter } from '../../../test/support/center.ts';
import type { CenterConfigInput } from '../config.ts';
import { createLoginThrottle, delayAfter, FREE_FAILURES, MAX_DELAY_MS } from './login-throttle.ts';
import { createUser } from './users.ts';

/*
 * Logins under attack: a client that lies about its address (X-Forwarded-For), one that
 * hammers a username to lock its owner out, one that fills the throttle with other names.
 */

const PASSWORD = 'correct horse battery';
const ATTACKER = '203.0.113.7';
const OWNER = '10.0.0.1';

async function center(t: TestContext, url: string, config: CenterConfigInput = {}) {
  const c = await startTestCenter(t, url, { start: Date.UTC(2026, 10, 23, 12), config });
  await createUser(
    c.db,
    { label: 'system' },
    { username: 'root', role: 'admin', password: PASSWORD },
    c.clock.ms,
  );
  const login = (
    password: string,
    options: { ip?: string; forwardedFor?: string; username?: string } = {},
  ) =>
    c.call('POST', '/login', {
      body: { username: options.username ?? 'root', password },
      ip: options.ip ?? OWNER,
      ...(options.forwardedFor === undefined
        ? {}
        : { headers: { 'x-forwarded-for': options.forwardedFor } }),
    });
  /** The address the newest session's audit row recorded. */
  const auditedIp = async () => {
    const row = await c.db
      .selectFrom('audit_log')
      .select('after')
      .where('action', '=', 'session.create')
      .orderBy('at', 'desc')
      .orderBy('id', 'desc')
      .executeTakeFirstOrThrow();
    return (JSON.parse(row.after!) as { ip: string }).ip;
  };
  return { ...c, login, auditedIp };
}

for (const target of CENTER_TARGETS) {
  test(`logins under attack on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test(
      'rotating X-Forwarded-For neither escapes the throttle nor forges the audit IP when no proxy is trusted',
      async (t) => {
        const c = await center(t, await newUrl(t));
        // Each attempt claims to come from somewhere else; all come from ATTACKER.
        for (let i = 1; i <= FREE_FAILURES + 1; i++) {
          const res = await c.login('wrong', { ip: ATTACKER, forwardedFor: `198.51.100.${i}` });
          assert.equal(res.status, 401, `attempt ${i}`);
        }
        const limited = await c.login('wrong', { ip: ATTACKER, forwardedFor: '198.51.100.99' });
        assert.equal(limited.status, 429, JSON.stringify(limited.body));
        assert.equal(limited.body.error.code, 'ERR_RATE_LIMITED');
        assert.equal(limited.headers['retry-after'], '1');

        c.clock.ms += 1000;
        const ok = await c.login(PASSWORD, { ip: ATTACKER, forwardedFor: '198.51.100.42' });
        assert.equal(ok.status, 200, JSON.stringify(ok.body));
        assert.equal(await c.auditedIp(), ATTACKER, 'the audit names the real peer');
      },
    );

    await t.test('with a trusted proxy configured, the forwarded address counts', async (t) => {
      const c = await center(t, await newUrl(t), { trustedProxies: ['10.9.0.0/16'] });
      const viaProxy = (password: string, client: string) =>
        c.login(password, { ip: '10.9.0.5', forwardedFor: client });
      for (let i = 1; i <= FREE_FAILURES + 1; i++) {
        assert.equal((await viaProxy('wrong', '198.51.100.1')).status, 401);
      }
      assert.equal((await viaProxy('wrong', '198.51.100.1')).status, 429);
      // Another client behind the same proxy is another pair: not slowed.
      assert.equal((await viaProxy('wrong', '198.51.100.2')).status, 401);
      assert.equal((await viaProxy(PASSWORD, '198.51.100.3')).status, 200);
      assert.equal(await c.auditedIp(), '198.51.100.3');
      // A peer that is not a trusted proxy cannot speak for anyone else.
      c.clock.ms += 1;
      assert.equal(
        (await c.login(PASSWORD, { ip: '192.0.2.8', forwardedFor: '1.2.3.4' })).status,
        200,
      );
      assert.equal(await c.auditedIp(), '192.0.2.8');
    });

    await t.test('logins per address are limited, whatever the usernames tried', async (t) => {
      const c = await center(t, await newUrl(t), { loginPerMinute: 3 });
      for (const username of ['alice', 'bob', 'carol']) {
        assert.equal((await c.login('wrong', { ip: ATTACKER, username })).status, 401);
      }
      const limited = await c.login('wrong', { ip: ATTACKER, username: 'dave' });
      assert.equal(limited.status, 429);
      assert.equal(limited.body.error.code, 'ERR_RATE_LIMITED');
      assert.equal(limited.headers['retry-after'], '60');
      // Forged addresses change nothing; another real one is counted apart.
      const forged = await c.login('wrong', { ip: ATTACKER, forwardedFor: '198.51.100.9' });
      assert.equal(forged.status, 429);
      assert.equal((await c.login(PASSWORD, { ip: OWNER })).status, 200);
      c.clock.ms += 60_000;
      assert.equal((await c.login('wrong', { ip: ATTACKER, username: 'erin' })).status, 401);
    });

    await t.test(
      'an attacker hammering a username cannot lock its owner out at another address',
      async (t) => {
        const c = await center(t, await newUrl(t));
        // Sixty tries from one peer, under ten forged addresses: today's per-username count
        // of fifty would lock `root` out everywhere.
        const answers = new Map<number, number>();
        for (let i = 0; i < 60; i++) {
          const res = await c.login('wrong', {
            ip: ATTACKER,
            forwardedFor: `198.51.100.${i % 10}`,
          });
          answers.set(res.status, (answers.get(res.status) ?? 0) + 1);
        }
        // The owner, elsewhere, logs in at once.
        const owner = await c.login(PASSWORD, { ip: OWNER });
        assert.equal(owner.status, 200, JSON.stringify(owner.body));
        // Six of the attacker's tries were checked; the others waited.
        assert.equal(answers.get(401), FREE_FAILURES + 1, JSON.stringify([...answers]));
        assert.equal(answers.get(429), 60 - FREE_FAILURES - 1);
        // Refused attempts do not lengthen the attacker's wait (one second after its sixth
        // failure); a minute on, its per-address limit has reset too, and it may try again.
        c.clock.ms += 60_000;
        assert.equal((await c.login('wrong', { ip: ATTACKER })).status, 401);
      },
    );

    await t.test(
      'failures back off exponentially per username and address; a success forgets them',
      async (t) => {
        const c = await center(t, await newUrl(t));
        for (let i = 1; i <= FREE_FAILURES; i++) {
          assert.equal((await c.login('wrong')).status, 401, `free attempt ${i}`);
        }
        // Each further failure doubles the wait, up to the cap.
        const waits: number[] = [];
        for (let failures = FREE_FAILURES + 1; failures <= FREE_FAILURES + 12; failures++) {
          assert.equal((await c.login('wrong')).status, 401, `failure ${failures}`);
          const limited = await c.login(PASSWORD);
          assert.equal(limited.status, 429, `after failure ${failures}`);
          const wait = Number(limited.headers['retry-after']);
          assert.equal(limited.body.error.retryAfterMs, wait * 1000);
          waits.push(wait);
          c.clock.ms += wait * 1000 - 1;
          assert.equal((await c.login(PASSWORD)).status, 429, 'a millisecond early');
          c.clock.ms += 1;
        }
        assert.deepEqual(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]);
        assert.equal(delayAfter(FREE_FAILURES + 40), MAX_DELAY_MS);
        // The same name from another address was never slowed.
        assert.equal((await c.login(PASSWORD, { ip: '10.0.0.2' })).status, 200);
        // The right password, once it may try, gets in and clears the record.
        assert.equal((await c.login(PASSWORD)).status, 200);
        for (let i = 1; i <= FREE_FAILURES; i++) assert.equal((await c.login('wrong')).status, 401);
      },
    );

    await t.test(
      'concurrent attempts cannot slip past the backoff before the first failure counts',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const answers = await Promise.all(
          Array.from({ length: 20 }, () => c.login('wrong', { ip: ATTACKER })),
        );
        const counts = answers.map((a) => a.status).sort();
        // Five free ones and the one that starts the backoff are checked; the rest wait.
        assert.equal(counts.filter((s) => s === 401).length, FREE_FAILURES + 1);
        assert.equal(counts.filter((s) => s === 429).length, 20 - FREE_FAILURES - 1);
      },
    );

    await t.test('the throttle is not emptied by failures of 10,000 other names', async (t) => {
      const c = await center(t, await newUrl(t));
      const throttle = createLoginThrottle({ db: c.db, now: c.now });
      for (let i = 0; i <= FREE_FAILURES; i++) {
        assert.equal(await throttle.claim('root', ATTACKER), 0);
      }
      assert.ok((await throttle.claim('root', ATTACKER)) > 0, 'root is in backoff');
      // Ten thousand other names, from the attacker and from many other addresses.
      for (let batch = 0; batch < 100; batch++) {
        await Promise.all(
          Array.from({ length: 100 }, (_, i) => {
            const n = batch * 100 + i;
            return throttle.claim(`user${n}`, n % 2 === 0 ? ATTACKER : `198.18.${batch}.${i}`);
          }),
        );
      }
      assert.ok((await throttle.claim('root', ATTACKER)) > 0, 'root is still in backoff');
      assert.equal((await c.login(PASSWORD, { ip: ATTACKER })).status, 429);
      assert.equal((await c.login(PASSWORD, { ip: OWNER })).status, 200);
    });

    await t.test('forgotten a day after the last attempt, and pruned', async (t) => {
      const c = await center(t, await newUrl(t));
      const throttle = createLoginThrottle({ db: c.db, now: c.now });
      for (let i = 0; i <= FREE_FAILURES; i++) await throttle.claim('root', ATTACKER);
      assert.ok((await throttle.claim('root', ATTACKER)) > 0);
      c.clock.ms += 24 * 3600_000;
      // A new pair's first failure prunes what is a day old.
      assert.equal(await throttle.claim('someone', OWNER), 0);
      const left = await c.db.selectFrom('login_throttle').select('username').execute();
      assert.deepEqual(
        left.map((r) => r.username),
        ['someone'],
      );
      assert.equal(await throttle.claim('root', ATTACKER), 0, 'root starts afresh');
    });
  });
}
