import type { KeyObject } from 'node:crypto';
import type { Kysely } from 'kysely';
import { canonicalJson, signPayload } from '../../signing/index.ts';
import {
  BulkheadError,
  DEVICE_SIGNATURE_DOMAINS,
  ErrorCodes,
  isBulkheadError,
  type KillNotice,
  type SignedKillNotice,
} from '../../protocol/index.ts';
import type { Database, DeviceState } from '../db/index.ts';
import type { PushBus } from '../push.ts';

/*
 * A device's standing: whether it may still use Center. A killed or retired device gets nothing
 * more (DESIGN §4), from the moment it is killed or retired, whether or not it acknowledges: no
 * token, no desired state, no report, no push channel, whatever the age of the token it holds.
 *
 * Device tokens are stateless (credentials.ts), so a token issued before the kill still
 * verifies for the rest of its 15 minutes; what refuses it is this check, made by the
 * authentication hook on every device route. To keep the steady path (a 304 answered from
 * memory) free of the database, each replica remembers which devices it found in good standing,
 * and forgets them on the push bus: killing or retiring a device marks it changed, and the bus
 * tells every replica after the commit (on PostgreSQL through LISTEN/NOTIFY, which reports
 * 'all' after a lost connection), as it does for the desired-state ETags. An entry is trusted
 * for at most `maxAgeMs` besides, which bounds what a notification lost on its way (a NOTIFY
 * that failed to send) could let through; that is never longer than a token lives anyway.
 *
 * A killed device is answered with its signed kill notice (see `KillNoticeSchema`): only here,
 * after it proved to be the device, so nobody else learns of the kill.
 */

const CUT_OFF_STATES: ReadonlySet<DeviceState> = new Set<DeviceState>(['killed', 'retired']);

/** Whether a device in `state` gets nothing more from Center. */
export function isCutOff(state: DeviceState): boolean {
  return CUT_OFF_STATES.has(state);
}

interface Signer {
  key: KeyObject;
  keyid: string;
}

/**
 * The refusal for a device in `device.state`, or undefined when it is in good standing. A
 * killed device's refusal carries its signed kill notice. So does a retired device's that was
 * killed before: a lost PC an administrator killed and later retired must still learn, when it
 * comes back, that it has to erase its work data.
 */
export async function refusalFor(
  db: Kysely<Database>,
  signer: Signer,
  device: { id: string; state: DeviceState; changedAt: number },
  nowMs: number,
): Promise<BulkheadError | undefined> {
  if (!isCutOff(device.state)) return undefined;
  const kill = await db
    .selectFrom('commands')
    .select(['id', 'created_at'])
    .where('device_id', '=', device.id)
    .where('kind', '=', 'kill')
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .executeTakeFirst();
  if (device.state === 'retired' && kill === undefined) return retiredError();
  const notice: KillNotice = {
    deviceId: device.id,
    killedAt: kill === undefined ? device.changedAt : Number(kill.created_at),
    issuedAt: nowMs,
    commandId: kill?.id ?? null,
  };
  const signed: SignedKillNotice = {
    notice,
    keyid: signer.keyid,
    signature: signPayload(DEVICE_SIGNATURE_DOMAINS.killNotice, canonicalJson(notice), signer.key),
  };
  return new BulkheadError(
    ErrorCodes.DEVICE_KILLED,
    'this device was killed: Center gives it nothing more; details.notice is the signed kill notice',
    { details: { notice: signed } },
  );
}

/** The refusal of a cut-off device where no kill notice can be had (inside a transaction). */
export function cutOffError(state: DeviceState): BulkheadError {
  return state === 'retired'
    ? retiredError()
    : new BulkheadError(
        ErrorCodes.DEVICE_KILLED,
        'this device was killed: Center gives it nothing more',
      );
}

function retiredError(): BulkheadError {
  return new BulkheadError(
    ErrorCodes.DEVICE_RETIRED,
    'this device is retired: Center gives it nothing more; enrol it again with a new enrolment token to bring it back',
  );
}

/** Whether `err` says the device is cut off or gone (its push channel should close). */
export function isRefusal(err: unknown): boolean {
  return (
    isBulkheadError(err, ErrorCodes.DEVICE_KILLED) ||
    isBulkheadError(err, ErrorCodes.DEVICE_RETIRED) ||
    isBulkheadError(err, ErrorCodes.UNAUTHENTICATED)
  );
}

export interface DeviceStandingOptions {
  db: Kysely<Database>;
  signer: Signer;
  now: () => Date;
  push: PushBus;
  /** How long a device found in good standing is believed without asking again (15 min). */
  maxAgeMs?: number;
  /** Devices remembered; beyond it the oldest go first (1,000,000). */
  maxEntries?: number;
}

/** Checks devices' standing for one Center replica, remembering those in good standing. */
export class DeviceStanding {
  readonly #db: Kysely<Database>;
  readonly #signer: Signer;
  readonly #now: () => Date;
  readonly #maxAgeMs: number;
  readonly #maxEntries: number;
  /** Devices found in good standing, by id: when it was read from the database. */
  readonly #good = new Map<string, number>();
  /**
   * Moves on every notification, so that a read that raced a change (it began before the
   * change's notification and ends after) is not remembered as current.
   */
  #epoch = 0;
  readonly #unwatch: () => void;

  constructor(options: DeviceStandingOptions) {
    this.#db = options.db;
    this.#signer = options.signer;
    this.#now = options.now;
    this.#maxAgeMs = options.maxAgeMs ?? 15 * 60_000;
    this.#maxEntries = options.maxEntries ?? 1_000_000;
    this.#unwatch = options.push.watch((ids) => {
      this.#epoch += 1;
      if (ids === 'all') this.#good.clear();
      else for (const id of ids) this.#good.delete(id);
    });
  }

  /**
   * Resolves when the device may use Center; from memory when this replica found it in good
   * standing since the last change to it, else with one read of its row.
   * @throws BulkheadError `ERR_DEVICE_KILLED` (with the signed notice), `ERR_DEVICE_RETIRED`,
   *   or `ERR_UNAUTHENTICATED` for a device that no longer exists.
   */
  async check(deviceId: string): Promise<void> {
    const nowMs = this.#now().getTime();
    const seenAt = this.#good.get(deviceId);
    if (seenAt !== undefined && nowMs - seenAt <= this.#maxAgeMs) return;
    const epoch = this.#epoch;
    const row = await this.#db
      .selectFrom('devices')
      .select(['state', 'updated_at'])
      .where('id', '=', deviceId)
      .executeTakeFirst();
    if (row === undefined) {
      this.#good.delete(deviceId);
      throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the device is not enrolled');
    }
    const refusal = await refusalFor(
      this.#db,
      this.#signer,
      { id: deviceId, state: row.state, changedAt: Number(row.updated_at) },
      nowMs,
    );
    if (refusal !== undefined) {
      this.#good.delete(deviceId);
      throw refusal;
    }
    if (epoch !== this.#epoch) return;
    this.#good.delete(deviceId);
    if (this.#good.size >= this.#maxEntries) {
      // Map keeps insertion order: the first key is the oldest entry.
      this.#good.delete(this.#good.keys().next().value as string);
    }
    this.#good.set(deviceId, nowMs);
  }

  /** Stops watching the push bus. */
  close(): void {
    this.#unwatch();
  }
}
