import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import {
  generateKeyPair,
  loadPrivateKey,
  loadPublicKey,
  type PublicKeyInfo,
} from '../../src/signing/index.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';

export const exec = promisify(execFile);

/** Where a test helper hands what must be undone when the test ends: a `TestContext` or a stand-in. */
export interface Cleanups {
  after(release: () => unknown): void;
}

/**
 * A temp dir removed when the test ends. Its removal never fails the test: node:test runs a
 * test's `after` hooks in the order they were registered, so this one (registered first, as the
 * dir is made first) runs while a process the test started later may still be writing into the
 * dir, and an error here would skip the hooks that stop those processes, leaving the test file
 * waiting on them for ever. What cannot be removed now is removed once the hooks have run.
 */
export async function tempDir(t: Cleanups, prefix = 'bulkhead-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const remove = () => rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  t.after(() =>
    remove().catch(() => {
      process.once('beforeExit', () => void remove().catch(() => {}));
    }),
  );
  return dir;
}

/** Runs a system tool; a missing one fails the test naming the Debian package to install. */
export async function tool(command: string, args: string[], pkg: string): Promise<string> {
  try {
    const { stdout } = await exec(command, args, { maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(
        `${command} was not found: install the Debian package ${pkg} (apt-get install ${pkg})`,
      );
    }
    throw err;
  }
}

/** Deterministic bytes: `binary` ones do not compress, text ones do. */
export function bytesFrom(seed: string, length: number, binary = true): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; total < length; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest();
    const part = binary
      ? h
      : Buffer.from(`line ${i} of ${seed}: value=${h.readUInt32LE(0) % 1000}\n`);
    parts.push(part);
    total += part.length;
  }
  return Buffer.concat(parts).subarray(0, length);
}

/** Writes `files` (relative path → bytes) under `root`. */
export async function writeTree(root: string, files: Record<string, Buffer>): Promise<void> {
  await rm(root, { recursive: true, force: true });
  await mkdir(root, { recursive: true });
  for (const [path, data] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), data);
  }
}

/** An ext4 image with 4 KiB blocks made from a tree, as an image pipeline builds one. */
export async function ext4Image(
  dir: string,
  name: string,
  files: Record<string, Buffer>,
  size = '64M',
): Promise<string> {
  const tree = join(dir, `${name}.tree`);
  await writeTree(tree, files);
  const image = join(dir, `${name}.raw`);
  await tool('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, image, size], 'e2fsprogs');
  return image;
}

/** A small OS-like file set, and a patched one: files added, changed and removed. */
export function osFiles(version: 1 | 2): Record<string, Buffer> {
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 24; i++)
    files[`usr/lib/lib${i}.so`] = bytesFrom(`lib${i}`, 96 * 1024 + i * 4096);
  for (let i = 0; i < 40; i++)
    files[`usr/share/doc/doc${i}.txt`] = bytesFrom(`doc${i}`, 12 * 1024, false);
  for (let i = 0; i < 10; i++) files[`etc/app${i}.conf`] = bytesFrom(`conf${i}`, 900, false);
  if (version === 2) {
    files['usr/lib/libnew.so'] = bytesFrom('libnew', 300 * 1024);
    files['usr/lib/lib5.so'] = bytesFrom('lib5-patched', 96 * 1024 + 5 * 4096);
    files['etc/app2.conf'] = bytesFrom('conf2-edited', 950, false);
    delete files['usr/lib/lib9.so'];
  }
  return files;
}

export interface Keys {
  dir: string;
  privatePath: string;
  publicPath: string;
  key: Awaited<ReturnType<typeof loadPrivateKey>>;
  trusted: PublicKeyInfo[];
}

export async function makeKeys(dir: string, name = 'publisher'): Promise<Keys> {
  const pair = generateKeyPair();
  const privatePath = join(dir, `${name}.key`);
  const publicPath = join(dir, `${name}.pub`);
  await writeFile(privatePath, pair.privatePem, { mode: 0o600 });
  await writeFile(publicPath, pair.publicPem);
  return {
    dir,
    privatePath,
    publicPath,
    key: await loadPrivateKey(privatePath),
    trusted: [await loadPublicKey(publicPath)],
  };
}

export async function sha256Of(path: string): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

/** A store in `dir` holding os@1 and os@2 (a patch of it, rebuilt), signed by a new key. */
export async function publishPair(dir: string) {
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const v1 = await ext4Image(dir, 'v1', osFiles(1));
  const v2 = await ext4Image(dir, 'v2', osFiles(2));
  const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp') };
  const r1 = await importImage({ ...common, file: v1, version: '1' });
  const r2 = await importImage({ ...common, file: v2, version: '2' });
  return { dir, keys, store, v1, v2, r1, r2 };
}

/**
 * Every file under `dir`, with its bytes. The program that owns them may run meanwhile and write
 * by rename (or keep a journal), so a file may go between the listing and the read: such a scan is done again (its
 * content is in the file it was renamed to), up to five times.
 */
export async function filesUnder(dir: string): Promise<{ path: string; bytes: Buffer }[]> {
  for (let attempt = 1; ; attempt++) {
    const out: { path: string; bytes: Buffer }[] = [];
    let vanished = false;
    for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
      if (!e.isFile()) continue;
      const path = join(e.parentPath, e.name);
      try {
        out.push({ path, bytes: await readFile(path) });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        vanished = true;
      }
    }
    if (!vanished || attempt === 5) return out;
  }
}
