// The `bulkhead` CLI as a user meets it: a real process, real ext4 images, exit codes, stdout
// and stderr. Everything here goes through bin/bulkhead.js; nothing calls src/ directly.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// `bulkhead ARGS…` as a user runs it, with stdout and stderr captured (so no TTY).
import { runCli as bulkhead, type CliRun as Run } from '../support/cli.ts';
import { ext4Image, osFiles, sha256Of, tempDir } from '../support/fixtures.ts';

const HEX64 = /^[0-9a-f]{64}$/;

function describe(r: Run): string {
  return `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

function expectExit(r: Run, code: number): void {
  assert.equal(r.code, code, `expected exit ${code}, got ${describe(r)}`);
}

/** The whole of stdout as JSON: with --json nothing else may be printed there. */
function json(r: Run): Record<string, unknown> {
  try {
    return JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    assert.fail(`stdout is not one JSON document: ${describe(r)}`);
  }
}

/** Runs a command with --json that must succeed; returns its JSON. */
async function ok(args: string[]): Promise<Record<string, unknown>> {
  const r = await bulkhead([...args, '--json']);
  expectExit(r, 0);
  return json(r);
}

/** A failure as the contract wants it: the exit code, one line on stderr, no stack trace. */
function expectFailure(r: Run, code: number): string {
  expectExit(r, code);
  assert.doesNotMatch(r.stderr, /^\s*at\s/m, `a stack trace leaked: ${describe(r)}`);
  assert.doesNotMatch(r.stderr, /internal error/, `a bug, not a user's mistake: ${describe(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `expected one line on stderr: ${describe(r)}`);
  return lines[0]!;
}

/** The error code a --json failure printed on stdout as `{ "error": { "code": … } }`. */
function errorCode(r: Run): string {
  const doc = json(r);
  const error = doc.error as Record<string, unknown> | undefined;
  assert.ok(
    error && typeof error === 'object',
    `no "error" object in --json output: ${describe(r)}`,
  );
  assert.equal(typeof error.code, 'string', describe(r));
  assert.equal(typeof error.message, 'string', describe(r));
  return error.code as string;
}

function num(doc: Record<string, unknown>, field: string): number {
  const v = doc[field];
  assert.equal(typeof v, 'number', `"${field}" should be a number in ${JSON.stringify(doc)}`);
  assert.ok(Number.isFinite(v) && (v as number) >= 0, `"${field}" is ${String(v)}`);
  return v as number;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

// One store holding two versions of an image, built once through the CLI and shared by the
// tests that only read it. Tests that write make their own directories.
interface World {
  dir: string;
  store: string;
  privateKey: string;
  publicKey: string;
  v1: string;
  v2: string;
  import1: Record<string, unknown>;
  import2: Record<string, unknown>;
}

const sharedRoot = mkdtemp(join(tmpdir(), 'bulkhead-cli-'));
after(async () => rm(await sharedRoot, { recursive: true, force: true }));

let worldPromise: Promise<World> | undefined;
function world(): Promise<World> {
  worldPromise ??= (async () => {
    const dir = await sharedRoot;
    const keys = join(dir, 'keys');
    await ok(['keys', 'generate', '--out', keys]);
    const [v1, v2] = await Promise.all([
      ext4Image(dir, 'os-v1', osFiles(1)),
      ext4Image(dir, 'os-v2', osFiles(2)),
    ]);
    const store = join(dir, 'store');
    const privateKey = join(keys, 'publisher.key');
    const imp = (file: string, version: string) =>
      ok([
        'image',
        'import',
        file,
        '--store',
        store,
        '--name',
        'os',
        '--version',
        version,
        '--key',
        privateKey,
      ]);
    const import1 = await imp(v1, '1');
    const import2 = await imp(v2, '2');
    return {
      dir,
      store,
      privateKey,
      publicKey: join(keys, 'publisher.pub'),
      v1,
      v2,
      import1,
      import2,
    };
  })();
  return worldPromise;
}

// ---------------------------------------------------------------------------------------------
// Help and usage

test('bulkhead --help exits 0 and prints the usage and every command', async () => {
  const r = await bulkhead(['--help']);
  expectExit(r, 0);
  assert.match(r.stdout, /Usage: bulkhead <command>/);
  for (const c of ['keys generate', 'image import', 'image pull', 'image diff', 'demo'])
    assert.ok(r.stdout.includes(c), `--help does not mention ${c}`);
  assert.equal(r.stderr, '');
});

test('bulkhead image pull --help exits 0 and prints the command usage', async () => {
  const r = await bulkhead(['image', 'pull', '--help']);
  expectExit(r, 0);
  assert.match(r.stdout, /Usage: bulkhead image pull/);
  for (const o of ['--from', '--image', '--trust', '--out', '--seed'])
    assert.ok(r.stdout.includes(o), `image pull --help does not mention ${o}`);
  assert.equal(r.stderr, '');
});

test('bulkhead with no arguments exits 2', async () => {
  const r = await bulkhead([]);
  expectExit(r, 2);
  assert.match(r.stdout + r.stderr, /Usage: bulkhead/);
});

test('an unknown command exits 2 with one line on stderr and no stack trace', async () => {
  const r = await bulkhead(['frobnicate']);
  const line = expectFailure(r, 2);
  assert.match(line, /frobnicate/);
  assert.equal(r.stdout, '');
});

test('an unknown option exits 2 with one line on stderr and no stack trace', async () => {
  const r = await bulkhead(['image', 'list', '--store', '/nonexistent', '--frobnicate']);
  const line = expectFailure(r, 2);
  assert.match(line, /--frobnicate/);
  assert.equal(r.stdout, '');
});

test('every group lists its commands on --help (exit 0), and without a command (exit 2)', async () => {
  for (const [group, members] of [
    ['engine', ['engine enroll', 'engine run', 'engine status', 'engine accept']],
    ['image', ['image import', 'image pull', 'image push', 'image diff']],
    ['center admin', ['center admin create', 'center admin reset']],
  ] as const) {
    const help = await bulkhead([...group.split(' '), '--help']);
    expectExit(help, 0);
    assert.match(help.stdout, new RegExp(`^Usage: bulkhead ${group} <command>`));
    for (const m of members) assert.ok(help.stdout.includes(m), `${group} --help lacks ${m}`);
    assert.equal(help.stderr, '');
    const bare = await bulkhead(group.split(' '));
    expectExit(bare, 2);
    assert.equal(bare.stdout, '');
    assert.match(bare.stderr, new RegExp(`Usage: bulkhead ${group} <command>`));
  }
});

test('a misspelt command or flag exits 2 with one line suggesting the nearest one', async () => {
  const command = expectFailure(await bulkhead(['rollout', 'statu']), 2);
  assert.match(command, /^bulkhead rollout: unknown command 'statu' \(did you mean status\?\)/);
  const group = expectFailure(await bulkhead(['imag', 'list']), 2);
  assert.match(group, /unknown command 'imag' \(did you mean image\?\)/);
  const flag = expectFailure(await bulkhead(['devices', 'list', '--stat', 'active']), 2);
  assert.match(flag, /^bulkhead devices list: unknown option '--stat' \(did you mean --state\?\)/);
  const missing = expectFailure(await bulkhead(['image', 'list', '--store']), 2);
  assert.match(missing, /--store <value>' argument missing/);
});

test("a command's own --version is its flag, not the program's version", async () => {
  const r = await bulkhead(['--version']);
  expectExit(r, 0);
  assert.equal(r.stdout.trim(), 'bulkhead 0.1.0');
  // rollout create takes --version VERSION: the command runs (and finds no session).
  const create = await bulkhead(
    ['rollout', 'create', '--image', 'os', '--version', '2', '--group', 'g'],
    {
      env: {
        BULKHEAD_CREDENTIALS: '/nonexistent/credentials.json',
        BULKHEAD_CENTER: '',
        BULKHEAD_TOKEN: '',
      },
    },
  );
  assert.match(expectFailure(create, 2), /not logged in/);
  assert.doesNotMatch(create.stdout, /0\.1\.0/);
});

// ---------------------------------------------------------------------------------------------
// keys generate

test('keys generate --out DIR writes a 0600 private key and a public key', async (t) => {
  const dir = join(await tempDir(t), 'keys');
  const r = await bulkhead(['keys', 'generate', '--out', dir]);
  expectExit(r, 0);
  const key = await stat(join(dir, 'publisher.key'));
  assert.equal(key.mode & 0o777, 0o600, `publisher.key mode is ${(key.mode & 0o777).toString(8)}`);
  assert.ok(key.size > 0);
  const pub = await readFile(join(dir, 'publisher.pub'), 'utf8');
  assert.match(pub, /-----BEGIN PUBLIC KEY-----/);
  assert.match(await readFile(join(dir, 'publisher.key'), 'utf8'), /-----BEGIN PRIVATE KEY-----/);
});

test('keys generate --json prints privateKey, publicKey and keyid', async (t) => {
  const dir = join(await tempDir(t), 'keys');
  const doc = await ok(['keys', 'generate', '--out', dir]);
  assert.equal(doc.privateKey, join(dir, 'publisher.key'));
  assert.equal(doc.publicKey, join(dir, 'publisher.pub'));
  assert.match(String(doc.keyid), HEX64);
});

test('keys generate refuses to overwrite an existing key (exit 1, ERR_KEY_EXISTS)', async (t) => {
  const dir = join(await tempDir(t), 'keys');
  expectExit(await bulkhead(['keys', 'generate', '--out', dir]), 0);
  const before = await readFile(join(dir, 'publisher.key'));
  const beforePub = await readFile(join(dir, 'publisher.pub'));

  const again = await bulkhead(['keys', 'generate', '--out', dir, '--json']);
  expectFailure(again, 1);
  assert.equal(errorCode(again), 'ERR_KEY_EXISTS');
  assert.deepEqual(await readFile(join(dir, 'publisher.key')), before, 'the private key changed');
  assert.deepEqual(await readFile(join(dir, 'publisher.pub')), beforePub, 'the public key changed');

  const plain = await bulkhead(['keys', 'generate', '--out', dir]);
  expectFailure(plain, 1);
  assert.deepEqual(await readFile(join(dir, 'publisher.key')), before, 'the private key changed');
});

// ---------------------------------------------------------------------------------------------
// image import

test('image import --json prints the documented fields', async () => {
  const w = await world();
  const d = w.import1;
  assert.match(String(d.manifest), HEX64);
  assert.equal(d.name, 'os');
  assert.equal(d.version, '1');
  assert.equal(num(d, 'size'), (await stat(w.v1)).size);
  assert.ok(num(d, 'chunks') > 0);
  num(d, 'zeroBytes');
  assert.equal(num(d, 'newChunks'), num(d, 'uniqueChunks'), 'a first import is all new');
  assert.ok(num(d, 'storedBytes') > 0);
  num(d, 'seconds');
  assert.equal(d.sha256, await sha256Of(w.v1));
});

test('importing v2 stores fewer new chunks than it has and builds a pack from v1', async () => {
  const w = await world();
  const d = w.import2;
  assert.equal(d.version, '2');
  assert.match(String(d.manifest), HEX64);
  assert.notEqual(d.manifest, w.import1.manifest);
  const chunks = num(d, 'chunks');
  const newChunks = num(d, 'newChunks');
  assert.ok(newChunks > 0, 'v2 changed files, so some chunks are new');
  assert.ok(newChunks < chunks, `newChunks ${newChunks} should be fewer than chunks ${chunks}`);
  const pack = d.pack as Record<string, unknown> | null;
  assert.ok(pack && typeof pack === 'object', `no pack in ${JSON.stringify(d)}`);
  assert.equal(pack.from, '1');
  assert.ok(num(pack, 'chunks') > 0);
  assert.ok(num(d, 'storedBytes') < num(w.import1, 'storedBytes'));
});

test('image import --parent picks the version a pack leads from; --no-parent builds none', async (t) => {
  const w = await world();
  const store = join(await tempDir(t), 'store');
  const imp = (file: string, version: string, ...more: string[]) =>
    ok([
      ...['image', 'import', file, '--store', store, '--name', 'os', '--version', version],
      ...['--key', w.privateKey, ...more],
    ]);
  await imp(w.v1, '1');
  const orphan = await imp(w.v2, '2', '--no-parent');
  assert.equal(orphan.parent, null);
  assert.equal(orphan.pack, null);
  const chosen = await imp(w.v2, '3', '--parent', '1');
  assert.equal(chosen.parent, '1', 'not the newest version, 2');
  assert.equal((chosen.pack as Record<string, unknown> | null)?.from, '1');
});

test('importing an existing version again fails with exit 1 and ERR_IMAGE_EXISTS', async () => {
  const w = await world();
  const manifestPath = join(w.store, 'manifests', 'os', '1.json');
  const before = await readFile(manifestPath);
  const args = ['image', 'import', w.v2, '--store', w.store, '--name', 'os', '--version', '1'];
  const r = await bulkhead([...args, '--key', w.privateKey, '--json']);
  expectFailure(r, 1);
  assert.equal(errorCode(r), 'ERR_IMAGE_EXISTS');
  assert.deepEqual(await readFile(manifestPath), before, 'the published manifest changed');
});

// ---------------------------------------------------------------------------------------------
// image pull

test('image pull with a seed rebuilds v2 exactly and downloads far less than without', async (t) => {
  const w = await world();
  const dir = await tempDir(t);
  const pull = (out: string, seed: string[]) =>
    ok([
      'image',
      'pull',
      '--from',
      w.store,
      '--image',
      'os@2',
      '--trust',
      w.publicKey,
      '--out',
      out,
      ...seed,
    ]);
  const seeded = await pull(join(dir, 'seeded.raw'), ['--seed', w.v1]);
  for (const f of ['downloadedBytes', 'reusedBytes', 'chunksDownloaded', 'seconds']) num(seeded, f);
  const want = await sha256Of(w.v2);
  assert.equal(seeded.sha256, want);
  assert.equal(seeded.sha256, w.import2.sha256);
  assert.equal(await sha256Of(join(dir, 'seeded.raw')), want);
  assert.ok(num(seeded, 'reusedBytes') > 0, 'nothing was taken from the seed');

  const cold = await pull(join(dir, 'cold.raw'), []);
  assert.equal(await sha256Of(join(dir, 'cold.raw')), want);
  const withSeed = num(seeded, 'downloadedBytes');
  const without = num(cold, 'downloadedBytes');
  assert.ok(withSeed > 0);
  assert.ok(
    withSeed * 4 < without,
    `with a seed ${withSeed} bytes were downloaded, without one ${without}`,
  );
  assert.ok(num(seeded, 'chunksDownloaded') < num(cold, 'chunksDownloaded'));
  // Nothing but the image is left next to it: no partial file, no journal.
  assert.deepEqual((await readdir(dir)).sort(), ['cold.raw', 'seeded.raw']);
});

// ---------------------------------------------------------------------------------------------
// list, inspect, verify, diff

test('image list --json lists both versions with parent and pack', async () => {
  const w = await world();
  const doc = await ok(['image', 'list', '--store', w.store]);
  const images = doc.images as Record<string, unknown>[];
  assert.ok(Array.isArray(images), JSON.stringify(doc));
  assert.deepEqual(
    images.map((i) => `${String(i.name)}@${String(i.version)}`),
    ['os@1', 'os@2'],
  );
  const [a, b] = images as [Record<string, unknown>, Record<string, unknown>];
  assert.equal(a.manifest, w.import1.manifest);
  assert.equal(b.manifest, w.import2.manifest);
  assert.equal(a.parent, null);
  assert.equal(b.parent, '1');
  assert.deepEqual(b.packs, ['1']);
});

test('image inspect --trust --json reports a verified manifest', async () => {
  const w = await world();
  const doc = await ok(['image', 'inspect', '--store', w.store, 'os@2', '--trust', w.publicKey]);
  assert.equal(doc.verified, true);
  assert.equal(doc.id, w.import2.manifest);
  const body = doc.body as Record<string, unknown>;
  assert.equal(body.name, 'os');
  assert.equal(body.version, '2');
  assert.equal(body.sha256, w.import2.sha256);
  assert.ok(Array.isArray(doc.signers) && doc.signers.length === 1);
});

test('image verify exits 0 for an intact image', async () => {
  const w = await world();
  const r = await bulkhead(['image', 'verify', '--store', w.store, 'os@2', '--trust', w.publicKey]);
  expectExit(r, 0);
  assert.match(r.stdout, /OK/);
  const doc = await ok(['image', 'verify', '--store', w.store, 'os@2', '--trust', w.publicKey]);
  assert.equal(doc.ok, true);
  assert.deepEqual(doc.missing, []);
  assert.deepEqual(doc.corrupt, []);
});

test('image diff --json: v1→v2 downloads something, and less than v2 holds', async () => {
  const w = await world();
  const doc = await ok(['image', 'diff', '--store', w.store, 'os@1', 'os@2']);
  const download = num(doc, 'downloadBytes');
  assert.ok(download > 0);
  const dataBytes = num(w.import2, 'dataBytes');
  assert.ok(download < dataBytes, `downloadBytes ${download} ≥ v2 dataBytes ${dataBytes}`);
  assert.ok(num(doc, 'newChunks') > 0);
});

// ---------------------------------------------------------------------------------------------
// User mistakes

/** Runs a pull into a fresh, empty directory; returns the run and that directory. */
async function failedPull(
  t: Parameters<typeof tempDir>[0],
  args: (w: World) => string[],
): Promise<{ r: Run; outDir: string; out: string }> {
  const w = await world();
  const outDir = await tempDir(t);
  const out = join(outDir, 'image.raw');
  const r = await bulkhead(['image', 'pull', '--from', w.store, '--out', out, ...args(w)]);
  return { r, outDir, out };
}

async function expectNothingAt(outDir: string): Promise<void> {
  assert.deepEqual(await readdir(outDir), [], 'a failed pull left files behind');
}

test('image pull without --trust is a usage error (exit 2)', async (t) => {
  const { r, outDir } = await failedPull(t, () => ['--image', 'os@2']);
  const line = expectFailure(r, 2);
  assert.match(line, /--trust/);
  await expectNothingAt(outDir);
});

test('image pull --image without @VERSION is a usage error (exit 2)', async (t) => {
  const { r, outDir } = await failedPull(t, (w) => ['--image', 'os', '--trust', w.publicKey]);
  const line = expectFailure(r, 2);
  assert.match(line, /NAME@VERSION/);
  await expectNothingAt(outDir);
});

test('image pull mistakes fail with exit 1, a stable code, and nothing left at --out', async (t) => {
  const other = join(await tempDir(t), 'other');
  expectExit(await bulkhead(['keys', 'generate', '--out', other]), 0);
  const cases: { name: string; image: string; trust?: string; code: string }[] = [
    { name: 'a version that does not exist', image: 'os@99', code: 'ERR_IMAGE_NOT_FOUND' },
    {
      name: 'a key that did not sign',
      image: 'os@2',
      trust: join(other, 'publisher.pub'),
      code: 'ERR_UNTRUSTED_KEY',
    },
    { name: 'a name that climbs out of the store', image: '../../etc@x', code: 'ERR_INVALID_NAME' },
  ];
  for (const c of cases) {
    await t.test(c.name, async (st) => {
      const { r, outDir } = await failedPull(st, (w) => [
        '--image',
        c.image,
        '--trust',
        c.trust ?? w.publicKey,
        '--json',
      ]);
      expectFailure(r, 1);
      assert.equal(errorCode(r), c.code);
      await expectNothingAt(outDir);
    });
  }
});

test('the same mistakes without --json still print one line and leave nothing', async (t) => {
  const { r, outDir } = await failedPull(t, (w) => ['--image', 'os@99', '--trust', w.publicKey]);
  const line = expectFailure(r, 1);
  assert.match(line, /os@99/);
  assert.equal(r.stdout, '', 'a failure without --json prints nothing on stdout');
  await expectNothingAt(outDir);
});

test('--json on failure prints { "error": { "code" } } on stdout, usage errors too', async (t) => {
  const dir = await tempDir(t);
  const missingStore = await bulkhead([
    'image',
    'inspect',
    '--store',
    join(dir, 'no-store'),
    'os@1',
    '--json',
  ]);
  expectFailure(missingStore, 1);
  assert.equal(errorCode(missingStore), 'ERR_IMAGE_NOT_FOUND');
  const error = json(missingStore).error as Record<string, unknown>;
  assert.equal(typeof error.retryable, 'boolean');
  assert.ok('hint' in error);

  const usage = await bulkhead(['keys', 'generate', '--json']);
  expectFailure(usage, 2);
  assert.equal(errorCode(usage), 'ERR_USAGE');
});

test('a key file that is not a key fails with exit 1 and no stack trace', async (t) => {
  const bogus = join(await tempDir(t), 'bogus.pub');
  await writeFile(bogus, 'not a key\n');
  const { r, outDir } = await failedPull(t, () => ['--image', 'os@2', '--trust', bogus, '--json']);
  expectFailure(r, 1);
  assert.equal(errorCode(r), 'ERR_KEY_INVALID');
  await expectNothingAt(outDir);
});

// ---------------------------------------------------------------------------------------------
// demo

test('demo --dir DIR --json pulls v2 downloading less than a tenth of its size', async (t) => {
  const dir = await tempDir(t);
  const r = await bulkhead(['demo', '--dir', dir, '--json']);
  expectExit(r, 0);
  const doc = json(r);
  const v2 = doc.v2 as Record<string, unknown>;
  const pull = doc.pull as Record<string, unknown>;
  const size = num(v2, 'size');
  const downloaded = num(pull, 'downloadedBytes');
  assert.ok(downloaded > 0);
  assert.ok(downloaded < size / 10, `downloaded ${downloaded} of a ${size}-byte image`);
  assert.equal(pull.sha256, v2.sha256);
  assert.ok(await exists(join(dir, 'demo', 'pc', 'os-v2.raw')));
});

test('image verify --file of another version: one JSON document, ERR_IMAGE_DIGEST_MISMATCH', async () => {
  const w = await world();
  const args = ['image', 'verify', '--store', w.store, 'os@2', '--trust', w.publicKey];
  const r = await bulkhead([...args, '--file', w.v1, '--json']);
  expectFailure(r, 1);
  const doc = json(r) as { error: { code: string; details: { file: { ok: boolean } } } };
  assert.equal(doc.error.code, 'ERR_IMAGE_DIGEST_MISMATCH');
  assert.equal(doc.error.details.file.ok, false);
  const missing = await bulkhead([...args, '--file', join(w.dir, 'no-such.raw'), '--json']);
  expectFailure(missing, 1);
  assert.equal((json(missing) as { error: { code: string } }).error.code, 'ERR_INPUT_UNREADABLE');
});

test('keys generate beside an existing public key writes no private key', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'publisher.pub'), 'old public key');
  const r = await bulkhead(['keys', 'generate', '--out', dir]);
  const line = expectFailure(r, 1);
  assert.match(line, /publisher\.pub already exists/);
  assert.equal(await exists(join(dir, 'publisher.key')), false);
  assert.equal(await readFile(join(dir, 'publisher.pub'), 'utf8'), 'old public key');
});

test('image list of a store that does not exist is an error, not an empty list', async (t) => {
  const dir = await tempDir(t);
  const r = await bulkhead(['image', 'list', '--store', join(dir, 'typo'), '--json']);
  expectFailure(r, 1);
  assert.equal((json(r) as { error: { code: string } }).error.code, 'ERR_OBJECT_NOT_FOUND');
});

test('an error echoing a very long value shows its start and its length, on one line', async () => {
  const long = 'a'.repeat(5000);
  const r = await bulkhead(['image', 'diff', '--store', '/nonexistent', `${long}@1`, 'x@2']);
  const line = expectFailure(r, 2);
  assert.ok(line.length < 400, `${line.length} characters`);
  assert.match(line, /a{60}…\(\d+ characters\)/);
});
