import type { ChunkStore, StoreKey } from '../../image/index.ts';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';

/**
 * A token bucket shared by every request of one download: reads go on at once while the bucket
 * holds tokens and then wait for it to refill at `bytesPerSec`. A read's size is known only when
 * it arrives, so a large read takes the bucket into debt and the next read waits for it.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly burst: number;
  private readonly bytesPerSec: number;
  private readonly now: () => number;

  constructor(bytesPerSec: number, options: { burstBytes?: number; now?: () => number } = {}) {
    if (!(bytesPerSec > 0)) throw new RangeError('bytesPerSec must be positive');
    this.bytesPerSec = bytesPerSec;
    this.burst = options.burstBytes ?? Math.max(64 * 1024, bytesPerSec / 4);
    this.now = options.now ?? (() => performance.now());
    this.tokens = this.burst;
    this.last = this.now();
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.bytesPerSec);
    this.last = t;
  }

  /** Milliseconds to wait before the next request may start. */
  delayMs(): number {
    this.refill();
    return this.tokens >= 0 ? 0 : (-this.tokens / this.bytesPerSec) * 1000;
  }

  /** Takes `bytes` received. */
  take(bytes: number): void {
    this.refill();
    this.tokens -= bytes;
  }

  async wait(signal?: AbortSignal): Promise<void> {
    for (let ms = this.delayMs(); ms > 0 && !signal?.aborted; ms = this.delayMs()) {
      await new Promise((r) => setTimeout(r, Math.min(ms, 1000)));
    }
  }
}

/**
 * A store whose reads are paced by a token bucket (when given) and stop once `signal` aborts;
 * everything else passes through. An abort is a non-retryable store fault, so a pull keeps
 * what it verified and the next one resumes from there.
 */
export class ThrottledStore implements ChunkStore {
  readonly location: string;
  private readonly inner: ChunkStore;
  private readonly bucket: TokenBucket | undefined;
  private readonly signal: AbortSignal | undefined;

  constructor(inner: ChunkStore, bucket?: TokenBucket, signal?: AbortSignal) {
    this.inner = inner;
    this.bucket = bucket;
    this.signal = signal;
    this.location = inner.location;
  }

  private async before(): Promise<void> {
    if (this.signal?.aborted) throw aborted(this.location);
    await this.bucket?.wait(this.signal);
  }

  get bytesRead(): number {
    return this.inner.bytesRead;
  }

  async read(key: StoreKey, maxBytes: number): Promise<Buffer> {
    await this.before();
    const data = await this.inner.read(key, maxBytes);
    this.bucket?.take(data.length);
    return data;
  }

  async readRange(key: StoreKey, start: number, length: number): Promise<Buffer> {
    await this.before();
    const data = await this.inner.readRange(key, start, length);
    this.bucket?.take(data.length);
    return data;
  }

  has(key: StoreKey): Promise<boolean> {
    return this.inner.has(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

function aborted(location: string): BulkheadError {
  return new BulkheadError(ErrorCodes.STORE_UNAVAILABLE, `download from ${location} was stopped`, {
    retryable: false,
  });
}
