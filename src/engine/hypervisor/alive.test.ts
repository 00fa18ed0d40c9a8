import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { waitFor } from '../../../test/support/wait.ts';
import { isAlive } from './alive.ts';

test('isAlive: a running process is alive; an exited child nobody reaped (a zombie) is not', async (t) => {
  // sh starts `true` in the background and becomes `sleep`, which never reaps it: the
  // background child stays a zombie for as long as sleep runs.
  const parent = spawn('/bin/sh', ['-c', 'true & exec sleep 60'], { stdio: 'ignore' });
  t.after(() => parent.kill('SIGKILL'));
  assert.ok(isAlive(parent.pid!), 'the sleeping parent runs');
  const zombie = await waitFor('the background child to become a zombie', async () => {
    const children = await readFile(
      `/proc/${parent.pid}/task/${parent.pid}/children`,
      'utf8',
    ).catch(() => '');
    const pid = Number(children.trim().split(/\s+/)[0]);
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    return stat.includes(') Z ') ? pid : undefined;
  });
  assert.equal(isAlive(zombie), false, 'a zombie is not alive');
  parent.kill('SIGKILL');
  await new Promise((r) => parent.once('exit', r));
  assert.equal(isAlive(parent.pid!), false, 'a reaped process is not alive');
});
