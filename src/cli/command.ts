import type { ParseArgsConfig } from 'node:util';
import { BulkheadError, ErrorCodes, UNSAFE_NAME_CHARACTER } from '../protocol/index.ts';

export interface CommandContext {
  /** A line of output for the user (stdout). */
  out(line: string): void;
  /** A line of diagnostics (stderr). */
  err(line: string): void;
  /** Whether progress bars may be drawn. */
  isTTY: boolean;
}

const UNSAFE = new RegExp(UNSAFE_NAME_CHARACTER.source, 'gu');

/**
 * `text` as it may reach a terminal: every control character (ESC, BEL, CR, C1…), line
 * separator and bidirectional override shown as a `\uXXXX` escape, so text that came from
 * Center (a name a device chose, a message) cannot move the cursor, retitle the window, clear
 * the screen or read backwards. `keepLines` leaves newlines and tabs, which do none of that.
 * The escapes are JSON's, so a JSON line stays the same JSON.
 */
export function printable(text: string, options: { keepLines?: boolean } = {}): string {
  return text.replace(UNSAFE, (c) =>
    options.keepLines === true && (c === '\n' || c === '\t')
      ? c
      : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** A context whose lines are `printable`: what every command prints through. */
export function printableContext(ctx: CommandContext): CommandContext {
  return {
    ...ctx,
    out: (line) => ctx.out(printable(line, { keepLines: true })),
    err: (line) => ctx.err(printable(line, { keepLines: true })),
  };
}

export interface Invocation {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
  json: boolean;
}

export interface Command {
  /** One or two words: "image pull". */
  name: string;
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  /** Prints human output itself; returns the JSON result (printed when --json is given). */
  run(inv: Invocation, ctx: CommandContext): Promise<unknown>;
}

export function requireString(inv: Invocation, name: string): string {
  const v = inv.values[name];
  if (typeof v !== 'string' || v === '')
    throw new BulkheadError(ErrorCodes.USAGE, `--${name} is required`);
  return v;
}

export function optionalString(inv: Invocation, name: string): string | undefined {
  const v = inv.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function stringList(inv: Invocation, name: string): string[] {
  const v = inv.values[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is string => typeof x === 'string');
}

export function integerOption(
  inv: Invocation,
  name: string,
  min: number,
  max: number,
): number | undefined {
  const v = optionalString(inv, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `--${name} must be a whole number from ${min} to ${max}, not "${v}"`,
    );
  }
  return n;
}

/** Splits `NAME@VERSION`. */
export function parseImageRef(
  ref: string | undefined,
  what = 'image',
): { name: string; version: string } {
  const at = ref?.lastIndexOf('@') ?? -1;
  if (!ref || at <= 0 || at === ref.length - 1) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `${what} must be given as NAME@VERSION, not "${ref ?? ''}"`,
    );
  }
  return { name: ref.slice(0, at), version: ref.slice(at + 1) };
}
