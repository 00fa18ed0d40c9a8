import { randomInt } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/*
 * A client of the QEMU guest agent (qemu-ga) over the host end of its virtio-serial channel,
 * a unix socket QEMU listens on (`-chardev socket,server=on,wait=off` +
 * `-device virtserialport,name=org.qemu.guest_agent.0`).
 *
 * The channel is a byte stream that outlives clients: replies to an earlier client's requests
 * (or to ours that timed out) may still be in it, and the guest may not be listening at all
 * yet. So every session starts with `guest-sync-delimited` carrying a random id (the 0xFF
 * sentinel before its reply marks where the fresh stream begins), every request carries an
 * `id` that its reply echoes, and replies without a matching id are dropped. Every call is
 * bounded by a timeout; a closed connection rejects whatever is pending.
 */

export type GuestAgentErrorCode =
  | 'ERR_GUEST_AGENT_UNREACHABLE'
  | 'ERR_GUEST_AGENT_TIMEOUT'
  | 'ERR_GUEST_AGENT_CLOSED'
  | 'ERR_GUEST_AGENT_COMMAND';

export class GuestAgentError extends Error {
  readonly code: GuestAgentErrorCode;
  /** Timeouts and lost connections may succeed later (a guest still booting); refusals not. */
  readonly retryable: boolean;
  /** The qemu-ga error class, for `ERR_GUEST_AGENT_COMMAND`. */
  readonly agentClass: string | undefined;
  constructor(
    code: GuestAgentErrorCode,
    message: string,
    options: { cause?: unknown; agentClass?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GuestAgentError';
    this.code = code;
    this.retryable = code !== 'ERR_GUEST_AGENT_COMMAND';
    this.agentClass = options.agentClass;
  }
}

export interface ExecResult {
  /** The exit code; 128 + the signal number when a signal ended it. */
  exitCode: number;
  signal?: number;
  stdout: Buffer;
  stderr: Buffer;
  /** True when qemu-ga cut the captured output (it keeps 16 MiB of each). */
  truncated: boolean;
}

export interface ExecOptions {
  /** Upper bound for the whole command, default 30 s. The guest process is not killed. */
  timeoutMs?: number;
  /** Bytes for the command's stdin. */
  input?: Buffer;
}

/** Size of one guest-file-read/write; qemu-ga's replies stay well under its 64 KiB limit. */
const FILE_CHUNK = 48 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;
/** Most bytes a reply line may hold before the stream counts as garbage. */
const MAX_LINE = 64 * 1024 * 1024;

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: GuestAgentError) => void;
  timer: NodeJS.Timeout;
}

export class GuestAgent {
  readonly socketPath: string;
  readonly #socket: Socket;
  #buffer: Buffer = Buffer.alloc(0);
  #nextId = 1;
  readonly #pending = new Map<string, Pending>();
  /** The id of the sync in flight, and what to do when its reply comes. */
  #sync: { id: number; done: () => void } | null = null;
  #closed: GuestAgentError | null = null;

  private constructor(socketPath: string, socket: Socket) {
    this.socketPath = socketPath;
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => this.#fail(`guest agent connection failed: ${err.message}`, err));
    socket.on('close', () => this.#fail('guest agent connection closed'));
  }

  /**
   * Opens the socket (no handshake yet: see `sync`/`ping`).
   * @throws GuestAgentError `ERR_GUEST_AGENT_UNREACHABLE` when no one listens on it in time.
   */
  static async connect(
    socketPath: string,
    options: { timeoutMs?: number } = {},
  ): Promise<GuestAgent> {
    const timeoutMs = options.timeoutMs ?? 5000;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(
          new GuestAgentError(
            'ERR_GUEST_AGENT_UNREACHABLE',
            `no guest agent socket answered at ${socketPath} within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(timer);
        reject(
          new GuestAgentError(
            'ERR_GUEST_AGENT_UNREACHABLE',
            `cannot connect to the guest agent socket ${socketPath}: ${err.message}`,
            { cause: err },
          ),
        );
      });
    });
    return new GuestAgent(socketPath, socket);
  }

  /**
   * Connects and syncs, retrying both until the agent answers or `timeoutMs` passes (a VM still
   * booting has the socket but no agent yet; a VM just started may not have the socket).
   * @throws GuestAgentError `ERR_GUEST_AGENT_TIMEOUT` naming the last failure.
   */
  static async waitUntilResponsive(
    socketPath: string,
    timeoutMs: number,
    options: { attemptMs?: number; signal?: AbortSignal } = {},
  ): Promise<GuestAgent> {
    const deadline = Date.now() + timeoutMs;
    const attemptMs = options.attemptMs ?? 2000;
    let last: unknown;
    let agent: GuestAgent | null = null;
    while (Date.now() < deadline && !options.signal?.aborted) {
      const left = deadline - Date.now();
      try {
        agent ??= await GuestAgent.connect(socketPath, { timeoutMs: Math.min(left, attemptMs) });
        await agent.sync(Math.min(deadline - Date.now(), attemptMs));
        return agent;
      } catch (err) {
        last = err;
        // A connection that timed out stays usable (stale replies are filtered); a closed one not.
        if (agent?.isClosed) agent = null;
        if (agent === null) await sleep(Math.min(200, Math.max(0, deadline - Date.now())));
      }
    }
    agent?.close();
    throw new GuestAgentError(
      'ERR_GUEST_AGENT_TIMEOUT',
      `the guest agent at ${socketPath} did not answer within ${timeoutMs} ms` +
        (last instanceof Error ? ` (${last.message})` : ''),
      { cause: last },
    );
  }

  get isClosed(): boolean {
    return this.#closed !== null;
  }

  /**
   * `guest-sync-delimited` with a fresh random id: resolves once the reply with that id came,
   * discarding everything before it.
   */
  async sync(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
    this.#throwIfClosed();
    const id = randomInt(1, 2 ** 31);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#sync?.id === id) this.#sync = null;
        this.#pending.delete(`sync:${id}`);
        reject(
          new GuestAgentError(
            'ERR_GUEST_AGENT_TIMEOUT',
            `the guest agent did not answer guest-sync within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      // Registered as pending too, so a closing connection rejects it.
      this.#pending.set(`sync:${id}`, { resolve: () => resolve(), reject, timer });
      this.#sync = {
        id,
        done: () => {
          clearTimeout(timer);
          this.#pending.delete(`sync:${id}`);
          resolve();
        },
      };
      // 0xFF first: qemu-ga drops whatever half-request an earlier client left in its parser.
      this.#socket.write(
        Buffer.concat([
          Buffer.from([0xff]),
          Buffer.from(
            `${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`,
          ),
        ]),
      );
    });
  }

  /** Syncs, then `guest-ping`. Fits Engine's health check (`GuestAgentLink.ping`). */
  async ping(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    await this.sync(timeoutMs);
    await this.command('guest-ping', undefined, Math.max(1, deadline - Date.now()));
  }

  /**
   * One qemu-ga command; resolves with its `return`.
   * @throws GuestAgentError: `ERR_GUEST_AGENT_COMMAND` when the agent refused it,
   * `ERR_GUEST_AGENT_TIMEOUT`, `ERR_GUEST_AGENT_CLOSED`.
   */
  async command(
    execute: string,
    args?: Record<string, unknown>,
    timeoutMs = DEFAULT_TIMEOUT_MS,
  ): Promise<unknown> {
    this.#throwIfClosed();
    const id = `bulkhead-${this.#nextId++}`;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new GuestAgentError(
            'ERR_GUEST_AGENT_TIMEOUT',
            `the guest agent did not answer ${execute} within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      const request = args === undefined ? { execute, id } : { execute, arguments: args, id };
      this.#socket.write(`${JSON.stringify(request)}\n`);
    });
  }

  /**
   * Runs `argv` in the guest (no shell: argv[0] is the program's path) and waits for it,
   * polling `guest-exec-status`. Accepts a bare timeout for Engine's `GuestAgentLink.exec`.
   * @throws GuestAgentError `ERR_GUEST_AGENT_TIMEOUT` when it does not end in time (it keeps
   * running in the guest), `ERR_GUEST_AGENT_COMMAND` when it could not be started.
   */
  async exec(argv: readonly string[], options: ExecOptions | number = {}): Promise<ExecResult> {
    const opts = typeof options === 'number' ? { timeoutMs: options } : options;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const [path, ...args] = argv;
    if (path === undefined || path === '') throw new TypeError('exec: argv must name a program');
    const deadline = Date.now() + timeoutMs;
    const left = () => Math.max(1, deadline - Date.now());
    const started = (await this.command(
      'guest-exec',
      {
        path,
        arg: args,
        'capture-output': true,
        ...(opts.input ? { 'input-data': opts.input.toString('base64') } : {}),
      },
      left(),
    )) as { pid: number };
    let interval = 20;
    for (;;) {
      const status = (await this.command('guest-exec-status', { pid: started.pid }, left())) as {
        exited: boolean;
        exitcode?: number;
        signal?: number;
        'out-data'?: string;
        'err-data'?: string;
        'out-truncated'?: boolean;
        'err-truncated'?: boolean;
      };
      if (status.exited) {
        const result: ExecResult = {
          exitCode: status.exitcode ?? 128 + (status.signal ?? 0),
          stdout: Buffer.from(status['out-data'] ?? '', 'base64'),
          stderr: Buffer.from(status['err-data'] ?? '', 'base64'),
          truncated: Boolean(status['out-truncated'] || status['err-truncated']),
        };
        if (status.signal !== undefined) result.signal = status.signal;
        return result;
      }
      if (Date.now() + interval >= deadline) {
        throw new GuestAgentError(
          'ERR_GUEST_AGENT_TIMEOUT',
          `${path} did not finish within ${timeoutMs} ms in the guest (pid ${started.pid})`,
        );
      }
      await sleep(interval);
      interval = Math.min(interval * 2, 250);
    }
  }

  /**
   * Reads a whole file of the guest.
   * @throws GuestAgentError `ERR_GUEST_AGENT_COMMAND` when it cannot be opened or exceeds
   * `maxBytes` (default 16 MiB).
   */
  async readFile(
    path: string,
    options: { timeoutMs?: number; maxBytes?: number } = {},
  ): Promise<Buffer> {
    const deadline = Date.now() + (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const left = () => Math.max(1, deadline - Date.now());
    const maxBytes = options.maxBytes ?? 16 * 1024 * 1024;
    const handle = await this.command('guest-file-open', { path, mode: 'r' }, left());
    const parts: Buffer[] = [];
    let total = 0;
    try {
      for (;;) {
        const r = (await this.command(
          'guest-file-read',
          { handle, count: FILE_CHUNK },
          left(),
        )) as {
          count: number;
          'buf-b64': string;
          eof: boolean;
        };
        const part = Buffer.from(r['buf-b64'], 'base64');
        total += part.length;
        if (total > maxBytes) {
          throw new GuestAgentError(
            'ERR_GUEST_AGENT_COMMAND',
            `${path} in the guest is larger than ${maxBytes} bytes`,
          );
        }
        parts.push(part);
        if (r.eof || r.count === 0) break;
      }
    } finally {
      await this.command('guest-file-close', { handle }, left()).catch(() => {});
    }
    return Buffer.concat(parts);
  }

  /** Writes (creates or truncates) a file in the guest and flushes it. */
  async writeFile(path: string, data: Buffer, options: { timeoutMs?: number } = {}) {
    const deadline = Date.now() + (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const left = () => Math.max(1, deadline - Date.now());
    const handle = await this.command('guest-file-open', { path, mode: 'w' }, left());
    try {
      for (let offset = 0; offset < data.length; offset += FILE_CHUNK) {
        const chunk = data.subarray(offset, offset + FILE_CHUNK);
        await this.command(
          'guest-file-write',
          { handle, 'buf-b64': chunk.toString('base64') },
          left(),
        );
      }
      await this.command('guest-file-flush', { handle }, left());
    } finally {
      await this.command('guest-file-close', { handle }, left()).catch(() => {});
    }
  }

  /** Closes the connection; pending calls reject with `ERR_GUEST_AGENT_CLOSED`. */
  close(): void {
    this.#fail('guest agent connection closed by the client');
    this.#socket.destroy();
  }

  #throwIfClosed(): void {
    if (this.#closed) throw this.#closed;
  }

  #fail(message: string, cause?: unknown): void {
    if (this.#closed) return;
    this.#closed = new GuestAgentError('ERR_GUEST_AGENT_CLOSED', message, { cause });
    this.#sync = null;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.#closed);
    }
    this.#pending.clear();
  }

  #onData(chunk: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    for (;;) {
      const nl = this.#buffer.indexOf(0x0a);
      if (nl < 0) break;
      const line = this.#buffer.subarray(0, nl);
      this.#buffer = this.#buffer.subarray(nl + 1);
      this.#onLine(line);
    }
    if (this.#buffer.length > MAX_LINE) {
      this.#socket.destroy();
      this.#fail('the guest agent sent a reply larger than 64 MiB');
    }
  }

  #onLine(raw: Buffer): void {
    const sentinel = raw.lastIndexOf(0xff);
    const delimited = sentinel >= 0;
    let msg: { return?: unknown; error?: { class?: string; desc?: string }; id?: unknown };
    try {
      msg = JSON.parse(raw.subarray(sentinel + 1).toString('utf8')) as typeof msg;
    } catch {
      return; // garbage from before a sync
    }
    if (delimited || (this.#sync && msg.return === this.#sync.id)) {
      if (this.#sync && msg.return === this.#sync.id) {
        const { done } = this.#sync;
        this.#sync = null;
        done();
      }
      return;
    }
    if (typeof msg.id !== 'string') return; // a reply to no request of ours
    const pending = this.#pending.get(msg.id);
    if (!pending) return; // one we gave up on
    this.#pending.delete(msg.id);
    clearTimeout(pending.timer);
    if (msg.error) {
      pending.reject(
        new GuestAgentError(
          'ERR_GUEST_AGENT_COMMAND',
          `the guest agent refused: ${msg.error.desc ?? 'unknown error'}`,
          msg.error.class === undefined ? {} : { agentClass: msg.error.class },
        ),
      );
    } else {
      pending.resolve(msg.return);
    }
  }
}

/** Connects to a VM's guest agent socket and waits until it answers (see `waitUntilResponsive`). */
export function connectGuestAgent(socketPath: string, timeoutMs: number): Promise<GuestAgent> {
  return GuestAgent.waitUntilResponsive(socketPath, timeoutMs);
}
