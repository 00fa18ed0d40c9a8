import { BulkheadError, ErrorCodes, eventBytes, type DeviceEvent } from '../../protocol/index.ts';

const MINUTE_MS = 60_000;

interface Bucket {
  events: number;
  bytes: number;
  atMs: number;
}

export interface ReportQuotaOptions {
  eventsPerMinute: number;
  bytesPerMinute: number;
  now: () => Date;
}

/**
 * The report quota of each device: a bucket of events and one of bytes (events as JSON), each
 * holding a minute's worth and refilling continuously. A batch takes from both or, when either
 * lacks room, from neither: it is refused whole with 429 and the time until it would fit, so
 * nothing past the quota is stored and Engine sends the same batch again then. The config keeps
 * each bucket at least a full batch, so every batch fits once the bucket refilled.
 *
 * Kept in this process, like the enrolment limiter: with N replicas a device may report up to N
 * times as much, which still bounds it. Written by hand rather than with @fastify/rate-limit,
 * which counts requests, not the events and bytes a request carries.
 */
export class ReportQuota {
  readonly #eventsPerMinute: number;
  readonly #bytesPerMinute: number;
  readonly #now: () => Date;
  readonly #buckets = new Map<string, Bucket>();
  #sweptAtMs = 0;

  constructor(options: ReportQuotaOptions) {
    this.#eventsPerMinute = options.eventsPerMinute;
    this.#bytesPerMinute = options.bytesPerMinute;
    this.#now = options.now;
  }

  /**
   * Takes `events` from `deviceId`'s quota.
   * @throws BulkheadError `ERR_RATE_LIMITED` (retryable, `retryAfterMs` in its details) when the
   *   batch does not fit; nothing is taken then.
   */
  charge(deviceId: string, events: readonly DeviceEvent[]): void {
    const nowMs = this.#now().getTime();
    this.#sweep(nowMs);
    const bytes = events.reduce((sum, e) => sum + eventBytes(e), 0);
    const bucket = this.#refill(this.#buckets.get(deviceId), nowMs);
    // A batch can never need more than a full bucket (the config sees to it); clamped anyway,
    // so that a wait is always finite.
    const needEvents = Math.min(events.length, this.#eventsPerMinute);
    const needBytes = Math.min(bytes, this.#bytesPerMinute);
    if (bucket.events >= needEvents && bucket.bytes >= needBytes) {
      bucket.events -= needEvents;
      bucket.bytes -= needBytes;
      this.#buckets.set(deviceId, bucket);
      return;
    }
    const waitMs = Math.ceil(
      Math.max(
        ((needEvents - bucket.events) * MINUTE_MS) / this.#eventsPerMinute,
        ((needBytes - bucket.bytes) * MINUTE_MS) / this.#bytesPerMinute,
        1,
      ),
    );
    this.#buckets.set(deviceId, bucket);
    throw new BulkheadError(
      ErrorCodes.RATE_LIMITED,
      `this device is over its report quota (${this.#eventsPerMinute} events and ` +
        `${this.#bytesPerMinute} bytes a minute); this batch of ${events.length} events ` +
        `(${bytes} bytes) was not stored: send it again in ${Math.ceil(waitMs / 1000)} s`,
      { retryable: true, details: { retryAfterMs: waitMs } },
    );
  }

  /** The device's bucket filled up to `nowMs` (a new device's is full). */
  #refill(bucket: Bucket | undefined, nowMs: number): Bucket {
    if (bucket === undefined) {
      return { events: this.#eventsPerMinute, bytes: this.#bytesPerMinute, atMs: nowMs };
    }
    const elapsed = Math.max(0, nowMs - bucket.atMs);
    return {
      events: Math.min(
        this.#eventsPerMinute,
        bucket.events + (elapsed * this.#eventsPerMinute) / MINUTE_MS,
      ),
      bytes: Math.min(
        this.#bytesPerMinute,
        bucket.bytes + (elapsed * this.#bytesPerMinute) / MINUTE_MS,
      ),
      atMs: nowMs,
    };
  }

  /** Forgets, once a minute, buckets full again: memory follows the devices reporting. */
  #sweep(nowMs: number): void {
    if (nowMs - this.#sweptAtMs < MINUTE_MS) return;
    this.#sweptAtMs = nowMs;
    for (const [id, bucket] of this.#buckets) {
      if (nowMs - bucket.atMs >= MINUTE_MS) this.#buckets.delete(id);
    }
  }
}
