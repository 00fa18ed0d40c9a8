import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { CENTER_TARGETS, startTestCenter } from '../../../test/support/center.ts';
import { createUser } from './users.ts';

const ADMIN_PASSWORD = 'correct horse battery';

/** A Center with one admin `root`, a settable clock, and its logs kept as text. */
async function center(t: TestContext, url: string) {
  const c = await startTestCenter(t, url, { start: Date.UTC(2026, 10, 23, 12), logLevel: 'debug' });
  await createUser(
    c.db,
    { label: 'system' },
    { username: 'root', role: 'admin', password: ADMIN_PASSWORD },
    c.clock.ms,
  );
  c.clock.ms += 1000;
  const loginAs = async (username: string, password: string) => {
    const res = await c.call('POST', '/login', { body: { username, password } });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body.token as string;
  };
  return {
    ...c,
    loginAs,
    advance: (ms: number) => {
      c.clock.ms += ms;
    },
  };
}

for (const target of CENTER_TARGETS) {
  test(`admin API on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test('login gives a session that expires and that logout revokes', async (t) => {
      const c = await center(t, await newUrl(t));
      const token = await c.loginAs('root', ADMIN_PASSWORD);
      assert.match(token, /^bh_[A-Za-z0-9_-]{43}$/);
      const me = await c.call('GET', '/me', { token });
      assert.deepEqual(
        { ...me.body, id: undefined },
        { id: undefined, username: 'root', role: 'admin', via: 'session' },
      );
      const stored = await c.database.db.selectFrom('api_tokens').selectAll().execute();
      assert.equal(stored.length, 1);
      assert.notEqual(stored[0]!.token_hash, token);
      assert.match(stored[0]!.token_hash, /^[0-9a-f]{64}$/);

      c.advance(12 * 3600_000 - 1);
      assert.equal((await c.call('GET', '/me', { token })).status, 200);
      c.advance(1);
      const expired = await c.call('GET', '/me', { token });
      assert.equal(expired.status, 401);
      assert.equal(expired.body.error.code, 'ERR_UNAUTHENTICATED');

      // Usernames are case-insensitive: the same account answers to ROOT.
      const second = await c.loginAs('ROOT', ADMIN_PASSWORD);
      const again = await c.call('GET', '/me', { token: second });
      assert.equal(again.body.username, 'root');
      assert.equal((await c.call('POST', '/logout', { token: second })).status, 204);
      assert.equal((await c.call('GET', '/me', { token: second })).status, 401);
    });

    await t.test('no token, a malformed one or an unknown one is 401', async (t) => {
      const c = await center(t, await newUrl(t));
      for (const token of [undefined, 'not a token!', 'bh_unknownunknownunknown']) {
        const res = await c.call('GET', '/users', { ...(token ? { token } : {}) });
        assert.equal(res.status, 401, String(token));
        assert.equal(res.body.error.code, 'ERR_UNAUTHENTICATED');
      }
      // Authentication comes before validation: an anonymous bad body is still a 401.
      const res = await c.call('POST', '/users', { body: { bogus: 1 } });
      assert.equal(res.status, 401);
      const wrong = await c.call('POST', '/login', {
        body: { username: 'root', password: 'wrong' },
      });
      assert.equal(wrong.status, 401);
      const nobody = await c.call('POST', '/login', {
        body: { username: 'nobody', password: 'wrong' },
      });
      assert.deepEqual(nobody.body, wrong.body);
    });

    await t.test('each route enforces its role: viewer < operator < admin', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      for (const [username, role] of [
        ['vera', 'viewer'],
        ['otto', 'operator'],
      ]) {
        const res = await c.call('POST', '/users', {
          token: root,
          body: { username, role, password: `${username} password long` },
        });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        assert.equal(res.body.password, undefined);
      }
      // A name differing only in case is the same account.
      const twin = await c.call('POST', '/users', {
        token: root,
        body: { username: 'Vera', role: 'admin', password: 'another password' },
      });
      assert.equal(twin.status, 409, JSON.stringify(twin.body));
      const viewer = await c.loginAs('Vera', 'vera password long');
      const operator = await c.loginAs('otto', 'otto password long');
      assert.equal((await c.call('GET', '/users', { token: viewer })).status, 200);
      assert.equal((await c.call('GET', '/audit', { token: viewer })).status, 200);
      const denied = await c.call('POST', '/users', {
        token: viewer,
        body: { username: 'x', role: 'viewer' },
      });
      assert.equal(denied.status, 403);
      assert.equal(denied.body.error.code, 'ERR_FORBIDDEN');
      const noToken = await c.call('POST', '/tokens', { token: operator, body: { name: 'ci' } });
      assert.equal(noToken.status, 403);

      const created = await c.call('POST', '/tokens', {
        token: root,
        body: { name: 'ci', expiresInDays: 1 },
      });
      assert.equal(created.status, 201);
      const api = created.body.token as string;
      const me = await c.call('GET', '/me', { token: api });
      assert.equal(me.body.via, 'token');
      assert.equal(me.body.username, 'root');
      const listed = await c.call('GET', '/tokens', { token: root });
      assert.deepEqual(
        listed.body.tokens.map((k: { name: string; username: string }) => [k.name, k.username]),
        [['ci', 'root']],
        'sessions are not listed',
      );
      assert.doesNotMatch(JSON.stringify(listed.body), /bh_|token_hash/);
      assert.equal((await c.call('GET', '/tokens', { token: operator })).status, 403);
      const other = await c.call('POST', '/tokens', { token: root, body: { name: 'other' } });
      const revoked = await c.call('DELETE', `/tokens/${other.body.id}`, { token: root });
      assert.equal(revoked.status, 204);
      assert.equal((await c.call('GET', '/me', { token: other.body.token })).status, 401);
      const again = await c.call('DELETE', `/tokens/${other.body.id}`, { token: root });
      assert.equal(again.status, 404);

      c.advance(86_400_000);
      assert.equal((await c.call('GET', '/me', { token: api })).status, 401);
    });

    await t.test('users: create, change, delete; never the last admin', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      const rootId = (await c.call('GET', '/me', { token: root })).body.id as string;

      const demote = await c.call('PATCH', `/users/${rootId}`, {
        token: root,
        body: { role: 'operator' },
      });
      assert.equal(demote.status, 409);
      assert.equal(demote.body.error.code, 'ERR_LAST_ADMIN');
      const remove = await c.call('DELETE', `/users/${rootId}`, { token: root });
      assert.equal(remove.body.error.code, 'ERR_LAST_ADMIN');

      const made = await c.call('POST', '/users', {
        token: root,
        body: { username: 'ada', role: 'admin' },
      });
      assert.equal(made.status, 201);
      assert.match(made.body.password, /^[A-Za-z0-9_-]{22}$/);
      const dup = await c.call('POST', '/users', {
        token: root,
        body: { username: 'ada', role: 'viewer' },
      });
      assert.equal(dup.status, 409);
      assert.equal(dup.body.error.code, 'ERR_ADMIN_USER_EXISTS');

      const ada = await c.loginAs('ada', made.body.password);
      const changed = await c.call('PATCH', `/users/${made.body.user.id}`, {
        token: root,
        body: { password: 'a brand new password' },
      });
      assert.equal(changed.status, 200);
      assert.equal((await c.call('GET', '/me', { token: ada })).status, 401, 'sessions end');
      await c.loginAs('ada', 'a brand new password');

      assert.equal(
        (await c.call('PATCH', `/users/${rootId}`, { token: root, body: { role: 'viewer' } }))
          .status,
        200,
      );
      // root is a viewer now: its own session is judged by its new role.
      assert.equal(
        (await c.call('DELETE', `/users/${made.body.user.id}`, { token: root })).status,
        403,
      );
      const list = await c.call('GET', '/users', { token: root });
      assert.deepEqual(
        list.body.users.map((u: { username: string; role: string }) => [u.username, u.role]),
        [
          ['ada', 'admin'],
          ['root', 'viewer'],
        ],
      );
      const missing = await c.call('DELETE', '/users/00000000-0000-7000-8000-000000000000', {
        token: await c.loginAs('ada', 'a brand new password'),
      });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error.code, 'ERR_NOT_FOUND');
    });

    await t.test('a disabled user cannot log in and their credentials stop at once', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      const made = await c.call('POST', '/users', {
        token: root,
        body: { username: 'ada', role: 'admin', password: 'ada password long' },
      });
      const adaId = made.body.user.id as string;
      const session = await c.loginAs('ada', 'ada password long');
      const api = (await c.call('POST', '/tokens', { token: session, body: { name: 'ci' } })).body
        .token as string;

      const off = await c.call('PATCH', `/users/${adaId}`, {
        token: root,
        body: { disabled: true },
      });
      assert.equal(off.status, 200, JSON.stringify(off.body));
      assert.equal(off.body.disabledAt, c.clock.ms);
      // Its sessions are gone; its API tokens stay, refused while the account is disabled.
      assert.equal((await c.call('GET', '/me', { token: session })).status, 401);
      const refused = await c.call('GET', '/me', { token: api });
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error.code, 'ERR_ACCOUNT_DISABLED');
      assert.match(refused.body.error.message, /account ada is disabled/);
      // Only a correct password learns that the account is disabled.
      const wrong = await c.call('POST', '/login', {
        body: { username: 'ada', password: 'not her password' },
      });
      assert.equal(wrong.status, 401);
      assert.match(wrong.body.error.message, /wrong username or password/);
      const right = await c.call('POST', '/login', {
        body: { username: 'ada', password: 'ada password long' },
      });
      assert.equal(right.status, 403);
      assert.equal(right.body.error.code, 'ERR_ACCOUNT_DISABLED');

      // root is now the last active admin: neither disabled nor demoted, nor deleted.
      const rootId = (await c.call('GET', '/me', { token: root })).body.id as string;
      for (const body of [{ disabled: true }, { role: 'viewer' }]) {
        const last = await c.call('PATCH', `/users/${rootId}`, { token: root, body });
        assert.equal(last.status, 409, JSON.stringify(body));
        assert.equal(last.body.error.code, 'ERR_LAST_ADMIN');
      }
      assert.equal(
        (await c.call('DELETE', `/users/${rootId}`, { token: root })).body.error.code,
        'ERR_LAST_ADMIN',
      );

      const on = await c.call('PATCH', `/users/${adaId}`, {
        token: root,
        body: { disabled: false },
      });
      assert.equal(on.body.disabledAt, null);
      assert.equal((await c.call('GET', '/me', { token: api })).status, 200, 'the token is back');
      assert.equal((await c.call('GET', '/me', { token: session })).status, 401, 'sessions ended');
      await c.loginAs('ada', 'ada password long');
      const trail = await c.call('GET', '/audit', { token: root });
      assert.ok(
        trail.body.entries.some((e: { after: unknown }) =>
          JSON.stringify(e.after).includes('"disabledAt":'),
        ),
      );
    });

    await t.test("one's own password: current one required, other sessions end", async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      await c.call('POST', '/users', {
        token: root,
        body: { username: 'vera', role: 'viewer', password: 'vera password long' },
      });
      const mine = await c.loginAs('vera', 'vera password long');
      const other = await c.loginAs('vera', 'vera password long');

      const wrong = await c.call('POST', '/me/password', {
        token: mine,
        body: { currentPassword: 'a guess', newPassword: 'a new long password' },
      });
      assert.equal(wrong.status, 403);
      assert.equal(wrong.body.error.code, 'ERR_WRONG_PASSWORD');
      const short = await c.call('POST', '/me/password', {
        token: mine,
        body: { currentPassword: 'vera password long', newPassword: 'short' },
      });
      assert.equal(short.status, 400);
      assert.match(short.body.error.message, /newPassword/);
      const same = await c.call('POST', '/me/password', {
        token: mine,
        body: { currentPassword: 'vera password long', newPassword: 'vera password long' },
      });
      assert.equal(same.status, 400);
      assert.match(same.body.error.message, /newPassword/);

      const changed = await c.call('POST', '/me/password', {
        token: mine,
        body: { currentPassword: 'vera password long', newPassword: 'a new long password' },
      });
      assert.equal(changed.status, 200, JSON.stringify(changed.body));
      assert.deepEqual(changed.body, { sessionsRevoked: 1 });
      assert.equal((await c.call('GET', '/me', { token: mine })).status, 200, 'this one stays');
      assert.equal((await c.call('GET', '/me', { token: other })).status, 401, 'others end');
      const old = await c.call('POST', '/login', {
        body: { username: 'vera', password: 'vera password long' },
      });
      assert.equal(old.status, 401);
      await c.loginAs('vera', 'a new long password');
      const anonymous = await c.call('POST', '/me/password', {
        body: { currentPassword: 'a new long password', newPassword: 'another long one' },
      });
      assert.equal(anonymous.status, 401);

      // Wrong current passwords are throttled as failed logins are.
      let status = 0;
      for (let i = 0; i < 7 && status !== 429; i++) {
        status = (
          await c.call('POST', '/me/password', {
            token: mine,
            body: { currentPassword: `guess ${i}`, newPassword: 'another long one' },
          })
        ).status;
      }
      assert.equal(status, 429);
      const trail = JSON.stringify((await c.call('GET', '/audit', { token: root })).body);
      assert.match(trail, /user\.password/);
      assert.doesNotMatch(trail, /a new long password|scrypt\$/);
    });

    await t.test('bad input is a 400 naming the field, without a stack', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      const cases: { path: string; method?: 'POST' | 'GET'; body?: unknown; names: RegExp }[] = [
        { path: '/users', body: { username: 'a', role: 'admin', rolee: 1 }, names: /"rolee"/ },
        { path: '/users', body: { username: 'a', role: 'root' }, names: /body\.role/ },
        { path: '/users', body: { username: 'a'.repeat(65), role: 'viewer' }, names: /username/ },
        {
          path: '/users',
          body: { username: 'a', role: 'viewer', password: 'short' },
          names: /password/,
        },
        { path: '/tokens', body: { name: 'x', expiresInDays: 0 }, names: /expiresInDays/ },
        { path: '/tokens', body: { name: 'session:x' }, names: /body\.name/ },
        { path: '/audit?limit=501', method: 'GET', names: /limit/ },
        { path: '/audit?colour=red', method: 'GET', names: /"colour"/ },
        { path: '/audit?cursor=bm9wZQ', method: 'GET', names: /cursor/ },
      ];
      for (const k of cases) {
        const res = await c.call(k.method ?? 'POST', k.path, { token: root, body: k.body });
        assert.equal(res.status, 400, `${k.path} ${JSON.stringify(k.body)}`);
        assert.equal(res.body.error.code, 'ERR_VALIDATION');
        assert.match(res.body.error.message, k.names);
        assert.doesNotMatch(JSON.stringify(res.body), /\bat .*\.ts:\d+/);
      }
      const notJson = await c.app.inject({
        method: 'POST',
        url: '/api/v1/admin/users',
        headers: { authorization: `Bearer ${root}`, 'content-type': 'application/json' },
        payload: '{"username": ',
      });
      assert.equal(notJson.statusCode, 400);
      assert.equal(notJson.json().error.code, 'ERR_VALIDATION');
      const noBody = await c.call('POST', '/users', { token: root });
      assert.equal(noBody.status, 400);
      assert.match(noBody.body.error.message, /^body/);
      const empty = await c.call('PATCH', '/users/x', { token: root, body: {} });
      assert.equal(empty.status, 400);
      assert.match(empty.body.error.message, /role, password or disabled/);
      const login = await c.call('POST', '/login', { body: { username: 'root' } });
      assert.equal(login.status, 400);
      assert.match(login.body.error.message, /body\.password/);
    });

    await t.test('the audit trail records every change, pages newest first', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      for (const name of ['a1', 'a2', 'a3']) {
        c.advance(1000);
        await c.call('POST', '/users', {
          token: root,
          body: { username: name, role: 'viewer', password: 'a long enough password' },
        });
      }
      // A refused change leaves no trace: the audit row shares its transaction.
      await c.call('POST', '/users', { token: root, body: { username: 'a1', role: 'viewer' } });
      c.advance(1000);
      await c.call('POST', '/tokens', { token: root, body: { name: 'ci' } });

      const seen: { action: string; actor: string; after: unknown; at: number }[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page = await c.call('GET', `/audit?limit=2${cursor ? `&cursor=${cursor}` : ''}`, {
          token: root,
        });
        assert.equal(page.status, 200);
        seen.push(...page.body.entries);
        cursor = page.body.next;
        pages++;
      } while (cursor !== null);
      assert.equal(pages, 3);
      assert.equal(seen.length, 6);
      assert.deepEqual(
        seen.map((e) => e.action),
        [
          'token.create',
          'user.create',
          'user.create',
          'user.create',
          'session.create',
          'user.create',
        ],
      );
      assert.deepEqual(
        seen.map((e) => e.actor),
        [...Array(5).fill('user:root'), 'system'],
      );
      assert.ok(seen.every((e, i) => i === 0 || e.at <= seen[i - 1]!.at));
      assert.deepEqual((seen[1]!.after as { username: string }).username, 'a3');
      const trail = JSON.stringify(seen);
      assert.doesNotMatch(trail, /password_hash|scrypt\$|a long enough password|bh_/);

      // Filters narrow the trail on the server, and page within what they match.
      const audit = async (query: string) => {
        const res = await c.call('GET', `/audit?${query}`, { token: root });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        return res.body as { entries: typeof seen; next: string | null };
      };
      const byAction = (await audit('action=user.create')).entries.map((e) => e.action);
      assert.deepEqual(byAction, Array(4).fill('user.create'));
      // A prefix takes the actions under it, not every action that starts with its letters.
      assert.equal((await audit('action=user')).entries.length, 4);
      assert.equal((await audit('action=use')).entries.length, 0);
      assert.deepEqual(
        (await audit('actor=system')).entries.map((e) => e.action),
        ['user.create'],
      );
      const first = await audit('action=user.create&actor=user:root&limit=2');
      assert.equal(first.entries.length, 2);
      assert.ok(first.next);
      const rest = await audit(`action=user.create&actor=user:root&limit=2&cursor=${first.next}`);
      assert.equal(rest.entries.length, 1);
      assert.equal(rest.next, null);
      const target = seen.find((e) => e.action === 'token.create') as unknown as {
        targetType: string;
        targetId: string;
      };
      const about = await audit(`targetType=${target.targetType}&targetId=${target.targetId}`);
      assert.deepEqual(
        about.entries.map((e) => e.action),
        ['token.create'],
      );
      const bad = await c.call('GET', '/audit?action=user%25', { token: root });
      assert.equal(bad.status, 400);
      assert.match(bad.body.error.message, /action/);
    });

    await t.test('a fault of the server is a bare 500, logged, never shown', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      await c.database.close();
      const res = await c.call('GET', '/users', { token: root });
      assert.equal(res.status, 500);
      assert.deepEqual(res.body, { error: { code: 'ERR_INTERNAL', message: 'internal error' } });
      assert.match(c.logs(), /"msg":"request failed"/);
    });

    await t.test('tokens and passwords never reach the logs', async (t) => {
      const c = await center(t, await newUrl(t));
      const root = await c.loginAs('root', ADMIN_PASSWORD);
      const made = await c.call('POST', '/tokens', { token: root, body: { name: 'ci' } });
      await c.call('GET', '/me', { token: made.body.token });
      await c.call('POST', '/login', { body: { username: 'root', password: 'a wrong one' } });
      assert.match(c.logs(), /\/api\/v1\/admin\/me/, 'requests are logged');
      for (const secret of [root, made.body.token, ADMIN_PASSWORD, 'a wrong one']) {
        assert.ok(!c.logs().includes(secret), 'a secret was logged');
      }
    });
  });
}
