import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { ErrorCodes, isBulkheadError, type ErrorCode } from '../protocol/index.ts';

/**
 * HTTP status per domain error code, for every API of Center (one table, so a code means the
 * same status on every route); codes not listed are the server's fault (500).
 */
const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.VALIDATION]: 400,
  [ErrorCodes.USAGE]: 400,
  [ErrorCodes.KEY_INVALID]: 400,
  [ErrorCodes.ENROLMENT_TOKEN_REFUSED]: 401,
  [ErrorCodes.DEVICE_CHALLENGE_INVALID]: 401,
  [ErrorCodes.UNAUTHENTICATED]: 401,
  [ErrorCodes.FORBIDDEN]: 403,
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
  [ErrorCodes.OBJECT_TOO_LARGE]: 413,
  [ErrorCodes.RATE_LIMITED]: 429,
};

/** The status a domain error code answers with. */
export function statusOf(code: ErrorCode): number {
  return STATUS[code] ?? 500;
}

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
    return send(reply, 400, ErrorCodes.VALIDATION, message);
  }
  if (isBulkheadError(err)) {
    const status = statusOf(err.code);
    if (status >= 500) req.log.error({ err }, 'request failed');
    const retryAfter = (err.details as { retryAfterSeconds?: number } | undefined)
      ?.retryAfterSeconds;
    if (retryAfter !== undefined) void reply.header('retry-after', String(retryAfter));
    else if (status === 429) void reply.header('retry-after', '60');
    return send(reply, status, err.code, status >= 500 ? 'internal error' : err.message);
  }
  const status = err.statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    const code = status === 413 ? ErrorCodes.OBJECT_TOO_LARGE : ErrorCodes.VALIDATION;
    return send(reply, status, code, err.message);
  }
  req.log.error({ err }, 'request failed');
  return send(reply, 500, ErrorCodes.INTERNAL, 'internal error');
}

function send(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.code(status).send({ error: { code, message } });
}
