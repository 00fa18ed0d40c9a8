// The one-command benchmark (`npm run bench`): builds or reuses pairs of Debian disk images,
// measures the peers (casync, xdelta3, zsync, rsync, zstd, the novel-block bound) and Bulkhead
// on the same images in the same run, and prints one JSON document on stdout. Progress goes to
// stderr; the JSON is also written to bench/out/results-<date>.json.
//
// The pairs (bench/images.ts): v2 and v2b, small and quick (a minbase tree, ext4); desk and
// desk-btrfs, a monthly patch of a desktop-class system (kernel, security and point-release
// upgrades, new packages), the same trees on ext4 and on btrfs.
//
//   node bench/run.ts [--pairs=v2,v2b,desk,desk-btrfs] [--all-peers]
//                     [--skip=bulkhead,casync,xdelta3,zsync,rsync,zstd,bound,chunkers]
//     --all-peers   also run zsync, rsync and zstd on the desk pairs (minutes each; skipped
//                   there by default, as the JSON says)
//   node bench/run.ts engine     (Engine's memory, download bytes and rollback time: engine.ts)
//   node bench/run.ts console    (the console's pages in Chromium with 100,000 devices: console.ts)
//   node bench/run.ts switcher   (the switcher in Chromium: click or shortcut to a VM's screen,
//                                 Engine's two VMs on QEMU: switcher.ts)
//   node bench/run.ts guest      (the full Debian guest: boot per firmware, Engine's overhead
//                                 over bare QEMU, v1 → v2 bytes: guest.ts)
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startStaticServer } from './http-server.ts';
import { compareChunkers } from './chunkers.ts';
import { buildImages, PAIR_NAMES, PAIRS } from './images.ts';
import type { ImageName, Images, PairName } from './images.ts';
import {
  casyncMake,
  measureCasync,
  measureRsync,
  measureXdelta3,
  measureZsync,
  measureZstd,
  novelBlockBound,
  sameContents,
} from './peers.ts';
import type { CasyncStore, Log } from './peers.ts';
import {
  errorMessage,
  mb,
  removeDeferred,
  removeLater,
  round,
  run,
  secondsSince,
  sizes,
} from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');
const outDir = join(benchDir, 'out');
const workDir = join(outDir, 'work');
const nodeBin = join(repoRoot, 'node_modules', '.bin', 'node');
const bulkheadJs = join(repoRoot, 'bin', 'bulkhead.js');

const PARTS = [
  'bulkhead',
  'casync',
  'xdelta3',
  'zsync',
  'rsync',
  'zstd',
  'bound',
  'chunkers',
] as const;
type Part = (typeof PARTS)[number];

/**
 * Peers that take minutes on a desk image (2 GiB, 0.8 GB and more allocated) and that no target
 * uses: skipped on the desk pairs unless --all-peers.
 */
const SLOW_ON_DESK: readonly Part[] = ['zsync', 'rsync', 'zstd'];

const started = process.hrtime.bigint();
const log: Log = (msg) => {
  console.error(`[bench ${secondsSince(started).toFixed(0).padStart(4)} s] ${msg}`);
};

interface Args {
  pairs: PairName[];
  skip: Set<Part>;
  allPeers: boolean;
}

function parseArgs(argv: string[]): Args {
  let pairs: PairName[] = [...PAIR_NAMES];
  const skip = new Set<Part>();
  let allPeers = false;
  for (const arg of argv) {
    const [flag, value = ''] = arg.split('=', 2);
    if (flag === '--pairs') {
      pairs = value.split(',').filter(Boolean) as PairName[];
      for (const p of pairs) {
        if (!PAIR_NAMES.includes(p))
          throw new Error(`--pairs: unknown pair ${p} (use ${PAIR_NAMES.join(',')})`);
      }
    } else if (flag === '--skip') {
      for (const p of value.split(',').filter(Boolean)) {
        if (!PARTS.includes(p as Part)) {
          throw new Error(`--skip: unknown part ${p} (use ${PARTS.join(',')})`);
        }
        skip.add(p as Part);
      }
    } else if (flag === '--all-peers' && value === '') {
      allPeers = true;
    } else {
      throw new Error(
        `unknown argument ${arg}; usage: node bench/run.ts [--pairs=${PAIR_NAMES.join(',')}] ` +
          `[--all-peers] [--skip=${PARTS.join(',')}]`,
      );
    }
  }
  return { pairs, skip, allPeers };
}

/** Runs one measurement; a failure is recorded in the results instead of ending the run. */
async function attempt<T>(what: string, fn: () => Promise<T>): Promise<T | { error: string }> {
  try {
    return await fn();
  } catch (err) {
    log(`${what} failed: ${errorMessage(err)}`);
    return { error: errorMessage(err) };
  }
}

function ok<T extends object>(v: T | { error: string } | undefined): T | undefined {
  return v && !('error' in v) ? (v as T) : undefined;
}

/** The path of a built image (buildImages built every image of the pairs asked for). */
function imagePath(images: Images, name: ImageName): string {
  const path = images.paths[name];
  if (!path) throw new Error(`images: ${name} was not built`);
  return path;
}

// ---------------------------------------------------------------------------------------------
// Bulkhead, through its CLI contract.

interface BulkheadImport {
  version: string;
  /** What the CLI reported (--json). */
  reported: Record<string, unknown>;
  wallSeconds: number;
  wallMBps: number;
}

interface BulkheadPull {
  from: 'local' | 'http';
  reported: Record<string, unknown>;
  downloadedBytes: number;
  /** Body bytes the static server sent (http only). */
  bytesSent?: number;
  requests?: number;
  wallSeconds: number;
  verified: boolean;
}

interface BulkheadRun {
  /** By image name: the old image of the pairs, then each pair's new one, into one store. */
  imports: Partial<Record<ImageName, BulkheadImport>>;
  /** The same imports into a second store without building packs: the work casync make does. */
  importsNoPack: Partial<Record<ImageName, BulkheadImport>>;
  pulls: Partial<Record<PairName, { local?: BulkheadPull; http?: BulkheadPull; error?: string }>>;
}

async function bulkheadCli(
  args: string[],
): Promise<{ json: Record<string, unknown>; seconds: number }> {
  const r = await run(nodeBin, [bulkheadJs, ...args, '--json'], { cwd: repoRoot });
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    throw new Error(
      `bulkhead ${args.slice(0, 2).join(' ')}: stdout is not JSON:\n${r.stdout.slice(0, 2000)}`,
    );
  }
  return { json, seconds: r.seconds };
}

function num(json: Record<string, unknown>, key: string): number {
  const v = json[key];
  if (typeof v !== 'number') throw new Error(`bulkhead --json output lacks a numeric "${key}"`);
  return v;
}

/**
 * Bulkhead on the pairs that share one old image, in a store of their own (what one pair's
 * import finds already stored must not depend on the other pairs measured): the old image is
 * imported as version 1, each pair's new image as a version following it (the import timed
 * with the pack it builds, what PCs download), then pulled seeded with the old image from the
 * store's directory and over HTTP.
 */
export async function runBulkhead(opts: {
  images: Images;
  old: ImageName;
  pairs: PairName[];
  work: string;
  log: Log;
}): Promise<BulkheadRun> {
  const { images, work } = opts;
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const keys = join(work, 'keys');
  const store = join(work, 'store');
  const name = 'os';
  await bulkheadCli(['keys', 'generate', '--out', keys]);

  const plan: { image: ImageName; version: string; parent?: string }[] = [
    { image: opts.old, version: '1' },
  ];
  const versionOf: Partial<Record<PairName, string>> = {};
  for (const [i, p] of opts.pairs.entries()) {
    // 2, 2b, 2c, …: as the small pairs always were.
    const version = i === 0 ? '2' : `2${String.fromCharCode(97 + i)}`;
    versionOf[p] = version;
    plan.push({ image: PAIRS[p].new, version, parent: '1' });
  }
  const importAll = async (
    into: string,
    extra: string[],
    results: Partial<Record<ImageName, BulkheadImport>>,
  ) => {
    for (const { image, version, parent } of plan) {
      const path = imagePath(images, image);
      opts.log(`bulkhead: image import ${image}.raw as ${name}@${version} ${extra.join(' ')}`);
      const args = ['image', 'import', path, '--store', into, '--name', name];
      args.push('--version', version, '--key', join(keys, 'publisher.key'), ...extra);
      if (parent) args.push('--parent', parent);
      const { json, seconds } = await bulkheadCli(args);
      const size = (await sizes(path)).bytes;
      results[image] = {
        version,
        reported: json,
        wallSeconds: round(seconds, 2),
        wallMBps: round(mb(size) / seconds, 1),
      };
    }
  };
  const importsNoPack: BulkheadRun['importsNoPack'] = {};
  await importAll(join(work, 'store-nopack'), ['--no-pack'], importsNoPack);
  removeLater(join(work, 'store-nopack'));
  const imports: BulkheadRun['imports'] = {};
  await importAll(store, [], imports);

  const seed = imagePath(images, opts.old);
  const pulls: BulkheadRun['pulls'] = {};
  for (const p of opts.pairs) {
    const version = versionOf[p] ?? '';
    const target = imagePath(images, PAIRS[p].new);
    const entry: NonNullable<BulkheadRun['pulls'][PairName]> = {};
    pulls[p] = entry;
    const pull = async (from: string) => {
      const out = join(work, `pull-${version}.raw`);
      await rm(out, { force: true });
      const args = ['image', 'pull', '--from', from, '--image', `${name}@${version}`];
      args.push('--trust', join(keys, 'publisher.pub'), '--out', out, '--seed', seed);
      const { json, seconds } = await bulkheadCli(args);
      const verified = await sameContents(out, target);
      await rm(out, { force: true });
      return { json, seconds, verified };
    };
    try {
      opts.log(
        `bulkhead: image pull ${PAIRS[p].new} from the local store, seeded with ${opts.old}`,
      );
      const local = await pull(store);
      entry.local = {
        from: 'local',
        reported: local.json,
        downloadedBytes: num(local.json, 'downloadedBytes'),
        wallSeconds: round(local.seconds, 2),
        verified: local.verified,
      };
      opts.log(`bulkhead: image pull ${PAIRS[p].new} over HTTP, seeded with ${opts.old}`);
      const server = await startStaticServer(store);
      try {
        server.reset();
        const http = await pull(server.url);
        entry.http = {
          from: 'http',
          reported: http.json,
          downloadedBytes: num(http.json, 'downloadedBytes'),
          bytesSent: server.bytesSent(),
          requests: server.requests(),
          wallSeconds: round(http.seconds, 2),
          verified: http.verified,
        };
      } finally {
        await server.close();
      }
    } catch (err) {
      opts.log(`bulkhead: pull ${p} failed: ${errorMessage(err)}`);
      entry.error = errorMessage(err);
    }
  }
  return { imports, importsNoPack, pulls };
}

// ---------------------------------------------------------------------------------------------

interface PeerResults {
  bound?: Awaited<ReturnType<typeof novelBlockBound>> | { error: string };
  casync?: Awaited<ReturnType<typeof measureCasync>> | { error: string };
  xdelta3?: Awaited<ReturnType<typeof measureXdelta3>> | { error: string };
  zsync?: Awaited<ReturnType<typeof measureZsync>> | { error: string };
  rsync?: Awaited<ReturnType<typeof measureRsync>> | { error: string };
  zstd?: Awaited<ReturnType<typeof measureZstd>> | { error: string };
  /** Parts not run on this pair by default, and why. */
  skippedByDefault?: Partial<Record<Part, string>>;
}

/** The parts run on `pair`: all but those skipped, and on a desk pair the slow peers. */
function partsFor(pair: PairName, args: Args): { run: Set<Part>; skippedByDefault: Set<Part> } {
  const runParts = new Set(PARTS.filter((p) => !args.skip.has(p)));
  const skippedByDefault = new Set<Part>();
  if (PAIRS[pair].set === 'desk' && !args.allPeers) {
    for (const p of SLOW_ON_DESK) {
      if (runParts.delete(p)) skippedByDefault.add(p);
    }
  }
  return { run: runParts, skippedByDefault };
}

async function runPeers(opts: {
  oldImage: string;
  newImage: string;
  pair: PairName;
  oldCasync: CasyncStore | undefined;
  args: Args;
}): Promise<PeerResults> {
  const { oldImage, newImage, pair } = opts;
  const { old, new: neu } = PAIRS[pair];
  const work = join(workDir, pair);
  const parts = partsFor(pair, opts.args);
  const res: PeerResults = {};
  if (parts.run.has('bound')) {
    log(`bound: novel 4 KiB blocks of ${neu} against ${old}`);
    res.bound = await attempt('bound', () => novelBlockBound(oldImage, newImage));
  }
  if (parts.run.has('casync')) {
    const oldStore = opts.oldCasync;
    res.casync = oldStore
      ? await attempt('casync', () =>
          measureCasync({ old: oldStore, newImage, work: join(work, 'casync'), log }),
        )
      : { error: `casync make of ${old} failed` };
  }
  if (parts.run.has('xdelta3')) {
    res.xdelta3 = await attempt('xdelta3', () =>
      measureXdelta3({ oldImage, newImage, work: join(work, 'xdelta3'), log }),
    );
  }
  if (parts.run.has('zsync')) {
    res.zsync = await attempt('zsync', () =>
      measureZsync({ oldImage, newImage, work: join(work, 'zsync'), log }),
    );
  }
  if (parts.run.has('rsync')) {
    res.rsync = await attempt('rsync', () =>
      measureRsync({ oldImage, newImage, work: join(work, 'rsync'), log }),
    );
  }
  if (parts.run.has('zstd')) {
    res.zstd = await attempt('zstd', () =>
      measureZstd({ image: newImage, work: join(work, 'zstd'), log }),
    );
  }
  if (parts.skippedByDefault.size > 0) {
    res.skippedByDefault = Object.fromEntries(
      [...parts.skippedByDefault].map((p) => [
        p,
        'takes minutes on a desk image and no target uses it; --all-peers runs it',
      ]),
    );
  }
  removeLater(work);
  return res;
}

function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || b === 0) return null;
  return round(a / b, 3);
}

function target(value: number | null, op: '<' | '<=', limit: number) {
  if (value === null) return { value, limit, pass: null };
  return { value, limit, pass: op === '<' ? value < limit : value <= limit };
}

function compare(pair: PairName, peers: PeerResults, bh: BulkheadRun | undefined) {
  const casync = ok(peers.casync);
  const xdelta3 = ok(peers.xdelta3);
  const bound = ok(peers.bound);
  const pull = bh?.pulls[pair];
  const imp = bh?.imports[PAIRS[pair].new];
  const impNoPack = bh?.importsNoPack[PAIRS[pair].new];
  /** What a holder of the old image downloads. */
  const bytes = {
    /** Over HTTP, the bytes the server sent (from the local store when HTTP failed). */
    bulkhead: pull?.http?.bytesSent ?? pull?.local?.downloadedBytes ?? null,
    /** Over HTTP, the bytes the server sent: the index and the missing chunks. */
    casync: casync?.extractHttp.bytesSent ?? null,
    xdelta3: xdelta3?.deltaBytes ?? null,
    /** The novel 4 KiB blocks of new, zstd -19. */
    bound: bound?.novelCompressedBytes ?? null,
  };
  const seconds = {
    bulkheadImport: imp?.wallSeconds ?? null,
    bulkheadImportNoPack: impNoPack?.wallSeconds ?? null,
    casyncMake: casync?.make.newSeconds ?? null,
    bulkheadPullLocal: pull?.local?.wallSeconds ?? null,
    casyncExtractLocal: casync?.extractLocal.seconds ?? null,
    bulkheadPullHttp: pull?.http?.wallSeconds ?? null,
    casyncExtractHttp: casync?.extractHttp.seconds ?? null,
    xdelta3Encode: xdelta3?.encodeSeconds ?? null,
    xdelta3Decode: xdelta3?.decodeSeconds ?? null,
  };
  const b = (v: number | null) => v ?? undefined;
  const ratios = {
    bulkheadOverCasyncBytes: ratio(b(bytes.bulkhead), b(bytes.casync)),
    bulkheadOverXdelta3Bytes: ratio(b(bytes.bulkhead), b(bytes.xdelta3)),
    bulkheadOverBoundBytes: ratio(b(bytes.bulkhead), b(bytes.bound)),
    bulkheadOverZsyncBytes: ratio(b(bytes.bulkhead), ok(peers.zsync)?.downloadBytes),
    /** Bulkhead import seconds (with the pack it builds) ÷ casync make seconds, same image. */
    bulkheadOverCasyncImportSeconds: ratio(b(seconds.bulkheadImport), b(seconds.casyncMake)),
    /** The same without building the pack: chunk store, index and signed manifest, as casync make. */
    bulkheadOverCasyncImportSecondsNoPack: ratio(
      b(seconds.bulkheadImportNoPack),
      b(seconds.casyncMake),
    ),
    /** Bulkhead pull seconds ÷ casync extract seconds, both from a local store. */
    bulkheadOverCasyncPullSeconds: ratio(
      b(seconds.bulkheadPullLocal),
      b(seconds.casyncExtractLocal),
    ),
    bulkheadOverCasyncPullSecondsHttp: ratio(
      b(seconds.bulkheadPullHttp),
      b(seconds.casyncExtractHttp),
    ),
  };
  /** Every transfer measured came out byte for byte equal to the new image. */
  const verified = {
    bulkheadLocal: pull?.local?.verified ?? null,
    bulkheadHttp: pull?.http?.verified ?? null,
    casyncLocal: casync?.extractLocal.verified ?? null,
    casyncHttp: casync?.extractHttp.verified ?? null,
    xdelta3: xdelta3?.verified ?? null,
  };
  const targets = {
    bytesAtMostHalfOfCasync: target(ratios.bulkheadOverCasyncBytes, '<=', 0.5),
    bytesBelowXdelta3: target(ratios.bulkheadOverXdelta3Bytes, '<', 1),
    bytesAtMostTheBound: target(ratios.bulkheadOverBoundBytes, '<=', 1),
    importTimeAtMostCasyncMake: target(ratios.bulkheadOverCasyncImportSeconds, '<=', 1),
    pullTimeAtMostCasyncExtract: target(ratios.bulkheadOverCasyncPullSeconds, '<=', 1),
    pullTimeAtMostCasyncExtractHttp: target(ratios.bulkheadOverCasyncPullSecondsHttp, '<=', 1),
  };
  return {
    bytes,
    seconds,
    ratios,
    verified,
    allVerified: Object.values(verified).every((v) => v !== false),
    targets,
  };
}

async function toolVersions(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const q = async (name: string, cmd: string, args: string[]) => {
    try {
      const r = await run(cmd, args);
      out[name] = (r.stdout || r.stderr).split('\n')[0]?.trim() ?? '';
    } catch (err) {
      out[name] = `unavailable: ${errorMessage(err).split('\n')[0]}`;
    }
  };
  await q('casync', 'casync', ['--version']);
  await q('xdelta3', 'xdelta3', ['-V']);
  await q('zsync', 'zsync', ['-V']);
  await q('rsync', 'rsync', ['--version']);
  await q('zstd', 'zstd', ['--version']);
  await q('mkfs.ext4', 'dpkg-query', ['-W', '-f=${Version}', 'e2fsprogs']);
  await q('mkfs.btrfs', 'dpkg-query', ['-W', '-f=${Version}', 'btrfs-progs']);
  out.node = process.version;
  return out;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const { pairs, skip } = args;
  await mkdir(outDir, { recursive: true });
  await rm(workDir, { recursive: true, force: true });
  await mkdir(workDir, { recursive: true });
  const startedAt = new Date();

  const sets = [...new Set(pairs.map((p) => PAIRS[p].set))];
  log(`images: building or reusing the ${sets.join(' and ')} images`);
  const images = await buildImages({ sets, log });
  const stageSeconds: Record<string, number> = { images: round(secondsSince(started), 1) };

  // Pairs that share an old image share its casync store and Bulkhead's store.
  const olds = [...new Set(pairs.map((p) => PAIRS[p].old))];
  const pairsOf = (old: ImageName) => pairs.filter((p) => PAIRS[p].old === old);

  const peersByPair: Partial<Record<PairName, PeerResults>> = {};
  for (const old of olds) {
    const oldImage = imagePath(images, old);
    let oldCasync: CasyncStore | undefined;
    const casyncWork = join(workDir, `${old}-casync`);
    if (!skip.has('casync')) {
      const t = process.hrtime.bigint();
      log(`casync: make ${old}.raw (the store a holder of ${old} already has)`);
      oldCasync = ok(
        await attempt(`casync make ${old}`, () => casyncMake(oldImage, casyncWork, 'old')),
      );
      stageSeconds[`casync make ${old}`] = round(secondsSince(t), 1);
    }
    for (const pair of pairsOf(old)) {
      const t = process.hrtime.bigint();
      const newImage = imagePath(images, PAIRS[pair].new);
      peersByPair[pair] = await runPeers({ oldImage, newImage, pair, oldCasync, args });
      stageSeconds[`peers ${pair}`] = round(secondsSince(t), 1);
    }
    removeLater(casyncWork);
  }

  const bulkhead: Partial<Record<ImageName, BulkheadRun | { error: string }>> = {};
  if (!skip.has('bulkhead')) {
    for (const old of olds) {
      const t = process.hrtime.bigint();
      const work = join(workDir, `bulkhead-${old}`);
      bulkhead[old] = await attempt(`bulkhead (${old})`, () =>
        runBulkhead({ images, old, pairs: pairsOf(old), work, log }),
      );
      stageSeconds[`bulkhead ${pairsOf(old).join(', ')}`] = round(secondsSince(t), 1);
      removeLater(work);
    }
  }

  // Which chunker, measured: the bytes a holder of v1 downloads for each candidate.
  let chunkers: Awaited<ReturnType<typeof compareChunkers>> | { error: string } | undefined;
  if (!skip.has('chunkers') && pairs.includes('v2')) {
    const t = process.hrtime.bigint();
    log('chunkers: FastCDC and block-aligned CDC at several sizes, v1→v2');
    chunkers = await attempt('chunkers', () =>
      compareChunkers(imagePath(images, 'v1'), imagePath(images, 'v2')),
    );
    stageSeconds.chunkers = round(secondsSince(t), 1);
  }

  const pairResults: Partial<Record<PairName, unknown>> = {};
  for (const pair of pairs) {
    const { old, new: neu } = PAIRS[pair];
    const peers = peersByPair[pair] ?? {};
    const measured = bulkhead[old];
    const bh = ok(measured);
    pairResults[pair] = {
      old: imagePath(images, old),
      new: imagePath(images, neu),
      bulkhead: bh
        ? {
            import: bh.imports[neu],
            importOld: bh.imports[old],
            importNoPack: bh.importsNoPack[neu],
            importOldNoPack: bh.importsNoPack[old],
            pull: bh.pulls[pair],
          }
        : measured,
      ...peers,
      comparison: compare(pair, peers, bh),
    };
  }

  const doc = {
    benchmark: 'bulkhead-vs-peers',
    startedAt: startedAt.toISOString(),
    command: ['node', 'bench/run.ts', ...process.argv.slice(2)].join(' '),
    totalSeconds: round(secondsSince(started), 1),
    stageSeconds,
    machine: {
      cpus: availableParallelism(),
      cpuModel: cpus()[0]?.model ?? '',
      memoryBytes: totalmem(),
      kernel: release(),
    },
    tools: await toolVersions(),
    images: images.info,
    pairs: pairResults,
    chunkers,
  };
  const json = JSON.stringify(doc, null, 2);
  const stamp = startedAt.toISOString().replace(/:/g, '-').replace(/\..*$/, '');
  const file = join(outDir, `results-${stamp}.json`);
  await writeFile(file, json + '\n');
  log(`results written to ${file}`);
  process.stdout.write(json + '\n');
  await removeDeferred();
}

if (import.meta.main && process.argv[2] === 'engine') {
  // `npm run bench -- engine`: Engine on QEMU (bench/engine.ts runs itself on import).
  await import('./engine.ts');
} else if (import.meta.main && process.argv[2] === 'console') {
  // `npm run bench -- console`: the console in Chromium at 100,000 devices (bench/console.ts).
  await (await import('./console.ts')).main();
} else if (import.meta.main && process.argv[2] === 'switcher') {
  // `npm run bench -- switcher`: a VM's screen after a click in the switcher (bench/switcher.ts).
  await (await import('./switcher.ts')).main();
} else if (import.meta.main && process.argv[2] === 'guest') {
  // `npm run bench -- guest`: the full Debian guest on QEMU (bench/guest.ts runs itself too).
  await import('./guest.ts');
} else if (import.meta.main) {
  main().catch(async (err: unknown) => {
    log(`failed: ${errorMessage(err)}`);
    process.exitCode = 1;
    await removeDeferred();
  });
}
