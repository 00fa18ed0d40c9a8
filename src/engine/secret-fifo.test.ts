import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { access, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { tempDir } from '../../test/support/fixtures.ts';
import { secretFifo } from './secret-fifo.ts';

const exec = promisify(execFile);

test('a secret FIFO gives its content to a reading process and leaves nothing on disk', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'key.fifo');
  const fifo = await secretFifo(path, 'c2VjcmV0IGtleQ==');
  const info = await stat(path);
  assert.ok(info.isFIFO(), 'a named pipe, not a file');
  assert.equal(info.mode & 0o777, 0o600);
  assert.equal(info.size, 0);
  const { stdout } = await exec('cat', [path]);
  assert.equal(stdout, 'c2VjcmV0IGtleQ==');
  await fifo.close();
  await assert.rejects(access(path), /ENOENT/);
});

test('closing a secret FIFO nobody read releases the writer and discards the secret', async (t) => {
  const dir = await tempDir(t);
  const fifo = await secretFifo(join(dir, 'key.fifo'), 'never read');
  await fifo.close();
  await assert.rejects(access(join(dir, 'key.fifo')), /ENOENT/);
});
