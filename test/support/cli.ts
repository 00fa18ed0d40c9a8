import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PATIENCE_MS } from './wait.ts';

/** The CLI as installed: `bulkhead` is this file run by Node. */
export const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `bulkhead ARGS…` as a user would: a process of its own with stdout and stderr captured
 * (so no TTY) and `input` on stdin, waiting until it exits. BULKHEAD_DEBUG is cleared so errors
 * read as a user sees them. A run still going after `timeoutMs` is killed (a hang, not a slow
 * machine).
 */
export function runCli(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {},
): Promise<CliRun> {
  const env = { ...process.env, ...options.env };
  delete env['BULKHEAD_DEBUG'];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? PATIENCE_MS,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      }),
    );
    child.stdin.end(options.input ?? '');
  });
}

/** Runs `bulkhead ARGS… --json` and gives its JSON; a non-zero exit fails with its stderr. */
export async function cliJson(args: string[], env: NodeJS.ProcessEnv = {}): Promise<unknown> {
  const r = await runCli([...args, '--json'], { env });
  if (r.code !== 0) {
    throw new Error(`bulkhead ${args.slice(0, 2).join(' ')} exited ${r.code}: ${r.stderr}`);
  }
  return JSON.parse(r.stdout || 'null');
}

/**
 * Runs the CLI's `main` in this process, its output lines collected; `env` is set for the run
 * and restored after.
 */
export async function runMain(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  // Loaded on first use: the tests that run the CLI as a process need none of it here.
  const { main } = await import('../../src/cli/main.ts');
  const out: string[] = [];
  const err: string[] = [];
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    const code = await main(args, {
      out: (l) => out.push(l),
      err: (l) => err.push(l),
      isTTY: false,
    });
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    for (const k of Object.keys(env)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

/** What `bulkhead center serve --json` prints once it listens. */
export interface CenterServeInfo {
  url: string;
  /** Where `/metrics` is served on its own listener (`--metrics-listen`), else null. */
  metricsUrl: string | null;
  keyid: string;
  initialAdmin: { username: string; password: string } | null;
}

export interface CenterProcess {
  child: ChildProcess;
  info: CenterServeInfo;
  /** Everything it wrote on stderr so far (its log). */
  stderr(): string;
  /** SIGTERM, then its exit code once it has exited. */
  stop(): Promise<number | null>;
}

/**
 * Starts `bulkhead center serve --json ARGS…` as an administrator would (on a free port of
 * 127.0.0.1 unless ARGS give `--listen`) and waits until it says it listens, however long that
 * takes. Killed when `t` ends if still running; fails if it exits first, with its stderr.
 */
export function startCenterProcess(
  t: Pick<TestContext, 'after'>,
  args: string[],
  options: { node?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<CenterProcess> {
  const listen = args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
  const child = spawn(
    options.node ?? process.execPath,
    [BIN, 'center', 'serve', ...listen, '--json', ...args],
    { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const stop = () => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return Promise.resolve(child.exitCode);
    }
    return new Promise<number | null>((resolve) => {
      child.once('exit', (code) => resolve(code));
      child.kill('SIGTERM');
    });
  };
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      if (!out.includes('\n')) return;
      const info = JSON.parse(out.split('\n')[0]!) as CenterServeInfo;
      resolve({ child, info, stderr: () => err, stop });
    });
    child.on('exit', (code) => reject(new Error(`center serve exited with ${code}: ${err}`)));
  });
}

/** Kills `child` with SIGKILL and waits until it has exited; nothing when it already has. */
export async function killProcess(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/** A TCP port on 127.0.0.1 that was free a moment ago, for a server that must keep its port. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
