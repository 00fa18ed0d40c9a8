import type { StoreKey } from './layout.ts';

/**
 * A place image objects are read from: a local directory, an HTTP(S) mirror or CDN, later an
 * object store. Objects are immutable once written, except `catalog.json`.
 *
 * Every method may throw a BulkheadError:
 * - ERR_OBJECT_NOT_FOUND when the object is absent (not retryable);
 * - ERR_OBJECT_TOO_LARGE when it is bigger than the caller's bound (not retryable);
 * - ERR_STORE_UNAVAILABLE for I/O or network faults (retryable: the same call may succeed).
 * Implementations never follow a key outside the store's root.
 */
export interface ChunkStore {
  /** The directory or URL, for messages. */
  readonly location: string;
  /** Body bytes received from the store so far by this instance (what crossed the network). */
  readonly bytesRead: number;
  /** Reads a whole object of at most `maxBytes` bytes. */
  read(key: StoreKey, maxBytes: number): Promise<Buffer>;
  /** Reads `length` bytes at `start` of an object; fails if the object is shorter. */
  readRange(key: StoreKey, start: number, length: number): Promise<Buffer>;
  /** True if the object exists. */
  has(key: StoreKey): Promise<boolean>;
  /** Releases connections and handles. */
  close(): Promise<void>;
}

export interface WriteOptions {
  /** On stable storage when the write resolves (else call `sync()` before publishing). */
  durable?: boolean;
  /**
   * Default true: readers see the old state or the whole object. False allows a crash to leave
   * a partial object under its name; only for content-addressed objects that every reader
   * verifies (chunks), where it saves a rename per object.
   */
  atomic?: boolean;
}

/** A store that can also be written: a local directory today. */
export interface WritableChunkStore extends ChunkStore {
  /**
   * Writes an object atomically: readers see the old state or the whole new object, never a
   * part. With `durable`, the object is on stable storage when the promise resolves; otherwise
   * call `sync()` before publishing anything that refers to it.
   * Throws ERR_DISK_FULL when the disk is full (the partial object is removed).
   */
  write(key: StoreKey, data: Uint8Array, options?: WriteOptions): Promise<void>;
  /**
   * The file an object is in, when the store is a local directory: worker threads read chunks
   * from there directly, without a round trip through this thread per chunk.
   */
  localPath?(key: StoreKey): string;
  /**
   * The file an object of a local store is to be written to in place by another thread, its
   * folder made. As write with `atomic: false`: only for objects every reader verifies.
   */
  localPathForWrite?(key: StoreKey): Promise<string>;
  /** Writes an object from a file by moving or copying it in; same guarantees as write. */
  writeFromFile(key: StoreKey, path: string, options?: WriteOptions): Promise<void>;
  /** Flushes every earlier write to stable storage. */
  sync(): Promise<void>;
  /** Names of the direct children of a folder of the store (e.g. `manifests`), sorted. */
  list(folder: string): Promise<string[]>;
  /** Removes an object; absent is fine. */
  remove(key: StoreKey): Promise<void>;
}
