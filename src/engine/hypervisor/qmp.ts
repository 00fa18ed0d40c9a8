import { connect, type Socket } from 'node:net';

/*
 * A QMP (QEMU Machine Protocol) client over a unix socket: reads the greeting, negotiates
 * capabilities, sends commands with ids and passes asynchronous events on. QEMU serves one
 * QMP client per socket at a time; a second connection waits until the first one closes.
 */

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  /** QEMU's time of the event, epoch ms. */
  at: number;
}

export class QmpError extends Error {
  /** `timeout`, `closed`, `refused` (QEMU answered with an error) or `protocol`. */
  readonly kind: 'timeout' | 'closed' | 'refused' | 'protocol';
  constructor(kind: QmpError['kind'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QmpError';
    this.kind = kind;
  }
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: QmpError) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly #socket: Socket;
  #buffer = '';
  #nextId = 1;
  readonly #pending = new Map<string, Pending>();
  readonly #eventListeners = new Set<(event: QmpEvent) => void>();
  readonly #closeListeners = new Set<() => void>();
  #closed = false;
  #greeting: ((msg: Record<string, unknown>) => void) | null = null;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', () => this.#onClose());
    socket.on('close', () => this.#onClose());
  }

  /**
   * Connects, waits for the greeting and enters command mode (`qmp_capabilities`).
   * @throws QmpError `timeout` when QEMU does not greet within `timeoutMs` (another client may
   * hold the socket), `closed` when the connection fails.
   */
  static async connect(path: string, options: { timeoutMs?: number } = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 5000;
    const socket = connect(path);
    const client = new QmpClient(socket);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new QmpError('timeout', `QEMU did not greet on ${path} within ${timeoutMs} ms`));
        }, timeoutMs);
        client.#greeting = (msg) => {
          clearTimeout(timer);
          if ('QMP' in msg) resolve();
          else reject(new QmpError('protocol', `unexpected QMP greeting on ${path}`));
        };
        client.#closeListeners.add(() => {
          clearTimeout(timer);
          reject(new QmpError('closed', `the QMP socket ${path} closed before the greeting`));
        });
      });
      client.#closeListeners.clear();
      await client.execute('qmp_capabilities', undefined, timeoutMs);
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /**
   * Runs one command; resolves with its `return`.
   * @throws QmpError `refused` with QEMU's description, `timeout`, or `closed`.
   */
  async execute(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = 10_000,
  ): Promise<unknown> {
    if (this.#closed) throw new QmpError('closed', `QMP connection closed (${command})`);
    const id = `q${this.#nextId++}`;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new QmpError('timeout', `QEMU did not answer ${command} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      const msg =
        args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.#socket.write(`${JSON.stringify(msg)}\n`);
    });
  }

  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.#eventListeners.add(listener);
    return () => this.#eventListeners.delete(listener);
  }

  /** Called once when the connection ends (QEMU exited, or `close`). */
  onClose(listener: () => void): () => void {
    if (this.#closed) {
      queueMicrotask(listener);
      return () => {};
    }
    this.#closeListeners.add(listener);
    return () => this.#closeListeners.delete(listener);
  }

  close(): void {
    this.#socket.destroy();
    this.#onClose();
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    for (;;) {
      const nl = this.#buffer.indexOf('\n');
      if (nl < 0) break;
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line !== '') this.#onLine(line);
    }
  }

  #onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if (this.#greeting) {
      const greet = this.#greeting;
      this.#greeting = null;
      greet(msg);
      return;
    }
    if (typeof msg['event'] === 'string') {
      const ts = msg['timestamp'] as { seconds?: number; microseconds?: number } | undefined;
      const event: QmpEvent = {
        event: msg['event'],
        at:
          ts?.seconds !== undefined
            ? ts.seconds * 1000 + Math.floor((ts.microseconds ?? 0) / 1000)
            : Date.now(),
      };
      if (msg['data'] !== undefined) event.data = msg['data'] as Record<string, unknown>;
      for (const l of this.#eventListeners) l(event);
      return;
    }
    const id = typeof msg['id'] === 'string' ? msg['id'] : undefined;
    const pending = id === undefined ? undefined : this.#pending.get(id);
    if (!pending || id === undefined) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    const error = msg['error'] as { class?: string; desc?: string } | undefined;
    if (error) pending.reject(new QmpError('refused', error.desc ?? error.class ?? 'QMP error'));
    else pending.resolve(msg['return']);
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError('closed', 'QMP connection closed'));
    }
    this.#pending.clear();
    for (const l of this.#closeListeners) l();
    this.#closeListeners.clear();
  }
}
