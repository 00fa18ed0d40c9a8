import { DirectoryStore } from './directory.ts';
import { HttpStore } from './http.ts';
import type { ChunkStore } from './types.ts';

export * from './layout.ts';
export type { ChunkStore, WritableChunkStore } from './types.ts';
export { DirectoryStore, HttpStore };

/** Opens a store from a directory path or an http(s) URL. */
export function openStore(location: string): ChunkStore {
  return /^https?:\/\//i.test(location) ? new HttpStore(location) : new DirectoryStore(location);
}
