import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import {
  BulkheadError,
  DeviceEventSchema,
  ErrorCodes,
  errnoCode,
  isBulkheadError,
  toText,
  type DeviceEvent,
  type DeviceEventType,
  type NewEvent,
} from '../protocol/index.ts';
import { systemClock, type Clock } from './clock.ts';
import { silentLog, type Log } from './log.ts';
import { AtomicJsonFile, fsyncDir } from '../durable/index.ts';

/*
 * The durable event queue: what Engine has to tell Center, kept until Center took it.
 *
 * On disk, in its own directory:
 *   segment-<n>.jsonl  events, one JSON line each, appended in order
 *   cursor.json        which segment is live, the byte offset of its first event not yet
 *                      acknowledged, and ids acknowledged beyond that offset
 *
 * Every append is fsynced before it resolves (one fsync per `append` call, however many events
 * it carries: callers with a burst pass them together). A kill -9 in the middle of an append
 * leaves at most a torn last line, which the next open drops with a warning: that event was
 * never acknowledged to its caller. Acknowledgements move the cursor (written atomically);
 * once the acknowledged head is large, the rest is copied to a new segment, the cursor is
 * switched to it, and the old one is deleted. A crash between those steps leaves an extra
 * segment that the next open deletes; losing the cursor altogether replays the oldest segment
 * from the start, which only repeats events Center already counts once (ids are idempotent).
 *
 * The queue is bounded (an offline PC may collect events for weeks): past the limit the oldest
 * `download-progress` events go first, then the oldest of other kinds, and never the outcomes
 * Center's rollouts and commands wait for (`healthy`, `rolled-back`, `command-result`).
 */

/** Event kinds never dropped to make room. */
export const PROTECTED_EVENT_TYPES: ReadonlySet<DeviceEventType> = new Set<DeviceEventType>([
  'healthy',
  'rolled-back',
  'command-result',
]);

const CursorSchema = z.strictObject({
  segment: z.number().int().min(1),
  offset: z.number().int().min(0),
  /** Ids acknowledged out of order, still in the segment after `offset`. */
  acked: z.array(z.string()),
});
type Cursor = z.infer<typeof CursorSchema>;

export interface EventQueueOptions {
  dir: string;
  clock?: Clock;
  log?: Log;
  /** Most events kept (default 100,000). */
  maxEvents?: number;
  /** Most bytes of events kept (default 64 MiB). */
  maxBytes?: number;
  /** Acknowledged bytes at the head of a segment that trigger compaction (default 1 MiB). */
  compactBytes?: number;
}

export type { NewEvent } from '../protocol/index.ts';

interface Entry {
  event: DeviceEvent;
  /** Byte range of its line in the segment. */
  start: number;
  end: number;
  acked: boolean;
}

const segmentName = (n: number) => `segment-${n}.jsonl`;
const SEGMENT_RE = /^segment-(\d+)\.jsonl$/;

/** A durable, bounded, ordered queue of device events. Open with `EventQueue.open`. */
export class EventQueue {
  readonly #dir: string;
  readonly #clock: Clock;
  readonly #log: Log;
  readonly #maxEvents: number;
  readonly #maxBytes: number;
  readonly #compactBytes: number;
  readonly #cursorFile: AtomicJsonFile<Cursor>;
  #segment = 1;
  #offset = 0;
  #size = 0;
  #handle: FileHandle | undefined;
  /** Lines from `#offset` on, in file order. */
  #entries: Entry[] = [];
  #pendingCount = 0;
  #pendingBytes = 0;
  #dropped = 0;
  #lastIdMs = -1;
  #idSeq = 0;
  /** Operations run one at a time, in call order. */
  #chain: Promise<unknown> = Promise.resolve();

  private constructor(options: EventQueueOptions) {
    this.#dir = options.dir;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log ?? silentLog;
    this.#maxEvents = options.maxEvents ?? 100_000;
    this.#maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
    this.#compactBytes = options.compactBytes ?? 1024 * 1024;
    this.#cursorFile = cursorFile(options.dir, this.#clock, this.#log);
  }

  /** Opens (creating if needed) the queue in `options.dir`, recovering from any crash. */
  static async open(options: EventQueueOptions): Promise<EventQueue> {
    const queue = new EventQueue(options);
    await queue.#load();
    return queue;
  }

  /** Events not yet acknowledged. */
  depth(): number {
    return this.#pendingCount;
  }

  /** Bytes of the events not yet acknowledged. */
  bytes(): number {
    return this.#pendingBytes;
  }

  /** Events dropped to keep the bound since this queue was opened. */
  dropped(): number {
    return this.#dropped;
  }

  /**
   * The oldest `n` events not yet acknowledged, oldest first; with `maxBytes`, no more than fit
   * in that many bytes of JSON, each counted with one byte for a separator (always at least one
   * event when any waits).
   */
  peek(n: number, maxBytes = Infinity): DeviceEvent[] {
    const out: DeviceEvent[] = [];
    let bytes = 0;
    for (const e of this.#entries) {
      if (out.length >= n) break;
      if (e.acked) continue;
      // A line is the event's JSON and its newline: the separator's byte.
      const size = e.end - e.start;
      if (out.length > 0 && bytes + size > maxBytes) break;
      out.push(e.event);
      bytes += size;
    }
    return out;
  }

  /**
   * Appends events, durably (fsynced) before resolving; returns them with their ids.
   * @throws BulkheadError `ERR_VALIDATION` for an event Center would refuse (bad type, data
   *   too large), so that one bad event never blocks the queue.
   */
  append(events: NewEvent | NewEvent[]): Promise<DeviceEvent[]> {
    const list = Array.isArray(events) ? events : [events];
    return this.#serial(async () => {
      const built = list.map((e) => this.#build(e));
      if (built.length === 0) return [];
      const handle = this.#handle as FileHandle;
      const lines = built.map((e) => Buffer.from(`${JSON.stringify(e)}\n`));
      const buf = Buffer.concat(lines);
      await handle.write(buf, 0, buf.length, this.#size);
      await handle.datasync();
      let at = this.#size;
      built.forEach((event, i) => {
        const len = (lines[i] as Buffer).length;
        this.#entries.push({ event, start: at, end: at + len, acked: false });
        at += len;
        this.#pendingCount += 1;
        this.#pendingBytes += len;
      });
      this.#size = at;
      if (this.#pendingCount > this.#maxEvents || this.#pendingBytes > this.#maxBytes) {
        await this.#shed();
      }
      return built;
    });
  }

  /** Marks events as delivered; they are never peeked again, even after a restart. */
  ack(ids: readonly string[]): Promise<void> {
    return this.#serial(async () => {
      const wanted = new Set(ids);
      let changed = false;
      for (const e of this.#entries) {
        if (!e.acked && wanted.has(e.event.id)) {
          e.acked = true;
          changed = true;
          this.#pendingCount -= 1;
          this.#pendingBytes -= e.end - e.start;
        }
      }
      if (!changed) return;
      let head = 0;
      while (head < this.#entries.length && (this.#entries[head] as Entry).acked) head += 1;
      if (head > 0) {
        this.#offset = head === this.#entries.length ? this.#size : this.#entries[head]!.start;
        this.#entries = this.#entries.slice(head);
      }
      if (this.#offset >= this.#compactBytes && this.#offset * 2 >= this.#size) {
        await this.#compact();
      } else {
        await this.#writeCursor();
      }
    });
  }

  /** Closes the segment file. */
  close(): Promise<void> {
    return this.#serial(async () => {
      await this.#handle?.close();
      this.#handle = undefined;
    });
  }

  #serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(() => {
      if (this.#handle === undefined) throw new Error('the event queue is closed');
      return op();
    });
    this.#chain = run.catch(() => {});
    return run;
  }

  #build(e: NewEvent): DeviceEvent {
    const at = e.at ?? this.#clock.now();
    const parsed = DeviceEventSchema.safeParse({
      id: e.id ?? this.#newId(at),
      type: e.type,
      at,
      // Reasons carry what QEMU or a tool printed: a stray NUL or half a surrogate pair there
      // costs that character, not the event (Center refuses both).
      data: wellFormed(e.data),
    });
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        `event ${e.type}: ${issue?.path.join('.') ?? ''} ${issue?.message ?? 'invalid'}`.trim(),
      );
    }
    return parsed.data;
  }

  /**
   * A UUIDv7: 48 bits of milliseconds, then a 12-bit sequence that keeps ids from one queue
   * increasing within a millisecond (and across a clock step back), then random bits.
   */
  #newId(atMs: number): string {
    let ms = Math.max(0, Math.floor(atMs));
    if (ms <= this.#lastIdMs) {
      ms = this.#lastIdMs;
      this.#idSeq += 1;
      if (this.#idSeq > 0xfff) {
        ms += 1;
        this.#idSeq = 0;
      }
    } else {
      this.#idSeq = 0;
    }
    this.#lastIdMs = ms;
    const rand = randomBytes(8);
    rand[0] = ((rand[0] as number) & 0x3f) | 0x80;
    const hex =
      ms.toString(16).padStart(12, '0') +
      `7${this.#idSeq.toString(16).padStart(3, '0')}` +
      rand.toString('hex');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
  }

  async #load(): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const names = await readdir(this.#dir);
    const segments = names
      .map((n) => SEGMENT_RE.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    let cursor: Cursor | undefined;
    try {
      cursor = await this.#cursorFile.read();
    } catch (err) {
      if (!isBulkheadError(err, ErrorCodes.STATE_CORRUPT)) throw err;
      // Replaying from the oldest segment only repeats events Center counts once.
      this.#log.warn(
        { component: 'queue', dir: this.#dir },
        'queue cursor lost; events still on disk are sent again',
      );
    }
    if (cursor === undefined || !segments.includes(cursor.segment)) {
      cursor = { segment: segments[0] ?? 1, offset: 0, acked: [] };
    }
    this.#segment = cursor.segment;
    for (const n of names) {
      const m = SEGMENT_RE.exec(n);
      if ((m !== null && Number(m[1]) !== this.#segment) || n.includes('.tmp-')) {
        await rm(join(this.#dir, n), { force: true });
      }
    }
    const path = join(this.#dir, segmentName(this.#segment));
    const scan = await scanSegment(path, cursor, this.#log);
    this.#handle = await open(path, 'a+', 0o600);
    if (scan.validSize < scan.fileSize) {
      // Cut the torn line, so the next append starts on a line of its own.
      await this.#handle.truncate(scan.validSize);
      await this.#handle.datasync();
    }
    this.#size = scan.validSize;
    this.#offset = Math.min(cursor.offset, scan.validSize);
    this.#entries = scan.entries;
    for (const e of this.#entries) {
      if (e.acked) continue;
      this.#pendingCount += 1;
      this.#pendingBytes += e.end - e.start;
    }
    await this.#writeCursor();
    await fsyncDir(this.#dir);
  }

  async #writeCursor(): Promise<void> {
    await this.#cursorFile.write({
      segment: this.#segment,
      offset: this.#offset,
      acked: this.#entries.filter((e) => e.acked).map((e) => e.event.id),
    });
  }

  /** Drops events, by the order in the file comment, down to 90% of the bounds. */
  async #shed(): Promise<void> {
    const targetEvents = Math.floor(this.#maxEvents * 0.9);
    const targetBytes = Math.floor(this.#maxBytes * 0.9);
    const over = () => this.#pendingCount > targetEvents || this.#pendingBytes > targetBytes;
    const dropWhere = (pick: (e: Entry) => boolean) => {
      for (const e of this.#entries) {
        if (!over()) return;
        if (e.acked || !pick(e)) continue;
        e.acked = true;
        this.#pendingCount -= 1;
        this.#pendingBytes -= e.end - e.start;
        this.#dropped += 1;
      }
    };
    const before = this.#dropped;
    dropWhere((e) => e.event.type === 'download-progress');
    dropWhere((e) => !PROTECTED_EVENT_TYPES.has(e.event.type));
    if (this.#dropped > before) {
      this.#log.warn(
        { component: 'queue', dropped: this.#dropped - before, depth: this.#pendingCount },
        'event queue full: dropped the oldest droppable events',
      );
      await this.#compact();
    }
  }

  /** Copies the events not yet acknowledged to a new segment and switches to it. */
  async #compact(): Promise<void> {
    const next = this.#segment + 1;
    const path = join(this.#dir, segmentName(next));
    const keep = this.#entries.filter((e) => !e.acked);
    const handle = await open(path, 'w+', 0o600);
    const entries: Entry[] = [];
    let at = 0;
    try {
      const lines = keep.map((e) => Buffer.from(`${JSON.stringify(e.event)}\n`));
      const buf = Buffer.concat(lines);
      await handle.write(buf, 0, buf.length, 0);
      await handle.sync();
      keep.forEach((e, i) => {
        const len = (lines[i] as Buffer).length;
        entries.push({ event: e.event, start: at, end: at + len, acked: false });
        at += len;
      });
    } catch (err) {
      await handle.close();
      await rm(path, { force: true });
      throw err;
    }
    await fsyncDir(this.#dir);
    // The switch point: once the cursor names the new segment, the old one is garbage.
    const old = { segment: this.#segment, handle: this.#handle };
    this.#segment = next;
    this.#offset = 0;
    this.#size = at;
    this.#entries = entries;
    this.#handle = handle;
    await this.#writeCursor();
    await old.handle?.close();
    await rm(join(this.#dir, segmentName(old.segment)), { force: true });
    await fsyncDir(this.#dir);
  }
}

function cursorFile(dir: string, clock: Clock, log: Log): AtomicJsonFile<Cursor> {
  return new AtomicJsonFile({
    path: join(dir, 'cursor.json'),
    schema: CursorSchema,
    what: 'the event queue cursor',
    hint: 'remove it; queued events are then sent again (Center counts each once)',
    clock,
    log,
  });
}

interface Scan {
  entries: Entry[];
  /** Bytes up to the end of the last whole line. */
  validSize: number;
  fileSize: number;
}

async function scanSegment(path: string, cursor: Cursor, log: Log): Promise<Scan> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return { entries: [], validSize: 0, fileSize: 0 };
    throw err;
  }
  const lastNewline = buf.lastIndexOf(0x0a);
  const validSize = lastNewline + 1;
  if (validSize < buf.length) {
    log.warn(
      { component: 'queue', file: path, bytes: buf.length - validSize },
      'ignored a torn last line in the event queue (an append cut short)',
    );
  }
  const acked = new Set(cursor.acked);
  const entries: Entry[] = [];
  let start = Math.min(cursor.offset, validSize);
  while (start < validSize) {
    const end = buf.indexOf(0x0a, start) + 1;
    const parsed = parseLine(buf.subarray(start, end - 1).toString('utf8'));
    if (parsed === undefined) {
      log.warn({ component: 'queue', file: path, offset: start }, 'skipped an unreadable event');
    } else {
      entries.push({ event: parsed, start, end, acked: acked.has(parsed.id) });
    }
    start = end;
  }
  return { entries, validSize, fileSize: buf.length };
}

function parseLine(line: string): DeviceEvent | undefined {
  try {
    const parsed = DeviceEventSchema.safeParse(JSON.parse(line));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How many events wait in the queue in `dir`, read without changing anything (for
 * `engine status` while `engine run` owns the queue).
 */
export async function readQueueDepth(dir: string): Promise<number> {
  let cursor: Cursor | undefined;
  try {
    cursor = await cursorFile(dir, systemClock, silentLog).read({ repair: false });
  } catch (err) {
    if (!isBulkheadError(err, ErrorCodes.STATE_CORRUPT)) throw err;
  }
  if (cursor === undefined) {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return 0;
      throw err;
    }
    const first = names
      .map((n) => SEGMENT_RE.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b)[0];
    if (first === undefined) return 0;
    cursor = { segment: first, offset: 0, acked: [] };
  }
  const scan = await scanSegment(join(dir, segmentName(cursor.segment)), cursor, silentLog);
  return scan.entries.filter((e) => !e.acked).length;
}

/** `value` with every string in it made acceptable to the protocol's `text()`. */
function wellFormed(value: unknown): unknown {
  if (typeof value === 'string') return toText(value);
  if (Array.isArray(value)) return value.map(wellFormed);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, wellFormed(v)]));
}
