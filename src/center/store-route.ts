import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { CenterApp } from './context.ts';
import { NAME_PATTERN } from '../protocol/index.ts';

const name = NAME_PATTERN.source.slice(1, -1);
const hex = '[0-9a-f]{64}';
/**
 * The objects of a store (see src/image/store/layout.ts) and nothing else: every key is matched
 * whole, so no request can reach a file outside the layout, dot files or temp files included.
 */
const STORE_KEY = new RegExp(
  [
    'catalog\\.json',
    `manifests/${name}/${name}\\.json`,
    `(?:chunks|indexes)/[0-9a-f]{2}/[0-9a-f]{2}/${hex}`,
    `packs/${name}/${name}/from-${name}\\.(?:pack|json|index)`,
  ]
    .map((p) => `^${p}$`)
    .join('|'),
);

export function isStoreKey(key: string): boolean {
  if (!STORE_KEY.test(key)) return false;
  // The fan-out folders must be the digest's own prefix.
  const m = /^(?:chunks|indexes)\/(..)\/(..)\/(.{64})$/.exec(key);
  return !m || (m[3]!.startsWith(m[1]!) && m[3]!.slice(2, 4) === m[2]);
}

/**
 * Serves Center's chunk store read-only at `/store/`, as any static mirror would: GET and HEAD,
 * single byte ranges (pack frames), immutable caching for content-addressed objects. Objects
 * are public by design: chunks are content-addressed and manifests signed, so a device
 * verifies everything it fetches, and mirrors and CDNs can carry the same files.
 */
export function registerStoreRoute(app: CenterApp, storeDir: string): void {
  app.route({
    method: ['GET', 'HEAD'],
    url: '/store/*',
    schema: { hide: true },
    handler: async (req, reply) => {
      const key = (req.params as { '*': string })['*'];
      if (!isStoreKey(key)) return reply.code(404).send({ error: 'not a store object' });
      const path = join(storeDir, key);
      let size: number;
      try {
        const st = await stat(path);
        if (!st.isFile()) return reply.code(404).send({ error: 'not found' });
        size = st.size;
      } catch {
        return reply.code(404).send({ error: 'not found' });
      }
      const mutable = key === 'catalog.json';
      reply.header('accept-ranges', 'bytes');
      reply.header('cache-control', mutable ? 'no-cache' : 'public, max-age=31536000, immutable');
      let start = 0;
      let end = size - 1;
      const range = req.headers.range;
      if (range !== undefined) {
        const m = /^bytes=(\d+)-(\d*)$/.exec(range);
        if (!m) return reply.code(416).header('content-range', `bytes */${size}`).send();
        start = Number(m[1]);
        end = m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
        if (start > end) return reply.code(416).header('content-range', `bytes */${size}`).send();
        reply.code(206).header('content-range', `bytes ${start}-${end}/${size}`);
      }
      reply.header('content-length', end - start + 1);
      reply.type(key.endsWith('.json') ? 'application/json' : 'application/octet-stream');
      if (req.method === 'HEAD' || size === 0) return reply.send();
      return reply.send(createReadStream(path, { start, end }));
    },
  });
}
