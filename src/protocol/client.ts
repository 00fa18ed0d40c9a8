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
  /**
   * A conditional GET for polling: sends `If-None-Match: etag` when `etag` is given, and
   * resolves with `notModified: true` when Center answers 304, else with the typed body and the
   * answer's ETag (to pass to the next poll). Errors as `call`.
   */
  poll<E extends Endpoint>(
    endpoint: E,
    request: RequestOf<E>,
    etag: string | null,
    options?: CallOptions,
  ): Promise<PollAnswer<E>>;
}

/** What a poll resolves with: nothing new, or the new body and its ETag. */
export type PollAnswer<E extends Endpoint> =
  { notModified: true } | { notModified: false; etag: string | null; body: ResponseOf<E> };

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

  /** Sends the request; resolves with whatever HTTP answer came back, parsed as JSON if it is. */
  async function send<E extends Endpoint>(
    endpoint: E,
    request: RequestOf<E>,
    callOptions: CallOptions,
  ): Promise<{ res: Response; json: unknown; what: string }> {
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
    return { res, json, what };
  }

  /**
   * The success answer of a sent request, or undefined for a 304 when `notModified` allows one;
   * anything else is thrown as the BulkheadError it means.
   */
  function settle<E extends Endpoint>(
    endpoint: E,
    sent: { res: Response; json: unknown; what: string },
    notModified: boolean,
  ): RawAnswer<E> | undefined {
    const { res, json, what } = sent;
    if (res.status in endpoint.response) {
      return { status: res.status as StatusOf<E>, headers: res.headers, json };
    }
    if (notModified && res.status === 304) return undefined;
    // A success the API does not promise is a protocol error (decodeAnswer throws it).
    if (res.status < 400) decodeAnswer(endpoint, res.status, json);
    throw decodeErrorAnswer(
      { status: res.status, headers: res.headers, json, what },
      options.hints,
    );
  }

  async function exchange<E extends Endpoint>(
    endpoint: E,
    request: RequestOf<E>,
    callOptions: CallOptions = {},
  ): Promise<RawAnswer<E>> {
    return settle(endpoint, await send(endpoint, request, callOptions), false)!;
  }

  /** The typed body of a success answer. */
  function bodyOf<E extends Endpoint>(endpoint: E, answer: RawAnswer<E>): ResponseOf<E> {
    // An empty answer (204, 304) is `null` or `undefined` as its schema says.
    const schema = endpoint.response[answer.status];
    const json =
      answer.json === undefined && schema?.safeParse(null).success === true ? null : answer.json;
    return decodeAnswer(endpoint, answer.status, json);
  }

  return {
    baseUrl,
    exchange,
    async call<E extends Endpoint>(
      endpoint: E,
      request?: RequestOf<E>,
      callOptions?: CallOptions,
    ): Promise<ResponseOf<E>> {
      return bodyOf(endpoint, await exchange(endpoint, request as RequestOf<E>, callOptions));
    },
    async poll<E extends Endpoint>(
      endpoint: E,
      request: RequestOf<E>,
      etag: string | null,
      callOptions: CallOptions = {},
    ): Promise<PollAnswer<E>> {
      const conditional: CallOptions = {
        ...callOptions,
        headers: { ...callOptions.headers, ...(etag === null ? {} : { 'if-none-match': etag }) },
      };
      // 304 is an answer of every conditional GET, whatever the endpoint declares.
      const answer = settle(endpoint, await send(endpoint, request, conditional), true);
      if (answer === undefined) return { notModified: true };
      return {
        notModified: false,
        etag: answer.headers.get('etag'),
        body: bodyOf(endpoint, answer),
      };
    },
  } as ApiClient;
}
