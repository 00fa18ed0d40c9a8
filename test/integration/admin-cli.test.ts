import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli, startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

// The administrator's commands against a real `bulkhead center serve`, each a real process.

test('admin commands over the API: login, fleet, tokens, rollouts, audit, logout', async (t) => {
  const dir = await tempDir(t);
  const { info } = await startCenterProcess(t, ['--data', join(dir, 'data')]);
  const center = { url: info.url, password: info.initialAdmin!.password };
  const credentials = join(dir, 'config', 'credentials.json');
  const env = { BULKHEAD_CREDENTIALS: credentials, BULKHEAD_CENTER: '', BULKHEAD_TOKEN: '' };
  const cli = (args: string[], input?: string) => runCli(args, { env, input });
  const json = async (args: string[]) => {
    const r = await cli([...args, '--json']);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };

  const anonymous = await cli(['devices', 'list']);
  assert.equal(anonymous.code, 2, 'not logged in is a usage error');
  assert.match(anonymous.stderr, /not logged in.*bulkhead login/);

  const wrong = await cli(
    ['login', '--center', center.url, '--username', 'admin', '--password-stdin'],
    'not the password\n',
  );
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /wrong username or password/);

  const login = await cli(
    ['login', '--center', center.url, '--username', 'Admin', '--password-stdin'],
    `${center.password}\n`,
  );
  assert.equal(login.code, 0, login.stderr);
  assert.match(login.stdout, /Logged in to .* as admin \(admin\)/);
  assert.equal((await stat(credentials)).mode & 0o777, 0o600, 'the session file is private');
  assert.ok(!login.stdout.includes(center.password) && !login.stderr.includes(center.password));

  const me = await json(['whoami']);
  assert.deepEqual([me.username, me.role, me.via], ['admin', 'admin', 'session']);

  const group = await json(['groups', 'create', '--name', 'finance', '--description', 'Floor 3']);
  assert.equal(group.name, 'finance');
  const groups = await json(['groups', 'list']);
  assert.ok(groups.groups.some((g: { id: string }) => g.id === group.id));

  const token = await json(['tokens', 'create', '--group', 'finance', '--uses', '5']);
  assert.equal(token.usesLeft, 5);
  assert.equal(token.groupId, group.id);
  assert.match(token.token, /^\S{20,}$/);
  const tokens = await json(['tokens', 'list']);
  assert.equal(tokens.tokens.length, 1);
  assert.ok(!JSON.stringify(tokens).includes(token.token), 'listing never shows the secret');

  const noGroup = await cli(['tokens', 'create', '--group', 'nowhere']);
  assert.equal(noGroup.code, 1);
  assert.match(noGroup.stderr, /no device group "nowhere"/);

  const devices = await json(['devices', 'list', '--group', 'finance']);
  assert.deepEqual(devices, { devices: [], next: null });
  const human = await cli(['devices', 'list']);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /^NAME\s+GROUP\s+STATE\s+PROFILES \(RUNNING\)\s+LAST CONTACT$/m);

  const rollouts = await json(['rollout', 'status']);
  assert.deepEqual(rollouts.rollouts, []);
  const unknownImage = await cli([
    'rollout',
    'create',
    '--image',
    'nothing',
    '--version',
    '1',
    '--group',
    'finance',
  ]);
  assert.equal(unknownImage.code, 1);
  assert.match(unknownImage.stderr, /no image "nothing"/);

  const kill = await cli(['devices', 'kill', '0190a0a0-0000-7000-8000-000000000000']);
  assert.equal(kill.code, 2, 'kill needs --yes');
  assert.match(kill.stderr, /--yes/);

  const audit = await json(['audit', '--all']);
  const actions = audit.entries.map((e: { action: string }) => e.action);
  assert.ok(
    actions.some((a: string) => /group/.test(a)),
    `the group's creation is audited: ${actions.join(', ')}`,
  );
  // People read the trail by names: the group and the token's group, not their ids.
  const trail = await cli(['audit']);
  assert.equal(trail.code, 0, trail.stderr);
  assert.match(trail.stdout, /^\S+\s+user:admin\s+group\.create\s+group finance$/m);
  assert.match(trail.stdout, /enrolment-token\.create\s+enrolment-token \S+… \(group finance\)$/m);
  assert.doesNotMatch(trail.stdout, /[0-9a-f]{8}-[0-9a-f]{4}-/, 'no whole id in the trail');

  const apiToken = await json(['api-tokens', 'create', '--name', 'ci', '--expires-in-days', '1']);
  const viaToken = await cli(['whoami', '--center', center.url, '--token', apiToken.token]);
  assert.equal(viaToken.code, 0, viaToken.stderr);
  assert.match(viaToken.stdout, /admin \(admin, by token\)/);

  const logout = await cli(['logout']);
  assert.equal(logout.code, 0);
  assert.match(logout.stdout, /Logged out/);
  await assert.rejects(readFile(credentials), /ENOENT/);
  const after = await cli(['whoami']);
  assert.equal(after.code, 2);
});
