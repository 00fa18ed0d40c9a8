// Small helpers shared by the benchmark modules: running external commands with useful errors,
// timing, file sizes, and finding the Debian mirror this machine is configured to use.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Copy the command's stdout and stderr to our stderr while it runs (our stdout is JSON). */
  echo?: boolean;
  /** Kill the command (SIGKILL) after this many milliseconds and fail. */
  timeoutMs?: number;
  /** Exit codes that count as success; default [0]. */
  okCodes?: number[];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

const MAX_CAPTURE = 8 * 1024 * 1024;

export class CommandError extends Error {
  readonly code: number | null;
  readonly stderr: string;
  readonly timedOut: boolean;
  constructor(message: string, code: number | null, stderr: string, timedOut: boolean) {
    super(message);
    this.name = 'CommandError';
    this.code = code;
    this.stderr = stderr;
    this.timedOut = timedOut;
  }
}

export function describeCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

/** Runs `cmd` with an argument array (no shell); rejects with the command line and its stderr. */
export function run(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const started = process.hrtime.bigint();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (s: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += s;
      if (opts.echo) process.stderr.write(s);
    });
    child.stderr.on('data', (s: string) => {
      stderr += s;
      if (stderr.length > MAX_CAPTURE) stderr = stderr.slice(-MAX_CAPTURE / 2);
      if (opts.echo) process.stderr.write(s);
    });
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(new CommandError(`${describeCommand(cmd, args)}: ${err.message}`, null, '', false));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const ok = opts.okCodes ?? [0];
      if (code !== null && ok.includes(code)) {
        resolvePromise({ code, stdout, stderr, seconds });
        return;
      }
      const why = timedOut
        ? `timed out after ${((opts.timeoutMs ?? 0) / 1000).toFixed(0)} s`
        : signal
          ? `killed by ${signal}`
          : `exit code ${code}`;
      const tail = (stderr.trim() || stdout.trim()).slice(-4000);
      reject(
        new CommandError(
          `command failed (${why}): ${describeCommand(cmd, args)}${tail ? `\n--- stderr ---\n${tail}` : ''}`,
          code,
          stderr,
          timedOut,
        ),
      );
    });
  });
}

/** Seconds elapsed since `start` (from process.hrtime.bigint()). */
export function secondsSince(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { value, seconds: secondsSince(start) };
}

export function round(n: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Apparent size and allocated bytes (what `du` reports) of a file. */
export async function sizes(path: string): Promise<{ bytes: number; allocatedBytes: number }> {
  const st = await stat(path);
  return { bytes: st.size, allocatedBytes: st.blocks * 512 };
}

/** Total size of the regular files under a directory (recursive) and how many there are. */
export function directoryBytes(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    files += 1;
    bytes += statSync(join(entry.parentPath, entry.name)).size;
  }
  return { files, bytes };
}

export function mb(bytes: number): number {
  return bytes / 1e6;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The Debian archive URL this machine's apt uses for `suite`, read from the deb822 files in
 * /etc/apt/sources.list.d/ or from /etc/apt/sources.list. The benchmark never hard-codes it.
 */
export function debianMirror(suite = 'bookworm'): string {
  const dir = '/etc/apt/sources.list.d';
  let files: string[] = [];
  try {
    files = readdirSync(dir)
      .filter((f) => f.endsWith('.sources'))
      .sort()
      .map((f) => join(dir, f));
  } catch {
    // no sources.list.d
  }
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    for (const para of text.split(/\n\s*\n/)) {
      const fields = new Map<string, string>();
      let last = '';
      for (const line of para.split('\n')) {
        if (line.startsWith('#')) continue;
        if (/^\s/.test(line) && last) {
          fields.set(last, `${fields.get(last) ?? ''} ${line.trim()}`);
          continue;
        }
        const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
        if (!m || !m[1]) continue;
        last = m[1].toLowerCase();
        fields.set(last, m[2] ?? '');
      }
      const types = (fields.get('types') ?? '').split(/\s+/);
      const suites = (fields.get('suites') ?? '').split(/\s+/);
      const enabled = (fields.get('enabled') ?? 'yes').toLowerCase() !== 'no';
      const uri = (fields.get('uris') ?? '').split(/\s+/).find((u) => /^https?:\/\//.test(u));
      if (enabled && types.includes('deb') && suites.includes(suite) && uri) return uri;
    }
  }
  try {
    for (const line of readFileSync('/etc/apt/sources.list', 'utf8').split('\n')) {
      const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(https?:\/\/\S+)\s+(\S+)/.exec(line);
      if (m && m[1] && m[2] === suite) return m[1];
    }
  } catch {
    // no sources.list
  }
  throw new Error(
    `no Debian mirror for suite ${suite} found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list`,
  );
}

const deferred: string[] = [];

/**
 * Removes a folder of many files at the end of the run instead of now. ext4 skips inodes freed in
 * the last minutes when it allocates new ones, so creating tens of thousands of files right after
 * deleting as many costs several times the system time: the next timed step would pay for this
 * one's clean-up.
 */
export function removeLater(path: string): void {
  deferred.push(path);
}

/** Removes what removeLater was given. */
export async function removeDeferred(): Promise<void> {
  for (const path of deferred.splice(0)) await rm(path, { recursive: true, force: true });
}
