import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, rm, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import { generateKeyPair, loadPrivateKey, loadPublicKey } from '../signing/index.ts';
import { DirectoryStore, importImage, pullImage } from '../image/index.ts';
import { optionalString, type Command } from './command.ts';
import { formatBytes } from './progress.ts';

const run = promisify(execFile);

/** Deterministic bytes: text-like (compressible) or binary-like (not), from a seed. */
function content(seed: string, bytes: number, binary: boolean): Buffer {
  const words = [
    'kernel',
    'module',
    'config',
    'update',
    'policy',
    'device',
    'volume',
    'service',
    'network',
    'library',
  ];
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; total < bytes; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest();
    const part = binary
      ? h
      : Buffer.from(`${words[h[0]! % 10]} ${words[h[1]! % 10]}=${h.readUInt16LE(2)}\n`);
    parts.push(part);
    total += part.length;
  }
  return Buffer.concat(parts).subarray(0, bytes);
}

async function writeTree(root: string, version: 1 | 2): Promise<void> {
  await rm(root, { recursive: true, force: true });
  for (const dir of ['etc', 'usr/bin', 'usr/lib', 'usr/share/doc'])
    await mkdir(join(root, dir), { recursive: true });
  for (let i = 0; i < 40; i++)
    await writeFile(
      join(root, 'usr/lib', `lib${i}.so`),
      content(`lib${i}`, 256 * 1024 + i * 4096, true),
    );
  for (let i = 0; i < 30; i++)
    await writeFile(join(root, 'usr/bin', `tool${i}`), content(`tool${i}`, 64 * 1024, true));
  for (let i = 0; i < 60; i++)
    await writeFile(
      join(root, 'usr/share/doc', `readme${i}.txt`),
      content(`doc${i}`, 24 * 1024, false),
    );
  for (let i = 0; i < 20; i++)
    await writeFile(join(root, 'etc', `app${i}.conf`), content(`conf${i}`, 2000, false));
  if (version === 2) {
    // A patch as it comes: a new package, an updated library, an edited config, a removal.
    for (let i = 0; i < 5; i++)
      await writeFile(
        join(root, 'usr/lib', `libnew${i}.so`),
        content(`libnew${i}`, 512 * 1024, true),
      );
    await writeFile(
      join(root, 'usr/lib', 'lib7.so'),
      content('lib7-patched', 256 * 1024 + 7 * 4096, true),
    );
    await writeFile(join(root, 'etc', 'app3.conf'), content('conf3-edited', 2100, false));
    await unlink(join(root, 'usr/bin', 'tool12'));
  }
}

async function makeImage(tree: string, image: string): Promise<void> {
  await rm(image, { force: true });
  try {
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, image, '256M']);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') {
      throw new BulkheadError(
        ErrorCodes.TOOL_MISSING,
        'mkfs.ext4 is needed to build the demo images',
        {
          hint: 'install the Debian package e2fsprogs (apt-get install e2fsprogs)',
        },
      );
    }
    throw err;
  }
}

export const demoCommand: Command = {
  name: 'demo',
  summary:
    'Publish a generated demo OS image, patch it, and pull the patch as a delta, printing what moved.',
  usage: 'Usage: bulkhead demo [--dir DIR] [--json]   (default DIR: ./data; DIR/demo is rebuilt)',
  options: { dir: { type: 'string' } },
  async run(inv, ctx) {
    const root = resolve(optionalString(inv, 'dir') ?? 'data', 'demo');
    await rm(root, { recursive: true, force: true });
    await mkdir(root, { recursive: true });
    const say = (line: string) => {
      if (!inv.json) ctx.out(line);
    };
    const pair = generateKeyPair();
    await writeFile(join(root, 'publisher.key'), pair.privatePem, { mode: 0o600 });
    await writeFile(join(root, 'publisher.pub'), pair.publicPem);
    const key = await loadPrivateKey(join(root, 'publisher.key'));
    const trusted = [await loadPublicKey(join(root, 'publisher.pub'))];
    const store = new DirectoryStore(join(root, 'store'));

    say(`Building demo images in ${root} (ext4, 256 MiB each) …`);
    await writeTree(join(root, 'tree'), 1);
    await makeImage(join(root, 'tree'), join(root, 'os-v1.raw'));
    await writeTree(join(root, 'tree'), 2);
    await makeImage(join(root, 'tree'), join(root, 'os-v2.raw'));

    const common = { store, name: 'demo-os', key, tempDir: join(root, 'tmp') };
    const v1 = await importImage({ ...common, file: join(root, 'os-v1.raw'), version: '1' });
    say(
      `Published demo-os@1: ${v1.chunks} chunks, ${formatBytes(v1.dataBytes)} of data, ${formatBytes(v1.zeroBytes)} of holes, stored as ${formatBytes(v1.storedBytes)}.`,
    );
    const v2 = await importImage({ ...common, file: join(root, 'os-v2.raw'), version: '2' });
    say(
      `Published demo-os@2 (a patch, image rebuilt): ${v2.newChunks} new chunks; pack from 1 is ${formatBytes(v2.pack?.bytes ?? 0)}.`,
    );

    await mkdir(join(root, 'pc'), { recursive: true });
    const pulled = await pullImage({
      store: new DirectoryStore(store.location),
      name: 'demo-os',
      version: '2',
      trusted,
      out: join(root, 'pc', 'os-v2.raw'),
      seeds: [join(root, 'os-v1.raw')],
    });
    say(
      `A PC holding version 1 pulled version 2: downloaded ${formatBytes(pulled.downloadedBytes)}, reused ${formatBytes(pulled.reusedBytes)} from its copy of version 1 (${((pulled.downloadedBytes / v2.size) * 100).toFixed(2)}% of the image), verified sha256 ${pulled.sha256.slice(0, 16)}….`,
    );
    say(`Try: bulkhead image list --store ${store.location}`);
    return { store: store.location, v1, v2, pull: pulled };
  },
};
