import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli, startCenterProcess, type CliRun } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

// Administrators and one's own password from the CLI, as real processes against a real
// `bulkhead center serve`.

function assertFails(r: CliRun, code: number, message: RegExp): void {
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr, message);
}

test('users by name: create, set-role, disable, enable, delete; passwd', async (t) => {
  const dir = await tempDir(t);
  const { info } = await startCenterProcess(t, ['--data', join(dir, 'data')]);
  /** A person with a credentials file of their own. */
  const as = (who: string) => {
    const env = { BULKHEAD_CREDENTIALS: join(dir, `${who}.json`), BULKHEAD_CENTER: '' };
    return (args: string[], options: { input?: string; token?: string } = {}) =>
      runCli(args, {
        env: { ...env, BULKHEAD_TOKEN: options.token ?? '' },
        ...(options.input === undefined ? {} : { input: options.input }),
      });
  };
  const admin = as('admin');
  const login = (run: ReturnType<typeof as>, username: string, password: string) =>
    run(['login', '--center', info.url, '--username', username, '--password-stdin'], {
      input: `${password}\n`,
    });
  assert.equal((await login(admin, 'admin', info.initialAdmin!.password)).code, 0);

  assertFails(await admin(['users', 'create', '--role', 'viewer']), 2, /give the username/);
  assertFails(await admin(['users', 'create', 'alice']), 2, /--role is required/);
  assertFails(
    await admin(['users', 'create', 'alice', '--role', 'root']),
    2,
    /--role must be one of admin, operator, viewer, not "root"/,
  );
  const created = await admin(['users', 'create', 'alice', '--role', 'operator']);
  assert.equal(created.code, 0, created.stderr);
  const password = created.stdout.trim();
  assert.match(password, /^[A-Za-z0-9_-]{22}$/, 'the one-time password, alone on stdout');
  assert.match(created.stderr, /Created alice \(operator\).*not shown again.*bulkhead passwd/);
  const list = await admin(['users', 'list']);
  assert.match(list.stdout, /^USERNAME\s+ROLE\s+STATE\s+LAST LOGIN$/m);
  assert.match(list.stdout, /^alice\s+operator\s+active\s+-$/m);
  assert.ok(!list.stdout.includes(password));

  assertFails(await admin(['users', 'set-role', 'alice']), 2, /ROLE is required/);
  assertFails(await admin(['users', 'set-role', 'bob', 'viewer']), 1, /no user bob/);
  const promoted = await admin(['users', 'set-role', 'alice', 'admin']);
  assert.match(promoted.stdout, /^alice is now admin \(was operator\)\.$/m);

  // Alice logs in, makes an API token for a script, then is disabled.
  const alice = as('alice');
  assert.equal((await login(alice, 'alice', password)).code, 0);
  const token = await alice(['api-tokens', 'create', '--name', 'backup']);
  assert.equal(token.code, 0, token.stderr);
  const script = { token: token.stdout.trim() };
  const viaToken = ['whoami', '--center', info.url];
  assert.equal((await alice(viaToken, script)).code, 0);

  const disabled = await admin(['users', 'disable', 'alice']);
  assert.match(disabled.stdout, /^Disabled alice: their sessions ended/m);
  assert.match((await admin(['users', 'list'])).stdout, /^alice\s+admin\s+disabled since \d{4}-/m);
  assertFails(await alice(['whoami']), 1, /unknown, revoked or expired/);
  assertFails(await alice(viaToken, script), 1, /the account alice is disabled/);
  assertFails(await login(alice, 'alice', 'not her password'), 1, /wrong username or password/);
  assertFails(await login(alice, 'alice', password), 1, /the account alice is disabled/);

  // With alice disabled, admin is the last active admin.
  assertFails(await admin(['users', 'disable', 'admin']), 1, /last active administrator/);
  assertFails(await admin(['users', 'set-role', 'admin', 'viewer']), 1, /last active/);

  const enabled = await admin(['users', 'enable', 'alice']);
  assert.match(enabled.stdout, /^Enabled alice: they can log in again\.$/m);
  assert.equal((await alice(viaToken, script)).code, 0, 'the API token works again');
  assert.equal((await login(alice, 'alice', password)).code, 0);

  // passwd: the current password, then the new one; the other session of alice ends.
  const laptop = as('alice-laptop');
  assert.equal((await login(laptop, 'alice', password)).code, 0);
  assertFails(
    await alice(['passwd', '--password-stdin'], { input: 'a guess\nnew password, long\n' }),
    1,
    /the current password is wrong/,
  );
  assertFails(
    await alice(['passwd', '--password-stdin'], { input: `${password}\n` }),
    2,
    /two lines/,
  );
  assertFails(
    await alice(['passwd', '--password-stdin'], { input: `${password}\nshort\n` }),
    2,
    /at least 12|12 to 256/,
  );
  const changed = await alice(['passwd', '--password-stdin'], {
    input: `${password}\nnew password, long\n`,
  });
  assert.equal(changed.code, 0, changed.stderr);
  assert.match(
    changed.stdout,
    /^Changed the password of alice; 1 other session ended \(this one stays\)/,
  );
  assert.equal((await alice(['whoami'])).code, 0, 'this session stays');
  assertFails(await laptop(['whoami']), 1, /unknown, revoked or expired/);
  assertFails(await login(laptop, 'alice', password), 1, /wrong username or password/);
  assert.equal((await login(laptop, 'alice', 'new password, long')).code, 0);

  const deleted = await admin(['users', 'delete', 'alice']);
  assert.match(deleted.stdout, /^Deleted alice and their sessions and API tokens\.$/m);
  assertFails(await alice(viaToken, script), 1, /unknown, revoked or expired/);
  assertFails(await admin(['users', 'delete', 'alice']), 1, /no user alice/);
  const json = JSON.parse((await admin(['users', 'list', '--json'])).stdout);
  assert.deepEqual(
    json.users.map((u: { username: string; disabledAt: unknown }) => [u.username, u.disabledAt]),
    [['admin', null]],
  );
});
