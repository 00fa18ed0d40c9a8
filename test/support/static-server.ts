import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize, sep } from 'node:path';

/** What the server does with a request; tests use it to play a faulty or lying mirror. */
export type Fault =
  | { kind: 'none' }
  /** Close the connection after sending this many body bytes of the response. */
  | { kind: 'drop'; afterBytes: number }
  /** Serve these bytes instead of the file's. */
  | { kind: 'replace'; body: Buffer }
  | { kind: 'status'; status: number };

export interface StaticServer {
  url: string;
  /** Body bytes sent so far. */
  bytesSent(): number;
  /** Paths requested, in order (with `Range` when given). */
  requests: string[];
  /** TCP connections accepted so far. */
  connections(): number;
  /** Decides the fault for each request; default none. */
  fault: (path: string, req: IncomingMessage) => Fault;
  close(): Promise<void>;
}

/**
 * A static file server for tests: GET and HEAD with single byte ranges and keep-alive, as
 * any web server or CDN in front of a store would be, plus injectable faults.
 */
export async function startStaticServer(root: string): Promise<StaticServer> {
  let sent = 0;
  let conns = 0;
  const state: StaticServer = {
    url: '',
    bytesSent: () => sent,
    requests: [],
    connections: () => conns,
    fault: () => ({ kind: 'none' }),
    close: async () => {},
  };
  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', () => conns++);

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    state.requests.push(req.headers.range ? `${path} ${req.headers.range}` : path);
    const file = normalize(join(root, path));
    if (!file.startsWith(root + sep)) return void res.writeHead(403).end();
    const fault = state.fault(path, req);
    if (fault.kind === 'status') return void res.writeHead(fault.status).end();
    let size: number;
    try {
      const st = await stat(file);
      if (!st.isFile()) return void res.writeHead(404).end();
      size = st.size;
    } catch {
      return void res.writeHead(404).end();
    }
    if (fault.kind === 'replace') {
      res.writeHead(200, { 'content-length': fault.body.length });
      sent += fault.body.length;
      return void res.end(req.method === 'HEAD' ? undefined : fault.body);
    }
    let start = 0;
    let end = size - 1;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (range) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      if (start > end) return void res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
      res.writeHead(206, {
        'content-length': end - start + 1,
        'content-range': `bytes ${start}-${end}/${size}`,
        'accept-ranges': 'bytes',
      });
    } else {
      res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' });
    }
    if (req.method === 'HEAD') return void res.end();
    let budget = fault.kind === 'drop' ? fault.afterBytes : Infinity;
    const stream = createReadStream(file, { start, end });
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      const part = chunk.subarray(0, Math.max(0, Math.min(chunk.length, budget)));
      if (part.length > 0) {
        sent += part.length;
        budget -= part.length;
        if (!res.write(part)) await new Promise((r) => res.once('drain', r));
      }
      if (budget <= 0 && part.length < chunk.length) {
        stream.destroy();
        res.socket?.destroy();
        return;
      }
    }
    res.end();
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  state.url = `http://127.0.0.1:${port}/`;
  state.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return state;
}
