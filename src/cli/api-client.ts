import type { z } from 'zod';
import { BulkheadError, ErrorCodes, type ErrorCode } from '../protocol/index.ts';

export interface ApiClientOptions {
  /** Center's base URL, e.g. `http://127.0.0.1:8080` (a trailing slash is fine). */
  baseUrl: string;
  /** Bearer token (a session or an API token); never logged or printed. */
  token?: string | undefined;
  /** Per-request timeout in milliseconds (default 120 s). */
  timeoutMs?: number;
}

export interface RequestOptions<T> {
  /** JSON body. */
  body?: unknown;
  /** Query parameters; undefined values are left out. */
  query?: Record<string, string | number | boolean | undefined>;
  /** Checks the response body; a mismatch is ERR_CENTER_PROTOCOL. */
  schema?: z.ZodType<T>;
}

const KNOWN_CODES = new Set<string>(Object.values(ErrorCodes));

/**
 * A small client of Center's admin API for the CLI: base URL, bearer token, JSON requests and
 * raw uploads. Center's error bodies (`{ error: { code, message } }`) become BulkheadErrors with
 * the same code, so commands report them like local failures.
 */
export class ApiClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(options: ApiClientOptions) {
    let url: URL;
    try {
      url = new URL(options.baseUrl);
    } catch {
      throw new BulkheadError(ErrorCodes.USAGE, `"${options.baseUrl}" is not a URL of Center`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `Center's URL must be http(s), not ${url.protocol}`,
      );
    }
    this.baseUrl = url.href.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 120_000;
  }

  get<T>(path: string, options: RequestOptions<T> = {}): Promise<T> {
    return this.request('GET', path, options);
  }

  post<T>(path: string, options: RequestOptions<T> = {}): Promise<T> {
    return this.request('POST', path, options);
  }

  patch<T>(path: string, options: RequestOptions<T> = {}): Promise<T> {
    return this.request('PATCH', path, options);
  }

  delete<T>(path: string, options: RequestOptions<T> = {}): Promise<T> {
    return this.request('DELETE', path, options);
  }

  /** A JSON request (no body when `options.body` is undefined); returns the parsed answer. */
  async request<T>(method: string, path: string, options: RequestOptions<T> = {}): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    let body: string | undefined;
    if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    return this.send(method, path, headers, body, options);
  }

  /** Uploads bytes as `application/octet-stream` with PUT; returns the parsed answer. */
  putRaw<T>(
    path: string,
    data: Uint8Array,
    options: Omit<RequestOptions<T>, 'body'> = {},
  ): Promise<T> {
    const headers = { accept: 'application/json', 'content-type': 'application/octet-stream' };
    return this.send('PUT', path, headers, data, options);
  }

  private url(path: string, query: RequestOptions<unknown>['query']): string {
    const url = new URL(`${this.baseUrl}${path.startsWith('/') ? path : `/${path}`}`);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    return url.href;
  }

  private async send<T>(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: string | Uint8Array | undefined,
    options: RequestOptions<T>,
  ): Promise<T> {
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    const url = this.url(path, options.query);
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers,
        ...(body === undefined ? {} : { body }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      throw new BulkheadError(
        ErrorCodes.CENTER_UNREACHABLE,
        `cannot reach Center at ${this.baseUrl}: ${cause}`,
        { cause: err, retryable: true, hint: 'check the URL and that Center is running' },
      );
    }
    const text = await res.text();
    let json: unknown = undefined;
    if (text !== '') {
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
    }
    if (!res.ok) throw errorOf(res.status, json, method, path);
    if (!options.schema) return json as T;
    const parsed = options.schema.safeParse(json);
    if (!parsed.success) {
      throw new BulkheadError(
        ErrorCodes.CENTER_PROTOCOL,
        `Center's answer to ${method} ${path} is not what this CLI expects: ${parsed.error.issues[0]?.path.join('.') ?? ''} ${parsed.error.issues[0]?.message ?? ''}`,
        { hint: 'is the CLI the same version as Center?' },
      );
    }
    return parsed.data;
  }
}

function errorOf(status: number, json: unknown, method: string, path: string): BulkheadError {
  const error = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const retryable = status >= 500 || status === 429;
  const details = { status };
  if (typeof error?.code === 'string' && typeof error.message === 'string') {
    if (KNOWN_CODES.has(error.code)) {
      const code = error.code as ErrorCode;
      return new BulkheadError(code, error.message, {
        retryable,
        details,
        ...(code === ErrorCodes.UNAUTHENTICATED
          ? { hint: 'give a valid token with --token or BULKHEAD_TOKEN' }
          : {}),
      });
    }
    return new BulkheadError(ErrorCodes.CENTER_PROTOCOL, `${error.code}: ${error.message}`, {
      retryable,
      details,
    });
  }
  return new BulkheadError(
    status >= 500 ? ErrorCodes.CENTER_UNAVAILABLE : ErrorCodes.CENTER_PROTOCOL,
    `Center answered ${method} ${path} with HTTP ${status}`,
    { retryable, details },
  );
}
