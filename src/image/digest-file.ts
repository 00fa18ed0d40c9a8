import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

/** SHA-256 of a file's first `size` bytes, streamed. */
export async function sha256File(
  path: string,
  size?: number,
  onProgress?: (done: number) => void,
): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const total = size ?? (await fh.stat()).size;
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let pos = 0; pos < total;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, total - pos), pos);
      if (bytesRead === 0) throw new Error(`${path} ended at byte ${pos}, expected ${total}`);
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
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
