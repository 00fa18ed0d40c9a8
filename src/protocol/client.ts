import { BulkheadError, ErrorCodes, type ErrorCode } from './errors.ts';
import {
  BYTES,
  decodeAnswer,
  decodeErrorAnswer,
  pathOf,
  type Endpoint,
  type RequestOf,
  type ResponseOf,
  type StatusOf,
} from './endpoint.ts';

/*
 * The one client of Center's HTTP API, for Engine and the CLI alike: it fills in an endpoint's
 * path, sends its query and body, and turns every answer into either the endpoint's typed
 * response or a BulkheadError (see `decodeErrorAnswer`). Authentication is the caller's: each
 * call may carry headers (a bearer token).
 */

export type Fetch = typeof fetch;

export interface ApiClientOptions {
  /** Center's base URL, e.g. `http://127.0.0.1:8080` (a trailing slash is fine). */
  baseUrl: string;
  /** Sent with every request (an admin bearer token, say); never logged. */
  headers?: Record<string, string>;
  /** Per-request timeout in milliseconds (default 30 s). */
  timeoutMs?: number;
  fetch?: Fetch;
  /** What to tell the user when Center cannot be reached. */
  unreachableHint?: string;
  /** What to tell the user when Center answers with one of these codes. */
  hints?: Partial<Record<ErrorCode, string>>;
}

export interface CallOptions {
  /** Extra headers of this request (a device token, `if-none-match`). */
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** A success answer before its body is parsed (for callers that verify the bytes themselves). */
export interface RawAnswer<E extends Endpoint> {
  status: StatusOf<E>;
  headers: Headers;
  /** The body as parsed JSON; undefined for an empty body. */
  json: unknown;
}

export interface ApiClient {
  readonly baseUrl: string;
  /** Sends one request; resolves with the typed body of the endpoint's success answer. */
  call<E extends Endpoint>(
    endpoint: E,
    ...args: Partial<RequestOf<E>> extends RequestOf<E>
      ? [request?: RequestOf<E>, options?: CallOptions]
      : [request: RequestOf<E>, options?: CallOptions]
  ): Promise<ResponseOf<E>>;
  /** Sends one request; resolves with the status, headers and raw JSON of a success answer. */
  exchange<E extends Endpoint>(
    endpoint: E,
    request: RequestOf<E>,
    options?: CallOptions,
  ): Promise<RawAnswer<E>>;
}

/**
 * A client of Center at `baseUrl`.
 * @throws BulkheadError `ERR_USAGE` when `baseUrl` is not an http(s) URL.
 */
export function createApiClient(options: ApiClientOptions): ApiClient {
  let url: URL;
  try {
    url = new URL(options.baseUrl);
  } catch {
    throw new BulkheadError(ErrorCodes.USAGE, `"${options.baseUrl}" is not a URL of Center`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new BulkheadError(ErrorCodes.USAGE, `Center's URL must be http(s), not ${url.protocol}`);
  }
  const baseUrl = url.href.replace(/\/+$/, '');
  const doFetch = options.fetch ?? fetch;
  const timeoutMs = options.timeoutMs ?? 30_000;

  async function exchange<E extends Endpoint>(
    endpoint: E,
    request: RequestOf<E>,
    callOptions: CallOptions = {},
  ): Promise<RawAnswer<E>> {
    const req = (request ?? {}) as { params?: object; query?: object; body?: unknown };
    const target = new URL(`${baseUrl}${pathOf(endpoint, req.params as Record<string, unknown>)}`);
    for (const [k, v] of Object.entries(req.query ?? {})) {
      if (v !== undefined) target.searchParams.set(k, String(v));
    }
    const what = `${endpoint.method} ${target.pathname}`;
    const headers: Record<string, string> = {
      accept: 'application/json',
      ...options.headers,
      ...callOptions.headers,
    };
    // Bytes over an ArrayBuffer: what the browser's fetch takes as well as Node's.
    let body: string | Uint8Array<ArrayBuffer> | undefined;
    if (endpoint.body === BYTES) {
      headers['content-type'] = 'application/octet-stream';
      body = req.body as Uint8Array<ArrayBuffer>;
    } else if (req.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(req.body);
    }
    const timeout = AbortSignal.timeout(timeoutMs);
    let res: Response;
    let text: string;
    try {
      res = await doFetch(target.href, {
        method: endpoint.method,
        headers,
        ...(body === undefined ? {} : { body }),
        signal:
          callOptions.signal === undefined
            ? timeout
            : AbortSignal.any([timeout, callOptions.signal]),
      });
      text = await res.text();
    } catch (err) {
      const detail = timeout.aborted
        ? `no answer within ${timeoutMs} ms`
        : ((err as { cause?: { code?: string; message?: string } }).cause?.code ??
          (err as { cause?: { message?: string } }).cause?.message ??
          (err as Error).message);
      throw new BulkheadError(
        ErrorCodes.CENTER_UNREACHABLE,
        `${what}: cannot reach Center at ${baseUrl}: ${detail}`,
        {
          cause: err,
          retryable: true,
          hint: options.unreachableHint ?? 'check the URL and that Center is running',
        },
      );
    }
    let json: unknown;
    if (text !== '') {
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
    }
    if (res.status in endpoint.response) {
      return { status: res.status as StatusOf<E>, headers: res.headers, json };
    }
    // A success the API does not promise is a protocol error (decodeAnswer throws it).
    if (res.status < 400) decodeAnswer(endpoint, res.status, json);
    throw decodeErrorAnswer(
      { status: res.status, headers: res.headers, json, what },
      options.hints,
    );
  }

  return {
    baseUrl,
    exchange,
    async call<E extends Endpoint>(
      endpoint: E,
      request?: RequestOf<E>,
      callOptions?: CallOptions,
    ): Promise<ResponseOf<E>> {
      const answer = await exchange(endpoint, request as RequestOf<E>, callOptions);
      // An empty answer (204, 304) is `null` or `undefined` as its schema says.
      const schema = endpoint.response[answer.status];
      const json =
        answer.json === undefined && schema?.safeParse(null).success === true ? null : answer.json;
      return decodeAnswer(endpoint, answer.status, json);
    },
  } as ApiClient;
}
