import { chmod, mkdir, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import {
  BulkheadError,
  ErrorCodes,
  errorStatus,
  isBulkheadError,
  LOCAL_API_BODY_LIMIT,
  LOCAL_API_ROUTES,
  LocalAppsRequestSchema,
  LocalVmNameSchema,
  ScreenInputSchema,
  type ChooseAppsResponse,
  type ErrorBody,
  type LocalEngine,
  type LocalVm,
  type LocalVmsResponse,
  type ScreenInput,
} from '../protocol/index.ts';
import { Screen } from './hypervisor/index.ts';
import type { Clock } from './clock.ts';
import type { Log } from './log.ts';
import { takeScreenshot } from './screenshot.ts';
import { readEngineStatus, runStateOf } from './status.ts';
import { volumeLayout } from './volumes/index.ts';

/*
 * Engine's local API (src/protocol/engine-local.ts) for the switcher: plain HTTP on a unix
 * socket, `<dataDir>/run/engine.sock`, never a TCP port. Who may call it is decided by the file
 * system: the socket is 0660 inside `<dataDir>/run` (0700) inside the data directory (0700), so
 * only Engine's user reaches it unless an administrator opens the directories to a group.
 */

/** Where `engine run` serves the local API. */
export function localApiSocket(dataDir: string): string {
  return join(dataDir, 'run', 'engine.sock');
}

/** The screens of the PC's VMs, as the local API uses them. */
export interface VmScreens {
  /**
   * The VM's screen now, as PNG bytes.
   * @throws BulkheadError ERR_VM_NOT_RUNNING when it does not run, ERR_IN_USE when another
   * screen tool holds its screen.
   */
  screenshot(vm: string): Promise<Buffer>;
  /**
   * Types, presses or points on the VM's screen; resolves once QEMU took every event.
   * @throws BulkheadError as `screenshot`, and ERR_VALIDATION for a point off the screen.
   */
  input(vm: string, input: ScreenInput): Promise<void>;
}

export interface LocalApiDeps {
  /** The VMs of this PC with their state (what `engine status` computes). */
  vms: () => Promise<LocalVm[]>;
  screens: VmScreens;
  /**
   * Passes the PC user's choice of VM `vm`'s optional apps to Center and answers Center's reply.
   * Absent where Engine has no Center (the route then answers 404).
   * @throws BulkheadError as Center refuses it (`ERR_FORBIDDEN`, `ERR_VALIDATION`), or
   *   ERR_NOT_FOUND when Center gives this PC no such VM.
   */
  chooseApps?: (vm: string, apps: string[]) => Promise<ChooseAppsResponse>;
  /** Engine's connection, lock and lease. Absent: `GET /v1/engine` answers 404. */
  engine?: () => Promise<LocalEngine>;
  /**
   * The user accepts VM `vm`'s staged update (the handler has checked that one waits): it
   * switches at the update's next pass. Absent: the route answers 404.
   */
  accept?: (vm: string) => Promise<void>;
  log: Log;
}

/**
 * The VMs as `engine status` reads them from the data directory; a staged update's deadline is
 * `switchDeadlineMs` after it was staged (Engine's `switchDeadlineSeconds`).
 */
export function statusVms(dataDir: string, switchDeadlineMs = 0): () => Promise<LocalVm[]> {
  return async () =>
    (await readEngineStatus(dataDir)).vms.map((v) => ({
      name: v.name,
      kind: v.kind,
      version: v.currentVersion,
      activity: v.activity,
      summary: v.summary,
      currentVersionId: v.currentVersionId,
      desiredVersionId: v.desiredVersionId,
      transaction: v.transaction,
      lastError: v.lastError,
      leaseExpiresAt: v.leaseExpiresAt,
      leaseWarning: v.lease === 'warning' || v.lease === 'expired',
      leaseExpired: v.lease === 'expired',
      update: v.staged && {
        to: v.staged.to,
        stagedAt: v.staged.since,
        deadlineAt: v.staged.since + switchDeadlineMs,
      },
      lastOutcome: v.lastOutcome,
    }));
}

/**
 * Engine as `engine status` reads it from the data directory, with the push channel's state
 * from the running sync loop (it is kept in memory only).
 */
export function statusEngine(
  dataDir: string,
  push: () => LocalEngine['push'],
  clock: Clock,
): () => Promise<LocalEngine> {
  return async () => {
    const status = await readEngineStatus(dataDir);
    // The lease governs the work VMs; a personal VM runs on whatever Center last said.
    const leased = status.vms
      .filter((v) => v.kind === 'work' && v.leaseExpiresAt !== null)
      .sort((a, b) => a.leaseExpiresAt! - b.leaseExpiresAt!)[0];
    return {
      online: status.connectivity.online,
      lastContactAt: status.connectivity.lastContactAt,
      push: push(),
      locked: status.desired?.deviceState === 'locked',
      killed: status.killedAt !== null || status.desired?.deviceState === 'killed',
      lease: leased
        ? {
            expiresAt: leased.leaseExpiresAt!,
            vm: leased.name,
            warning: leased.lease === 'warning' || leased.lease === 'expired',
            expired: leased.lease === 'expired',
          }
        : null,
      now: clock.now(),
    };
  };
}

/** How long a request waits for a screen another tool is using. */
const SCREEN_TIMEOUT_MS = 5000;

/** The real screens: each VM's screen monitor (hypervisor/screen.ts) under the data directory. */
export function qemuScreens(dataDir: string): VmScreens {
  const running = async (vm: string) => {
    const { runDir } = volumeLayout(dataDir, vm);
    if ((await runStateOf(runDir)) !== 'running') throw notRunning(vm);
    return runDir;
  };
  return {
    async screenshot(vm) {
      await running(vm);
      try {
        return (await takeScreenshot(dataDir, vm, { timeoutMs: SCREEN_TIMEOUT_MS })).png;
      } catch (err) {
        // It stopped since: it is there, but not running.
        if (isBulkheadError(err, ErrorCodes.NOT_FOUND)) throw notRunning(vm, err);
        throw err;
      }
    },
    async input(vm, input) {
      const runDir = await running(vm);
      let screen: Screen;
      try {
        screen = await Screen.open(runDir, { timeoutMs: SCREEN_TIMEOUT_MS });
      } catch (err) {
        if (isBulkheadError(err, ErrorCodes.NOT_FOUND)) throw notRunning(vm, err);
        throw err;
      }
      try {
        if (input.text !== undefined) await screen.type(input.text);
        else if (input.keys !== undefined) await screen.pressKeys(input.keys);
        else if (input.pointer !== undefined) {
          const { x, y, button } = input.pointer;
          await screen.pointer(x, y, button);
        }
      } finally {
        screen.close();
      }
    },
  };
}

function notRunning(vm: string, cause?: unknown): BulkheadError {
  return new BulkheadError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm} is not running`, {
    ...(cause ? { cause } : {}),
  });
}

const VM_ROUTE = /^\/v1\/vms\/([^/]+)\/(screen\.png|input|apps|accept)$/;

/** The request handler of the local API (node:http). */
export function localApiHandler(
  deps: LocalApiDeps,
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    void handle(deps, req, res).catch((err: unknown) => {
      if (isBulkheadError(err) && errorStatus(err.code) < 500) {
        send(res, errorStatus(err.code), errorBody(err.code, err.message));
        return;
      }
      // Center out of reach: the caller may try again later.
      if (isBulkheadError(err) && err.retryable) {
        send(res, 503, errorBody(err.code, err.message));
        return;
      }
      deps.log.error({ component: 'http', err, url: req.url }, 'local API request failed');
      send(res, 500, errorBody(ErrorCodes.INTERNAL, 'Engine could not answer; see its log'));
    });
  };
}

async function handle(deps: LocalApiDeps, req: IncomingMessage, res: ServerResponse) {
  const path = new URL(req.url ?? '/', 'http://engine').pathname;
  const route = `${req.method} ${path}`;
  if (route === 'GET /v1/vms') {
    const body: LocalVmsResponse = { vms: await deps.vms() };
    send(res, 200, body);
    return;
  }
  if (route === 'GET /v1/engine' && deps.engine) {
    send(res, 200, await deps.engine());
    return;
  }
  const match = VM_ROUTE.exec(path);
  const action = match?.[2];
  const method = action === 'screen.png' ? 'GET' : 'POST';
  if (
    !match ||
    req.method !== method ||
    (action === 'apps' && !deps.chooseApps) ||
    (action === 'accept' && !deps.accept)
  ) {
    throw new BulkheadError(
      ErrorCodes.NOT_FOUND,
      `${route} is not a route of Engine's local API (${Object.values(LOCAL_API_ROUTES).join(', ')})`,
    );
  }
  const vm = vmName(match[1]!);
  const found = (await deps.vms()).find((v) => v.name === vm);
  if (!found) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `this PC has no VM named ${vm}`);
  }
  if (action === 'accept') {
    req.resume();
    // A marker left without a staged update would switch the next one at once, unasked.
    if (!found.update) {
      throw new BulkheadError(
        ErrorCodes.NO_UPDATE_WAITING,
        `no update of ${vm} is waiting for a restart`,
      );
    }
    await deps.accept!(vm);
    deps.log.info({ component: 'http', vm }, `${vm}: the user accepted its staged update`);
    res.writeHead(204);
    res.end();
    return;
  }
  if (action === 'screen.png') {
    const png = await deps.screens.screenshot(vm);
    res.writeHead(200, {
      'content-type': 'image/png',
      'content-length': png.length,
      'cache-control': 'no-store',
    });
    res.end(png);
    return;
  }
  if (action === 'apps') {
    const body = LocalAppsRequestSchema.safeParse(await readJsonBody(req));
    if (!body.success) {
      const issue = body.error.issues[0];
      const where = issue?.path.length ? issue.path.join('.') : 'body';
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        `apps ${where}: ${issue?.message ?? 'is not valid'}`,
      );
    }
    send(res, 200, await deps.chooseApps!(vm, body.data.apps));
    return;
  }
  const input = parseInput(await readJsonBody(req));
  await deps.screens.input(vm, input);
  res.writeHead(204);
  res.end();
}

function vmName(segment: string): string {
  let name: string;
  try {
    name = decodeURIComponent(segment);
  } catch {
    throw new BulkheadError(ErrorCodes.VALIDATION, 'the VM name in the path is not URL-encoded');
  }
  const parsed = LocalVmNameSchema.safeParse(name);
  if (!parsed.success) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `VM name ${JSON.stringify(name.slice(0, 64))} ${parsed.error.issues[0]?.message ?? 'is not valid'}`,
    );
  }
  return parsed.data;
}

function parseInput(json: unknown): ScreenInput {
  const parsed = ScreenInputSchema.safeParse(json);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue?.path.length ? issue.path.join('.') : 'body';
  throw new BulkheadError(
    ErrorCodes.VALIDATION,
    `input ${where}: ${issue?.message ?? 'is not valid'}`,
  );
}

/**
 * The request's JSON body: at most LOCAL_API_BODY_LIMIT bytes (a longer one is refused as soon
 * as it passes the limit, without reading the rest), of type application/json.
 */
async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    req.resume();
    throw new BulkheadError(
      ErrorCodes.UNSUPPORTED_MEDIA_TYPE,
      `the body must be application/json, not ${JSON.stringify(type || 'none')}`,
    );
  }
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > LOCAL_API_BODY_LIMIT) throw tooLarge();
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req) {
    size += (part as Buffer).length;
    if (size > LOCAL_API_BODY_LIMIT) throw tooLarge();
    parts.push(part as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown;
  } catch {
    throw new BulkheadError(ErrorCodes.VALIDATION, 'the body is not JSON');
  }
}

function tooLarge(): BulkheadError {
  return new BulkheadError(
    ErrorCodes.OBJECT_TOO_LARGE,
    `the body is larger than ${LOCAL_API_BODY_LIMIT} bytes`,
  );
}

function errorBody(code: string, message: string): ErrorBody {
  return { error: { code, message } };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  // An answer before the whole body was read (too large, wrong type) closes the connection:
  // the rest of the body is never read.
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...(res.req.complete ? {} : { connection: 'close' }),
  });
  res.end(text);
}

export interface LocalApi {
  /** The socket it listens on. */
  path: string;
  /** Stops listening, ends open connections and removes the socket. */
  close(): Promise<void>;
}

/**
 * Serves the local API on the unix socket `path` (0660; its directory is made 0700 when
 * missing). A socket left by an earlier Engine is replaced: only the Engine holding the data
 * directory's lock starts this.
 * @throws BulkheadError ERR_VALIDATION when the path is too long for a unix socket.
 */
export async function startLocalApi(path: string, deps: LocalApiDeps): Promise<LocalApi> {
  if (Buffer.byteLength(path) > 107) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `${path} is too long for a unix socket (at most 107 bytes): use a shorter data directory`,
    );
  }
  await mkdir(join(path, '..'), { recursive: true, mode: 0o700 });
  await rm(path, { force: true });
  const server = createServer(localApiHandler(deps));
  // Requests are small and local; a client that stalls is dropped.
  server.requestTimeout = 60_000;
  server.headersTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(path, 0o660);
  return {
    path,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await rm(path, { force: true });
    },
  };
}
