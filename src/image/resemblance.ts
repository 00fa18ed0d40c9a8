import { createHash } from 'node:crypto';

/*
 * Resemblance detection for delta-encoding a pack (DESIGN §2): most chunks new in a patch are
 * near-copies of chunks the PC already holds (a package's next version, an edited config, a
 * rewritten metadata block). Each chunk gets a *sketch* of super-features in the line of the
 * N-transform, Finesse and Odess work: a Gear hash rolls over the bytes, positions where it
 * matches a mask are sampled (content-defined, so an insertion moves samples with the content),
 * FEATURES linear transforms of the hash are maximised over the samples, and each group of
 * FEATURES / SUPER_FEATURES features is hashed into one super-feature. Two chunks that share a
 * super-feature very likely share most of their content; the chunk sharing the most is the
 * reference a new chunk is compressed against.
 */

/**
 * Window of a pack frame compressed against the chunks it resembles: the dictionary and the frame
 * both fit (a few MiB each), within what zstd decoders accept by default (2^27).
 */
export const DICTIONARY_WINDOW_LOG = 26;

/**
 * Most bytes of references one frame may name: the writer stops adding references there, a
 * reader refuses frames that need more (a pack index is not signed).
 */
export const MAX_DICTIONARY_BYTES = 32 * 1024 * 1024;

/**
 * Sketches are taken per 4 KiB block, not per chunk: file systems keep files in blocks, and a
 * rebuilt image cuts a changed file into chunks other than the old ones, so a new chunk is
 * usually made of blocks from two or more old chunks. Each block finds its own reference.
 */
export const SKETCH_BLOCK = 4096;

export const FEATURES = 12;
export const SUPER_FEATURES = 3;
const PER_SUPER = FEATURES / SUPER_FEATURES;
/** One position in 2^7 is sampled: about 32 samples in a 4 KiB block. */
const SAMPLE_MASK = (1 << 7) - 1;

/** Deterministic constants: the same sketches on every machine and in every version. */
function table(label: string, n: number): Uint32Array {
  const out = new Uint32Array(n);
  let filled = 0;
  for (let counter = 0; filled < n; counter++) {
    const block = createHash('sha256').update(`bulkhead-resemblance-${label}-${counter}`).digest();
    for (let i = 0; i + 4 <= block.length && filled < n; i += 4)
      out[filled++] = block.readUInt32LE(i);
  }
  return out;
}

const GEAR = table('gear', 256);
// Odd multipliers keep each transform a bijection of the 32-bit hash.
const MUL = table('mul', FEATURES).map((m) => m | 1);
const ADD = table('add', FEATURES);

/**
 * The super-features of `data`, or null when it has too little content to sample (such chunks
 * are left to plain compression).
 */
export function sketch(data: Uint8Array): Uint32Array | null {
  const max = new Uint32Array(FEATURES);
  let h = 0;
  let samples = 0;
  for (let i = 0; i < data.length; i++) {
    h = ((h << 1) + GEAR[data[i]!]!) | 0;
    if ((h & SAMPLE_MASK) !== 0) continue;
    samples++;
    for (let k = 0; k < FEATURES; k++) {
      const t = (Math.imul(MUL[k]!, h) + ADD[k]!) >>> 0;
      if (t > max[k]!) max[k] = t;
    }
  }
  if (samples < 2) return null;
  const out = new Uint32Array(SUPER_FEATURES);
  for (let s = 0; s < SUPER_FEATURES; s++) {
    let x = 0x9e3779b9 ^ s;
    for (let k = s * PER_SUPER; k < (s + 1) * PER_SUPER; k++) {
      x = Math.imul(x ^ max[k]!, 0x85ebca6b);
      x ^= x >>> 13;
    }
    out[s] = x >>> 0;
  }
  return out;
}

/**
 * Candidate references by super-feature. `add` the chunks a PC holds, then `find` the one most
 * like a new chunk: the candidate sharing the most super-features (the first added wins a tie).
 */
export class ResemblanceIndex<T> {
  private readonly tables = Array.from({ length: SUPER_FEATURES }, () => new Map<number, T>());

  add(sketch: Uint32Array, value: T): void {
    for (let s = 0; s < SUPER_FEATURES; s++) {
      const t = this.tables[s]!;
      if (!t.has(sketch[s]!)) t.set(sketch[s]!, value);
    }
  }

  find(sketch: Uint32Array): T | undefined {
    let best: T | undefined;
    let bestCount = 0;
    const counts = new Map<T, number>();
    for (let s = 0; s < SUPER_FEATURES; s++) {
      const v = this.tables[s]!.get(sketch[s]!);
      if (v === undefined) continue;
      const c = (counts.get(v) ?? 0) + 1;
      counts.set(v, c);
      if (c > bestCount) {
        best = v;
        bestCount = c;
      }
    }
    return best;
  }
}
