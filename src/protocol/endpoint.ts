import { z } from 'zod';
import type { AdminRoleName } from './admin.ts';
import { BulkheadError, ErrorCodes, type ErrorCode } from './errors.ts';

/*
 * The shape of one endpoint of Center's HTTP API, declared once (src/protocol/endpoints/) and
 * read by both sides: Center derives its Fastify routes from it (src/center/http/route.ts),
 * Engine and the CLI call it through one typed client (./client.ts). Types come from the zod
 * schemas; nobody writes a path or a body shape twice.
 */

/** Who may call an endpoint: the least admin role, a device with its token, or anyone. */
export type EndpointAuth = AdminRoleName | 'device' | 'public';

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** A body sent as raw bytes (`application/octet-stream`) instead of JSON. */
export const BYTES = 'bytes';

/** What an endpoint may declare besides its route, who calls it and its answers. */
export interface EndpointOptions {
  /** What the endpoint does, for the OpenAPI document. */
  description?: string;
  params?: z.ZodType;
  query?: z.ZodType;
  body?: z.ZodType | typeof BYTES;
  /**
   * Largest body accepted, in bytes. When omitted: ANONYMOUS_BODY_LIMIT on a public endpoint,
   * Center's configured default (`bodyLimit`) on any other.
   */
  bodyLimit?: number;
  /**
   * Domain errors the endpoint may answer besides those every endpoint may (validation,
   * authentication, role); each answers with `ErrorBodySchema` and its status (`errorStatus`).
   */
  errors?: readonly ErrorCode[];
}

export interface Endpoint extends EndpointOptions {
  method: HttpMethod;
  /** Fastify's syntax: `/api/v1/admin/groups/:id`. */
  path: string;
  auth: EndpointAuth;
  /** OpenAPI tags (those of its table). */
  tags?: readonly string[];
  /** The answers that are not errors, by status. */
  response: Readonly<Record<number, z.ZodType>>;
}

/**
 * Largest body of a public (anonymous) endpoint that declares no limit of its own: a login or a
 * challenge is a few hundred bytes, and nobody unauthenticated makes Center hold more.
 */
export const ANONYMOUS_BODY_LIMIT = 8 * 1024;

/**
 * The body limit an endpoint is served with: its own, else ANONYMOUS_BODY_LIMIT when it is
 * public, else undefined (Center's configured default).
 */
export function bodyLimitOf(endpoint: Endpoint): number | undefined {
  return endpoint.bodyLimit ?? (endpoint.auth === 'public' ? ANONYMOUS_BODY_LIMIT : undefined);
}

/**
 * One endpoint: `route` is the method and the path (`'PATCH /api/v1/admin/groups/:id'`),
 * `auth` who may call it, `status` and `schema` its success answer; `options.also` holds
 * further success answers (an upload that may answer 200 or 201, say).
 */
export function endpoint<
  const A extends EndpointAuth,
  const S extends number,
  const R extends z.ZodType,
  const O extends EndpointOptions & { also?: Endpoint['response'] } = Record<never, never>,
>(
  route: `${HttpMethod} /${string}`,
  auth: A,
  status: S,
  schema: R,
  options?: O,
): {
  method: HttpMethod;
  path: string;
  auth: A;
  response: { [K in S]: R } & (O extends { also: infer X } ? X : unknown);
} & Omit<O, 'also'> {
  const { also, ...rest } = options ?? ({} as O);
  const space = route.indexOf(' ');
  return {
    ...(rest as Omit<O, 'also'>),
    method: route.slice(0, space) as HttpMethod,
    path: route.slice(space + 1),
    auth,
    response: { ...also, [status]: schema } as { [K in S]: R } & (O extends { also: infer X }
      ? X
      : unknown),
  };
}

/** Declares a table of endpoints under its OpenAPI tags, keeping each one's exact types. */
export function defineEndpoints<const T extends Record<string, Endpoint>>(
  tags: readonly string[],
  table: T,
): T {
  for (const e of Object.values(table)) e.tags ??= tags;
  return table;
}

type Part<E, K extends string> = E extends { [P in K]: infer S } ? S : undefined;
type Output<S> = S extends z.ZodType ? z.output<S> : undefined;
type Input<S> = S extends z.ZodType ? z.input<S> : undefined;

/** Path parameters, query and body as a handler sees them (after validation and defaults). */
export type ParamsOf<E extends Endpoint> = Output<Part<E, 'params'>>;
export type QueryOf<E extends Endpoint> = Output<Part<E, 'query'>>;
export type BodyOf<E extends Endpoint> =
  Part<E, 'body'> extends typeof BYTES ? Uint8Array : Output<Part<E, 'body'>>;

/** A status an endpoint answers with when it succeeds. */
export type StatusOf<E extends Endpoint> = keyof E['response'] & number;
/** The body of one success status, or of any of them. */
export type ResponseOf<E extends Endpoint, S extends StatusOf<E> = StatusOf<E>> = {
  [K in S]: z.output<E['response'][K]>;
}[S];

/** What a client sends: only the parts the endpoint has, in their wire (input) types. */
export type RequestOf<E extends Endpoint> = (Part<E, 'params'> extends z.ZodType
  ? { params: Input<Part<E, 'params'>> }
  : { params?: undefined }) &
  (Part<E, 'query'> extends z.ZodType
    ? { query?: Input<Part<E, 'query'>> }
    : { query?: undefined }) &
  (Part<E, 'body'> extends typeof BYTES
    ? { body: Uint8Array }
    : Part<E, 'body'> extends z.ZodType
      ? undefined extends Input<Part<E, 'body'>>
        ? { body?: Input<Part<E, 'body'>> }
        : { body: Input<Part<E, 'body'>> }
      : { body?: undefined });

/**
 * The one error body of every API of Center. `retryAfterMs` is set on answers worth trying
 * again later (429), beside the HTTP `Retry-After` header in seconds.
 */
export const ErrorBodySchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
    retryAfterMs: z.number().int().nonnegative().optional(),
  }),
});
export type ErrorBody = z.infer<typeof ErrorBodySchema>;

/**
 * HTTP status per domain error code, for every API of Center (one table, so a code means the
 * same status on every route); codes not listed are the server's fault (500).
 */
const ERROR_STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.VALIDATION]: 400,
  [ErrorCodes.BODY_TOO_DEEP]: 400,
  [ErrorCodes.UNSUPPORTED_MEDIA_TYPE]: 415,
  [ErrorCodes.USAGE]: 400,
  [ErrorCodes.KEY_INVALID]: 400,
  [ErrorCodes.ENROLMENT_TOKEN_REFUSED]: 401,
  [ErrorCodes.DEVICE_CHALLENGE_INVALID]: 401,
  [ErrorCodes.UNAUTHENTICATED]: 401,
  [ErrorCodes.FORBIDDEN]: 403,
  [ErrorCodes.ACCOUNT_DISABLED]: 403,
  [ErrorCodes.WRONG_PASSWORD]: 403,
  [ErrorCodes.DEVICE_KILLED]: 403,
  [ErrorCodes.DEVICE_RETIRED]: 403,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.ADMIN_USER_EXISTS]: 409,
  [ErrorCodes.LAST_ADMIN]: 409,
  [ErrorCodes.DEVICE_EXISTS]: 409,
  [ErrorCodes.NAME_TAKEN]: 409,
  [ErrorCodes.DEVICE_STATE]: 409,
  [ErrorCodes.INVALID_NAME]: 400,
  [ErrorCodes.INVALID_DIGEST]: 400,
  [ErrorCodes.CHUNK_DIGEST_MISMATCH]: 400,
  [ErrorCodes.INDEX_CORRUPT]: 400,
  [ErrorCodes.MANIFEST_MALFORMED]: 400,
  [ErrorCodes.MANIFEST_UNSIGNED]: 400,
  [ErrorCodes.MANIFEST_SIGNATURE]: 400,
  [ErrorCodes.MANIFEST_MISMATCH]: 400,
  [ErrorCodes.UNTRUSTED_KEY]: 403,
  [ErrorCodes.KEY_EXISTS]: 409,
  [ErrorCodes.IMAGE_EXISTS]: 409,
  [ErrorCodes.CHUNKS_MISSING]: 409,
  [ErrorCodes.VERSION_STATE]: 409,
  [ErrorCodes.IN_USE]: 409,
  [ErrorCodes.ROLLOUT_STATE]: 409,
  [ErrorCodes.VM_NOT_RUNNING]: 409,
  [ErrorCodes.NO_UPDATE_WAITING]: 409,
  [ErrorCodes.OBJECT_TOO_LARGE]: 413,
  [ErrorCodes.RATE_LIMITED]: 429,
  [ErrorCodes.OVERLOADED]: 503,
};

/** The status a domain error code answers with. */
export function errorStatus(code: ErrorCode): number {
  return ERROR_STATUS[code] ?? 500;
}

/** The error statuses an endpoint may answer with, each with the one error body. */
export function errorResponses(endpoint: Endpoint): Record<number, typeof ErrorBodySchema> {
  const codes: ErrorCode[] = [ErrorCodes.VALIDATION, ...(endpoint.errors ?? [])];
  // Any body may be over its limit (413), or of a type the route does not take (415).
  if (endpoint.body !== undefined) {
    codes.push(ErrorCodes.OBJECT_TOO_LARGE, ErrorCodes.UNSUPPORTED_MEDIA_TYPE);
  }
  if (endpoint.auth !== 'public') codes.push(ErrorCodes.UNAUTHENTICATED, ErrorCodes.FORBIDDEN);
  return Object.fromEntries(codes.map((code) => [errorStatus(code), ErrorBodySchema]));
}

/** Fills an endpoint's path parameters in (each one URL-encoded). */
export function pathOf(endpoint: Endpoint, params: Record<string, unknown> | undefined): string {
  return endpoint.path.replace(/:([A-Za-z0-9_]+)/g, (_m, name: string) => {
    const value = params?.[name];
    if (value === undefined) throw new TypeError(`${endpoint.path}: no value for :${name}`);
    return encodeURIComponent(String(value));
  });
}

/** Retry hint of an answer when Center gave none (seconds, as `Retry-After` says). */
const DEFAULT_RETRY_AFTER_MS = 60_000;
const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

export interface ErrorAnswer {
  status: number;
  headers: Headers;
  /** The body as parsed JSON; undefined when empty or not JSON. */
  json: unknown;
  /** What was asked, for messages: `POST /api/v1/admin/groups`. */
  what: string;
}

/**
 * The one decoder of Center's error answers. Center's own code comes back as the same
 * BulkheadError code; 429 and 5xx are retryable, anything else Center refused is not.
 * `details` carry `status`, Center's details, and `retryAfterMs` when Center gave a retry hint
 * (its body, else its `Retry-After` header, else a minute on a 429).
 */
export function decodeErrorAnswer(
  answer: ErrorAnswer,
  hints: Partial<Record<ErrorCode, string>> = {},
): BulkheadError {
  const { status, what } = answer;
  const parsed = ErrorBodySchema.safeParse(answer.json);
  const body = parsed.success ? parsed.data.error : undefined;
  const retryable = status >= 500 || status === 429;
  const header = Number(answer.headers.get('retry-after'));
  const retryAfterMs =
    body?.retryAfterMs ??
    (Number.isFinite(header) && header > 0
      ? header * 1000
      : status === 429
        ? DEFAULT_RETRY_AFTER_MS
        : undefined);
  const details = {
    ...body?.details,
    status,
    ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
  };
  if (body === undefined) {
    const code =
      status === 429
        ? ErrorCodes.RATE_LIMITED
        : status >= 500
          ? ErrorCodes.CENTER_UNAVAILABLE
          : ErrorCodes.CENTER_PROTOCOL;
    return new BulkheadError(code, `Center answered ${what} with HTTP ${status}`, {
      retryable,
      details,
    });
  }
  if (status >= 500) {
    // Center's own fault: the request may well succeed later, whatever the code says.
    return new BulkheadError(
      ErrorCodes.CENTER_UNAVAILABLE,
      `Center answered ${what} with HTTP ${status}: ${body.message}`,
      { retryable, details: { ...details, code: body.code } },
    );
  }
  if (!KNOWN_CODES.has(body.code)) {
    return new BulkheadError(ErrorCodes.CENTER_PROTOCOL, `${body.code}: ${body.message}`, {
      retryable,
      details,
    });
  }
  const code = body.code as ErrorCode;
  return new BulkheadError(code, body.message, { retryable, details, hint: hints[code] });
}

/** Parses a success answer with the endpoint's schema for its status. */
export function decodeAnswer<E extends Endpoint>(
  endpoint: E,
  status: number,
  json: unknown,
): ResponseOf<E> {
  const schema = endpoint.response[status];
  if (schema === undefined) {
    throw new BulkheadError(
      ErrorCodes.CENTER_PROTOCOL,
      `Center answered ${endpoint.method} ${endpoint.path} with HTTP ${status}, which the API does not promise`,
      { hint: 'is this the same version as Center?' },
    );
  }
  const parsed = schema.safeParse(json);
  if (parsed.success) return parsed.data as ResponseOf<E>;
  const issue = parsed.error.issues[0];
  throw new BulkheadError(
    ErrorCodes.CENTER_PROTOCOL,
    `Center's answer to ${endpoint.method} ${endpoint.path} is not what the API promises (${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'})`,
    { hint: 'is this the same version as Center?' },
  );
}
