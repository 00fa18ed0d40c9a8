import { execFile } from 'node:child_process';
import { mkdir, open, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { replaceFile, replaceFileByCopy } from '../../durable/index.ts';
import { BulkheadError, ErrorCodes, errnoCode, isValidName } from '../../protocol/index.ts';
import { writeError } from '../fs-errors.ts';
import type { StoreKey } from './layout.ts';
import type { WritableChunkStore, WriteOptions } from './types.ts';

/** A store in a local directory. Objects are files; writes go to a temp file, then rename. */
export class DirectoryStore implements WritableChunkStore {
  readonly location: string;
  private read_ = 0;
  private readonly madeDirs = new Set<string>();

  constructor(root: string) {
    this.location = resolve(root);
  }

  get bytesRead(): number {
    return this.read_;
  }

  private path(key: StoreKey): string {
    return join(this.location, key);
  }

  localPath(key: StoreKey): string {
    return this.path(key);
  }

  async localPathForWrite(key: StoreKey): Promise<string> {
    const path = this.path(key);
    await this.ensureDir(dirname(path));
    return path;
  }

  async read(key: StoreKey, maxBytes: number): Promise<Buffer> {
    const path = this.path(key);
    let fh;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      throw notFoundOr(err, key, this.location);
    }
    try {
      const { size } = await fh.stat();
      if (size > maxBytes) {
        throw new BulkheadError(
          ErrorCodes.OBJECT_TOO_LARGE,
          `${key} in ${this.location} is ${size} bytes, more than the ${maxBytes} allowed`,
        );
      }
      const buf = await fh.readFile();
      this.read_ += buf.length;
      return buf;
    } catch (err) {
      throw notFoundOr(err, key, this.location);
    } finally {
      await fh.close();
    }
  }

  async readRange(key: StoreKey, start: number, length: number): Promise<Buffer> {
    let fh;
    try {
      fh = await open(this.path(key), 'r');
    } catch (err) {
      throw notFoundOr(err, key, this.location);
    }
    try {
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, start + done);
        if (bytesRead === 0) {
          throw new BulkheadError(
            ErrorCodes.OBJECT_NOT_FOUND,
            `${key} in ${this.location} ends before byte ${start + length}`,
          );
        }
        done += bytesRead;
      }
      this.read_ += length;
      return buf;
    } finally {
      await fh.close();
    }
  }

  async has(key: StoreKey): Promise<boolean> {
    try {
      return (await stat(this.path(key))).isFile();
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return false;
      throw notFoundOr(err, key, this.location);
    }
  }

  async write(key: StoreKey, data: Uint8Array, options: WriteOptions = {}): Promise<void> {
    const path = this.path(key);
    if (options.atomic === false) {
      // Content-addressed objects that every reader verifies: a crash may leave a partial
      // file, which the next import finds wrong and rewrites. Saves a rename per chunk.
      await this.ensureDir(dirname(path));
      try {
        await writeFile(path, data, { mode: 0o644 });
      } catch (err) {
        await unlink(path).catch(() => {});
        throw writeError(err, path);
      }
      return;
    }
    await this.ensureDir(dirname(path));
    try {
      await replaceFile(path, data, { mode: 0o644, durable: options.durable ?? false });
    } catch (err) {
      throw writeError(err, path);
    }
  }

  async writeFromFile(key: StoreKey, source: string, options: WriteOptions = {}): Promise<void> {
    const path = this.path(key);
    await this.ensureDir(dirname(path));
    try {
      await replaceFileByCopy(path, source, { durable: options.durable ?? false });
    } catch (err) {
      throw writeError(err, path);
    }
  }

  private async ensureDir(dir: string): Promise<void> {
    if (this.madeDirs.has(dir)) return;
    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      throw writeError(err, dir);
    }
    this.madeDirs.add(dir);
  }

  async sync(): Promise<void> {
    // syncfs(2) through coreutils: one call flushes every chunk written, where an fsync per
    // chunk would cost a disk flush each.
    try {
      await promisify(execFile)('sync', ['-f', this.location]);
    } catch (err) {
      throw writeError(err, this.location);
    }
  }

  async list(folder: string): Promise<string[]> {
    const parts = folder.split('/');
    if (parts.some((p) => !isValidName(p))) {
      throw new BulkheadError(ErrorCodes.INVALID_NAME, `"${folder}" is not a folder of a store`);
    }
    try {
      const names = await readdir(join(this.location, folder));
      return names.filter((n) => !n.startsWith('.')).sort();
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw notFoundOr(err, folder as StoreKey, this.location);
    }
  }

  /** Whether the store's directory exists. */
  async exists(): Promise<boolean> {
    return stat(this.location).then(
      (s) => s.isDirectory(),
      () => false,
    );
  }

  /** Size in bytes of a stored object. */
  async sizeOf(key: StoreKey): Promise<number> {
    try {
      return (await stat(join(this.location, key))).size;
    } catch (err) {
      throw notFoundOr(err, key, this.location);
    }
  }

  async remove(key: StoreKey): Promise<void> {
    await rm(this.path(key), { force: true });
  }

  async close(): Promise<void> {}
}

function notFoundOr(err: unknown, key: string, location: string): BulkheadError {
  if (err instanceof BulkheadError) return err;
  const code = errnoCode(err);
  if (code === 'ENOENT' || code === 'ENOTDIR') {
    return new BulkheadError(
      ErrorCodes.OBJECT_NOT_FOUND,
      `${key} is not in the store ${location}`,
      { cause: err },
    );
  }
  return new BulkheadError(
    ErrorCodes.STORE_UNAVAILABLE,
    `cannot read ${key} in ${location}: ${code ?? String(err)}`,
    {
      cause: err,
      retryable: true,
    },
  );
}
