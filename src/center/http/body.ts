import type { FastifyInstance } from 'fastify';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';

/**
 * Deepest nesting of arrays and objects a JSON body may have. The deepest body of the API (a
 * report's event naming its release's volumes) is five levels; thirty-two leaves room for
 * growth and none for a document built to exhaust the stack of whoever walks it.
 */
export const MAX_JSON_DEPTH = 32;

/**
 * Whether JSON text nests arrays and objects deeper than `max`: one pass over the text,
 * counting brackets outside strings, before anything is parsed into objects. Malformed text
 * is not judged here (the parser refuses it).
 */
export function isNestedDeeper(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > max) return true;
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) {
      depth--;
    }
  }
  return false;
}

/**
 * Center's request bodies: JSON, its depth bounded before it is parsed; and raw bytes where an
 * upload route adds a parser for them. Fastify's plain-text parser is removed, so a body of any
 * other type is refused with 415 before a handler sees it. Register on the root instance,
 * before the routes.
 */
export function registerBodyParsers(app: FastifyInstance): void {
  // Fastify's own parser (secure-json-parse) does the parsing and refuses __proto__ and
  // constructor.prototype keys; this one only bounds the depth first and names the errors.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    const text = body as string;
    if (isNestedDeeper(text, MAX_JSON_DEPTH)) {
      done(
        new BulkheadError(
          ErrorCodes.BODY_TOO_DEEP,
          `body: arrays and objects nested deeper than ${MAX_JSON_DEPTH} levels; no request of this API needs that many`,
        ),
      );
      return;
    }
    parseJson(req, text, (err, value) => {
      if (err === null) return done(null, value);
      const message =
        text.trim() === ''
          ? 'body: empty, but Content-Type says JSON; send a JSON document, or no Content-Type'
          : 'body: not valid JSON; send a JSON document (Content-Type: application/json)';
      done(new BulkheadError(ErrorCodes.VALIDATION, message, { cause: err }));
    });
  });
}
