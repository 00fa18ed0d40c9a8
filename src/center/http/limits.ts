import type { Server } from 'node:http';
import { BlockList, isIPv4, type Socket } from 'node:net';
import underPressure from '@fastify/under-pressure';
import type { FastifyInstance } from 'fastify';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import type { CenterConfig } from '../config.ts';

/*
 * What keeps one client, or a flood of them, from taking Center down before a route runs:
 * timeouts on slow and silent connections, a cap on connections per client address, closing a
 * connection whose body Center will not read, and load shedding when the process is drowning.
 * Body limits per route are the routes' own (src/center/http/route.ts).
 */

/** Seconds a client is told to wait when Center sheds load. */
export const OVERLOAD_RETRY_AFTER_SECONDS = 10;

/**
 * Whether a peer address is one of `proxies` (addresses or CIDR blocks, as `trustedProxies`
 * holds them). An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`.
 */
export function addressMatcher(proxies: readonly string[]): (address: string) => boolean {
  if (proxies.length === 0) return () => false;
  const list = new BlockList();
  for (const entry of proxies) {
    const [address = '', bits] = entry.split('/');
    const family = isIPv4(address) ? 'ipv4' : 'ipv6';
    if (bits === undefined) list.addAddress(address, family);
    else list.addSubnet(address, Number(bits), family);
  }
  return (peer) => {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(peer)?.[1];
    const address = mapped ?? peer;
    return list.check(address, isIPv4(address) ? 'ipv4' : 'ipv6');
  };
}

/**
 * Fastify's server options for Center's timeouts. Node checks `headersTimeout` and
 * `requestTimeout` of open connections every `connectionsCheckingInterval` (30 s by default,
 * which would triple a 10 s header timeout), so it checks a few times per header timeout.
 */
export function serverTimeouts(config: CenterConfig) {
  const headersTimeout = config.headersTimeoutSeconds * 1000;
  return {
    http: {
      headersTimeout,
      connectionsCheckingInterval: Math.max(250, Math.min(5_000, headersTimeout / 4)),
    },
    requestTimeout: config.requestTimeoutSeconds * 1000,
    keepAliveTimeout: config.keepAliveTimeoutSeconds * 1000,
  };
}

/** A client address as one key: `::ffff:10.0.0.1` and `10.0.0.1` are the same client. */
export function addressKey(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}

export interface ConnectionGuardOptions {
  /** Connections one address may hold open at once. */
  maxPerAddress: number;
  /** How long a connection may stay silent before its first request's headers are complete. */
  headersTimeoutMs: number;
  /**
   * Addresses the cap does not apply to: a reverse proxy in front of Center is one address
   * carrying many clients.
   */
  isExempt?: (address: string) => boolean;
  /** Told of each connection closed for being over the cap. */
  onRefused?: (address: string) => void;
}

/**
 * Guards `server`'s connections: one over `maxPerAddress` from its address is closed as soon
 * as it is accepted, and one that sends no complete request within `headersTimeoutMs` is closed
 * then. Node's own `headersTimeout` only starts at a request's first byte, so a connection that
 * never sends one would otherwise stay open for good. Written here rather than taken from a
 * plugin: a Fastify plugin sees requests, and these connections never make one.
 */
export function guardConnections(server: Server, options: ConnectionGuardOptions): void {
  const open = new Map<string, number>();
  const firstRequest = new WeakMap<Socket, NodeJS.Timeout>();
  server.on('connection', (socket: Socket) => {
    const remote = socket.remoteAddress;
    if (remote === undefined) {
      // Already gone (reset before Node handed it over).
      socket.destroy();
      return;
    }
    const address = addressKey(remote);
    if (!(options.isExempt?.(address) ?? false)) {
      const count = open.get(address) ?? 0;
      if (count >= options.maxPerAddress) {
        options.onRefused?.(address);
        socket.destroy();
        return;
      }
      open.set(address, count + 1);
      socket.once('close', () => {
        const left = (open.get(address) ?? 1) - 1;
        if (left > 0) open.set(address, left);
        else open.delete(address);
      });
    }
    // A connection that has not made its first request when the header timeout ends is
    // destroyed. A timer of our own rather than the socket's idle timeout, whose event Node's
    // HTTP server may hand to other listeners instead of closing the socket. Between requests,
    // Node's keep-alive timeout takes over.
    const timer = setTimeout(() => {
      if (!socket.destroyed) socket.destroy();
    }, options.headersTimeoutMs);
    timer.unref();
    firstRequest.set(socket, timer);
    socket.once('close', () => clearTimeout(timer));
  });
  server.on('request', (req: { socket: Socket }) => {
    const timer = firstRequest.get(req.socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    firstRequest.delete(req.socket);
  });
}

/**
 * Answers with `Connection: close` when Center replies before it read the request's body (a
 * 401 to an unauthenticated upload, a 404, a 429): Node would otherwise read, and throw away,
 * all of a body it will never use to keep the connection alive.
 */
export function closeUnreadBodies(app: FastifyInstance): void {
  app.addHook('onSend', async (req, reply, payload) => {
    const raw = req.raw;
    const hasBody =
      raw.headers['transfer-encoding'] !== undefined ||
      Number(raw.headers['content-length'] ?? 0) > 0;
    if (hasBody && !raw.complete) void reply.header('connection', 'close');
    return payload;
  });
}

/** What `pressureOf` describes: the thresholds of load shedding. */
export type PressureLimits = Pick<CenterConfig, 'maxEventLoopDelayMs' | 'maxHeapUsedBytes'>;

const MIB = 1024 * 1024;

/** Which threshold the process is past, in words, or undefined when it is not under pressure. */
export function pressureOf(app: FastifyInstance, limits: PressureLimits): string | undefined {
  if (!app.isUnderPressure()) return undefined;
  const usage = app.memoryUsage();
  if (usage.eventLoopDelay > limits.maxEventLoopDelayMs) {
    return `event loop delay ${Math.round(usage.eventLoopDelay)} ms, over ${limits.maxEventLoopDelayMs} ms`;
  }
  if (usage.heapUsed > limits.maxHeapUsedBytes) {
    return `heap in use ${Math.round(usage.heapUsed / MIB)} MiB, over ${Math.round(limits.maxHeapUsedBytes / MIB)} MiB`;
  }
  return 'under pressure';
}

/**
 * Load shedding with @fastify/under-pressure: while the event loop's delay or the heap in use
 * is past its threshold, every request is answered at once with 503 `ERR_OVERLOADED` and
 * Retry-After, rather than queued behind the ones the process cannot finish. A route opts out
 * with `config: { pressureHandler: admitUnderPressure }` (/healthz, which reports it instead).
 * Register before the routes.
 */
export async function registerLoadShedding(
  app: FastifyInstance,
  limits: PressureLimits,
): Promise<void> {
  await app.register(underPressure, {
    maxEventLoopDelay: limits.maxEventLoopDelayMs,
    maxHeapUsedBytes: limits.maxHeapUsedBytes,
    retryAfter: OVERLOAD_RETRY_AFTER_SECONDS,
    pressureHandler: async () => {
      throw new BulkheadError(
        ErrorCodes.OVERLOADED,
        `Center is overloaded (${pressureOf(app, limits) ?? 'under pressure'}); try again in ${OVERLOAD_RETRY_AFTER_SECONDS} s`,
        { retryable: true, details: { retryAfterMs: OVERLOAD_RETRY_AFTER_SECONDS * 1000 } },
      );
    },
  });
}

/** A route's `pressureHandler` that lets its requests through while Center sheds load. */
export function admitUnderPressure(): void {}
