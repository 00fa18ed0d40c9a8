import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import type { StoreKey } from './layout.ts';
import type { ChunkStore } from './types.ts';

/**
 * A read-only store behind any static HTTP(S) server, mirror or CDN. Uses Node's fetch, whose
 * connection pool keeps connections alive; callers fetch in parallel by issuing several
 * requests at once. Nothing from the server is trusted: callers verify every byte.
 */
export class HttpStore implements ChunkStore {
  readonly location: string;
  private read_ = 0;
  private readonly base: URL;
  private readonly timeoutMs: number;
  private readonly headers: Record<string, string>;
  private readonly signal: AbortSignal | undefined;

  /** `signal` ends every request under way, the body being read included, when it aborts. */
  constructor(
    baseUrl: string,
    options: { timeoutMs?: number; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ) {
    const url = new URL(baseUrl);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new BulkheadError(ErrorCodes.USAGE, `${baseUrl} is not an http(s) URL`);
    }
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    this.base = url;
    this.location = url.toString();
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.headers = options.headers ?? {};
    this.signal = options.signal;
  }

  get bytesRead(): number {
    return this.read_;
  }

  private url(key: StoreKey): URL {
    // Keys are validated relative paths; resolving against the base keeps them under it.
    return new URL(key, this.base);
  }

  async read(key: StoreKey, maxBytes: number): Promise<Buffer> {
    const res = await this.request(key, 'GET');
    const length = Number(res.headers.get('content-length') ?? NaN);
    if (length > maxBytes) {
      await res.body?.cancel();
      throw tooLarge(key, length, maxBytes, this.location);
    }
    return this.body(res, key, maxBytes);
  }

  async readRange(key: StoreKey, start: number, length: number): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    const res = await this.request(key, 'GET', { range: `bytes=${start}-${start + length - 1}` });
    if (res.status === 206) {
      const buf = await this.body(res, key, length);
      if (buf.length !== length)
        throw unavailable(
          `${key}: short range response (${buf.length} of ${length} bytes)`,
          this.location,
        );
      return buf;
    }
    // A server without range support sends the whole object: take our slice of it.
    const whole = await this.body(res, key, start + length + (1 << 30));
    if (whole.length < start + length) {
      throw new BulkheadError(
        ErrorCodes.OBJECT_NOT_FOUND,
        `${key} at ${this.location} ends before byte ${start + length}`,
      );
    }
    return whole.subarray(start, start + length);
  }

  async has(key: StoreKey): Promise<boolean> {
    try {
      const res = await this.request(key, 'HEAD');
      await res.body?.cancel();
      return true;
    } catch (err) {
      if (err instanceof BulkheadError && err.code === ErrorCodes.OBJECT_NOT_FOUND) return false;
      throw err;
    }
  }

  private async request(
    key: StoreKey,
    method: string,
    extra: Record<string, string> = {},
  ): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(this.url(key), {
        method,
        headers: { ...this.headers, ...extra },
        redirect: 'follow',
        signal:
          this.signal === undefined
            ? AbortSignal.timeout(this.timeoutMs)
            : AbortSignal.any([AbortSignal.timeout(this.timeoutMs), this.signal]),
      });
    } catch (err) {
      throw unavailable(`${method} ${key}: ${describeFetchError(err)}`, this.location, err);
    }
    if (res.status === 404 || res.status === 410) {
      await res.body?.cancel();
      throw new BulkheadError(
        ErrorCodes.OBJECT_NOT_FOUND,
        `${key} is not at ${this.location} (HTTP ${res.status})`,
      );
    }
    if (!res.ok) {
      await res.body?.cancel();
      const retryable = res.status >= 500 || res.status === 429 || res.status === 408;
      throw new BulkheadError(
        ErrorCodes.STORE_UNAVAILABLE,
        `${method} ${key} at ${this.location} answered HTTP ${res.status}`,
        {
          retryable,
        },
      );
    }
    return res;
  }

  private async body(res: Response, key: StoreKey, maxBytes: number): Promise<Buffer> {
    const parts: Uint8Array[] = [];
    let total = 0;
    try {
      if (res.body) {
        for await (const part of res.body) {
          total += part.byteLength;
          this.read_ += part.byteLength;
          if (total > maxBytes) throw tooLarge(key, total, maxBytes, this.location);
          parts.push(part);
        }
      }
    } catch (err) {
      if (err instanceof BulkheadError) throw err;
      throw unavailable(`reading ${key}: ${describeFetchError(err)}`, this.location, err);
    }
    return Buffer.concat(parts, total);
  }

  async close(): Promise<void> {}
}

function describeFetchError(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return `${err.message}${cause}`;
  }
  return String(err);
}

function unavailable(message: string, location: string, cause?: unknown): BulkheadError {
  return new BulkheadError(ErrorCodes.STORE_UNAVAILABLE, `store ${location} failed: ${message}`, {
    cause,
    retryable: true,
    hint: 'check the connection and run the command again; what was already verified is kept',
  });
}

function tooLarge(key: string, size: number, max: number, location: string): BulkheadError {
  return new BulkheadError(
    ErrorCodes.OBJECT_TOO_LARGE,
    `${key} at ${location} is ${size} bytes or more, more than the ${max} allowed`,
  );
}
