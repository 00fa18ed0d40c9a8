import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

export type WorkerRequest =
  | { op: 'fingerprint'; path: string; start: number; end: number; blockSize: number }
  /** spans: [offset0, length0, offset1, length1, …] */
  | { op: 'digest'; path: string; spans: Float64Array }
  | {
      op: 'compress';
      path: string;
      spans: Float64Array;
      level: number;
      joined: boolean;
      /** For a joined frame: the chunks whose raw bytes, concatenated, are its dictionary. */
      refs?: StoredChunks;
      /** For a joined frame: 1 for each span also to be compressed on its own, at singleLevel. */
      singles?: Uint8Array;
      singleLevel?: number;
      /** Where chunks compressed on their own are written, one file each, in order. */
      files?: string[];
      /** The digest each of `files` is for: a chunk that no longer has it is not written. */
      fileDigests?: string[];
    }
  /** SHA-256 of a file's first `size` bytes. */
  | { op: 'sha256'; path: string; size: number }
  /** Copies ranges of `from` into `to`; spans: [fromOffset0, toOffset0, length0, …] */
  | { op: 'copy'; from: string; to: string; spans: Float64Array }
  /**
   * Decompresses a pack frame (with its dictionary, read from `refs`: [path, offset, length]
   * each, concatenated), checks each chunk and writes the wanted ones into `out` at their
   * offsets (`at[k]`, empty for a chunk not wanted).
   */
  | {
      op: 'unpack';
      frame: Uint8Array;
      rawBytes: number;
      refs: { path: string; offset: number; length: number }[];
      digests: string[];
      lengths: number[];
      at: number[][];
      out: string;
    }
  /** Sketches (resemblance.ts) of spans of a file, or of chunks as the store holds them. */
  | { op: 'sketch'; path: string; spans: Float64Array }
  | { op: 'sketch'; chunks: StoredChunks };

/**
 * Chunks as a store holds them (zstd frames), with what they must decompress to: the frames
 * themselves, or the files they are in (a local store).
 */
export type StoredChunks = { lengths: number[]; digests: string[] } & (
  { compressed: Uint8Array[] } | { files: string[] }
);

export type WorkerResponse =
  | { op: 'fingerprint'; fingerprints: Uint32Array; isZero: Uint8Array }
  | { op: 'digest'; digests: Uint8Array; isZero: Uint8Array }
  | {
      op: 'compress';
      /** The joined frame first, then chunks compressed on their own that had no file. */
      compressed: Uint8Array[];
      digests: Uint8Array;
      /** Bytes written to `files`. */
      storedBytes: number;
    }
  | { op: 'sha256'; sha256: string }
  | { op: 'copy' }
  /** Per chunk: 1 written, 0 its bytes did not match its digest, 2 not wanted. */
  | { op: 'unpack'; damaged: boolean; written: Uint8Array }
  /**
   * SUPER_FEATURES values per block of SKETCH_BLOCK bytes, `blocks[i]` blocks for input i;
   * `sampled[b]` is 0 where block b had too little content to sample.
   */
  | { op: 'sketch'; sketches: Uint32Array; sampled: Uint8Array; blocks: Uint32Array };

type ResponseOf<Op extends WorkerRequest['op']> = Extract<WorkerResponse, { op: Op }>;

interface Job {
  id: number;
  req: WorkerRequest;
  transfer: ArrayBuffer[];
}

interface Pending {
  resolve: (res: WorkerResponse) => void;
  reject: (err: Error) => void;
}

/**
 * A fixed set of worker threads running `worker.ts`, one per core by default. Requests queue
 * and go to the first idle worker. A worker's failure rejects only the request it was running,
 * with the worker's message and errno code kept.
 */
export class WorkerPool {
  private readonly idle: Worker[] = [];
  private readonly all: Worker[] = [];
  private readonly queue: Job[] = [];
  private readonly backlog: Job[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly running = new Map<Worker, number>();
  private nextId = 1;
  private closed = false;

  constructor(size = availableParallelism()) {
    for (let i = 0; i < Math.max(1, size); i++) {
      const w = new Worker(new URL('./worker.ts', import.meta.url));
      w.on(
        'message',
        (msg: { id: number; res?: WorkerResponse; error?: { message: string; code?: string } }) => {
          const p = this.pending.get(msg.id);
          this.pending.delete(msg.id);
          this.running.delete(w);
          this.idle.push(w);
          if (msg.error) {
            const err = Object.assign(new Error(msg.error.message), { code: msg.error.code });
            p?.reject(err);
          } else p?.resolve(msg.res!);
          this.dispatch();
        },
      );
      w.on('error', (err) => {
        const id = this.running.get(w);
        if (id !== undefined) this.pending.get(id)?.reject(err);
      });
      this.all.push(w);
      this.idle.push(w);
    }
  }

  get size(): number {
    return this.all.length;
  }

  /**
   * Queues a request. `background` requests (long ones, like pack frames) run only when no
   * other request waits, so they soak up idle cores without holding up the critical path.
   */
  run<Op extends WorkerRequest['op']>(
    req: Extract<WorkerRequest, { op: Op }>,
    options: { transfer?: ArrayBuffer[]; background?: boolean } = {},
  ): Promise<ResponseOf<Op>> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (r: WorkerResponse) => void, reject });
      (options.background ? this.backlog : this.queue).push({
        id,
        req,
        transfer: options.transfer ?? [],
      });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.idle.length > 0 && (this.queue.length > 0 || this.backlog.length > 0)) {
      const w = this.idle.pop()!;
      const job = (this.queue.length > 0 ? this.queue : this.backlog).shift()!;
      this.running.set(w, job.id);
      w.postMessage({ id: job.id, req: job.req }, job.transfer);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.all.map((w) => w.terminate()));
  }
}
