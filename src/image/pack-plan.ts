import type { PackIndex } from '../protocol/index.ts';

/** Single fetches cost more than their share of a frame: worse compression, a request each. */
const SINGLE_FETCH_PENALTY = 1.6;
const REQUEST_OVERHEAD = 300;

/**
 * The frames of a pack worth fetching for the `missing` chunks: those that cost less than
 * fetching their wanted chunks one by one (estimated from the frame's own compression ratio).
 */
export function chooseFrames(
  frames: PackIndex['frames'],
  missing: ReadonlySet<string>,
  lengthOf: ReadonlyMap<string, number>,
): PackIndex['frames'] {
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
