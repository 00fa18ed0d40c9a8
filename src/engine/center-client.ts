import { createPublicKey, type KeyObject } from 'node:crypto';
import type { z } from 'zod';
import { signPayload, verifyPayload, canonicalJson, wrappedKeyDigest } from '../signing/index.ts';
import {
  BulkheadError,
  createApiClient,
  DEVICE_SIGNATURE_DOMAINS,
  deviceEndpoints,
  ErrorCodes,
  isBulkheadError,
  MAX_REPORT_EVENTS,
  killResultSigned,
  pathOf,
  SignedDesiredStateSchema,
  SignedKillNoticeSchema,
  type ApiClient,
  type CallOptions,
  type ChooseAppsRequest,
  type ChooseAppsResponse,
  type DeviceEvent,
  type DeviceEventOf,
  type ErrorCode,
  type Fetch,
  type ReportResponse,
  type SignedDesiredState,
  type SignedKillNotice,
} from '../protocol/index.ts';
import { systemClock, type Clock } from './clock.ts';
import { silentLog, type Log } from './log.ts';
import type { NewEvent } from './queue.ts';
import type { Identity } from './state.ts';

/** A token is renewed this long before it expires, so a request never carries a dying one. */
const TOKEN_RENEW_MARGIN_MS = 60_000;
const PUSH_BACKOFF_BASE_MS = 1_000;
const PUSH_BACKOFF_CAP_MS = 5 * 60_000;
/** After a 404 on the push route, Center has no push channel; ask again this much later. */
const PUSH_UNSUPPORTED_RETRY_MS = 30 * 60_000;

/** Codes of a desired state Engine refuses. */
export const DESIRED_STATE_REFUSALS: ReadonlySet<ErrorCode> = new Set([
  ErrorCodes.DESIRED_STATE_MALFORMED,
  ErrorCodes.DESIRED_STATE_KEY,
  ErrorCodes.DESIRED_STATE_SIGNATURE,
  ErrorCodes.DESIRED_STATE_DEVICE,
  ErrorCodes.DESIRED_STATE_ROLLBACK,
  ErrorCodes.DESIRED_STATE_EXPIRED,
  ErrorCodes.DESIRED_STATE_WRAPPED_KEY,
]);

export interface VerifyDesiredStateOptions {
  /** Center's key as pinned at enrolment. */
  centerKey: { keyid: string; key: KeyObject };
  deviceId: string;
  now: number;
  /** The revision Engine already has; an older document is a replay. */
  minRevision?: number;
}

function refuse(code: ErrorCode, message: string, details?: object): BulkheadError {
  return new BulkheadError(code, message, {
    details,
    hint: 'Engine keeps the last desired state it verified; check the network path to Center',
  });
}

/**
 * Checks a document Center signed, as received: `{ [field], keyid, signature }` signed by the
 * pinned Center key under `domain`, then parsed by `schema`. The signature is checked over the
 * document exactly as sent (before the schema drops any field it does not know), so a newer
 * Center's additions do not break verification.
 */
function verifyCenterSigned<T>(
  raw: unknown,
  what: { name: string; field: 'state' | 'notice'; domain: string },
  schema: z.ZodType<T>,
  centerKey: VerifyDesiredStateOptions['centerKey'],
): T {
  const doc = raw as Record<string, unknown> | null;
  const body = doc?.[what.field];
  if (
    typeof doc !== 'object' ||
    doc === null ||
    typeof body !== 'object' ||
    body === null ||
    typeof doc['keyid'] !== 'string' ||
    typeof doc['signature'] !== 'string'
  ) {
    throw refuse(ErrorCodes.DESIRED_STATE_MALFORMED, `the ${what.name} is not a signed document`);
  }
  const keyid = doc['keyid'];
  if (keyid !== centerKey.keyid) {
    throw refuse(
      ErrorCodes.DESIRED_STATE_KEY,
      `the ${what.name} is signed by key ${keyid.slice(0, 16)}…, not by the Center key ` +
        `this device pinned (${centerKey.keyid.slice(0, 16)}…)`,
      { keyid },
    );
  }
  let signed: boolean;
  try {
    signed = verifyPayload(what.domain, canonicalJson(body), doc['signature'], centerKey.key);
  } catch {
    signed = false;
  }
  if (!signed) {
    throw refuse(
      ErrorCodes.DESIRED_STATE_SIGNATURE,
      `the ${what.name}'s signature does not verify with the pinned Center key`,
    );
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw refuse(
      ErrorCodes.DESIRED_STATE_MALFORMED,
      `the ${what.name} does not match the protocol (${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'})`,
    );
  }
  return parsed.data;
}

/**
 * Checks a desired-state document as received: signed by the pinned Center key under the
 * desired-state domain, for this device, not older than what Engine has, not expired.
 *
 * @throws BulkheadError with a code of `DESIRED_STATE_REFUSALS`, one per reason.
 */
export function verifyDesiredState(
  raw: unknown,
  options: VerifyDesiredStateOptions,
): SignedDesiredState {
  const document = verifyCenterSigned(
    raw,
    { name: 'desired state', field: 'state', domain: DEVICE_SIGNATURE_DOMAINS.desiredState },
    SignedDesiredStateSchema,
    options.centerKey,
  );
  const { state } = document;
  if (state.deviceId !== options.deviceId) {
    throw refuse(
      ErrorCodes.DESIRED_STATE_DEVICE,
      `the desired state is for device ${state.deviceId}, not this one (${options.deviceId})`,
    );
  }
  if (options.minRevision !== undefined && state.revision < options.minRevision) {
    throw refuse(
      ErrorCodes.DESIRED_STATE_ROLLBACK,
      `the desired state has revision ${state.revision}, older than the ${options.minRevision} ` +
        'this device already has (a replay)',
      { revision: state.revision, current: options.minRevision },
    );
  }
  if (state.expiresAt < options.now) {
    throw refuse(
      ErrorCodes.DESIRED_STATE_EXPIRED,
      `the desired state expired at ${new Date(state.expiresAt).toISOString()} (a stale copy)`,
      { revision: state.revision, expiresAt: state.expiresAt },
    );
  }
  checkWrappedKeys(document);
  return document;
}

/**
 * The wrapped keys beside the signature must be exactly those the signed body vouches for: one
 * per VM with a `wrappedDataKeyDigest`, whose SHA-256 it is. Anyone can wrap a key of their
 * own to the device's public key, so a key the signature does not cover is refused, never used.
 */
function checkWrappedKeys(document: SignedDesiredState): void {
  const keys = document.wrappedKeys ?? {};
  const digests = new Map(
    document.state.vms.flatMap((vm) =>
      vm.wrappedDataKeyDigest === undefined ? [] : [[vm.profileId, vm] as const],
    ),
  );
  for (const [profileId, wrapped] of Object.entries(keys)) {
    const vm = digests.get(profileId);
    if (vm === undefined) {
      throw refuse(
        ErrorCodes.DESIRED_STATE_WRAPPED_KEY,
        `the desired state carries a wrapped key for profile ${profileId}, which none of its signed VMs names`,
      );
    }
    if (wrappedKeyDigest(wrapped) !== vm.wrappedDataKeyDigest) {
      throw refuse(
        ErrorCodes.DESIRED_STATE_WRAPPED_KEY,
        `the wrapped key of VM ${vm.name} does not match the digest its signed desired state carries (forged or swapped)`,
      );
    }
  }
  for (const vm of digests.values()) {
    if (keys[vm.profileId] === undefined) {
      throw refuse(
        ErrorCodes.DESIRED_STATE_WRAPPED_KEY,
        `the desired state names a wrapped key for VM ${vm.name} but carries none`,
      );
    }
  }
}

/**
 * Checks a kill notice as received (see `KillNoticeSchema`): signed by the pinned Center key
 * under the kill-notice domain, for this device. A notice has no expiry and no revision to
 * compare: a kill is final, so a genuine notice replayed says nothing untrue.
 *
 * @throws BulkheadError with a code of `DESIRED_STATE_REFUSALS` (malformed, key, signature,
 *   device), Engine then keeps what it had.
 */
export function verifyKillNotice(
  raw: unknown,
  options: Pick<VerifyDesiredStateOptions, 'centerKey' | 'deviceId'>,
): SignedKillNotice {
  const document = verifyCenterSigned(
    raw,
    { name: 'kill notice', field: 'notice', domain: DEVICE_SIGNATURE_DOMAINS.killNotice },
    SignedKillNoticeSchema,
    options.centerKey,
  );
  if (document.notice.deviceId !== options.deviceId) {
    throw refuse(
      ErrorCodes.DESIRED_STATE_DEVICE,
      `the kill notice is for device ${document.notice.deviceId}, not this one (${options.deviceId})`,
    );
  }
  return document;
}

/**
 * What Center answered a desired-state request: unchanged, a new verified document, or (for a
 * killed device, in place of any document) the verified notice of its kill.
 */
export type DesiredStateAnswer =
  | { changed: false; etag: string | null; killed?: undefined }
  | { changed: false; etag: null; killed: SignedKillNotice }
  | { changed: true; etag: string | null; document: SignedDesiredState; killed?: undefined };

export interface PushSubscription {
  /** `open` while the channel is up; `unsupported` when Center has no push route. */
  readonly state: 'connecting' | 'open' | 'retrying' | 'unsupported' | 'closed';
  close(): void;
}

export interface CenterClientOptions {
  identity: Identity;
  privateKey: KeyObject;
  fetch?: Fetch;
  clock?: Clock;
  log?: Log;
  /** Where refused desired states are reported (the event queue). */
  events?: { append(event: NewEvent): Promise<unknown> };
  /** Timeout of each request (default 30 s). */
  timeoutMs?: number;
  /** Base URL to talk to; the identity's when omitted. */
  centerUrl?: string;
  /** The push channel is reopened when it carried nothing for this long (default 90 s; Center sends a heartbeat every 25 s). */
  pushIdleMs?: number;
  /** For the jitter of the push channel's backoff; Math.random when omitted. */
  random?: () => number;
}

/** Engine's side of Center's device API. */
export class CenterClient {
  readonly #identity: Identity;
  readonly #privateKey: KeyObject;
  readonly #centerKey: { keyid: string; key: KeyObject };
  readonly #fetch: Fetch;
  readonly #clock: Clock;
  readonly #log: Log;
  readonly #events: CenterClientOptions['events'];
  readonly #timeoutMs: number;
  readonly #baseUrl: string;
  readonly #api: ApiClient;
  readonly #pushIdleMs: number;
  readonly #random: () => number;
  #token: { token: string; expiresAt: number } | undefined;
  #tokenPending: Promise<string> | undefined;
  #lastRefusal: string | undefined;

  constructor(options: CenterClientOptions) {
    this.#identity = options.identity;
    this.#privateKey = options.privateKey;
    this.#centerKey = {
      keyid: options.identity.centerKey.keyid,
      key: createPublicKey(options.identity.centerKey.publicKey),
    };
    this.#fetch = options.fetch ?? fetch;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log ?? silentLog;
    this.#events = options.events;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#api = createApiClient({
      baseUrl: options.centerUrl ?? options.identity.centerUrl,
      fetch: this.#fetch,
      timeoutMs: this.#timeoutMs,
      unreachableHint: 'check the network and that Center is running; Engine keeps trying',
    });
    this.#baseUrl = this.#api.baseUrl;
    this.#pushIdleMs = options.pushIdleMs ?? 90_000;
    this.#random = options.random ?? Math.random;
  }

  get deviceId(): string {
    return this.#identity.deviceId;
  }

  /**
   * The desired state, if it changed since `etag`, verified (see `verifyDesiredState`). A
   * refused document is reported as a `desired-state-refused` event (once per distinct
   * refusal) and thrown.
   */
  async getDesiredState(
    current: { etag?: string | null; revision?: number } = {},
  ): Promise<DesiredStateAnswer> {
    let res;
    try {
      res = await this.#authed((auth) =>
        this.#api.exchange(
          deviceEndpoints.desiredState,
          {},
          { headers: { ...auth, ...(current.etag ? { 'if-none-match': current.etag } : {}) } },
        ),
      );
    } catch (err) {
      // Killed: Center refuses the token or the document with the signed notice of the kill.
      if (!isBulkheadError(err, ErrorCodes.DEVICE_KILLED)) throw err;
      const raw = (err.details as { notice?: unknown } | undefined)?.notice;
      try {
        const killed = verifyKillNotice(raw, {
          centerKey: this.#centerKey,
          deviceId: this.#identity.deviceId,
        });
        return { changed: false, etag: null, killed };
      } catch (refusal) {
        if (isBulkheadError(refusal)) await this.#reportRefusal(refusal, undefined);
        throw refusal;
      }
    }
    const etag = res.headers.get('etag');
    if (res.status === 304) return { changed: false, etag: etag ?? current.etag ?? null };
    let document: SignedDesiredState;
    try {
      document = verifyDesiredState(res.json, {
        centerKey: this.#centerKey,
        deviceId: this.#identity.deviceId,
        now: this.#clock.now(),
        minRevision: current.revision,
      });
    } catch (err) {
      if (isBulkheadError(err)) await this.#reportRefusal(err, res.json);
      throw err;
    }
    this.#lastRefusal = undefined;
    return { changed: true, etag, document };
  }

  /**
   * Sends a batch of events (at most `MAX_REPORT_EVENTS`). Resolves only on Center's 200, so
   * a caller acknowledges its queue only then.
   */
  async sendReports(events: readonly DeviceEvent[]): Promise<ReportResponse> {
    if (events.length === 0 || events.length > MAX_REPORT_EVENTS) {
      throw new RangeError(
        `a report carries 1 to ${MAX_REPORT_EVENTS} events, not ${events.length}`,
      );
    }
    return this.#authed((auth) =>
      this.#api.call(deviceEndpoints.reports, { body: { events: [...events] } }, { headers: auth }),
    );
  }

  /**
   * Sends the PC user's choice of one VM's optional apps; resolves with Center's answer.
   * @throws BulkheadError as Center answers: `ERR_FORBIDDEN` where the profile leaves the choice
   *   to administrators, `ERR_VALIDATION` naming an app it does not offer.
   */
  async chooseApps(body: ChooseAppsRequest): Promise<ChooseAppsResponse> {
    return this.#authed((auth) =>
      this.#api.call(deviceEndpoints.chooseApps, { body }, { headers: auth }),
    );
  }

  /**
   * Sends a killed device's result of its kill command (a `command-result` event of its queue)
   * to the one route that takes it: a killed device has no token, so the request is proved
   * by a fresh challenge signed, with the result, by the device's key. Resolves on Center's 200.
   */
  async sendKillResult(event: DeviceEventOf<'command-result'>): Promise<ReportResponse> {
    const deviceId = this.#identity.deviceId;
    const { challenge } = await this.#api.call(deviceEndpoints.challenge, { body: { deviceId } });
    const body = { deviceId, challenge, event };
    const signature = signPayload(
      DEVICE_SIGNATURE_DOMAINS.killResult,
      canonicalJson(killResultSigned(body)),
      this.#privateKey,
    );
    return this.#api.call(deviceEndpoints.killResult, { body: { ...body, signature } });
  }

  /**
   * Holds Center's push channel (server-sent events on `/api/v1/device/push`) open and calls
   * `onChange` on each `desired-state-changed`, and once on every (re)connect, since a change
   * may have been missed while the channel was down. Reconnects with backoff; when Center has
   * no push route (404) it asks again only every half hour: polling carries on meanwhile.
   */
  subscribePush(onChange: () => void): PushSubscription {
    const stop = new AbortController();
    const sub = { state: 'connecting' as PushSubscription['state'] };
    const run = async () => {
      let failures = 0;
      while (!stop.signal.aborted) {
        let wait: number;
        try {
          const outcome = await this.#holdPush(onChange, stop.signal, () => {
            sub.state = 'open';
            failures = 0;
          });
          if (outcome === 'unsupported') {
            sub.state = 'unsupported';
            wait = PUSH_UNSUPPORTED_RETRY_MS;
          } else {
            sub.state = 'retrying';
            wait = this.#random() * PUSH_BACKOFF_BASE_MS;
          }
        } catch (err) {
          if (stop.signal.aborted) break;
          failures += 1;
          sub.state = 'retrying';
          wait =
            this.#random() *
            Math.min(PUSH_BACKOFF_CAP_MS, PUSH_BACKOFF_BASE_MS * 2 ** Math.min(failures, 20));
          this.#log.debug(
            { component: 'sync', err: (err as Error).message, retryInMs: Math.round(wait) },
            'push channel down',
          );
        }
        await this.#clock.sleep(wait, stop.signal);
      }
      sub.state = 'closed';
    };
    void run();
    return {
      get state() {
        return sub.state;
      },
      close: () => stop.abort(),
    };
  }

  /** One push connection, until it ends; 'unsupported' on a 404. */
  async #holdPush(
    onChange: () => void,
    stop: AbortSignal,
    onOpen: () => void,
  ): Promise<'ended' | 'unsupported'> {
    const token = await this.#bearer();
    const connection = new AbortController();
    const abort = () => connection.abort();
    stop.addEventListener('abort', abort, { once: true });
    // The timer covers connecting, then silence on an open channel.
    let idle = setTimeout(abort, this.#timeoutMs);
    const touch = (ms: number) => {
      clearTimeout(idle);
      idle = setTimeout(abort, ms);
    };
    try {
      const res = await this.#fetch(`${this.#baseUrl}${pathOf(deviceEndpoints.push, {})}`, {
        headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
        signal: connection.signal,
      });
      if (res.status === 404) {
        await res.body?.cancel();
        return 'unsupported';
      }
      if (res.status === 401) this.#token = undefined;
      if (res.status !== 200 || res.body === null) {
        await res.body?.cancel();
        throw new Error(`push channel answered ${res.status}`);
      }
      onOpen();
      onChange();
      touch(this.#pushIdleMs);
      const decoder = new TextDecoder();
      let buffer = '';
      for await (const chunk of res.body) {
        touch(this.#pushIdleMs);
        buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end: number;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
          const event = /^event:\s?(.*)$/m.exec(block)?.[1]?.trim();
          if (event === 'desired-state-changed') onChange();
        }
        if (buffer.length > 64 * 1024) throw new Error('push channel sent an oversized event');
      }
      return 'ended';
    } finally {
      clearTimeout(idle);
      stop.removeEventListener('abort', abort);
    }
  }

  async #reportRefusal(err: BulkheadError, raw: unknown): Promise<void> {
    const revision = (raw as { state?: { revision?: unknown } } | null)?.state?.revision;
    const key = `${err.code}:${String(revision)}`;
    this.#log.warn(
      { component: 'sync', code: err.code, revision },
      `refused a desired state: ${err.message}`,
    );
    if (key === this.#lastRefusal || this.#events === undefined) return;
    this.#lastRefusal = key;
    await this.#events.append({
      type: 'desired-state-refused',
      data: {
        code: err.code,
        message: err.message.slice(0, 500),
        ...(typeof revision === 'number' ? { revision } : {}),
      },
    });
  }

  /** A request with the device's bearer token; on a 401, one retry with a fresh token. */
  async #authed<T>(send: (auth: NonNullable<CallOptions['headers']>) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const token = await this.#bearer();
      try {
        return await send({ authorization: `Bearer ${token}` });
      } catch (err) {
        const status = (err as BulkheadError).details as { status?: number } | undefined;
        if (attempt === 0 && isBulkheadError(err) && status?.status === 401) {
          this.#token = undefined;
          continue;
        }
        throw err;
      }
    }
  }

  /** A valid bearer token, from the cache or a fresh challenge. One exchange at a time. */
  #bearer(): Promise<string> {
    const cached = this.#token;
    if (cached !== undefined && cached.expiresAt - TOKEN_RENEW_MARGIN_MS > this.#clock.now()) {
      return Promise.resolve(cached.token);
    }
    this.#tokenPending ??= this.#authenticate().finally(() => {
      this.#tokenPending = undefined;
    });
    return this.#tokenPending;
  }

  async #authenticate(): Promise<string> {
    const deviceId = this.#identity.deviceId;
    const { challenge } = await this.#api.call(deviceEndpoints.challenge, { body: { deviceId } });
    const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, this.#privateKey);
    const answer = await this.#api.call(deviceEndpoints.token, {
      body: { deviceId, challenge, signature },
    });
    this.#token = { token: answer.token, expiresAt: answer.expiresAt };
    this.#log.debug({ component: 'sync', expiresAt: answer.expiresAt }, 'device token renewed');
    return answer.token;
  }
}
