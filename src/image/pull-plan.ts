import type { ChunkEntry } from './chunk-index.ts';
import { chooseFrames, type PackFrame } from './pack-plan.ts';
import { refPrefixes } from './read.ts';
import { MAX_DICTIONARY_BYTES } from './resemblance.ts';

/*
 * Where every chunk of a pulled image comes from (DESIGN §2), as a pure plan: given what
 * `<out>.partial` already holds, what the seeds hold and which chunks a pack covers, each target
 * entry is in place, or zeros, or a copy from a seed, or part of a pack frame, or a single
 * download from the store. pullImage applies the steps with one executor per action and plans
 * again until the plan is empty, so what a damaged pack frame did not deliver is fetched chunk by
 * chunk in the next round.
 */

/** A seed and its chunks, cut with the target's chunker. */
export interface SeedScan {
  path: string;
  entries: readonly ChunkEntry[];
}

/** What the journal of an interrupted pull of this same version says about `<out>.partial`. */
export interface Journal {
  /** The seed the partial file started as a reflink of; null for a sparse file. */
  base: string | null;
  /** Chunks verified and written into it. */
  done: ReadonlySet<string>;
}

/** `<out>.partial` as this pull set it up. */
export interface PartialFile {
  /** The seed it is a reflink copy of; null for a sparse file (whose holes are already zeros). */
  clonedFrom: string | null;
  /** Chunks an earlier, interrupted pull wrote into it. */
  done: ReadonlySet<string>;
}

export interface PullFacts {
  /** The target's chunk list, from the signed index. */
  target: readonly ChunkEntry[];
  /** Seeds in order of preference: a chunk two seeds hold is copied from the first. */
  seeds: readonly SeedScan[];
  /** A valid journal of an interrupted pull of this version, or null. */
  journal: Journal | null;
  /** Null until the partial file is set up (the first step of every pull). */
  partial: PartialFile | null;
  /** Target entries written by the steps of this pull so far. */
  placed: ReadonlySet<number>;
  /** Whether the target has a parent version, so that a pack may lead to it. */
  hasParent: boolean;
  /**
   * The frames of the pack from the parent that agree with the signed index: null until the
   * pack index is read; empty when there is none or once the pack has been used.
   */
  pack: readonly PackFrame[] | null;
}

/** One chunk to write at target entries `at` (indexes into the target list). */
export interface Placement {
  digest: string;
  length: number;
  at: number[];
}

/** Where a seed holds a chunk: `length` bytes at `offset` of `seed`. */
export interface SeedChunk {
  digest: string;
  length: number;
  seed: string;
  offset: number;
}

/** A chunk to copy from a seed. */
export interface SeedCopy extends Placement, SeedChunk {}

export type PullStep =
  /** Continue the partial file an interrupted pull left, with what its journal lists. */
  | { action: 'resumePartial'; clonedFrom: string | null; done: ReadonlySet<string> }
  /** Start the partial file afresh: a reflink of `base` where the file system allows, else sparse. */
  | { action: 'startPartial'; base: string | null }
  /** A clone holds the base's bytes where the target has holes: write zeros there. */
  | { action: 'zeroHoles'; at: number[] }
  | { action: 'copyFromSeeds'; chunks: SeedCopy[] }
  | { action: 'readPackIndex' }
  /**
   * Fetch whole frames of the pack; `chunks` are the wanted ones among theirs, `refs` where the
   * seeds hold the chunks the frames were compressed against.
   */
  | { action: 'fetchFrames'; frames: PackFrame[]; chunks: Placement[]; refs: SeedChunk[] }
  | { action: 'fetchChunks'; chunks: Placement[] };

export type PullAction = PullStep['action'];

/** The steps that bring `<out>.partial` closer to the target; empty when it holds all of it. */
export function planPull(facts: PullFacts): PullStep[] {
  const { target, partial } = facts;
  if (!partial) {
    const base = chooseBase(target, facts.seeds);
    const journal = facts.journal;
    // Only a pull of the same version onto the same base may continue from a partial file.
    if (journal && (journal.base === null || journal.base === base?.path)) {
      return [{ action: 'resumePartial', clonedFrom: journal.base, done: journal.done }];
    }
    return [{ action: 'startPartial', base: base?.path ?? null }];
  }

  const inPlace = inPlaceAtStart(facts.target, facts.seeds, partial);
  for (const i of facts.placed) inPlace.add(i);
  const holes: number[] = [];
  // Grouped by digest: a chunk is read once and written wherever it occurs.
  const wanted = new Map<string, Placement>();
  target.forEach((e, i) => {
    if (inPlace.has(i)) return;
    if (e.digest === null) {
      holes.push(i);
      return;
    }
    const w = wanted.get(e.digest);
    if (w) w.at.push(i);
    else wanted.set(e.digest, { digest: e.digest, length: e.length, at: [i] });
  });

  const local = seedIndex(facts.seeds);
  const copies: SeedCopy[] = [];
  const missing: Placement[] = [];
  for (const w of wanted.values()) {
    const at = local.get(w.digest);
    if (at) copies.push({ ...w, seed: at.path, offset: at.offset });
    else missing.push(w);
  }

  const steps: PullStep[] = [];
  if (holes.length > 0) steps.push({ action: 'zeroHoles', at: holes });
  if (copies.length > 0) steps.push({ action: 'copyFromSeeds', chunks: copies });
  if (missing.length === 0) return steps;
  if (facts.hasParent && facts.pack === null) {
    // Whether a pack is worth it depends on its index: read it, then plan the downloads.
    steps.push({ action: 'readPackIndex' });
    return steps;
  }
  // A frame compressed against chunks of the parent decodes only where the seeds hold them all.
  const byPrefix = facts.pack?.some((f) => f.refs.length > 0) ? refPrefixes(local.keys()) : null;
  const refsOf = new Map<PackFrame, string[]>();
  const decodable = (facts.pack ?? []).filter((f) => {
    let bytes = 0;
    const refs: string[] = [];
    for (const p of f.refs) {
      const d = byPrefix?.get(p);
      if (!d) return false;
      bytes += local.get(d)!.length;
      refs.push(d);
    }
    refsOf.set(f, refs);
    return bytes <= MAX_DICTIONARY_BYTES;
  });
  const frames = chooseFrames(
    decodable,
    new Set(missing.map((m) => m.digest)),
    new Map(missing.map((m) => [m.digest, m.length])),
  );
  const inFrames = new Set(frames.flatMap((f) => f.chunks));
  const fromPack = missing.filter((m) => inFrames.has(m.digest));
  const single = missing.filter((m) => !inFrames.has(m.digest));
  if (frames.length > 0) {
    const refs = [...new Set(frames.flatMap((f) => refsOf.get(f)!))].map((d) => {
      const at = local.get(d)!;
      return { digest: d, length: at.length, seed: at.path, offset: at.offset };
    });
    steps.push({ action: 'fetchFrames', frames, chunks: fromPack, refs });
  }
  if (single.length > 0) steps.push({ action: 'fetchChunks', chunks: single });
  return steps;
}

/**
 * Target entries whose bytes are right in the partial file before any step writes: in a sparse
 * file every hole; in a clone what the base holds at the same offsets; after an interruption,
 * every chunk the journal lists.
 */
export function inPlaceAtStart(
  target: readonly ChunkEntry[],
  seeds: readonly SeedScan[],
  partial: PartialFile,
): Set<number> {
  const base =
    partial.clonedFrom === null ? undefined : seeds.find((s) => s.path === partial.clonedFrom);
  const inPlace = new Set(base ? sameOffsets(target, base.entries) : []);
  target.forEach((e, i) => {
    if (e.digest === null ? partial.clonedFrom === null : partial.done.has(e.digest)) {
      inPlace.add(i);
    }
  });
  return inPlace;
}

/**
 * What a pull takes from this machine rather than the store: the data chunks in place at the
 * start or held by a seed, and their bytes (every occurrence counted).
 */
export function reuseOf(facts: PullFacts): { chunks: number; bytes: number } {
  if (!facts.partial) return { chunks: 0, bytes: 0 };
  const inPlace = inPlaceAtStart(facts.target, facts.seeds, facts.partial);
  const local = seedIndex(facts.seeds);
  let chunks = 0;
  let bytes = 0;
  facts.target.forEach((e, i) => {
    if (e.digest !== null && (inPlace.has(i) || local.has(e.digest))) {
      chunks++;
      bytes += e.length;
    }
  });
  return { chunks, bytes };
}

/**
 * The seed that already holds the most of the target at the right offsets: reflinked where the
 * file system allows, so unchanged ranges are never copied. Null when none holds any.
 */
export function chooseBase(
  target: readonly ChunkEntry[],
  seeds: readonly SeedScan[],
): { path: string; bytes: number } | null {
  let best: { path: string; bytes: number } | null = null;
  for (const s of seeds) {
    let bytes = 0;
    for (const i of sameOffsets(target, s.entries)) bytes += target[i]!.length;
    if (!best || bytes > best.bytes) best = { path: s.path, bytes };
  }
  return best && best.bytes > 0 ? best : null;
}

/** Indexes of target entries a seed holds at the same offset. */
function sameOffsets(target: readonly ChunkEntry[], seed: readonly ChunkEntry[]): number[] {
  const at = new Map(seed.map((e) => [e.offset, e]));
  const same: number[] = [];
  target.forEach((e, i) => {
    const o = at.get(e.offset);
    // Holes count too: in a fresh file they are free, in a clone they must already be zero.
    if (o && o.length === e.length && o.digest === e.digest) same.push(i);
  });
  return same;
}

/** Where each digest the seeds hold can be read; the first seed that holds it wins. */
function seedIndex(
  seeds: readonly SeedScan[],
): Map<string, { path: string; offset: number; length: number }> {
  const local = new Map<string, { path: string; offset: number; length: number }>();
  for (const s of seeds) {
    for (const e of s.entries) {
      if (e.digest !== null && !local.has(e.digest)) {
        local.set(e.digest, { path: s.path, offset: e.offset, length: e.length });
      }
    }
  }
  return local;
}
