import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { dirname, extname, join, resolve, sep } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';
import { replaceFile } from '../durable/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  errorStatus,
  isBulkheadError,
  LocalVmNameSchema,
  type ErrorBody,
} from '../protocol/index.ts';
import { localApiHandler, type LocalApiDeps } from './local-api.ts';
import { runStateOf } from './status.ts';
import { volumeLayout } from './volumes/index.ts';

/*
 * The switcher (DESIGN §1): the page the person at the PC uses to see and switch between its
 * VMs, served by Engine over HTTP on 127.0.0.1 only, with the local API's JSON routes
 * (local-api.ts, the same handlers) and, per running VM, a WebSocket relaying its display
 * (QEMU's VNC server on `<runDir>/vnc.sock`) to noVNC in the page.
 *
 * Loopback keeps it off the network, and a nat VM cannot reach the host's loopback (netns.ts);
 * but any local process can open a TCP port, so every request needs a secret made at start:
 *   - 32 random bytes, kept in memory and written 0600 into `<dataDir>/run/switcher.url` as
 *     the URL to open (`bulkhead engine switcher` prints it); Engine's log never holds it;
 *   - the first request with `?key=` gets a session cookie (HttpOnly, SameSite=Strict) and a
 *     redirect to the same URL without the key, so the key leaves the address bar;
 *   - every other request, WebSocket upgrades included, needs that cookie;
 *   - the Host header must name 127.0.0.1 or localhost at this port (a page of another site
 *     whose name resolves to 127.0.0.1, DNS rebinding, is refused), and POSTs and WebSocket
 *     upgrades must come from this origin (another page in the same browser cannot send them).
 * Secrets are compared through their SHA-256 digests with timingSafeEqual: equal lengths, and
 * the time taken says nothing about how much of a guess was right.
 */

/** Where the switcher's URL (with this boot's secret) is written for `bulkhead engine switcher`. */
export function switcherUrlFile(dataDir: string): string {
  return join(dataDir, 'run', 'switcher.url');
}

/**
 * The URL the running Engine's switcher wrote, with its key.
 * @throws BulkheadError ERR_NOT_FOUND when there is none (Engine does not run, or its switcher
 *   could not start), ERR_INPUT_UNREADABLE when it cannot be read (not Engine's user).
 */
export async function readSwitcherUrl(dataDir: string): Promise<string> {
  const file = switcherUrlFile(dataDir);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new BulkheadError(
        ErrorCodes.NOT_FOUND,
        `no switcher is running for ${dataDir} (${file} is missing)`,
        {
          hint: 'start Engine with `bulkhead engine run`; its log says why a switcher did not start',
        },
      );
    }
    throw new BulkheadError(
      ErrorCodes.INPUT_UNREADABLE,
      `cannot read ${file}: ${(err as Error).message}`,
      {
        cause: err,
        hint: "run this as Engine's user (root on the PC)",
      },
    );
  }
  return text.trim();
}

/** The built page: web/switcher/dist (built by `npm run setup`). */
export const SWITCHER_WEB_DIR = fileURLToPath(new URL('../../web/switcher/dist/', import.meta.url));

/** Largest WebSocket message the page may send (RFB's client messages are a few bytes). */
const MAX_DISPLAY_MESSAGE = 1024 * 1024;
/** Bytes queued for a slow page before the VM's display is read no further until it drains. */
const DISPLAY_HIGH_WATER = 4 * 1024 * 1024;

export interface SwitcherDeps extends LocalApiDeps {
  /**
   * The unix socket of running VM `vm`'s display (QEMU's VNC server).
   * @throws BulkheadError ERR_VM_NOT_RUNNING when it does not run, or has no display.
   */
  display: (vm: string) => Promise<string>;
  /** The built page's directory. Default: SWITCHER_WEB_DIR. */
  webDir?: string;
}

export interface SwitcherOptions {
  dataDir: string;
  /** TCP port on 127.0.0.1; 0 takes a free one. */
  port: number;
}

export interface Switcher {
  /** The port it listens on, on 127.0.0.1. */
  port: number;
  /** The URL to open, holding this boot's secret: give it to the PC's browser only. */
  url: string;
  /** Where that URL was written (0600). */
  urlFile: string;
  /** Stops listening, ends open connections (displays included) and removes the URL file. */
  close(): Promise<void>;
}

/** The displays of QEMU's VMs under the data directory. */
export function qemuDisplays(dataDir: string): SwitcherDeps['display'] {
  return async (vm) => {
    const { runDir } = volumeLayout(dataDir, vm);
    if ((await runStateOf(runDir)) !== 'running') {
      throw new BulkheadError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm} is not running`);
    }
    return join(runDir, 'vnc.sock');
  };
}

const DISPLAY_ROUTE = /^\/v1\/vms\/([^/]+)\/display$/;

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.json': 'application/json',
};

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** Whether `given` is `secret`, in time that does not depend on where they differ. */
function isSecret(given: string | undefined, secret: Buffer): boolean {
  return given !== undefined && timingSafeEqual(digest(given), secret);
}

/** The value of cookie `name` in a Cookie header. */
function cookieOf(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const at = part.indexOf('=');
    if (at > 0 && part.slice(0, at).trim() === name) return part.slice(at + 1).trim();
  }
  return undefined;
}

/** An answer of the switcher's own: an HTTP status and a sentence for the person at the PC. */
interface Refusal {
  status: number;
  code: string;
  message: string;
}

const STATUS_CODES: Record<number, string> = {
  401: ErrorCodes.UNAUTHENTICATED,
  403: ErrorCodes.FORBIDDEN,
  404: ErrorCodes.NOT_FOUND,
  500: ErrorCodes.INTERNAL,
};

function refusal(status: 401 | 403 | 404 | 500, message: string): Refusal {
  return { status, code: STATUS_CODES[status]!, message };
}

/**
 * Serves the switcher on 127.0.0.1:`port` and writes its URL, with a fresh secret, to
 * `<dataDir>/run/switcher.url` (0600).
 * @throws when the port is taken (EADDRINUSE), as node:net reports it.
 */
export async function startSwitcher(
  options: SwitcherOptions,
  deps: SwitcherDeps,
): Promise<Switcher> {
  const key = randomBytes(32).toString('base64url');
  const session = randomBytes(32).toString('base64url');
  const keyDigest = digest(key);
  const sessionDigest = digest(session);
  const webDir = resolve(deps.webDir ?? SWITCHER_WEB_DIR);
  const api = localApiHandler(deps);
  const sockets = new Set<Socket | Duplex>();
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_DISPLAY_MESSAGE });
  // Known once listening; every check below runs after that.
  let port = 0;
  // Per port: two Engines on one PC (tests) keep their sessions apart; cookies ignore ports.
  const cookie = () => `bulkhead_switcher_${port}`;
  const hosts = () => new Set([`127.0.0.1:${port}`, `localhost:${port}`]);
  const origins = () => new Set([...hosts()].map((h) => `http://${h}`));

  /** The refusal for a request that may not pass, or null. */
  /** Why a request may not pass, or null when it may. */
  const refusalOf = (req: IncomingMessage, url: URL, needsOrigin: boolean): Refusal | null => {
    if (!hosts().has(req.headers.host ?? '')) {
      return refusal(
        403,
        `The switcher answers only at http://127.0.0.1:${port}; open the address \`bulkhead engine switcher\` prints.`,
      );
    }
    if (needsOrigin && !origins().has(req.headers.origin ?? '')) {
      return refusal(403, 'The switcher takes this only from its own page.');
    }
    if (url.searchParams.has('key')) return null;
    if (!isSecret(cookieOf(req, cookie()), sessionDigest)) {
      return refusal(
        401,
        'Open the switcher from the address `bulkhead engine switcher` prints; it holds the key of this start of Engine.',
      );
    }
    return null;
  };

  const server = createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      deps.log.error({ component: 'http', err }, 'switcher request failed');
      if (res.headersSent) res.destroy();
      else refuse(req, res, refusal(500, 'The switcher could not answer; see Engine’s log.'));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // The host part is a placeholder: only the path and the query are read.
    const url = new URL(req.url ?? '/', 'http://switcher');
    const isRead = req.method === 'GET' || req.method === 'HEAD';
    const refused = refusalOf(req, url, !isRead);
    if (refused) {
      req.resume();
      refuse(req, res, refused);
      return;
    }
    if (url.searchParams.has('key')) {
      req.resume();
      if (!isRead || !isSecret(url.searchParams.get('key') ?? undefined, keyDigest)) {
        refuse(
          req,
          res,
          refusal(
            403,
            'This switcher address is not valid (any more): open the one `bulkhead engine switcher` prints now.',
          ),
        );
        return;
      }
      url.searchParams.delete('key');
      res.writeHead(303, {
        ...securityHeaders(port),
        location: `${url.pathname}${url.search}`,
        'set-cookie': `${cookie()}=${session}; Path=/; HttpOnly; SameSite=Strict`,
        'content-length': 0,
      });
      res.end();
      return;
    }
    if (url.pathname.startsWith('/v1/')) {
      for (const [name, value] of Object.entries(securityHeaders(port))) res.setHeader(name, value);
      // The local API sees the path only: it logs URLs of failed requests.
      req.url = url.pathname;
      api(req, res);
      return;
    }
    req.resume();
    if (!isRead) {
      refuse(req, res, refusal(404, `${req.method} ${url.pathname} is not on the switcher.`));
      return;
    }
    await servePage(req, res, url.pathname);
  }

  function refuse(req: IncomingMessage, res: ServerResponse, answer: Refusal): void {
    const isApi = (req.url ?? '').startsWith('/v1/');
    const body = isApi
      ? JSON.stringify({ error: { code: answer.code, message: answer.message } } as ErrorBody)
      : `${answer.message}\n`;
    res.writeHead(answer.status, {
      ...securityHeaders(port),
      'content-type': isApi ? 'application/json; charset=utf-8' : 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      // An answer before the whole body was read closes the connection: the rest is not read.
      ...(req.complete ? {} : { connection: 'close' }),
    });
    res.end(body);
  }

  async function servePage(req: IncomingMessage, res: ServerResponse, path: string) {
    let name: string;
    try {
      name = decodeURIComponent(path === '/' ? '/index.html' : path);
    } catch {
      name = '';
    }
    const file = resolve(webDir, `.${name}`);
    const inside = file.startsWith(webDir + sep) && !name.includes('\0');
    const type = CONTENT_TYPES[extname(file)];
    const found = inside && type ? await stat(file).catch(() => undefined) : undefined;
    if (!found?.isFile()) {
      const built = await stat(join(webDir, 'index.html')).catch(() => undefined);
      refuse(
        req,
        res,
        built
          ? refusal(404, `${path} is not a page of the switcher.`)
          : refusal(
              404,
              `The switcher's page is not built (${webDir} is missing): run \`npm run setup\`.`,
            ),
      );
      return;
    }
    const body = await readFile(file);
    res.writeHead(200, {
      ...securityHeaders(port),
      'content-type': type!,
      'content-length': body.length,
      // Vite names assets by their content: they never change. The page itself may.
      'cache-control': name.startsWith('/assets/') ? 'max-age=31536000, immutable' : 'no-store',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    void upgrade(req, socket, head).catch((err: unknown) => {
      const known = isBulkheadError(err) && errorStatus(err.code) < 500;
      if (!known) deps.log.error({ component: 'http', err }, 'switcher display failed');
      refuseUpgrade(
        socket,
        known ? errorStatus(err.code) : 500,
        known ? err.message : 'The display could not be opened; see Engine’s log.',
      );
    });
  });

  async function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://switcher');
    // The key is for the page's first load only, never a WebSocket.
    url.searchParams.delete('key');
    const refused = refusalOf(req, url, true);
    if (refused) {
      refuseUpgrade(socket, refused.status, refused.message);
      return;
    }
    const match = DISPLAY_ROUTE.exec(url.pathname);
    const vm = match ? LocalVmNameSchema.safeParse(safeDecode(match[1]!)) : undefined;
    if (!vm?.success) {
      refuseUpgrade(socket, 404, `${url.pathname} is not a display of the switcher.`);
      return;
    }
    if (!(await deps.vms()).some((v) => v.name === vm.data)) {
      throw new BulkheadError(ErrorCodes.NOT_FOUND, `this PC has no VM named ${vm.data}`);
    }
    const path = await deps.display(vm.data);
    const display = await new Promise<Socket>((ok, fail) => {
      const s = connect(path);
      s.once('connect', () => {
        s.off('error', fail);
        ok(s);
      });
      s.once('error', (err) =>
        fail(
          new BulkheadError(ErrorCodes.VM_NOT_RUNNING, `the display of ${vm.data} is not open`, {
            cause: err,
          }),
        ),
      );
    });
    sockets.add(display);
    display.on('close', () => sockets.delete(display));
    if (socket.destroyed) {
      display.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => relay(ws, display, vm.data));
  }

  function relay(ws: WebSocket, display: Socket, vm: string): void {
    deps.log.info({ component: 'http', vm }, `switcher: display of ${vm} opened`);
    display.on('data', (bytes: Buffer) => {
      ws.send(bytes, { binary: true }, () => {
        if (display.isPaused() && ws.bufferedAmount < DISPLAY_HIGH_WATER) display.resume();
      });
      if (ws.bufferedAmount >= DISPLAY_HIGH_WATER) display.pause();
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      // RFB is binary; a text frame is no client of ours.
      if (!isBinary) {
        ws.close(1003, 'binary frames only');
        return;
      }
      if (!display.write(data)) {
        ws.pause();
        display.once('drain', () => ws.resume());
      }
    });
    const end = () => {
      display.destroy();
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000);
    };
    display.on('close', end);
    display.on('error', end);
    ws.on('close', () => {
      display.destroy();
      deps.log.info({ component: 'http', vm }, `switcher: display of ${vm} closed`);
    });
    ws.on('error', end);
  }

  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(options.port, '127.0.0.1', () => {
      server.off('error', fail);
      ok();
    });
  });
  port = (server.address() as { port: number }).port;
  server.requestTimeout = 60_000;
  server.headersTimeout = 10_000;
  const url = `http://127.0.0.1:${port}/?key=${key}`;
  const urlFile = switcherUrlFile(options.dataDir);
  try {
    await mkdir(dirname(urlFile), { recursive: true, mode: 0o700 });
    await replaceFile(urlFile, Buffer.from(`${url}\n`), { mode: 0o600 });
  } catch (err) {
    server.close();
    throw err;
  }
  deps.log.info(
    { component: 'http', port, urlFile },
    `switcher on http://127.0.0.1:${port}; its address with this start's key is in ${urlFile}`,
  );
  return {
    port,
    url,
    urlFile,
    async close() {
      await rm(urlFile, { force: true });
      for (const ws of wss.clients) ws.terminate();
      for (const s of sockets) s.destroy();
      await new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      });
      wss.close();
    },
  };
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return '';
  }
}

/**
 * Headers of every answer: the page's own scripts, styles and connections only (its
 * WebSockets included), nothing inline, never framed, no referrer, nothing kept by a cache.
 */
function securityHeaders(port: number): Record<string, string> {
  const self = [`ws://127.0.0.1:${port}`, `ws://localhost:${port}`].join(' ');
  return {
    'content-security-policy': [
      "default-src 'self'",
      "base-uri 'self'",
      `connect-src 'self' ${self}`,
      "font-src 'self'",
      "form-action 'self'",
      "frame-ancestors 'none'",
      "img-src 'self' data: blob:",
      "object-src 'none'",
      "script-src 'self'",
      "script-src-attr 'none'",
      "style-src 'self'",
    ].join('; '),
    'x-frame-options': 'DENY',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-resource-policy': 'same-origin',
    'cache-control': 'no-store',
  };
}

function refuseUpgrade(socket: Duplex, status: number, message: string): void {
  if (socket.destroyed) return;
  const reason = { 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 409: 'Conflict' };
  const body = `${message}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${reason[status as keyof typeof reason] ?? 'Error'}\r\n` +
      'content-type: text/plain; charset=utf-8\r\n' +
      `content-length: ${Buffer.byteLength(body)}\r\n` +
      'connection: close\r\n\r\n' +
      body,
  );
}
