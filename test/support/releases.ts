import type { Release } from '../../src/engine/index.ts';
import type { VolumeRef } from '../../src/protocol/index.ts';

/** A system volume `os` at version `v`, with ids derived from `v`. */
export function volumeRef(v: string): VolumeRef {
  return {
    image: 'os',
    imageId: 'img',
    version: v,
    versionId: `ver-${v}`,
    manifestId: v.repeat(64).slice(0, 64),
    size: 1,
  };
}

/** A release of only the system volume `os` at version `v`. */
export function systemRelease(v: string): Release {
  return { system: volumeRef(v), apps: [] };
}
