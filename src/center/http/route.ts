import type { FastifyReply, FastifyRequest, RouteShorthandOptions } from 'fastify';
import {
  BYTES,
  BulkheadError,
  bodyLimitOf,
  ErrorCodes,
  errorResponses,
  type BodyOf,
  type Endpoint,
  type ParamsOf,
  type QueryOf,
  type ResponseOf,
  type StatusOf,
} from '../../protocol/index.ts';
import type { Caller } from '../admin/credentials.ts';
import { callerOf, deviceOf } from '../auth/index.ts';

/*
 * Center's routes, derived from the endpoint declarations in src/protocol/endpoints: the path,
 * the schemas (and so validation, serialization and the OpenAPI document), who may call it
 * (`config.auth`, enforced by src/center/auth) and the success status all come from the
 * declaration, so a route file is one line per endpoint: which command answers it.
 */

/** A request as a handler sees it: validated params, query and body of its endpoint. */
export type RouteRequest<E extends Endpoint> = Omit<FastifyRequest, 'params' | 'query' | 'body'> & {
  params: ParamsOf<E>;
  query: QueryOf<E>;
  body: BodyOf<E>;
};

/** Who calls: the admin caller, the device's id, or nobody in particular on a public route. */
export type CallerOf<E extends Endpoint> = E['auth'] extends 'public'
  ? undefined
  : E['auth'] extends 'device'
    ? string
    : Caller;

/** An answer with a status other than the endpoint's first success status. */
export class Answer<E extends Endpoint, S extends StatusOf<E> = StatusOf<E>> {
  readonly status: S;
  readonly body: ResponseOf<E, S>;
  constructor(status: S, body: ResponseOf<E, S>) {
    this.status = status;
    this.body = body;
  }
}

/** Answers with `status` (one of the endpoint's success statuses). */
export function answer<E extends Endpoint, S extends StatusOf<E>>(
  _endpoint: E,
  status: S,
  body: ResponseOf<E, S>,
): Answer<E, S> {
  return new Answer(status, body);
}

type Result<E extends Endpoint> =
  ResponseOf<E> | Answer<E> | FastifyReply | (null extends ResponseOf<E> ? void : never);

export type RouteHandler<E extends Endpoint> = (
  req: RouteRequest<E>,
  caller: CallerOf<E>,
  reply: FastifyReply,
) => Promise<Result<E>>;

/** Extra Fastify options of one route (a route-level hook, say). */
export type RouteOptions = Pick<RouteShorthandOptions, 'onRequest'>;

/** The least of an endpoint's success statuses: what a handler's plain return answers with. */
function defaultStatus(endpoint: Endpoint): number {
  return Math.min(...Object.keys(endpoint.response).map(Number));
}

/**
 * Refuses a body of the wrong kind: JSON sent to an upload, bytes sent to a JSON route (both
 * parsers exist in the images plugin's scope, so Fastify cannot tell). 415 names what to send.
 */
function checkBodyType(endpoint: Endpoint, body: unknown): void {
  const isBytes = Buffer.isBuffer(body);
  if (endpoint.body === BYTES && !isBytes) {
    const code = body === undefined ? ErrorCodes.VALIDATION : ErrorCodes.UNSUPPORTED_MEDIA_TYPE;
    throw new BulkheadError(code, 'body: send the bytes as Content-Type: application/octet-stream');
  }
  if (endpoint.body !== BYTES && isBytes) {
    throw new BulkheadError(
      ErrorCodes.UNSUPPORTED_MEDIA_TYPE,
      'body: this route takes JSON; send Content-Type: application/json',
    );
  }
}

interface RouteHost {
  route(options: object): unknown;
}

/**
 * Registers `endpoint` on `app`, answered by `handler`. The handler returns the body of the
 * endpoint's first success status, an `answer(...)` for another one, or the reply it sent
 * itself (a 304, a hijacked stream).
 */
export function route<E extends Endpoint>(
  app: RouteHost,
  endpoint: E,
  handler: RouteHandler<E>,
  options: RouteOptions = {},
): void {
  const status = defaultStatus(endpoint);
  const bytes = endpoint.body === BYTES;
  const bodyLimit = bodyLimitOf(endpoint);
  const callerFor = (req: FastifyRequest): unknown => {
    if (endpoint.auth === 'public') return undefined;
    return endpoint.auth === 'device' ? deviceOf(req) : callerOf(req);
  };
  app.route({
    ...options,
    method: endpoint.method,
    url: endpoint.path,
    config: { auth: endpoint.auth },
    // Fastify refuses a body over the limit from its Content-Length before reading it, and
    // stops reading a chunked one once it passes the limit (413, connection closed).
    ...(bodyLimit === undefined ? {} : { bodyLimit }),
    schema: {
      tags: endpoint.tags,
      ...(endpoint.description === undefined ? {} : { description: endpoint.description }),
      ...(endpoint.params === undefined ? {} : { params: endpoint.params }),
      ...(endpoint.query === undefined ? {} : { querystring: endpoint.query }),
      ...(endpoint.body === undefined || bytes ? {} : { body: endpoint.body }),
      response: { ...errorResponses(endpoint), ...endpoint.response },
    },
    // Before validation, so a body of the wrong kind is a 415, not a schema's complaint.
    preValidation: async (req: FastifyRequest) => checkBodyType(endpoint, req.body),
    handler: async (req: FastifyRequest, reply: FastifyReply) => {
      const result = await handler(
        req as unknown as RouteRequest<E>,
        callerFor(req) as CallerOf<E>,
        reply,
      );
      if (result === reply || reply.sent) return reply;
      if (result instanceof Answer) return reply.code(result.status).send(result.body);
      return reply.code(status).send(result ?? null);
    },
  });
}
