import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { createLocalPushBus, type PushBus } from './push.ts';

/*
 * The push bus of Center replicas sharing PostgreSQL: each replica delivers its own
 * notifications locally at once and relays them to the others with NOTIFY on one channel; each
 * replica LISTENs on a dedicated connection (a pooled one could not hold a LISTEN) and delivers
 * what the others sent to the devices connected to it. A payload is
 * `{"o":<origin>,"ids":[…]}` or `{"o":<origin>,"all":true}`; the origin lets a replica skip
 * its own notifications, which PostgreSQL echoes back. Lists of ids are split so each payload
 * stays below NOTIFY's 8000-byte limit.
 *
 * Best effort, like the bus contract: while the listening connection is down (it reconnects
 * with backoff), notifications from other replicas are missed, and devices learn at their next
 * poll.
 */

/** The NOTIFY channel. */
export const PUSH_CHANNEL = 'bulkhead_push';
/** Payload bytes per NOTIFY, below PostgreSQL's 8000-byte limit. */
const MAX_PAYLOAD_BYTES = 7000;

export interface PgPushBus extends PushBus {
  /** Resolves once the first LISTEN is in place (notifications from others flow from then). */
  ready: Promise<void>;
  /** Stops listening and closes its connections. */
  close(): Promise<void>;
}

/** Splits ids into NOTIFY payloads of at most MAX_PAYLOAD_BYTES each. */
export function pushPayloads(origin: string, deviceIds: readonly string[] | 'all'): string[] {
  if (deviceIds === 'all') return [JSON.stringify({ o: origin, all: true })];
  const payloads: string[] = [];
  const envelope = JSON.stringify({ o: origin, ids: [] }).length;
  let batch: string[] = [];
  let size = envelope;
  for (const id of deviceIds) {
    const cost = JSON.stringify(id).length + 1;
    if (batch.length > 0 && size + cost > MAX_PAYLOAD_BYTES) {
      payloads.push(JSON.stringify({ o: origin, ids: batch }));
      batch = [];
      size = envelope;
    }
    batch.push(id);
    size += cost;
  }
  if (batch.length > 0) payloads.push(JSON.stringify({ o: origin, ids: batch }));
  return payloads;
}

/**
 * A push bus relayed through PostgreSQL LISTEN/NOTIFY, for Center replicas on one database.
 * `connectionString` is the database URL Center uses.
 */
export function createPgPushBus(options: { connectionString: string; log?: Logger }): PgPushBus {
  const local = createLocalPushBus();
  const origin = randomBytes(8).toString('hex');
  const log = options.log;
  // NOTIFY goes through a small pool of its own, so a notification never waits for a request's
  // transaction.
  const sender = new pg.Pool({
    connectionString: options.connectionString,
    max: 2,
    application_name: 'bulkhead-center-push',
  });
  sender.on('error', (err) => log?.warn({ err }, 'push notify connection failed'));
  let listener: pg.Client | undefined;
  let listenedBefore = false;
  let closed = false;
  let retryMs = 250;
  let retryTimer: NodeJS.Timeout | undefined;
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (markReady = resolve));

  const deliver = (payload: string | undefined) => {
    try {
      const message = JSON.parse(payload ?? '') as { o?: unknown; ids?: unknown; all?: unknown };
      if (message.o === origin) return;
      if (message.all === true) local.notify('all');
      else if (Array.isArray(message.ids)) {
        local.notify(message.ids.filter((id): id is string => typeof id === 'string'));
      }
    } catch {
      log?.warn('ignored a malformed push notification');
    }
  };

  const listen = async () => {
    const client = new pg.Client({
      connectionString: options.connectionString,
      application_name: 'bulkhead-center-listen',
    });
    client.on('notification', (n) => {
      if (n.channel === PUSH_CHANNEL) deliver(n.payload);
    });
    client.on('error', (err) => {
      log?.warn({ err }, 'push listen connection failed; reconnecting');
      void client.end().catch(() => undefined);
      if (listener === client) listener = undefined;
      schedule();
    });
    try {
      await client.connect();
      await client.query(`listen ${PUSH_CHANNEL}`);
    } catch (err) {
      void client.end().catch(() => undefined);
      throw err;
    }
    if (closed) {
      await client.end();
      return;
    }
    listener = client;
    retryMs = 250;
    // Notifications sent while no connection listened are lost: after a reconnect, everything
    // this process remembers about devices' states may be stale.
    if (listenedBefore) local.notify('all');
    listenedBefore = true;
    markReady();
  };

  const schedule = () => {
    if (closed || retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      listen().catch((err: unknown) => {
        log?.warn({ err }, 'push listen failed; retrying');
        retryMs = Math.min(retryMs * 2, 10_000);
        schedule();
      });
    }, retryMs);
  };

  listen().catch((err: unknown) => {
    log?.warn({ err }, 'push listen failed; retrying');
    schedule();
  });

  return {
    notify(deviceIds) {
      local.notify(deviceIds);
      if (closed) return;
      for (const payload of pushPayloads(origin, deviceIds)) {
        sender
          .query('select pg_notify($1, $2)', [PUSH_CHANNEL, payload])
          .catch((err: unknown) => log?.warn({ err }, 'push notify failed'));
      }
    },
    subscribe: (deviceId, fn) => local.subscribe(deviceId, fn),
    watch: (fn) => local.watch(fn),
    connections: () => local.connections(),
    ready,
    async close() {
      closed = true;
      if (retryTimer !== undefined) clearTimeout(retryTimer);
      const client = listener;
      listener = undefined;
      await client?.end().catch(() => undefined);
      await sender.end();
    },
  };
}
