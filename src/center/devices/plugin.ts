import { createPublicKey } from 'node:crypto';
import { Counter } from 'prom-client';
import { canonicalJson, verifyPayload } from '../../signing/index.ts';
import {
  BulkheadError,
  deviceEndpoints as e,
  ErrorCodes,
  killResultSigned,
  type PublicKeyRef,
} from '../../protocol/index.ts';
import { route } from '../http/route.ts';
import type { CenterApp, CenterContext } from '../context.ts';
import { chooseApps } from './app-choice.ts';
import { DOMAINS, TOKEN_TTL_MS } from './credentials.ts';
import { EtagCache } from './etag-cache.ts';
import {
  buildDesiredState,
  desiredStateWindow,
  leaseExpiry,
  matchesEtag,
  readPublishers,
  readDesiredStateHead,
  warnOnce,
} from './desired-state.ts';
import { enrolDevice } from './enrol.ts';
import { ReportQuota } from './report-quota.ts';
import { ingestReports, recordKillResult } from './reports.ts';
import { isRefusal, refusalFor } from './standing.ts';

/** Push connections one device may hold: one, and a second while it reconnects. */
const PUSH_CONNECTIONS_PER_DEVICE = 2;
/** SSE comment sent on an idle push connection, so proxies and NATs keep it open. */
const PUSH_HEARTBEAT_MS = 25_000;

/**
 * The device API under `/api/v1/device/`: enrolment, key-based authentication, the signed
 * desired state and event reports. Register with `app.register(deviceApi(deps))`.
 */
export function deviceApi(deps: CenterContext) {
  return async function deviceApiPlugin(app: CenterApp): Promise<void> {
    const { db } = deps.database;
    const credentials = deps.deviceCredentials;
    const etags = new EtagCache();
    // Trusted publisher keys, the same in every document: read once, read again after a
    // change (a key change notifies every device, 'all').
    let publishers: Promise<PublicKeyRef[]> | undefined;
    const currentPublishers = () => {
      publishers ??= readPublishers(db).catch((err: unknown) => {
        publishers = undefined;
        throw err;
      });
      return publishers;
    };
    const unwatch = deps.push.watch((ids) => {
      etags.invalidate(ids);
      if (ids === 'all') publishers = undefined;
    });
    app.addHook('onClose', async () => unwatch());
    // VMs left out of desired states are logged once each, not on every poll.
    const warn = warnOnce(deps.log.child({ component: 'rollout' }));
    const centerKey = {
      keyid: deps.signingKey.keyid,
      publicKey: createPublicKey(deps.signingKey.key)
        .export({ type: 'spki', format: 'pem' })
        .toString(),
    };
    // Where devices fetch chunks: Center's own store first, then its mirrors.
    const storeUrls = [
      `${deps.config.publicUrl.replace(/\/$/, '')}/store/`,
      ...deps.config.mirrors,
    ];
    const metricName = 'bulkhead_center_desired_state_checks_total';
    const checks =
      deps.metrics === undefined
        ? undefined
        : ((deps.metrics.getSingleMetric(metricName) as Counter<'result'> | undefined) ??
          new Counter({
            name: metricName,
            help: 'Desired-state requests answered, by result: 200 (new document) or 304.',
            labelNames: ['result'],
            registers: [deps.metrics],
          }));

    const standing = deps.deviceStanding;

    /** The device's public key, from the base64 of its raw 32 bytes as enrolment stored it. */
    const deviceKey = (raw: string) =>
      createPublicKey({
        key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw, 'base64').toString('base64url') },
        format: 'jwk',
      });

    /**
     * The device that signed `payload` under `domain` with the key it enrolled with, answering
     * `challenge` (issued for it by Center, not expired): how a device proves itself without a
     * token.
     * @throws BulkheadError `ERR_DEVICE_CHALLENGE_INVALID`; `ERR_UNAUTHENTICATED`, the same for
     *   an unknown device and a wrong signature, so ids are not probed.
     */
    async function provenDevice(
      deviceId: string,
      challenge: string,
      signed: { domain: string; payload: string; signature: string },
    ) {
      credentials.checkChallenge(challenge, deviceId);
      const device = await db
        .selectFrom('devices')
        .select(['public_key', 'state', 'updated_at'])
        .where('id', '=', deviceId)
        .executeTakeFirst();
      const refused = new BulkheadError(
        ErrorCodes.UNAUTHENTICATED,
        'the signature does not verify with the key this device enrolled with',
      );
      if (device === undefined) throw refused;
      if (Buffer.from(signed.signature, 'base64').length !== 64) throw refused;
      const key = deviceKey(device.public_key);
      if (!verifyPayload(signed.domain, signed.payload, signed.signature, key)) throw refused;
      return device;
    }

    route(app, e.enrol, async (req) => {
      const result = await enrolDevice(db, req.body, deps.now());
      req.log.info({ deviceId: result.deviceId }, 'device enrolled');
      return { ...result, centerKey };
    });

    route(app, e.challenge, async (req) => credentials.issueChallenge(req.body.deviceId));

    route(app, e.token, async (req) => {
      const { deviceId, challenge, signature } = req.body;
      const device = await provenDevice(deviceId, challenge, {
        domain: DOMAINS.deviceAuth,
        payload: challenge,
        signature,
      });
      const now = deps.now();
      // Proven to be the device: a killed one learns of its kill here, and gets no token.
      const refusal = await refusalFor(
        db,
        deps.signingKey,
        { id: deviceId, state: device.state, changedAt: Number(device.updated_at) },
        now.getTime(),
      );
      if (refusal !== undefined) throw refusal;
      await db
        .updateTable('devices')
        .set({ last_contact_at: now.getTime() })
        .where('id', '=', deviceId)
        .execute();
      return credentials.issueToken(deviceId);
    });

    route(app, e.desiredState, async (req, deviceId, reply) => {
      if (req.query.deviceId !== undefined && req.query.deviceId !== deviceId) {
        throw new BulkheadError(
          ErrorCodes.FORBIDDEN,
          'a device may only read its own desired state',
        );
      }
      // The hot path: an ETag this process answered the device with, not since invalidated
      // by a notification, answers a matching poll without touching the database.
      const now = deps.now();
      const window = desiredStateWindow(now.getTime());
      const ifNoneMatch = req.headers['if-none-match'];
      const cached = etags.get(deviceId, window, now.getTime());
      if (cached !== undefined && matchesEtag(ifNoneMatch, cached)) {
        checks?.inc({ result: '304' });
        return reply.header('etag', cached).header('cache-control', 'no-store').code(304).send();
      }
      const head = await readDesiredStateHead(db, deviceId, now, deps.signingKey.keyid);
      if (head === undefined) {
        throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the device is not enrolled');
      }
      // The authentication hook checked the standing, maybe from memory; this read is the
      // database's word, in case the kill's notification has not arrived yet.
      const refusal = await refusalFor(
        db,
        deps.signingKey,
        { id: deviceId, state: head.state, changedAt: head.revision },
        now.getTime(),
      );
      if (refusal !== undefined) throw refusal;
      // Polls do not move last_contact_at: that would turn every 304 into a write. Contact
      // is noted when the device gets a token (every 15 minutes) and when it reports.
      // no-store: the document may carry a wrapped data key; Engine keeps the ETag itself.
      reply.header('etag', head.etag).header('cache-control', 'no-store');
      // Only a device in good standing is answered from the cache: a cut-off or locked
      // device's state changes are rarer than its polls are cheap.
      if (head.state === 'active') etags.set(deviceId, head.etag, window, now.getTime());
      if (matchesEtag(ifNoneMatch, head.etag)) {
        checks?.inc({ result: '304' });
        return reply.code(304).send();
      }
      checks?.inc({ result: '200' });
      const document = await buildDesiredState(db, head, deps.signingKey, storeUrls, {
        warn,
        publishers: currentPublishers,
        pollIntervalSeconds: deps.config.pollIntervalSeconds,
      });
      // The lease the device now holds, for the console: a write per new document (at most
      // hourly per device, or on a change), never per 304. Not `updated_at`, which is the
      // document's revision.
      await db
        .updateTable('devices')
        .set({ lease_expires_at: leaseExpiry(document.state) })
        .where('id', '=', deviceId)
        .execute();
      return document;
    });

    // Open push streams by device, and how to end each (Center's shutdown ends them all).
    const pushConnections = new Map<string, number>();
    const openStreams = new Set<() => void>();
    app.addHook('preClose', async () => {
      for (const end of [...openStreams]) end();
    });

    // The authentication hook refused a killed or retired device before this runs.
    route(app, e.push, async (_req, deviceId, reply) => {
      const open = pushConnections.get(deviceId) ?? 0;
      if (open >= PUSH_CONNECTIONS_PER_DEVICE) {
        throw new BulkheadError(
          ErrorCodes.RATE_LIMITED,
          `this device already holds ${open} push connections; close one first`,
          { retryable: true },
        );
      }
      pushConnections.set(deviceId, open + 1);
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        // Tells nginx-like proxies not to buffer the stream.
        'x-accel-buffering': 'no',
      });
      res.write('retry: 5000\nevent: hello\ndata: {}\n\n');
      let ended = false;
      const unsubscribe = deps.push.subscribe(deviceId, () => {
        res.write('event: desired-state-changed\ndata: {}\n\n');
        // The change may be the device's kill or retirement: then its channel closes at once.
        // The bus told the standing to forget the device first, so this reads its row afresh.
        standing.check(deviceId).catch((err: unknown) => {
          if (isRefusal(err)) end();
        });
      });
      const heartbeat = setInterval(() => res.write(': heartbeat\n\n'), PUSH_HEARTBEAT_MS);
      const lifetime = setTimeout(() => end(), TOKEN_TTL_MS);
      const end = () => {
        if (ended) return;
        ended = true;
        clearInterval(heartbeat);
        clearTimeout(lifetime);
        unsubscribe();
        openStreams.delete(end);
        const left = (pushConnections.get(deviceId) ?? 1) - 1;
        if (left > 0) pushConnections.set(deviceId, left);
        else pushConnections.delete(deviceId);
        res.end();
      };
      openStreams.add(end);
      res.on('close', end);
      res.on('error', end);
      return reply;
    });

    const reportQuota = new ReportQuota({
      eventsPerMinute: deps.config.reportEventsPerMinute,
      bytesPerMinute: deps.config.reportBytesPerMinute,
      now: deps.now,
    });
    route(app, e.reports, async (req, deviceId) => {
      // Before any database work: a batch over the quota costs Center nothing more.
      reportQuota.charge(deviceId, req.body.events);
      return ingestReports({ db, push: deps.push }, deviceId, req.body, deps.now());
    });

    route(app, e.chooseApps, (req, deviceId) =>
      chooseApps({ db, push: deps.push, nowMs: deps.now().getTime() }, deviceId, req.body),
    );

    route(app, e.killResult, async (req) => {
      const { signature, ...signed } = req.body;
      await provenDevice(signed.deviceId, signed.challenge, {
        domain: DOMAINS.killResult,
        payload: canonicalJson(killResultSigned(signed)),
        signature,
      });
      return recordKillResult({ db, push: deps.push }, signed.deviceId, signed.event, deps.now());
    });
  };
}
