import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import { ErrorCodes } from '../../src/protocol/index.ts';
import { HttpStore, pullImage } from '../../src/image/index.ts';
import { publishPair, sha256Of, tempDir } from '../support/fixtures.ts';
import { startStaticServer } from '../support/static-server.ts';

async function setup(t: TestContext) {
  const published = await publishPair(await tempDir(t));
  const server = await startStaticServer(published.store.location);
  t.after(() => server.close());
  return { ...published, server };
}

const isChunk = (path: string) => path.startsWith('/chunks/');
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

test('pull over HTTP reuses connections and counts exactly the bytes received', async (t) => {
  const s = await setup(t);
  const r = await pullImage({
    store: new HttpStore(s.server.url),
    name: 'os',
    version: '2',
    trusted: s.keys.trusted,
    out: join(s.dir, 'out.raw'),
    seeds: [s.v1],
    parallel: 4,
  });
  assert.equal(await sha256Of(join(s.dir, 'out.raw')), await sha256Of(s.v2));
  assert.equal(r.downloadedBytes, s.server.bytesSent());
  assert.ok(r.packFrames > 0, 'pack frames were fetched with range requests');
  assert.ok(s.server.requests.some((q) => q.includes('bytes=')));
  assert.ok(
    s.server.connections() <= 5,
    `${s.server.connections()} connections for ${s.server.requests.length} requests`,
  );
});

test('a connection dropped mid-pull: the pull fails cleanly and the next one resumes without downloading again', async (t) => {
  const s = await setup(t);
  const out = join(s.dir, 'out.raw');
  let served = 0;
  s.server.fault = (path) =>
    isChunk(path) && ++served > 300 ? { kind: 'drop', afterBytes: 100 } : { kind: 'none' };
  const first = pullImage({
    store: new HttpStore(s.server.url),
    name: 'os',
    version: '1',
    trusted: s.keys.trusted,
    out,
    attempts: 1,
    parallel: 2,
  });
  await assert.rejects(
    first,
    (err: { code?: string; retryable?: boolean }) =>
      err.code === ErrorCodes.STORE_UNAVAILABLE && err.retryable === true,
  );
  assert.equal(await exists(out), false, 'nothing where the final file belongs');
  assert.equal(await exists(`${out}.partial`), true, 'verified chunks are kept for the retry');
  const firstBytes = s.server.bytesSent();

  s.server.fault = () => ({ kind: 'none' });
  s.server.bytesSent = (
    (base) => () =>
      base()
  )(s.server.bytesSent);
  const before = s.server.bytesSent();
  const second = await pullImage({
    store: new HttpStore(s.server.url),
    name: 'os',
    version: '1',
    trusted: s.keys.trusted,
    out,
  });
  assert.equal(second.resumed, true);
  assert.equal(await sha256Of(out), await sha256Of(s.v1));
  const full = await pullImage({
    store: new HttpStore(s.server.url),
    name: 'os',
    version: '1',
    trusted: s.keys.trusted,
    out: join(s.dir, 'full.raw'),
  });
  assert.ok(
    second.downloadedBytes < full.downloadedBytes * 0.85,
    `resumed pull fetched ${second.downloadedBytes} of ${full.downloadedBytes} (${full.chunksDownloaded} chunks)`,
  );
  // Together the two runs fetched about one image's worth, not one and a bit more than the drop.
  assert.ok(
    firstBytes + second.downloadedBytes < full.downloadedBytes + 64 * 1024,
    `${firstBytes} + ${second.downloadedBytes} vs ${full.downloadedBytes}`,
  );
  assert.equal(s.server.bytesSent() - before, second.downloadedBytes + full.downloadedBytes);
  assert.deepEqual(
    (await readdir(s.dir)).filter((f) => f.includes('partial')),
    [],
  );
});

test('transient faults are retried within one pull', async (t) => {
  const s = await setup(t);
  const failedOnce = new Set<string>();
  s.server.fault = (path) => {
    if (!isChunk(path) || failedOnce.has(path) || failedOnce.size >= 10) return { kind: 'none' };
    failedOnce.add(path);
    return failedOnce.size % 2 ? { kind: 'status', status: 503 } : { kind: 'drop', afterBytes: 10 };
  };
  const warnings: string[] = [];
  const r = await pullImage({
    store: new HttpStore(s.server.url),
    name: 'os',
    version: '1',
    trusted: s.keys.trusted,
    out: join(s.dir, 'out.raw'),
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(r.sha256, await sha256Of(s.v1));
  assert.equal(failedOnce.size, 10);
  assert.ok(warnings.length >= 10 && warnings.every((w) => w.includes('retrying')));
});

test('a mirror that lies is caught: tampered chunk, index, manifest; a bad pack only costs bandwidth', async (t) => {
  const s = await setup(t);
  let n = 0;
  let out = '';
  // Each case pulls to a new path, so no case resumes another's partial file.
  const pull = (extra: object = {}) => {
    out = join(s.dir, `out-${++n}.raw`);
    return pullImage({
      store: new HttpStore(s.server.url),
      name: 'os',
      version: '2',
      trusted: s.keys.trusted,
      out,
      attempts: 1,
      ...extra,
    });
  };

  await t.test('tampered chunk', async () => {
    let victim = '';
    s.server.fault = (path) => {
      if (!isChunk(path) || (victim && path !== victim)) return { kind: 'none' };
      victim = path;
      return { kind: 'replace', body: zstdCompressSync(Buffer.alloc(4096, 1)) };
    };
    await assert.rejects(
      pull(),
      (err: { code?: string; message: string }) =>
        err.code === ErrorCodes.CHUNK_CORRUPT && err.message.includes('does not match its digest'),
    );
    assert.equal(await exists(out), false);
  });
  await t.test('tampered index', async () => {
    s.server.fault = (path) =>
      path.startsWith('/indexes/')
        ? { kind: 'replace', body: zstdCompressSync(Buffer.from('BHIX\x01\x00\x00')) }
        : { kind: 'none' };
    await assert.rejects(pull(), (err: { code?: string }) => err.code === ErrorCodes.INDEX_CORRUPT);
    assert.equal(await exists(out), false);
  });
  await t.test('an old manifest replayed as the new version', async () => {
    const { readFile } = await import('node:fs/promises');
    const old = await readFile(join(s.store.location, 'manifests/os/1.json'));
    s.server.fault = (path) =>
      path === '/manifests/os/2.json' ? { kind: 'replace', body: old } : { kind: 'none' };
    await assert.rejects(
      pull(),
      (err: { code?: string }) => err.code === ErrorCodes.MANIFEST_MISMATCH,
    );
  });
  await t.test('damaged pack frames fall back to single chunks', async () => {
    s.server.fault = (path) =>
      path.endsWith('.pack') ? { kind: 'replace', body: Buffer.alloc(64, 9) } : { kind: 'none' };
    const warnings: string[] = [];
    const r = await pull({ seeds: [s.v1], onWarning: (m: string) => warnings.push(m) });
    assert.equal(r.sha256, await sha256Of(s.v2));
    assert.ok(r.chunksDownloaded >= s.r2.newChunks);
    assert.equal(r.packFrames, 0);
    assert.ok(
      warnings.some((w) => w.includes('one by one')),
      warnings.join('\n'),
    );
  });
  await t.test(
    'a pack index whose claims disagree with the signed index is not believed',
    async () => {
      const { readFile } = await import('node:fs/promises');
      const real = JSON.parse(
        await readFile(join(s.store.location, 'packs/os/2/from-1.json'), 'utf8'),
      );
      // Claims a frame inflates to a gigabyte: believing it would let a mirror make us allocate it.
      real.frames[0].rawBytes = 1 << 30;
      s.server.fault = (path) =>
        path.endsWith('from-1.json')
          ? { kind: 'replace', body: Buffer.from(JSON.stringify(real)) }
          : { kind: 'none' };
      const warnings: string[] = [];
      const r = await pull({ seeds: [s.v1], onWarning: (m: string) => warnings.push(m) });
      assert.equal(r.sha256, await sha256Of(s.v2));
      assert.ok(
        warnings.some((w) => w.includes('does not match the image')),
        warnings.join('\n'),
      );
    },
  );
});
