import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { CenterApp } from './context.ts';

/*
 * The built web console (web/console/dist), served as public files: the page and its scripts
 * hold no data, and every request they make for data goes through the API's authentication.
 * These routes declare no `config.auth`, so the authentication hook passes them by.
 *
 * - `/assets/<file>`: Vite's content-hashed files, cacheable for a year.
 * - `index.html` for `/` and for any other GET that asks for HTML and is not an API, store,
 *   metrics or documentation path, so a client-side route (`/devices/abc`) reloads; never
 *   cached, so a new build is picked up at once.
 * - `/favicon.ico` from the build, or an empty answer when it has none.
 * - Without a build, a 503 page saying how to make one; Center itself runs on.
 */

/** Paths that are never the console's, whatever they accept. */
const NOT_CONSOLE = /^\/(?:api|store|metrics|docs|healthz|assets)(?:[/?]|$)/;
/** A file name of Vite's output: no separators, no dot files, nothing to climb out with. */
const ASSET_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.txt': 'text/plain; charset=utf-8',
};

const NOT_BUILT = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bulkhead Center</title></head>
<body><h1>The console is not built</h1>
<p>Center is running and its API answers, but the web console's files are missing.
Run <code>npm run setup</code> in Bulkhead's directory to build them, then reload this page.</p>
</body></html>
`;

/**
 * The page, with `<base href="/">` so that the build's relative asset paths (`./assets/…`)
 * resolve from the root on a client-side route too.
 */
function withRootBase(html: string): string {
  if (/<base\s/i.test(html)) return html;
  return html.replace(/<head([^>]*)>/i, (head) => `${head}<base href="/">`);
}

export interface ConsoleRoutes {
  /** Whether a request that matched no route is a page of the console (GET/HEAD, HTML). */
  isPage(req: FastifyRequest): boolean;
  /** Answers with the console's page (or the 503 page without a build). */
  sendPage(reply: FastifyReply): Promise<FastifyReply>;
}

/** Registers `/` and `/assets/*` from `dir`; the caller routes other pages (`isPage`). */
export function registerConsoleRoutes(app: CenterApp, dir: string): ConsoleRoutes {
  const assets = join(dir, 'assets');

  async function sendPage(reply: FastifyReply): Promise<FastifyReply> {
    let html: string;
    try {
      html = await readFile(join(dir, 'index.html'), 'utf8');
    } catch {
      return reply
        .code(503)
        .header('cache-control', 'no-store')
        .type('text/html; charset=utf-8')
        .send(NOT_BUILT);
    }
    return reply
      .code(200)
      .header('cache-control', 'no-cache')
      .type('text/html; charset=utf-8')
      .send(withRootBase(html));
  }

  app.route({
    method: ['GET', 'HEAD'],
    url: '/',
    schema: { hide: true },
    handler: (_req, reply) => sendPage(reply),
  });

  app.route({
    method: ['GET', 'HEAD'],
    url: '/assets/*',
    schema: { hide: true },
    handler: async (req, reply) => {
      // The router has decoded the path: `%2e%2e%2f` is `../` here, and refused.
      const name = (req.params as { '*': string })['*'];
      const notFound = () =>
        reply.code(404).type('text/plain; charset=utf-8').send('no such console file\n');
      if (!ASSET_NAME.test(name) || name.includes('..')) return notFound();
      const path = join(assets, name);
      let size: number;
      try {
        const st = await stat(path);
        if (!st.isFile()) return notFound();
        size = st.size;
      } catch {
        return notFound();
      }
      reply
        .header('cache-control', 'public, max-age=31536000, immutable')
        .header('content-length', size)
        .type(TYPES[extname(name).toLowerCase()] ?? 'application/octet-stream');
      if (req.method === 'HEAD') return reply.send();
      return reply.send(createReadStream(path));
    },
  });

  // Browsers ask for it on every page; a build without one answers with nothing rather than a
  // 404 each browser logs as an error.
  app.route({
    method: ['GET', 'HEAD'],
    url: '/favicon.ico',
    schema: { hide: true },
    handler: async (req, reply) => {
      const path = join(dir, 'favicon.ico');
      const found = await stat(path).then(
        (st) => st.isFile(),
        () => false,
      );
      reply.header('cache-control', 'public, max-age=86400');
      if (!found) return reply.code(204).send();
      reply.type('image/x-icon');
      return req.method === 'HEAD' ? reply.send() : reply.send(createReadStream(path));
    },
  });

  return {
    isPage(req) {
      if (req.method !== 'GET' && req.method !== 'HEAD') return false;
      if (NOT_CONSOLE.test(req.url)) return false;
      return (req.headers.accept ?? '').includes('text/html');
    },
    sendPage,
  };
}
