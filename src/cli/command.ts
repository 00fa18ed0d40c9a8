import type { ParseArgsConfig } from 'node:util';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';

export interface CommandContext {
  /** A line of output for the user (stdout). */
  out(line: string): void;
  /** A line of diagnostics (stderr). */
  err(line: string): void;
  /** Whether progress bars may be drawn. */
  isTTY: boolean;
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
