// A small static file server for the benchmark: GET and HEAD, single and multi-range requests
// (multipart/byteranges, which zsync uses), keep-alive, and a count of every body byte it sends,
// so each tool's real download over HTTP can be measured.
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve, sep } from 'node:path';

export interface StaticServer {
  /** Base URL, without a trailing slash, e.g. http://127.0.0.1:34567 */
  url: string;
  /** Body bytes sent since start or the last reset() (multipart framing included). */
  bytesSent(): number;
  /** Requests served since start or the last reset(). */
  requests(): number;
  reset(): void;
  close(): Promise<void>;
}

interface Range {
  start: number;
  end: number; // inclusive
}

/**
 * Parses a `Range: bytes=…` header against a file of `size` bytes. Returns undefined when the
 * header is absent or not a bytes range (serve the whole file), an empty array when no range is
 * satisfiable (416), and otherwise the ranges in request order.
 */
export function parseRange(header: string | undefined, size: number): Range[] | undefined {
  if (!header) return undefined;
  const m = /^\s*bytes\s*=\s*(.+)$/i.exec(header);
  if (!m || !m[1]) return undefined;
  const ranges: Range[] = [];
  for (const part of m[1].split(',')) {
    const spec = part.trim();
    if (spec === '') continue;
    const r = /^(\d*)\s*-\s*(\d*)$/.exec(spec);
    if (!r) return undefined; // malformed: ignore the header, as RFC 9110 allows
    const [, a = '', b = ''] = r;
    if (a === '' && b === '') return undefined;
    let start: number;
    let end: number;
    if (a === '') {
      const suffix = Number(b);
      if (suffix === 0) continue;
      start = Math.max(0, size - suffix);
      end = size - 1;
    } else {
      start = Number(a);
      end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
      if (b !== '' && Number(b) < start) return undefined;
    }
    if (start >= size || size === 0) continue;
    ranges.push({ start, end });
  }
  return ranges;
}

/** Resolves when `res` can take more data or has closed; leaves no listeners behind. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolvePromise) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolvePromise();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

export async function startStaticServer(root: string): Promise<StaticServer> {
  const base = resolve(root);
  let sent = 0;
  let served = 0;

  async function writeChunk(res: ServerResponse, chunk: string | Buffer): Promise<void> {
    sent += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
    if (!res.write(chunk)) await drained(res);
  }

  async function writeFileRange(res: ServerResponse, file: string, range: Range): Promise<void> {
    const stream = createReadStream(file, {
      start: range.start,
      end: range.end,
      highWaterMark: 1 << 20,
    });
    try {
      for await (const chunk of stream) {
        if (res.destroyed) break;
        await writeChunk(res, chunk as Buffer);
      }
    } finally {
      stream.destroy();
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    served += 1;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Length': 0 });
      res.end();
      return;
    }
    let pathname: string;
    try {
      pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://localhost').pathname);
    } catch {
      res.writeHead(400, { 'Content-Length': 0 });
      res.end();
      return;
    }
    const file = resolve(base, '.' + pathname);
    if (pathname.includes('\0') || (file !== base && !file.startsWith(base + sep))) {
      res.writeHead(403, { 'Content-Length': 0 });
      res.end();
      return;
    }
    let size: number;
    let mtime: Date;
    try {
      const st = await stat(file);
      if (!st.isFile()) throw new Error('not a file');
      size = st.size;
      mtime = st.mtime;
    } catch {
      res.writeHead(404, { 'Content-Length': 0 });
      res.end();
      return;
    }
    const head = req.method === 'HEAD';
    const common = {
      'Accept-Ranges': 'bytes',
      'Last-Modified': mtime.toUTCString(),
    };
    const ranges = parseRange(req.headers.range, size);
    if (ranges === undefined) {
      res.writeHead(200, {
        ...common,
        'Content-Type': 'application/octet-stream',
        'Content-Length': size,
      });
      if (!head && size > 0) await writeFileRange(res, file, { start: 0, end: size - 1 });
      res.end();
      return;
    }
    if (ranges.length === 0) {
      res.writeHead(416, { ...common, 'Content-Range': `bytes */${size}`, 'Content-Length': 0 });
      res.end();
      return;
    }
    if (ranges.length === 1) {
      const r = ranges[0] as Range;
      res.writeHead(206, {
        ...common,
        'Content-Type': 'application/octet-stream',
        'Content-Range': `bytes ${r.start}-${r.end}/${size}`,
        'Content-Length': r.end - r.start + 1,
      });
      if (!head) await writeFileRange(res, file, r);
      res.end();
      return;
    }
    const boundary = `bench-${randomBytes(12).toString('hex')}`;
    // Every part, the first included, starts with CRLF: zsync reads a line before each boundary.
    const partHeaders = ranges.map(
      (r) =>
        `\r\n--${boundary}\r\n` +
        'Content-Type: application/octet-stream\r\n' +
        `Content-Range: bytes ${r.start}-${r.end}/${size}\r\n\r\n`,
    );
    const trailer = `\r\n--${boundary}--\r\n`;
    const length =
      partHeaders.reduce((n, h) => n + Buffer.byteLength(h), 0) +
      ranges.reduce((n, r) => n + (r.end - r.start + 1), 0) +
      Buffer.byteLength(trailer);
    res.writeHead(206, {
      ...common,
      'Content-Type': `multipart/byteranges; boundary=${boundary}`,
      'Content-Length': length,
    });
    if (!head) {
      for (const [i, r] of ranges.entries()) {
        if (res.destroyed) break;
        await writeChunk(res, partHeaders[i] as string);
        await writeFileRange(res, file, r);
      }
      if (!res.destroyed) await writeChunk(res, trailer);
    }
    res.end();
  }

  const server = createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'Content-Length': 0 });
        res.end();
      } else {
        res.destroy(err instanceof Error ? err : new Error(String(err)));
      }
    });
  });
  server.headersTimeout = 120_000;
  server.requestTimeout = 0;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    bytesSent: () => sent,
    requests: () => served,
    reset: () => {
      sent = 0;
      served = 0;
    },
    close: async () => {
      const closed = once(server, 'close');
      server.close();
      server.closeAllConnections();
      await closed;
    },
  };
}
