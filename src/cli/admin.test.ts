import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { runMain as run } from '../../test/support/cli.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { openDatabase, verifyPassword } from '../center/index.ts';

test('center admin create and reset work on the database directly', async (t) => {
  const dir = await tempDir(t);
  const admin = (verb: string, ...more: string[]) =>
    run(['center', 'admin', verb, '--data', dir, ...more]);
  const created = await admin('create', '--username', 'bob', '--role', 'operator', '--json');
  assert.equal(created.code, 0, created.err);
  const first = JSON.parse(created.out) as { password: string; role: string };
  assert.equal(first.role, 'operator');

  const again = await admin('create', '--username', 'bob', '--role', 'viewer');
  assert.equal(again.code, 1);
  assert.match(again.err, /already exists/);
  const badRole = await admin('create', '--username', 'x', '--role', 'root');
  assert.equal(badRole.code, 2);

  const reset = await admin('reset', '--username', 'bob');
  assert.equal(reset.code, 0, reset.err);
  const password = /^ {2}(\S+)$/m.exec(reset.out)?.[1];
  assert.ok(password && password !== first.password);
  const missing = await admin('reset', '--username', 'nobody');
  assert.equal(missing.code, 1);
  assert.match(missing.err, /no administrator "nobody"/);

  const database = await openDatabase({ url: `sqlite:${join(dir, 'center.db')}` });
  t.after(() => database.close());
  const row = await database.db
    .selectFrom('admin_users')
    .selectAll()
    .where('username', '=', 'bob')
    .executeTakeFirstOrThrow();
  assert.equal(row.role, 'operator');
  assert.ok(await verifyPassword(password, row.password_hash));
  assert.ok(!(await verifyPassword(first.password, row.password_hash)));
  const trail = await database.db.selectFrom('audit_log').select('action').orderBy('at').execute();
  assert.deepEqual(
    trail.map((r) => r.action),
    ['user.create', 'user.update'],
  );
});
