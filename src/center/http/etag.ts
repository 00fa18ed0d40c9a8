import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';

/*
 * Conditional GETs of the admin API, for a console that polls every few seconds: every 200
 * answer to a GET under /api/v1/admin/ carries a weak ETag (a digest of the body it sends), and
 * a request whose If-None-Match names it is answered 304 with no body. The handler still runs:
 * what a 304 saves is the transfer and the client's work, and the ETag needs no bookkeeping of
 * what changed (the body itself is the version). Weak: the same data may one day serialize to
 * other bytes.
 */

const ADMIN_PREFIX = '/api/v1/admin/';

/** The weak ETag of a body. */
export function weakEtag(body: string | Uint8Array): string {
  return `W/"${createHash('sha256').update(body).digest('base64url').slice(0, 32)}"`;
}

/** Whether an If-None-Match header names `etag`, by weak comparison (RFC 9110 §13.1.2). */
export function ifNoneMatchNames(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header.trim() === '*') return true;
  const opaque = (tag: string) => tag.trim().replace(/^W\//, '');
  return header.split(',').some((tag) => opaque(tag) === opaque(etag));
}

export function registerAdminEtags(app: FastifyInstance): void {
  app.addHook('onSend', async (req, reply, payload) => {
    if (req.method !== 'GET' || reply.statusCode !== 200) return payload;
    if (!req.url.startsWith(ADMIN_PREFIX)) return payload;
    // Streams (none on these routes today) are sent as they are, without an ETag.
    if (typeof payload !== 'string' && !Buffer.isBuffer(payload)) return payload;
    const etag = weakEtag(payload);
    void reply.header('etag', etag);
    if (!ifNoneMatchNames(req.headers['if-none-match'], etag)) return payload;
    void reply.code(304);
    reply.removeHeader('content-type');
    reply.removeHeader('content-length');
    return '';
  });
}
