import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { ErrorCodes, errorStatus, isBulkheadError, type ErrorBody } from '../protocol/index.ts';

/** How long a client should wait after a 429 when the error says nothing more precise. */
const DEFAULT_RETRY_AFTER_MS = 60_000;

/** The status a domain error code answers with (one table for every API, in src/protocol). */
export const statusOf = errorStatus;

interface ValidationIssue {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
}

/** One line naming the field: `body.role: Invalid option…`, `body: unknown field "rolee"`. */
export function describeValidation(context: string, issues: readonly ValidationIssue[]): string {
  return issues
    .slice(0, 5)
    .map((issue) => {
      const path = [context, ...issue.instancePath.split('/').filter((p) => p !== '')].join('.');
      if (issue.keyword === 'unrecognized_keys' && Array.isArray(issue.params['keys'])) {
        const keys = (issue.params['keys'] as unknown[]).map((k) => `"${String(k)}"`).join(', ');
        return `${path}: unknown field ${keys}`;
      }
      return `${path}: ${issue.message ?? issue.keyword}`;
    })
    .join('; ');
}

/**
 * Center's error handler, for every route: domain errors by code, zod validation failures as 400
 * `ERR_VALIDATION` naming the field, Fastify's own 4xx (bad JSON, body too large) as
 * themselves, anything else as a bare 500. A stack trace never reaches the client.
 */
export function centerErrorHandler(
  err: FastifyError,
  req: FastifyRequest,
  reply: FastifyReply,
): FastifyReply {
  if (hasZodFastifySchemaValidationErrors(err)) {
    const message = describeValidation(err.validationContext ?? 'request', err.validation);
    return send(reply, 400, { code: ErrorCodes.VALIDATION, message });
  }
  if (isBulkheadError(err)) {
    const status = statusOf(err.code);
    // Shedding load is no fault: the client is told so, and when to try again.
    if (status >= 500 && err.code !== ErrorCodes.OVERLOADED) {
      req.log.error({ err }, 'request failed');
      return send(reply, status, { code: err.code, message: 'internal error' });
    }
    const { retryAfterMs, ...details } = detailsOf(err.details);
    const retry = retryAfterMs ?? (status === 429 ? DEFAULT_RETRY_AFTER_MS : undefined);
    // The header in whole seconds, as HTTP says; the body in milliseconds, as the client reads.
    if (retry !== undefined) void reply.header('retry-after', String(Math.ceil(retry / 1000)));
    return send(reply, status, {
      code: err.code,
      message: err.message,
      ...(Object.keys(details).length > 0 ? { details } : {}),
      ...(retry === undefined ? {} : { retryAfterMs: retry }),
    });
  }
  const status = err.statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    const code =
      status === 413
        ? ErrorCodes.OBJECT_TOO_LARGE
        : status === 415
          ? ErrorCodes.UNSUPPORTED_MEDIA_TYPE
          : ErrorCodes.VALIDATION;
    const limit = req.routeOptions.bodyLimit;
    const message =
      status === 413 && limit !== undefined
        ? `the request body is larger than the ${sizeText(limit)} ${req.method} ${req.routeOptions.url ?? req.url} accepts; send a smaller one`
        : err.message;
    return send(reply, status, { code, message });
  }
  req.log.error({ err }, 'request failed');
  return send(reply, 500, { code: ErrorCodes.INTERNAL, message: 'internal error' });
}

/**
 * Answers a request no route matches with the one error body, as every other refusal: a client
 * reads `ERR_NOT_FOUND` whether the path or the row is unknown.
 */
export function centerNotFoundHandler(req: FastifyRequest, reply: FastifyReply): FastifyReply {
  return send(reply, 404, {
    code: ErrorCodes.NOT_FOUND,
    message: `no route ${req.method} ${req.url.split('?')[0]}`,
  });
}

/** Bytes as a person reads them: 8 KiB, 1 MiB. */
function sizeText(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

/** An error's details as the body carries them: a plain object, or nothing. */
function detailsOf(details: unknown): { retryAfterMs?: number } & Record<string, unknown> {
  if (typeof details !== 'object' || details === null || Array.isArray(details)) return {};
  return details as Record<string, unknown>;
}

function send(reply: FastifyReply, status: number, error: ErrorBody['error']) {
  return reply.code(status).send({ error } satisfies ErrorBody);
}
