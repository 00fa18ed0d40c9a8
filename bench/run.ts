// The one-command benchmark (`npm run bench`): builds or reuses a realistic pair of Debian disk
// images, measures the peers (casync, zsync, rsync, zstd, the novel-block bound) and Bulkhead on
// the same images in the same run, and prints one JSON document on stdout. Progress goes to
// stderr; the JSON is also written to bench/out/results-<date>.json.
//
//   node bench/run.ts [--pairs=v2,v2b] [--skip=bulkhead,casync,zsync,rsync,zstd,bound,chunkers]
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
import { buildImagePair } from './images.ts';
import type { ImagePair } from './images.ts';
import {
  casyncMake,
  measureCasync,
  measureRsync,
  measureZsync,
  measureZstd,
  novelBlockBound,
  sameContents,
} from './peers.ts';
import type { CasyncStore, Log } from './peers.ts';
import { errorMessage, mb, round, run, secondsSince, sizes } from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');
const outDir = join(benchDir, 'out');
const workDir = join(outDir, 'work');
const nodeBin = join(repoRoot, 'node_modules', '.bin', 'node');
const bulkheadJs = join(repoRoot, 'bin', 'bulkhead.js');

const PAIRS = ['v2', 'v2b'] as const;
type PairName = (typeof PAIRS)[number];
const PARTS = ['bulkhead', 'casync', 'zsync', 'rsync', 'zstd', 'bound', 'chunkers'] as const;
type Part = (typeof PARTS)[number];

const started = process.hrtime.bigint();
const log: Log = (msg) => {
  console.error(`[bench ${secondsSince(started).toFixed(0).padStart(4)} s] ${msg}`);
};

function parseArgs(argv: string[]): { pairs: PairName[]; skip: Set<Part> } {
  let pairs: PairName[] = [...PAIRS];
  const skip = new Set<Part>();
  for (const arg of argv) {
    const [flag, value = ''] = arg.split('=', 2);
    if (flag === '--pairs') {
      pairs = value.split(',').filter(Boolean) as PairName[];
      for (const p of pairs) {
        if (!PAIRS.includes(p))
          throw new Error(`--pairs: unknown pair ${p} (use ${PAIRS.join(',')})`);
      }
    } else if (flag === '--skip') {
      for (const p of value.split(',').filter(Boolean)) {
        if (!PARTS.includes(p as Part)) {
          throw new Error(`--skip: unknown part ${p} (use ${PARTS.join(',')})`);
        }
        skip.add(p as Part);
      }
    } else {
      throw new Error(
        `unknown argument ${arg}; usage: node bench/run.ts [--pairs=v2,v2b] [--skip=${PARTS.join(',')}]`,
      );
    }
  }
  return { pairs, skip };
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
  imports: Record<string, BulkheadImport>;
  /** The same imports into a second store without building packs: the work casync make does. */
  importsNoPack: Record<string, BulkheadImport>;
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

export async function runBulkhead(opts: {
  images: ImagePair;
  pairs: PairName[];
  work: string;
  log: Log;
}): Promise<BulkheadRun> {
  const { images, work } = opts;
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const keys = join(work, 'keys');
  const store = join(work, 'store');
  const name = 'desk';
  await bulkheadCli(['keys', 'generate', '--out', keys]);

  const imports: Record<string, BulkheadImport> = {};
  const plan: [string, string, string | undefined][] = [['v1', '1', undefined]];
  for (const p of opts.pairs) plan.push([p, p === 'v2' ? '2' : '2b', '1']);
  const importAll = async (
    into: string,
    extra: string[],
    results: Record<string, BulkheadImport>,
  ) => {
    for (const [which, version, parent] of plan) {
      const image = images[which as 'v1' | PairName];
      opts.log(`bulkhead: image import ${which}.raw as ${name}@${version} ${extra.join(' ')}`);
      const args = [
        'image',
        'import',
        image,
        '--store',
        into,
        '--name',
        name,
        '--version',
        version,
      ];
      args.push('--key', join(keys, 'publisher.key'), ...extra);
      if (parent) args.push('--parent', parent);
      const { json, seconds } = await bulkheadCli(args);
      const size = (await sizes(image)).bytes;
      results[which] = {
        version,
        reported: json,
        wallSeconds: round(seconds, 2),
        wallMBps: round(mb(size) / seconds, 1),
      };
    }
  };
  const importsNoPack: Record<string, BulkheadImport> = {};
  await importAll(join(work, 'store-nopack'), ['--no-pack'], importsNoPack);
  await rm(join(work, 'store-nopack'), { recursive: true, force: true });
  await importAll(store, [], imports);

  const pulls: BulkheadRun['pulls'] = {};
  for (const p of opts.pairs) {
    const version = imports[p]?.version ?? '';
    const entry: NonNullable<BulkheadRun['pulls'][PairName]> = {};
    pulls[p] = entry;
    const pull = async (from: string) => {
      const out = join(work, `pull-${version}.raw`);
      await rm(out, { force: true });
      const args = ['image', 'pull', '--from', from, '--image', `${name}@${version}`];
      args.push('--trust', join(keys, 'publisher.pub'), '--out', out, '--seed', images.v1);
      const { json, seconds } = await bulkheadCli(args);
      const verified = await sameContents(out, images[p]);
      await rm(out, { force: true });
      return { json, seconds, verified };
    };
    try {
      opts.log(`bulkhead: image pull ${name}@${version} from the local store, seeded with v1`);
      const local = await pull(store);
      entry.local = {
        from: 'local',
        reported: local.json,
        downloadedBytes: num(local.json, 'downloadedBytes'),
        wallSeconds: round(local.seconds, 2),
        verified: local.verified,
      };
      opts.log(`bulkhead: image pull ${name}@${version} over HTTP, seeded with v1`);
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
  zsync?: Awaited<ReturnType<typeof measureZsync>> | { error: string };
  rsync?: Awaited<ReturnType<typeof measureRsync>> | { error: string };
  zstd?: Awaited<ReturnType<typeof measureZstd>> | { error: string };
}

async function runPeers(opts: {
  oldImage: string;
  newImage: string;
  pair: PairName;
  oldCasync: CasyncStore | undefined;
  skip: Set<Part>;
}): Promise<PeerResults> {
  const { oldImage, newImage, pair, skip } = opts;
  const work = join(workDir, pair);
  const res: PeerResults = {};
  if (!skip.has('bound')) {
    log(`bound: novel 4 KiB blocks of ${pair} against v1`);
    res.bound = await attempt('bound', () => novelBlockBound(oldImage, newImage));
  }
  if (!skip.has('casync')) {
    const old = opts.oldCasync;
    res.casync = old
      ? await attempt('casync', () =>
          measureCasync({ old, newImage, work: join(work, 'casync'), log }),
        )
      : { error: 'casync make of v1 failed' };
  }
  if (!skip.has('zsync')) {
    res.zsync = await attempt('zsync', () =>
      measureZsync({ oldImage, newImage, work: join(work, 'zsync'), log }),
    );
  }
  if (!skip.has('rsync')) {
    res.rsync = await attempt('rsync', () =>
      measureRsync({ oldImage, newImage, work: join(work, 'rsync'), log }),
    );
  }
  if (!skip.has('zstd')) {
    res.zstd = await attempt('zstd', () =>
      measureZstd({ image: newImage, work: join(work, 'zstd'), log }),
    );
  }
  await rm(work, { recursive: true, force: true });
  return res;
}

function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || b === 0) return null;
  return round(a / b, 3);
}

function target(value: number | null, op: '<=' | '>=', limit: number) {
  if (value === null) return { value, limit, pass: null };
  return { value, limit, pass: op === '<=' ? value <= limit : value >= limit };
}

function compare(pair: PairName, peers: PeerResults, bh: BulkheadRun | undefined) {
  const casync = ok(peers.casync);
  const bound = ok(peers.bound);
  const pull = bh?.pulls[pair];
  const imp = bh?.imports[pair];
  const bhBytes = pull?.http?.bytesSent ?? pull?.local?.downloadedBytes;
  const ratios = {
    /** Bulkhead's bytes over HTTP ÷ casync's bytes over HTTP. */
    bulkheadOverCasyncBytes: ratio(bhBytes, casync?.extractHttp.bytesSent),
    bulkheadOverBoundBytes: ratio(bhBytes, bound?.novelCompressedBytes),
    bulkheadOverZsyncBytes: ratio(bhBytes, ok(peers.zsync)?.downloadBytes),
    /** Bulkhead import MB/s (with the pack it builds) ÷ casync make MB/s (wall clock, same image). */
    bulkheadOverCasyncImportThroughput: ratio(imp?.wallMBps, casync?.make.newMBps),
    /** The same without building the pack: chunk store, index and signed manifest, as casync make. */
    bulkheadOverCasyncImportThroughputNoPack: ratio(
      bh?.importsNoPack[pair]?.wallMBps,
      casync?.make.newMBps,
    ),
    /** Bulkhead pull seconds ÷ casync extract seconds, both from a local store. */
    bulkheadOverCasyncPullSeconds: ratio(pull?.local?.wallSeconds, casync?.extractLocal.seconds),
    bulkheadOverCasyncPullSecondsHttp: ratio(pull?.http?.wallSeconds, casync?.extractHttp.seconds),
  };
  const targets =
    pair === 'v2'
      ? {
          bytesAtMostHalfOfCasync: target(ratios.bulkheadOverCasyncBytes, '<=', 0.5),
          bytesAtMostTwiceTheBound: target(ratios.bulkheadOverBoundBytes, '<=', 2),
          importThroughputAtLeastCasync: target(ratios.bulkheadOverCasyncImportThroughput, '>=', 1),
          pullTimeAtMostCasync: target(ratios.bulkheadOverCasyncPullSeconds, '<=', 1),
        }
      : undefined;
  return { bulkheadBytes: bhBytes ?? null, ratios, ...(targets ? { targets } : {}) };
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
  await q('zsync', 'zsync', ['-V']);
  await q('rsync', 'rsync', ['--version']);
  await q('zstd', 'zstd', ['--version']);
  await q('mkfs.ext4', 'dpkg-query', ['-W', '-f=${Version}', 'e2fsprogs']);
  out.node = process.version;
  return out;
}

async function main(): Promise<void> {
  const { pairs, skip } = parseArgs(process.argv.slice(2));
  await mkdir(outDir, { recursive: true });
  await rm(workDir, { recursive: true, force: true });
  await mkdir(workDir, { recursive: true });
  const startedAt = new Date();

  log('images: building or reusing the Debian image pair');
  const images = await buildImagePair({ log });
  const imageSeconds = round(secondsSince(started), 1);

  const stageSeconds: Record<string, number> = { images: imageSeconds };
  let oldCasync: CasyncStore | undefined;
  if (!skip.has('casync')) {
    const t = process.hrtime.bigint();
    log('casync: make v1.raw (the store a holder of v1 already has)');
    const r = await attempt('casync make v1', () =>
      casyncMake(images.v1, join(workDir, 'v1-casync'), 'old'),
    );
    oldCasync = ok(r);
    stageSeconds['casync make v1'] = round(secondsSince(t), 1);
  }

  const pairResults: Record<string, unknown> = {};
  const peersByPair: Partial<Record<PairName, PeerResults>> = {};
  for (const pair of pairs) {
    const t = process.hrtime.bigint();
    peersByPair[pair] = await runPeers({
      oldImage: images.v1,
      newImage: images[pair],
      pair,
      oldCasync,
      skip,
    });
    stageSeconds[`peers v1→${pair}`] = round(secondsSince(t), 1);
  }
  await rm(join(workDir, 'v1-casync'), { recursive: true, force: true });

  let bulkhead: BulkheadRun | { error: string } | undefined;
  if (!skip.has('bulkhead')) {
    const t = process.hrtime.bigint();
    bulkhead = await attempt('bulkhead', () =>
      runBulkhead({ images, pairs, work: join(workDir, 'bulkhead'), log }),
    );
    stageSeconds.bulkhead = round(secondsSince(t), 1);
    await rm(join(workDir, 'bulkhead'), { recursive: true, force: true });
  }
  const bh = ok(bulkhead);

  // Which chunker, measured: the bytes a holder of v1 downloads for each candidate.
  let chunkers: Awaited<ReturnType<typeof compareChunkers>> | { error: string } | undefined;
  if (!skip.has('chunkers') && pairs.includes('v2')) {
    const t = process.hrtime.bigint();
    log('chunkers: FastCDC and block-aligned CDC at several sizes, v1→v2');
    chunkers = await attempt('chunkers', () => compareChunkers(images.v1, images.v2));
    stageSeconds.chunkers = round(secondsSince(t), 1);
  }

  for (const pair of pairs) {
    const peers = peersByPair[pair] ?? {};
    pairResults[`v1→${pair}`] = {
      old: images.v1,
      new: images[pair],
      bulkhead: bh
        ? {
            import: bh.imports[pair],
            importV1: bh.imports.v1,
            importNoPack: bh.importsNoPack[pair],
            importV1NoPack: bh.importsNoPack.v1,
            pull: bh.pulls[pair],
          }
        : bulkhead,
      ...peers,
      comparison: compare(pair, peers, bh),
    };
  }

  const doc = {
    benchmark: 'bulkhead-vs-peers',
    startedAt: startedAt.toISOString(),
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
  main().catch((err: unknown) => {
    log(`failed: ${errorMessage(err)}`);
    process.exitCode = 1;
  });
}
