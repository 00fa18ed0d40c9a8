import { createPrivateKey, createPublicKey } from 'node:crypto';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { buildSystemVolume, GuestBuildError } from '../../guest/build.ts';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import { generateKeyPair, loadPrivateKey, loadPublicKey } from '../signing/index.ts';
import {
  DirectoryStore,
  importImage,
  manifestKey,
  parseManifest,
  pullImage,
} from '../image/index.ts';
import { optionalString, type Command } from './command.ts';
import { formatBytes } from './progress.ts';

/** The demo image's name in the store and in Center. */
export const DEMO_IMAGE = 'demo-os';

/** What one demo version holds, whether this run built it or found it in the store. */
export interface DemoVersion {
  name: string;
  version: string;
  size: number;
  sha256: string;
  chunks: number;
  dataBytes: number;
  zeroBytes: number;
  /** Whether this run built and imported it (false: it was in the store already). */
  built: boolean;
  /** Chunks new in this version and the pack from its parent, when this run imported it. */
  newChunks: number | null;
  packBytes: number | null;
}

export interface DemoStore {
  /** The demo directory: publisher key pair, `store/`, the raw images. */
  root: string;
  storeDir: string;
  privateKeyPath: string;
  publicKeyPath: string;
  keyid: string;
  v1: DemoVersion;
  v2: DemoVersion;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The demo publisher key pair in `root`: the one there, or a new one when there is none. Never
 * replaced: the demo store's versions and every Center that trusts them depend on it.
 */
async function demoKey(root: string): Promise<{ privateKeyPath: string; publicKeyPath: string }> {
  const privateKeyPath = join(root, 'publisher.key');
  const publicKeyPath = join(root, 'publisher.pub');
  const pair = generateKeyPair();
  try {
    // `wx`: of two runs at once, the first one's key is the key.
    await writeFile(privateKeyPath, pair.privatePem, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') throw err;
  }
  if (!(await exists(publicKeyPath))) {
    const pem = await readFile(privateKeyPath, 'utf8');
    const publicPem = createPublicKey(createPrivateKey(pem))
      .export({ type: 'spki', format: 'pem' })
      .toString();
    await writeFile(publicKeyPath, publicPem, { mode: 0o644 });
  }
  return { privateKeyPath, publicKeyPath };
}

/** A guest-bootable system volume from the guest builder, as a BulkheadError when it fails. */
async function buildDemoVolume(version: 'v1' | 'v2', out: string): Promise<void> {
  try {
    await buildSystemVolume(version, out);
  } catch (err) {
    if (err instanceof GuestBuildError) {
      throw new BulkheadError(
        err.debianPackage ? ErrorCodes.TOOL_MISSING : ErrorCodes.INTERNAL,
        `cannot build the demo image: ${err.message}`,
        {
          cause: err,
          ...(err.debianPackage
            ? { hint: `apt-get install ${err.debianPackage} (node scripts/setup.js does it)` }
            : {}),
        },
      );
    }
    throw err;
  }
}

/**
 * Makes sure `root` holds the demo: a publisher key pair and a store with `demo-os` versions 1
 * and 2, both system volumes of the small test guest (guest/README.md: busybox with /bin/sh,
 * /usr/libexec/health-check), version 2 a patch of version 1. Whatever is there already is
 * kept and reused (key, store, versions), so it may run any number of times, from
 * `bulkhead demo` and `center serve --demo` alike, and neither undoes the other.
 */
export async function ensureDemoStore(
  root: string,
  say: (line: string) => void = () => {},
): Promise<DemoStore> {
  await mkdir(root, { recursive: true });
  const { privateKeyPath, publicKeyPath } = await demoKey(root);
  const key = await loadPrivateKey(privateKeyPath);
  const { keyid } = key;
  const store = new DirectoryStore(join(root, 'store'));
  const versions: DemoVersion[] = [];
  for (const [version, volume] of [
    ['1', 'v1'],
    ['2', 'v2'],
  ] as const) {
    if (await store.has(manifestKey(DEMO_IMAGE, version))) {
      const body = parseManifest(
        await store.read(manifestKey(DEMO_IMAGE, version), 64 * 1024),
      ).signed;
      versions.push({
        name: DEMO_IMAGE,
        version,
        size: body.size,
        sha256: body.sha256,
        chunks: body.stats.chunks,
        dataBytes: body.stats.dataBytes,
        zeroBytes: body.stats.zeroBytes,
        built: false,
        newChunks: null,
        packBytes: null,
      });
      continue;
    }
    if (versions.length === 0 || versions.every((v) => !v.built)) {
      say(`Building the demo image ${DEMO_IMAGE} in ${root} (the test guest's system volume) …`);
    }
    const file = join(root, `os-v${version}.raw`);
    await buildDemoVolume(volume, file);
    let imported;
    try {
      imported = await importImage({
        store,
        name: DEMO_IMAGE,
        version,
        key,
        file,
        parent: version === '1' ? null : '1',
        tempDir: join(root, 'tmp'),
      });
    } catch (err) {
      // Another run imported it in the meantime: theirs is as good as ours.
      if (!(err instanceof BulkheadError && err.code === ErrorCodes.IMAGE_EXISTS)) throw err;
      return ensureDemoStore(root, say);
    }
    versions.push({
      name: DEMO_IMAGE,
      version,
      size: imported.size,
      sha256: imported.sha256,
      chunks: imported.chunks,
      dataBytes: imported.dataBytes,
      zeroBytes: imported.zeroBytes,
      built: true,
      newChunks: imported.newChunks,
      packBytes: imported.pack?.bytes ?? null,
    });
    say(
      version === '1'
        ? `Published ${DEMO_IMAGE}@1: ${imported.chunks} chunks, ${formatBytes(imported.dataBytes)} of data, ${formatBytes(imported.zeroBytes)} of holes, stored as ${formatBytes(imported.storedBytes)}.`
        : `Published ${DEMO_IMAGE}@2 (a patch, image rebuilt): ${imported.newChunks} new chunks; pack from 1 is ${formatBytes(imported.pack?.bytes ?? 0)}.`,
    );
  }
  return {
    root,
    storeDir: store.location,
    privateKeyPath,
    publicKeyPath,
    keyid,
    v1: versions[0]!,
    v2: versions[1]!,
  };
}

export const demoCommand: Command = {
  name: 'demo',
  summary:
    'Publish a demo OS image and its patch in a local store, and pull the patch as a delta, printing what moved.',
  usage: `Usage: bulkhead demo [--dir DIR] [--json]

  Uses DIR/demo (default DIR: ./data, the directory \`npm start\` uses): its publisher key
  and demo store are made on the first run and reused after, by this command and by
  \`center serve --demo\` alike. Each run pulls version 2 again into DIR/demo/pc as a PC
  holding version 1 would. To run a real PC against the demo Center: \`bulkhead demo pc\`.`,
  options: { dir: { type: 'string' } },
  async run(inv, ctx) {
    const root = resolve(optionalString(inv, 'dir') ?? 'data', 'demo');
    const say = (line: string) => {
      if (!inv.json) ctx.out(line);
    };
    const demo = await ensureDemoStore(root, say);
    if (!demo.v1.built && !demo.v2.built) {
      say(
        `Reusing the demo store ${demo.storeDir}: ${DEMO_IMAGE}@1 and @2, signed by the demo key ${demo.publicKeyPath}.`,
      );
    }
    const trusted = [await loadPublicKey(demo.publicKeyPath)];
    const store = new DirectoryStore(demo.storeDir);
    // The PC: only this command writes here, so it starts afresh each run.
    const pc = join(root, 'pc');
    await rm(pc, { recursive: true, force: true });
    await mkdir(pc, { recursive: true });
    // The PC's copy of version 1: the one built here, else pulled from the store like a PC would.
    let seed = join(root, 'os-v1.raw');
    if (!(await exists(seed))) {
      seed = join(pc, 'os-v1.raw');
      await pullImage({ store, name: DEMO_IMAGE, version: '1', trusted, out: seed, seeds: [] });
    }
    const pulled = await pullImage({
      store,
      name: DEMO_IMAGE,
      version: '2',
      trusted,
      out: join(pc, 'os-v2.raw'),
      seeds: [seed],
    });
    say(
      `A PC holding version 1 pulled version 2: downloaded ${formatBytes(pulled.downloadedBytes)}, reused ${formatBytes(pulled.reusedBytes)} from its copy of version 1 (${((pulled.downloadedBytes / demo.v2.size) * 100).toFixed(2)}% of the image), verified sha256 ${pulled.sha256.slice(0, 16)}….`,
    );
    say(`Try: bulkhead image list --store ${demo.storeDir}`);
    return {
      store: demo.storeDir,
      publicKey: demo.publicKeyPath,
      keyid: demo.keyid,
      v1: demo.v1,
      v2: demo.v2,
      pull: pulled,
    };
  },
};
