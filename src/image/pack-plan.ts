import type { PackFrame } from '../protocol/index.ts';
import { zstdBound } from './read.ts';

export type { PackFrame };

/** Single fetches cost more than their share of a frame: worse compression, a request each. */
const SINGLE_FETCH_PENALTY = 1.6;
const REQUEST_OVERHEAD = 300;

/**
 * The frames of a pack worth fetching for the `missing` chunks: those that cost less than
 * fetching their wanted chunks one by one (estimated from the frame's own compression ratio).
 */
export function chooseFrames(
  frames: readonly PackFrame[],
  missing: ReadonlySet<string>,
  lengthOf: ReadonlyMap<string, number>,
): PackFrame[] {
  return frames.filter((f) => {
    let wanted = 0;
    let wantedBytes = 0;
    for (const d of f.chunks) {
      if (!missing.has(d)) continue;
      wanted++;
      wantedBytes += lengthOf.get(d) ?? 0;
    }
    if (wanted === 0 || f.rawBytes === 0) return false;
    const single =
      (wantedBytes * f.bytes * SINGLE_FETCH_PENALTY) / f.rawBytes + wanted * REQUEST_OVERHEAD;
    return f.bytes <= single;
  });
}

/**
 * The frames whose claims agree with the signed chunk index: every chunk one of the target's,
 * their lengths adding up to the frame's raw size, its compressed size within zstd's bound. The
 * pack index is not signed, so this also bounds what is downloaded and inflated for a frame.
 */
export function consistentFrames(
  frames: readonly PackFrame[],
  lengthOf: ReadonlyMap<string, number>,
): PackFrame[] {
  return frames.filter((f) => {
    let raw = 0;
    for (const d of f.chunks) {
      const length = lengthOf.get(d);
      if (length === undefined) return false;
      raw += length;
    }
    return raw === f.rawBytes && f.bytes <= zstdBound(f.rawBytes);
  });
}
