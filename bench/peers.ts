// Measures the peers Bulkhead is compared with, for one pair of images (a holder of `old` wants
// `new`): casync, zsync, rsync, zstd of the whole image, xdelta3, and a lower bound on what any
// block-level delta must ship (the novel 4 KiB blocks, compressed).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { chmod, mkdir, open, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { startStaticServer } from './http-server.ts';
import {
  CommandError,
  describeCommand,
  mb,
  removeLater,
  round,
  run,
  secondsSince,
} from './util.ts';

export type Log = (msg: string) => void;

// ---------------------------------------------------------------------------------------------
// Helpers

/** True when the two files have identical contents (cmp). */
export async function sameContents(a: string, b: string): Promise<boolean> {
  try {
    await run('cmp', ['-s', '--', a, b]);
    return true;
  } catch (err) {
    if (err instanceof CommandError && err.code === 1) return false;
    throw err;
  }
}

async function fresh(dir: string): Promise<string> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  return dir;
}

async function fileBytes(path: string): Promise<number> {
  return (await stat(path)).size;
}

/** Reads a file sequentially in 4 KiB blocks, 4 MiB at a time; the block buffer is reused. */
async function* blocksOf(path: string, blockSize = 4096): AsyncGenerator<Buffer> {
  const fh = await open(path, 'r');
  const buf = Buffer.allocUnsafe(1024 * blockSize);
  try {
    for (;;) {
      let filled = 0;
      while (filled < buf.length) {
        const { bytesRead } = await fh.read(buf, filled, buf.length - filled, null);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      if (filled === 0) return;
      for (let off = 0; off < filled; off += blockSize) {
        yield buf.subarray(off, Math.min(off + blockSize, filled));
      }
      if (filled < buf.length) return;
    }
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Novel-block bound

export interface BoundResult {
  blockSize: number;
  oldBlocks: number;
  oldNonZeroBlocks: number;
  newBlocks: number;
  newZeroBlocks: number;
  /** Non-zero blocks of new whose content is nowhere (block-aligned) in old. */
  novelBlocks: number;
  novelBytes: number;
  /** The same, each distinct content counted once. */
  uniqueNovelBlocks: number;
  /** The novel blocks concatenated in order, compressed with `compressor`. */
  novelCompressedBytes: number;
  compressor: string;
  seconds: number;
}

/** Pipes chunks into `zstd … -c` and counts the compressed bytes it writes. */
function zstdCounter(args: string[]): {
  write(chunk: Buffer): Promise<void>;
  finish(): Promise<number>;
} {
  const child = spawn('zstd', [...args, '-q', '-c', '-'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = 0;
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.length;
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => {
    stderr += s;
  });
  const closed = once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
  let failed: Error | undefined;
  child.on('error', (err) => {
    failed = err;
  });
  child.stdin.on('error', (err) => {
    failed ??= err;
  });
  return {
    async write(chunk) {
      if (failed) throw failed;
      if (!child.stdin.write(chunk)) await once(child.stdin, 'drain');
    },
    async finish() {
      child.stdin.end();
      const [code] = await closed;
      if (code !== 0 || failed) {
        throw new Error(
          `command failed (${failed?.message ?? `exit code ${code}`}): ${describeCommand('zstd', [...args, '-q', '-c', '-'])}\n${stderr}`,
        );
      }
      return out;
    },
  };
}

export async function novelBlockBound(
  oldImage: string,
  newImage: string,
  opts: { blockSize?: number; zstdLevel?: number } = {},
): Promise<BoundResult> {
  const blockSize = opts.blockSize ?? 4096;
  const level = opts.zstdLevel ?? 19;
  const start = process.hrtime.bigint();
  const zero = Buffer.alloc(blockSize);
  const digest = (b: Buffer) => createHash('sha256').update(b).digest('base64');

  const oldSet = new Set<string>();
  let oldBlocks = 0;
  for await (const block of blocksOf(oldImage, blockSize)) {
    oldBlocks += 1;
    if (block.equals(zero)) continue;
    oldSet.add(digest(block));
  }
  const oldNonZeroBlocks = oldSet.size;

  const zargs = [`-${level}`, '-T2'];
  const z = zstdCounter(zargs);
  const seenNovel = new Set<string>();
  let newBlocks = 0;
  let newZeroBlocks = 0;
  let novelBlocks = 0;
  let novelBytes = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  for await (const block of blocksOf(newImage, blockSize)) {
    newBlocks += 1;
    if (block.equals(zero)) {
      newZeroBlocks += 1;
      continue;
    }
    const d = digest(block);
    if (oldSet.has(d)) continue;
    novelBlocks += 1;
    novelBytes += block.length;
    seenNovel.add(d);
    pending.push(Buffer.from(block)); // the generator reuses its buffer
    pendingBytes += block.length;
    if (pendingBytes >= 1 << 20) {
      await z.write(Buffer.concat(pending));
      pending = [];
      pendingBytes = 0;
    }
  }
  if (pending.length > 0) await z.write(Buffer.concat(pending));
  const novelCompressedBytes = await z.finish();
  return {
    blockSize,
    oldBlocks,
    oldNonZeroBlocks,
    newBlocks,
    newZeroBlocks,
    novelBlocks,
    novelBytes,
    uniqueNovelBlocks: seenNovel.size,
    novelCompressedBytes,
    compressor: `zstd ${zargs.join(' ')}`,
    seconds: round(secondsSince(start), 1),
  };
}

// ---------------------------------------------------------------------------------------------
// casync

export interface CasyncStore {
  image: string;
  store: string;
  index: string;
  indexBytes: number;
  chunks: number;
  storeBytes: number;
  /** chunk file name → size */
  chunkSizes: Map<string, number>;
  makeSeconds: number;
  makeMBps: number;
}

function listChunks(store: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const entry of readdirSync(store, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.cacnk')) {
      out.set(entry.name, 0);
    }
  }
  return out;
}

async function withSizes(store: string, names: Map<string, number>): Promise<void> {
  for (const name of names.keys()) {
    names.set(name, (await stat(join(store, name.slice(0, 4), name))).size);
  }
}

/** `casync make --store=<dir>/store <dir>/<name>.caibx image`, timed. */
export async function casyncMake(image: string, dir: string, name: string): Promise<CasyncStore> {
  await fresh(dir);
  const store = join(dir, 'store');
  const index = join(dir, `${name}.caibx`);
  const r = await run('casync', ['make', `--store=${store}`, index, image]);
  const chunkSizes = listChunks(store);
  await withSizes(store, chunkSizes);
  const size = await fileBytes(image);
  return {
    image,
    store,
    index,
    indexBytes: await fileBytes(index),
    chunks: chunkSizes.size,
    storeBytes: [...chunkSizes.values()].reduce((a, b) => a + b, 0),
    chunkSizes,
    makeSeconds: round(r.seconds, 2),
    makeMBps: round(mb(size) / r.seconds, 1),
  };
}

export interface CasyncResult {
  chunkSize: string;
  compression: string;
  make: {
    oldSeconds: number;
    oldMBps: number;
    newSeconds: number;
    newMBps: number;
    newChunks: number;
    newStoreBytes: number;
    indexBytes: number;
  };
  /** Chunks of new's store that old's store lacks, and what fetching them + the index costs. */
  estimate: { missingChunks: number; missingChunkBytes: number; downloadBytes: number };
  extractLocal: { seconds: number; verified: boolean };
  extractHttp: { seconds: number; bytesSent: number; requests: number; verified: boolean };
}

export async function measureCasync(opts: {
  old: CasyncStore;
  newImage: string;
  work: string;
  log: Log;
}): Promise<CasyncResult> {
  const { old, newImage, log } = opts;
  const work = await fresh(opts.work);
  log(`casync: make ${basename(newImage)}`);
  const neu = await casyncMake(newImage, join(work, 'new'), 'new');
  let missingChunks = 0;
  let missingChunkBytes = 0;
  for (const [name, size] of neu.chunkSizes) {
    if (old.chunkSizes.has(name)) continue;
    missingChunks += 1;
    missingChunkBytes += size;
  }

  log('casync: extract from the local store, seeded with the old image');
  const outLocal = join(work, 'out-local.raw');
  const local = await run('casync', [
    'extract',
    `--seed=${old.image}`,
    `--store=${neu.store}`,
    neu.index,
    outLocal,
  ]);
  const localOk = await sameContents(outLocal, newImage);
  await rm(outLocal, { force: true });

  log('casync: extract over HTTP, seeded with the old image');
  const server = await startStaticServer(join(work, 'new'));
  const outHttp = join(work, 'out-http.raw');
  let http: { seconds: number; bytesSent: number; requests: number };
  try {
    server.reset();
    const r = await run('casync', [
      'extract',
      `--seed=${old.image}`,
      `--store=${server.url}/store/`,
      `${server.url}/new.caibx`,
      outHttp,
    ]);
    http = {
      seconds: round(r.seconds, 2),
      bytesSent: server.bytesSent(),
      requests: server.requests(),
    };
  } finally {
    await server.close();
  }
  const httpOk = await sameContents(outHttp, newImage);
  await rm(outHttp, { force: true });
  removeLater(neu.store);

  return {
    chunkSize: 'default (avg 64 KiB)',
    compression: 'default (zstd)',
    make: {
      oldSeconds: old.makeSeconds,
      oldMBps: old.makeMBps,
      newSeconds: neu.makeSeconds,
      newMBps: neu.makeMBps,
      newChunks: neu.chunks,
      newStoreBytes: neu.storeBytes,
      indexBytes: neu.indexBytes,
    },
    estimate: {
      missingChunks,
      missingChunkBytes,
      downloadBytes: missingChunkBytes + neu.indexBytes,
    },
    extractLocal: { seconds: round(local.seconds, 2), verified: localOk },
    extractHttp: { ...http, verified: httpOk },
  };
}

// ---------------------------------------------------------------------------------------------
// zsync

export interface ZsyncResult {
  blockSize: number;
  zsyncFileBytes: number;
  makeSeconds: number;
  /** Everything the server sent: the .zsync file plus the ranges of new. */
  downloadBytes: number;
  requests: number;
  seconds: number;
  verified: boolean;
}

export async function measureZsync(opts: {
  oldImage: string;
  newImage: string;
  work: string;
  log: Log;
}): Promise<ZsyncResult> {
  const { oldImage, newImage, log } = opts;
  const work = await fresh(opts.work);
  const served = join(work, 'new.raw');
  await symlink(newImage, served);
  const control = join(work, 'new.zsync');
  log(`zsync: zsyncmake ${basename(newImage)}`);
  // A relative URL: the .zsync stays valid whatever port the server gets.
  const make = await run('zsyncmake', ['-o', control, '-u', 'new.raw', served], { cwd: work });
  const header = await readHead(control, 4096);
  const blockSize = Number(/^Blocksize: (\d+)$/m.exec(header)?.[1] ?? 0);

  const server = await startStaticServer(work);
  const out = join(work, 'out.raw');
  let result: { seconds: number; bytes: number; requests: number };
  try {
    log('zsync: fetch over HTTP, seeded with the old image');
    server.reset();
    const r = await run('zsync', ['-q', '-i', oldImage, '-o', out, `${server.url}/new.zsync`], {
      cwd: work,
      // zsync retries a response it cannot parse forever: bound it.
      timeoutMs: 30 * 60_000,
    });
    result = { seconds: r.seconds, bytes: server.bytesSent(), requests: server.requests() };
  } finally {
    await server.close();
  }
  const verified = await sameContents(out, newImage);
  await rm(out, { force: true });
  await rm(`${out}.zs-old`, { force: true });
  return {
    blockSize,
    zsyncFileBytes: await fileBytes(control),
    makeSeconds: round(make.seconds, 2),
    downloadBytes: result.bytes,
    requests: result.requests,
    seconds: round(result.seconds, 2),
    verified,
  };
}

async function readHead(path: string, n: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead).toString('latin1');
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// rsync

export interface RsyncResult {
  options: string;
  literalBytes: number;
  matchedBytes: number;
  /** Sent by the side holding new (the download, compressed). */
  totalBytesSent: number;
  /** Sent by the side holding old (its block checksums). */
  totalBytesReceived: number;
  seconds: number;
  verified: boolean;
}

function statNumber(stats: string, label: string): number {
  const m = new RegExp(`^${label}: ([\\d,.]+)`, 'm').exec(stats);
  if (!m || !m[1]) throw new Error(`rsync --stats output has no "${label}":\n${stats}`);
  return Number(m[1].replace(/,/g, ''));
}

export async function measureRsync(opts: {
  oldImage: string;
  newImage: string;
  work: string;
  log: Log;
}): Promise<RsyncResult> {
  const { oldImage, newImage, log } = opts;
  const work = await fresh(opts.work);
  const dest = join(work, 'dest.raw');
  await run('cp', ['--sparse=always', '--', oldImage, dest]);
  // A "remote shell" that runs the remote rsync locally: rsync then uses its network protocol
  // (delta transfer and -z compression), which it skips for a purely local copy.
  const rsh = join(work, 'rsh');
  await writeFile(rsh, '#!/bin/sh\nshift\nexec "$@"\n');
  await chmod(rsh, 0o755);
  const options = ['-z', '--no-W', '--stats'];
  log(`rsync: ${options.join(' ')} ${basename(newImage)} onto a copy of ${basename(oldImage)}`);
  const r = await run('rsync', [...options, '-e', rsh, newImage, `localhost:${dest}`]);
  const verified = await sameContents(dest, newImage);
  await rm(dest, { force: true });
  return {
    options: options.join(' '),
    literalBytes: statNumber(r.stdout, 'Literal data'),
    matchedBytes: statNumber(r.stdout, 'Matched data'),
    totalBytesSent: statNumber(r.stdout, 'Total bytes sent'),
    totalBytesReceived: statNumber(r.stdout, 'Total bytes received'),
    seconds: round(r.seconds, 2),
    verified,
  };
}

// ---------------------------------------------------------------------------------------------
// zstd of the whole image

export interface ZstdResult {
  command: string;
  level: number;
  bytes: number;
  seconds: number;
  /** Levels tried first that ran past the time limit. */
  abandoned: { level: number; afterSeconds: number }[];
}

export async function measureZstd(opts: {
  image: string;
  work: string;
  log: Log;
  levels?: number[];
  timeLimitSeconds?: number;
}): Promise<ZstdResult> {
  const work = await fresh(opts.work);
  const levels = opts.levels ?? [19, 12];
  const limit = opts.timeLimitSeconds ?? 240;
  const out = join(work, 'image.zst');
  const abandoned: { level: number; afterSeconds: number }[] = [];
  for (const [i, level] of levels.entries()) {
    const last = i === levels.length - 1;
    const args = [`-${level}`, '-T2', '--long=27', '-q', '-f', opts.image, '-o', out];
    opts.log(`zstd: ${args.slice(0, 3).join(' ')} ${basename(opts.image)}`);
    try {
      const r = await run('zstd', args, last ? {} : { timeoutMs: limit * 1000 });
      const bytes = await fileBytes(out);
      await rm(out, { force: true });
      return {
        command: describeCommand('zstd', args.slice(0, 3)),
        level,
        bytes,
        seconds: round(r.seconds, 1),
        abandoned,
      };
    } catch (err) {
      if (!(err instanceof CommandError && err.timedOut)) throw err;
      opts.log(`zstd: level ${level} took over ${limit} s; trying a lower level`);
      abandoned.push({ level, afterSeconds: limit });
      await rm(out, { force: true });
    }
  }
  throw new Error('zstd: no level given');
}

// ---------------------------------------------------------------------------------------------
// xdelta3: a whole-image VCDIFF delta (what Mender's delta updates are built on)

/** xdelta3's largest source window (-B), 2 GiB. */
const XDELTA3_MAX_WINDOW = 2 ** 31;

export interface Xdelta3Result {
  encode: string;
  decode: string;
  /** The delta a holder of old downloads. */
  deltaBytes: number;
  encodeSeconds: number;
  decodeSeconds: number;
  /** False when old is larger than xdelta3's largest source window (the delta then grows). */
  windowCoversOld: boolean;
  verified: boolean;
}

/**
 * `xdelta3 -9 -B <size of old> -e -s old new delta`, then `xdelta3 -d -s old delta out`; the
 * source window covers the whole old image, so a block that moved anywhere is still found.
 */
export async function measureXdelta3(opts: {
  oldImage: string;
  newImage: string;
  work: string;
  log: Log;
}): Promise<Xdelta3Result> {
  const { oldImage, newImage, log } = opts;
  const work = await fresh(opts.work);
  const oldBytes = await fileBytes(oldImage);
  const window = Math.min(oldBytes, XDELTA3_MAX_WINDOW);
  const delta = join(work, 'new.vcdiff');
  const out = join(work, 'out.raw');
  const encode = ['-9', '-B', String(window), '-e', '-s', oldImage, newImage, delta];
  log(`xdelta3: -9 -B ${window} -e ${basename(newImage)} against ${basename(oldImage)}`);
  const enc = await run('xdelta3', encode);
  const deltaBytes = await fileBytes(delta);
  // The same source window to apply it: without it xdelta3 rereads the old image per window.
  const decode = ['-d', '-B', String(window), '-s', oldImage, delta, out];
  log(`xdelta3: -d the ${(deltaBytes / 1e6).toFixed(1)} MB delta onto ${basename(oldImage)}`);
  const dec = await run('xdelta3', decode);
  const verified = await sameContents(out, newImage);
  await rm(work, { recursive: true, force: true });
  return {
    encode: describeCommand('xdelta3', encode.slice(0, 5)),
    decode: describeCommand('xdelta3', decode.slice(0, 4)),
    deltaBytes,
    encodeSeconds: round(enc.seconds, 1),
    decodeSeconds: round(dec.seconds, 1),
    windowCoversOld: window === oldBytes,
    verified,
  };
}
