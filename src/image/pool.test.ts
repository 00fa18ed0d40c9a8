import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { zstdDecompressSync } from 'node:zlib';
import { WorkerPool } from './pool.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('a pack frame also stores its chosen chunks singly, each only under its own digest', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-pool-'));
  const pool = new WorkerPool(1);
  t.after(async () => {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  });
  const parts = [randomBytes(5000), Buffer.alloc(7000, 3), randomBytes(4096)];
  const image = join(dir, 'image');
  await writeFile(image, Buffer.concat(parts));
  const spans = new Float64Array([0, 5000, 5000, 7000, 12000, 4096]);
  const files = [join(dir, 'a'), join(dir, 'c')];
  const r = await pool.run({
    op: 'compress',
    path: image,
    spans,
    level: 9,
    joined: true,
    singles: Uint8Array.from([1, 0, 1]),
    singleLevel: 3,
    files,
    // The third chunk's expected digest is wrong, as if the image changed after the scan.
    fileDigests: [sha(parts[0]!), sha(Buffer.from('something else'))],
  });
  // The frame is returned; singles with a file are written, not returned.
  assert.equal(r.compressed.length, 1);
  assert.deepEqual(zstdDecompressSync(r.compressed[0]!), Buffer.concat(parts));
  assert.deepEqual(
    [0, 1, 2].map((k) => Buffer.from(r.digests.subarray(k * 32, k * 32 + 32)).toString('hex')),
    parts.map(sha),
  );
  assert.deepEqual(zstdDecompressSync(await readFile(files[0]!)), parts[0]);
  assert.equal(r.storedBytes, (await readFile(files[0]!)).length);
  // A chunk whose bytes are not what its file is named for is not written.
  assert.equal(existsSync(files[1]!), false);
});

test('a failed single write removes the partial file and fails with its errno', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-pool-'));
  const pool = new WorkerPool(1);
  t.after(async () => {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  });
  const data = randomBytes(8192);
  const image = join(dir, 'image');
  await writeFile(image, data);
  await assert.rejects(
    pool.run({
      op: 'compress',
      path: image,
      spans: new Float64Array([0, 8192]),
      level: 3,
      joined: false,
      files: [join(dir, 'no-such-folder', 'x')],
      fileDigests: [sha(data)],
    }),
    (err: NodeJS.ErrnoException) => err.code === 'ENOENT',
  );
});
