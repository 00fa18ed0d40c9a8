import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

/** SHA-256 of a file's first `size` bytes, streamed: the next slice is read while one is hashed. */
export async function sha256File(
  path: string,
  size?: number,
  onProgress?: (done: number) => void,
): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const total = size ?? (await fh.stat()).size;
    const slice = 8 * 1024 * 1024;
    const buffers = [Buffer.allocUnsafe(slice), Buffer.allocUnsafe(slice)];
    const readAt = async (pos: number, buf: Buffer) => {
      const length = Math.min(slice, total - pos);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, pos + done);
        if (bytesRead === 0)
          throw new Error(`${path} ended at byte ${pos + done}, expected ${total}`);
        done += bytesRead;
      }
      return buf.subarray(0, length);
    };
    let next = total > 0 ? readAt(0, buffers[0]!) : null;
    for (let pos = 0, k = 0; next; k ^= 1) {
      const data = await next;
      const after = pos + data.length;
      next = after < total ? readAt(after, buffers[k ^ 1]!) : null;
      h.update(data);
      pos = after;
      onProgress?.(pos);
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Runs `fn` over `items` with at most `limit` in flight; rejects on the first failure. */
export async function forEachLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
