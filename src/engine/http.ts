import type { z } from 'zod';
import { BulkheadError, ErrorCodes, type ErrorCode } from '../protocol/index.ts';

/*
 * One HTTP exchange with Center, with a timeout, and every failure turned into a BulkheadError
 * that says whether trying again may help: the network and Center's own trouble (5xx, 429) are
 * retryable; Center refusing what we sent (4xx) is not.
 */

export type Fetch = typeof fetch;

const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

export interface CenterRequest {
  fetch: Fetch;
  url: string;
  method?: 'GET' | 'POST';
  /** Sent as JSON. */
  body?: unknown;
  headers?: Record<string, string>;
  timeoutMs: number;
  /** Statuses besides 200 that are answers rather than errors (304, say). */
  accept?: readonly number[];
}

export interface CenterResponse {
  status: number;
  headers: Headers;
  /** The body as parsed JSON; undefined for an empty body. */
  json: unknown;
}

/**
 * Sends one request to Center.
 * @throws BulkheadError `ERR_CENTER_UNREACHABLE` (network, timeout; retryable),
 *   `ERR_CENTER_UNAVAILABLE` (5xx; retryable), `ERR_RATE_LIMITED` (429; retryable, details
 *   carry `retryAfterMs`), Center's own error code for any other refusal (not retryable), or
 *   `ERR_CENTER_PROTOCOL` for an answer that is not what the API promises.
 */
export async function callCenter(req: CenterRequest): Promise<CenterResponse> {
  const method = req.method ?? 'GET';
  const what = `${method} ${new URL(req.url).pathname}`;
  let res: Response;
  let text: string;
  try {
    res = await req.fetch(req.url, {
      method,
      headers: {
        accept: 'application/json',
        ...(req.body === undefined ? {} : { 'content-type': 'application/json' }),
        ...req.headers,
      },
      body: req.body === undefined ? undefined : JSON.stringify(req.body),
      signal: AbortSignal.timeout(req.timeoutMs),
    });
    text = await res.text();
  } catch (err) {
    const timedOut = (err as Error)?.name === 'TimeoutError';
    const detail = timedOut
      ? `no answer within ${req.timeoutMs} ms`
      : describeNetworkError(err as Error);
    throw new BulkheadError(ErrorCodes.CENTER_UNREACHABLE, `${what}: ${detail}`, {
      cause: err,
      retryable: true,
      hint: 'check the network and that Center is running; Engine keeps trying',
    });
  }
  let json: unknown;
  if (text !== '') {
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
  }
  if (res.status === 200 || req.accept?.includes(res.status)) {
    return { status: res.status, headers: res.headers, json };
  }
  const body = json as { error?: { code?: unknown; message?: unknown } } | undefined;
  const message = typeof body?.error?.message === 'string' ? body.error.message : res.statusText;
  if (res.status === 429) {
    const seconds = Number(res.headers.get('retry-after'));
    throw new BulkheadError(ErrorCodes.RATE_LIMITED, `${what}: Center is rate limiting`, {
      retryable: true,
      details: { retryAfterMs: Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 60_000 },
    });
  }
  if (res.status >= 500) {
    throw new BulkheadError(
      ErrorCodes.CENTER_UNAVAILABLE,
      `${what}: Center answered ${res.status} (${message})`,
      { retryable: true },
    );
  }
  const code = body?.error?.code;
  throw new BulkheadError(
    typeof code === 'string' && KNOWN_CODES.has(code)
      ? (code as ErrorCode)
      : ErrorCodes.CENTER_PROTOCOL,
    `${what}: Center refused (${res.status}): ${message}`,
    { details: { status: res.status } },
  );
}

/** Parses an answer with the API's schema. */
export function parseAnswer<T>(schema: z.ZodType<T>, res: CenterResponse, what: string): T {
  const parsed = schema.safeParse(res.json);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new BulkheadError(
    ErrorCodes.CENTER_PROTOCOL,
    `${what}: Center's answer is not what the API promises (${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'})`,
    { hint: 'check that the URL is a Bulkhead Center of a matching version' },
  );
}

function describeNetworkError(err: Error): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code !== undefined) return `cannot reach Center (${cause.code})`;
  return `cannot reach Center (${cause?.message ?? err.message})`;
}
