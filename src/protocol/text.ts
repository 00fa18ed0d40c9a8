import { z } from 'zod';

/*
 * The strings Center's API accepts. Every string of a request (body, path parameter, query) is
 * declared with `text` or `name` below, or with a pattern narrower than they are, so that what
 * reaches the database is valid UTF-8 without NUL on every database (PostgreSQL refuses NUL in
 * text and unpaired surrogates in JSON; SQLite keeps both), and what reaches a terminal or the
 * console as a name carries no control characters. The same request gets the same 400 on
 * SQLite and PostgreSQL, naming the field.
 */

// The point of these patterns is the control characters they name.
/* eslint-disable no-control-regex */

/**
 * Text: anything but NUL and unpaired UTF-16 surrogates (`\ud800` alone is not a character
 * and has no UTF-8 encoding). With the `u` flag a surrogate pair is one code point above the
 * surrogate range, so only unpaired halves fall in `\ud800-\udfff`.
 */
const TEXT_PATTERN = /^[^\u0000\ud800-\udfff]*$/u;

/**
 * Characters no name may hold and no terminal is sent from server data: control characters
 * (C0, DEL, C1: escape sequences start with ESC or CSI), the line and paragraph separators,
 * and the bidirectional overrides and isolates that make text read other than it is.
 */
export const UNSAFE_NAME_CHARACTER = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

/** A name: text without the characters above. */
const NAME_PATTERN = /^[^\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]*$/u;

/* eslint-enable no-control-regex */

const TEXT_MESSAGE =
  'must be text without NUL characters or unpaired surrogates (\\u0000, \\ud800)';
const NAME_MESSAGE =
  'must be printable: no control characters, line separators or bidirectional overrides';

export interface TextBounds {
  /** Fewest characters (UTF-16 code units); 0 when omitted. */
  min?: number;
  /** Most characters (UTF-16 code units). */
  max: number;
}

/**
 * Free text of a request (a description, a reason, a password, a key in PEM): any characters,
 * newlines included, but no NUL and no unpaired surrogate.
 */
export function text(bounds: TextBounds) {
  const schema = z.string().max(bounds.max);
  return (bounds.min === undefined ? schema : schema.min(bounds.min)).regex(
    TEXT_PATTERN,
    TEXT_MESSAGE,
  );
}

/**
 * A name people read (a device's, a group's, an API token's, a host's): text without control
 * characters, so it prints as itself in a terminal, a log line or the console.
 */
export function name(bounds: TextBounds) {
  const schema = z.string().max(bounds.max);
  return (bounds.min === undefined ? schema : schema.min(bounds.min)).regex(
    NAME_PATTERN,
    NAME_MESSAGE,
  );
}

/** Whether a string is text `text()` accepts. */
export function isText(value: string): boolean {
  return TEXT_PATTERN.test(value);
}

/**
 * `value` made acceptable to `text()`: unpaired surrogates and NUL become U+FFFD. For senders
 * that pass on what other programs said (an error message, a firmware string), so a stray
 * byte costs a character, not the whole report.
 */
export function toText(value: string): string {
  return value.toWellFormed().replaceAll('\u0000', '\ufffd');
}

/**
 * `value` made acceptable to `name()`: as `toText`, and each character `name()` refuses
 * becomes a space.
 */
export function toName(value: string): string {
  return toText(value).replace(new RegExp(UNSAFE_NAME_CHARACTER.source, 'gu'), ' ');
}
