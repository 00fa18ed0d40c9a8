import { createHash, generateKeyPairSync, randomInt, type KeyObject } from 'node:crypto';
import { encryptionKeyPem } from './keys.ts';
import { validateHeaderValue } from 'node:http';
import { zstdCompressSync } from 'node:zlib';
import { hashPassword } from '../../src/center/auth/index.ts';
import { newId } from '../../src/center/db/index.ts';
import { createEnrolmentToken, DEVICE_SIGNATURE_DOMAINS } from '../../src/center/devices/index.ts';
import { signPayload } from '../../src/signing/index.ts';
import {
  insertApp,
  insertDevices,
  insertGroup,
  insertImage,
  insertProfile,
  insertSession,
  insertVersion,
  startTestCenter,
} from './center.ts';
import type { Cleanups } from './fixtures.ts';

/*
 * A fuzzer of Center's HTTP API, driven by the OpenAPI document Center serves: every operation
 * in it is called as anonymous, as each admin role, as an enrolled device and with a forged
 * token, first with a valid request, then with the attacks a hostile client tries (strings
 * holding NUL, control characters, unpaired surrogates or 70,000 characters; wrong types, missing
 * and unknown fields; deep nesting; malformed JSON; wrong content types; bad path and query
 * parameters and headers), then at random. Any 5xx (but a 503 with Retry-After: load shed on
 * purpose), a stack trace, or a 4xx that is not Center's one error body is a failure, reported
 * with the request that caused it.
 *
 * Runs are reproducible: every choice comes from a PRNG seeded with `seed` (print it; pass it
 * back with BULKHEAD_FUZZ_SEED), and Center's clock moves one second per request.
 *
 * Used by test/integration/fuzz-api.test.ts (a short run on each database) and by
 * bench/fuzz-api.ts (`npm run fuzz`, a long run printing counts per status).
 */

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32: small, fast, and the same sequence on every machine for a seed. */
export class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick from nothing');
    return items[this.int(items.length)] as T;
  }
  hex(bytes: number): string {
    let s = '';
    for (let i = 0; i < bytes * 2; i++) s += '0123456789abcdef'[this.int(16)];
    return s;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** The seed of a run: BULKHEAD_FUZZ_SEED when set, else a new one (print it). */
export function fuzzSeed(env: NodeJS.ProcessEnv = process.env): number {
  const given = env['BULKHEAD_FUZZ_SEED'];
  if (given === undefined || given === '') return randomInt(2 ** 31);
  const seed = Number(given);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`BULKHEAD_FUZZ_SEED must be a whole number, not "${given}"`);
  }
  return seed;
}

// ---------------------------------------------------------------------------------------------
// The operations, read from the OpenAPI document

/** The part of JSON Schema (as OpenAPI 3.0 has it) that Center's document uses. */
export interface JsonSchema {
  type?: string;
  nullable?: boolean;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  format?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number | boolean;
  exclusiveMaximum?: number | boolean;
  oneOf?: JsonSchema[];
  anyOf?: JsonSchema[];
  allOf?: JsonSchema[];
  default?: unknown;
  description?: string;
}

interface Parameter {
  name: string;
  in: 'path' | 'query' | 'header';
  required: boolean;
  schema: JsonSchema;
}

export interface Operation {
  method: string;
  /** OpenAPI's form: `/api/v1/admin/groups/{id}`. */
  path: string;
  /** Who the document says may call it: nobody in particular, an admin token, a device token. */
  security: 'public' | 'admin' | 'device';
  params: Parameter[];
  query: Parameter[];
  /** The JSON body's schema, if the operation takes one. */
  body: JsonSchema | undefined;
  /** Whether the body is required (a nullish body is not). */
  bodyRequired: boolean;
  /** A success answer that is a stream (server-sent events): read its head only. */
  streams: boolean;
  /** A PUT without a JSON schema: raw bytes (chunk, index and manifest uploads). */
  takesBytes: boolean;
}

const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const;

interface OpenApiDocument {
  paths: Record<
    string,
    Partial<
      Record<
        (typeof METHODS)[number],
        {
          security?: Record<string, unknown>[];
          parameters?: Parameter[];
          requestBody?: { required?: boolean; content?: Record<string, { schema: JsonSchema }> };
          responses?: Record<string, { description?: string }>;
        }
      >
    >
  >;
}

/** Every operation of the document, in its order. */
export function operationsOf(doc: OpenApiDocument): Operation[] {
  const ops: Operation[] = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method];
      if (op === undefined) continue;
      const scheme = Object.keys(op.security?.[0] ?? {})[0];
      const parameters = op.parameters ?? [];
      const body = op.requestBody?.content?.['application/json']?.schema;
      const success = op.responses?.['200']?.description ?? '';
      ops.push({
        method: method.toUpperCase(),
        path,
        security: scheme === 'device' ? 'device' : scheme === 'admin' ? 'admin' : 'public',
        params: parameters.filter((p) => p.in === 'path'),
        query: parameters.filter((p) => p.in === 'query'),
        body,
        bodyRequired: body !== undefined && body.nullable !== true,
        streams: success.includes('text/event-stream'),
        takesBytes: body === undefined && method === 'put',
      });
    }
  }
  return ops;
}

// ---------------------------------------------------------------------------------------------
// Values: valid ones from the schemas, and what an attacker sends instead

/**
 * The kind of row a field names, by the field's name: `groupId` and `group` name groups. An
 * `id` names a row of the kind its context is about (the answer's resource, or the object it
 * sits in).
 */
const KIND_OF_FIELD: Record<string, string> = {
  group: 'groups',
  groups: 'groups',
  groupId: 'groups',
  app: 'apps',
  apps: 'apps',
  appId: 'apps',
  profile: 'profiles',
  profiles: 'profiles',
  profileId: 'profiles',
  device: 'devices',
  devices: 'devices',
  deviceId: 'devices',
  image: 'images',
  images: 'images',
  imageId: 'images',
  systemImageId: 'images',
  version: 'versions',
  versions: 'versions',
  versionId: 'versions',
  imageVersionId: 'versions',
  release: 'versions',
  rollout: 'rollouts',
  rollouts: 'rollouts',
  user: 'users',
  users: 'users',
  userId: 'users',
  commands: 'commands',
  pendingCommands: 'commands',
  commandId: 'commands',
  publishers: 'publishers',
  keyid: 'publishers',
};

/** What an operation's path is about: `/api/v1/admin/images/{id}/versions` → versions. */
function resourceOf(path: string): string {
  const literal = path.split('/').filter((s) => s !== '' && !s.startsWith('{'));
  const last = literal.at(-1) ?? '';
  if (last === 'publish' || last === 'retire') return 'versions';
  if (last === 'release') return 'images';
  if (path.includes('/rollouts/')) return 'rollouts';
  if (path.endsWith('/tokens') || path.includes('/tokens/')) return 'api-tokens';
  return KIND_OF_FIELD[last] ?? last;
}

/** What the path parameter `name` of `path` names: the segment before it says. */
function resourceOfParam(path: string, name: string): string {
  const segments = path.split('/');
  const at = segments.indexOf(`{${name}}`);
  return resourceOf(segments.slice(0, at).join('/'));
}

/** The pool a string field draws from: its key and the kind of thing it sits in. */
function poolOf(key: string, context: string): string | undefined {
  if (key === 'id') return context;
  if (key === 'name' || key === 'version' || key === 'username') return `${key}:${context}`;
  if (key.endsWith('Id') || key === 'keyid') return KIND_OF_FIELD[key] ?? 'ids';
  return undefined;
}

/** What a run has learnt: ids and names Center handed out, to aim requests at real rows. */
class Pools {
  private readonly byKind = new Map<string, string[]>();

  add(kind: string, value: string): void {
    let pool = this.byKind.get(kind);
    if (pool === undefined) this.byKind.set(kind, (pool = []));
    if (pool.includes(value)) return;
    pool.push(value);
    // The newest matter most; the pool stays small so picks stay cheap.
    if (pool.length > 32) pool.shift();
  }

  get(kind: string): readonly string[] {
    return this.byKind.get(kind) ?? [];
  }

  /** Ids, names and versions found anywhere in an answer about `context`. */
  harvest(value: unknown, context: string, depth = 0): void {
    if (depth > 8 || value === null || typeof value !== 'object') return;
    for (const [key, v] of Object.entries(value)) {
      if (typeof v === 'string') {
        const pool = poolOf(key, context);
        if (pool !== undefined && v.length <= 128) this.add(pool, v);
      } else {
        this.harvest(
          v,
          Array.isArray(value) ? context : (KIND_OF_FIELD[key] ?? context),
          depth + 1,
        );
      }
    }
  }
}

/** Strings most patterns of the API accept, tried when the pools have nothing that fits. */
const PLAIN_STRINGS = ['a', 'fuzz', 'pc-1', 'work', 'x.y', '1', '12.2', 'vpn.example.org'];

function matchesString(schema: JsonSchema, value: string): boolean {
  if (schema.enum !== undefined) return schema.enum.includes(value);
  const length = [...value].length;
  if (schema.minLength !== undefined && length < schema.minLength) return false;
  if (schema.maxLength !== undefined && length > schema.maxLength) return false;
  const patterns = [schema.pattern, ...(schema.allOf ?? []).map((s) => s.pattern)];
  return patterns.every((p) => p === undefined || new RegExp(p, 'u').test(value));
}

/** Merges `allOf` (zod writes several regexes of one string that way) into one schema. */
function flat(schema: JsonSchema): JsonSchema {
  if (schema.allOf === undefined || schema.type !== undefined) return schema;
  const [first, ...rest] = schema.allOf;
  return { ...first, allOf: rest };
}

class ValueMaker {
  readonly rng: Random;
  readonly pools: Pools;
  constructor(rng: Random, pools: Pools) {
    this.rng = rng;
    this.pools = pools;
  }

  /**
   * A value the schema accepts (as far as this generator knows), for the field `key` of an
   * object about `context` (groups, devices…).
   */
  valid(given: JsonSchema, key: string, context: string): unknown {
    const schema = flat(given);
    const { rng } = this;
    if (schema.const !== undefined) return schema.const;
    if (schema.enum !== undefined) return rng.pick(schema.enum);
    const branches = schema.oneOf ?? schema.anyOf;
    if (branches !== undefined) return this.valid(rng.pick(branches), key, context);
    switch (schema.type) {
      case 'object': {
        const out: Record<string, unknown> = {};
        const required = new Set(schema.required ?? []);
        const inner = KIND_OF_FIELD[key] ?? context;
        for (const [name, prop] of Object.entries(schema.properties ?? {})) {
          if (required.has(name) || rng.chance(0.5)) out[name] = this.valid(prop, name, inner);
        }
        return out;
      }
      case 'array': {
        const min = schema.minItems ?? 0;
        const max = Math.min(schema.maxItems ?? min + 3, min + 3);
        const n = min + rng.int(max - min + 1);
        return Array.from({ length: n }, () => this.valid(schema.items ?? {}, key, context));
      }
      case 'integer':
      case 'number': {
        const low = Math.max(schema.minimum ?? 0, schema.exclusiveMinimum === undefined ? 0 : 1);
        const high = Math.min(schema.maximum ?? low + 100, low + 100);
        return low + rng.int(Math.max(1, high - low + 1));
      }
      case 'boolean':
        return rng.chance(0.5);
      case 'string':
        return this.string(schema, key, context);
      default:
        return rng.chance(0.5) ? {} : null;
    }
  }

  private string(schema: JsonSchema, key: string, context: string): string {
    const { rng } = this;
    if (schema.format === 'date-time') return new Date(1_750_000_000_000).toISOString();
    const pool = poolOf(key, context);
    const known = [...(pool === undefined ? [] : this.pools.get(pool)), ...this.pools.get(key)];
    const learnt = known.filter((v) => matchesString(schema, v));
    if (learnt.length > 0 && rng.chance(0.9)) return rng.pick(learnt);
    const candidates = [
      ...PLAIN_STRINGS,
      rng.hex(32),
      newId(1_750_000_000_000 + rng.int(1e9)),
      `046d:${rng.hex(2)}`,
      `fuzz-${rng.hex(3)}`,
    ].filter((v) => matchesString(schema, v));
    if (candidates.length > 0) return rng.pick(candidates);
    return 'a'.repeat(Math.max(1, schema.minLength ?? 1));
  }
}

/**
 * Strings an attacker puts where text goes: NUL and other control characters (terminal escape
 * sequences among them), unpaired surrogates (not UTF-8; PostgreSQL refuses them), 70,000
 * characters, and text that means something to SQL, LIKE, paths or templates.
 */
export const EVIL_STRINGS: readonly string[] = [
  '\u0000',
  'a\u0000b',
  '\u001b]0;pwned\u0007',
  '\u001b[2J',
  'line\r\nInjected: header',
  '\u0085\u009b31m',
  '\ud800',
  'a\udfffb',
  '\udbff\ud800',
  '\u202eevil',
  '\ufeff',
  '\uffff',
  '😀',
  "' OR 1=1 --",
  '%_\\',
  '../../../../etc/passwd',
  '__proto__',
  '${7*7}{{7*7}}',
  '',
  ' ',
  'x'.repeat(70_000),
];

/** The strings the per-field cases of the systematic pass put in each string field. */
const FIELD_ATTACKS: readonly string[] = ['a\u0000b', '\ud800', '\u001b]0;pwned\u0007', ''];

/** What an attacker puts where a value of another type goes. */
const WRONG_VALUES: readonly unknown[] = [
  null,
  true,
  0,
  -1,
  1.5,
  2 ** 53 + 2,
  1e308,
  -1e308,
  '',
  '1',
  [],
  [null],
  {},
  JSON.parse('{"__proto__":{"polluted":true}}'),
  'x'.repeat(5000),
];

/** `depth` nested arrays: `[[[…]]]`. */
function deepArray(depth: number): string {
  return '['.repeat(depth) + ']'.repeat(depth);
}

/** `depth` nested objects: `{"a":{"a":…1}}`. */
function deepObject(depth: number): string {
  return '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
}

/** Whole bodies that are not the JSON they claim to be, or JSON of the wrong shape. */
const RAW_BODIES: readonly (string | Buffer)[] = [
  '',
  ' ',
  '{',
  '{"a":',
  'nul',
  '[1,]',
  '{"a":1}}',
  '\u0000',
  Buffer.from([0xff, 0xfe, 0xfd, 0x00, 0x7b]),
  Buffer.from('{"name":"\xff\xfe"}', 'latin1'),
  '\ufeff{}',
  '1',
  '"text"',
  'null',
  'true',
  '[]',
  '{"__proto__":{"polluted":true}}',
  '{"constructor":{"prototype":{"polluted":true}}}',
  '{"a":1,"a":2}',
  '"\\ud800"',
  '{"x":"\\u0000"}',
  '1e999999',
  '-'.repeat(10_000),
  deepArray(33),
  deepArray(10_000),
  deepArray(200_000),
  deepObject(33),
  deepObject(10_000),
];

/** Content types a JSON route must refuse, or take as JSON only when they are JSON. */
const CONTENT_TYPES: readonly string[] = [
  'text/plain',
  'text/plain; charset=utf-8',
  'application/x-www-form-urlencoded',
  'application/octet-stream',
  'multipart/form-data; boundary=x',
  'application/xml',
  'application/vnd.api+json',
  'text/json',
  'application/json; charset=utf-16',
  'application/JSON',
  'application/json;;;',
  'application/json, text/plain',
  '*/*',
  'application/',
  ';',
];

/** Path segments an attacker puts in a parameter, already percent-encoded as sent. */
const RAW_SEGMENTS: readonly string[] = [
  '%00',
  'a%00b',
  '%1b%5b2J',
  '%ed%a0%80',
  '%c0%80',
  '%ff',
  '%',
  '%zz',
  '..',
  '%2e%2e',
  '..%2f..%2fetc',
  '%2f',
  '%5c',
  '-1',
  '0',
  'x'.repeat(3000),
  '%e2%80%ae',
  '__proto__',
  'constructor',
];

/** Header values a hostile client sends (only ones HTTP can carry: no CR, LF or NUL). */
const HEADER_ATTACKS: readonly [string, string][] = [
  ['authorization', 'Bearer'],
  ['authorization', 'Bearer '],
  ['authorization', `Bearer ${'A'.repeat(5000)}`],
  ['authorization', 'Bearer a.b.c'],
  ['authorization', 'Basic YWRtaW46YWRtaW4='],
  ['authorization', 'Bearer bh_\u00ff\u00fe'],
  ['authorization', 'bearer  x'],
  ['if-none-match', '"\u00ff"'],
  ['if-none-match', 'W/"x", *, "y"'],
  ['if-none-match', '*'],
  ['x-forwarded-for', '\u00ff, 1.2.3.4, ::1, not-an-ip'],
  ['x-forwarded-for', 'x'.repeat(4000)],
  ['range', 'bytes=-1'],
  ['accept', 'text/event-stream'],
  ['accept-encoding', 'zstd, br, gzip;q=0'],
  ['content-encoding', 'gzip'],
];

// ---------------------------------------------------------------------------------------------
// Requests

export type IdentityName = 'anonymous' | 'admin' | 'operator' | 'viewer' | 'device' | 'forged';
const IDENTITIES: readonly IdentityName[] = [
  'anonymous',
  'admin',
  'operator',
  'viewer',
  'device',
  'forged',
];

/** One request as sent: enough to repeat it by hand. */
export interface FuzzRequest {
  /** What the case tries. */
  label: string;
  /** The operation as the OpenAPI document names it: `DELETE /api/v1/admin/tokens/{id}`. */
  operation: string;
  identity: IdentityName;
  method: string;
  /** Path and query, percent-encoded as sent. */
  url: string;
  headers: Record<string, string>;
  body?: string | Buffer;
}

/** A request being built: the parts before they are encoded. */
interface Draft {
  label: string;
  op: Operation;
  identity: IdentityName;
  /** Path parameters: text to encode, or `raw` segments sent as they are. */
  params: Record<string, string | { raw: string }>;
  /** Query pairs, or a raw query string. */
  query: [string, string][] | { raw: string };
  /** A JSON value, raw bytes or text, or nothing. */
  body: { json: unknown } | { raw: string | Buffer } | undefined;
  contentType: string | undefined;
  headers: Record<string, string>;
}

/** Every string leaf of a JSON value, as paths. */
function stringPaths(value: unknown, at: (string | number)[] = []): (string | number)[][] {
  if (typeof value === 'string') return [at];
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([k, v]) =>
    stringPaths(v, [...at, Array.isArray(value) ? Number(k) : k]),
  );
}

/** Every path of a JSON value, the root included. */
function allPaths(value: unknown, at: (string | number)[] = []): (string | number)[][] {
  if (value === null || typeof value !== 'object') return [at];
  return [
    at,
    ...Object.entries(value).flatMap(([k, v]) =>
      allPaths(v, [...at, Array.isArray(value) ? Number(k) : k]),
    ),
  ];
}

/** A copy of `root` with the value at `path` replaced (or deleted when `value` is DELETE). */
const DELETE = Symbol('delete');
function replaced(root: unknown, path: (string | number)[], value: unknown): unknown {
  if (path.length === 0) return value === DELETE ? undefined : value;
  const [head, ...rest] = path as [string | number, ...(string | number)[]];
  if (Array.isArray(root)) {
    const copy = [...(root as unknown[])];
    const i = head as number;
    if (rest.length === 0 && value === DELETE) copy.splice(i, 1);
    else copy[i] = replaced(copy[i], rest, value);
    return copy;
  }
  const copy = { ...(root as Record<string, unknown>) };
  if (rest.length === 0 && value === DELETE) delete copy[head];
  else copy[head] = replaced(copy[head], rest, value);
  return copy;
}

/** JSON text of `value` with the node at `path` replaced by the raw JSON text `inner`. */
function splice(value: unknown, path: (string | number)[], inner: string): string {
  const marker = '__fuzz_splice_here__';
  return JSON.stringify(replaced(value, path, marker)).replace(`"${marker}"`, inner);
}

/**
 * Percent-encodes text as a client would, unpaired surrogates included (as the three bytes
 * UTF-8 would give them, which is what a hostile client sends), where encodeURIComponent throws.
 */
function percentEncode(text: string): string {
  let out = '';
  for (const char of text) {
    const cp = char.codePointAt(0) as number;
    if (cp >= 0xd800 && cp <= 0xdfff) {
      const bytes = [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)];
      out += bytes.map((b) => `%${b.toString(16).toUpperCase()}`).join('');
    } else {
      out += encodeURIComponent(char);
    }
  }
  return out;
}

function encode(draft: Draft): FuzzRequest {
  const { op } = draft;
  const path = op.path.replace(/\{([^}]+)\}/g, (_m, name: string) => {
    const v = draft.params[name] ?? 'missing';
    return typeof v === 'string' ? percentEncode(v) : v.raw;
  });
  const query = Array.isArray(draft.query)
    ? draft.query.map(([k, v]) => `${percentEncode(k)}=${percentEncode(v)}`).join('&')
    : draft.query.raw;
  const headers: Record<string, string> = { ...draft.headers };
  let body: string | Buffer | undefined;
  if (draft.body !== undefined) {
    body = 'json' in draft.body ? JSON.stringify(draft.body.json) : draft.body.raw;
    if (draft.contentType !== undefined) headers['content-type'] = draft.contentType;
  }
  return {
    label: draft.label,
    operation: `${op.method} ${op.path}`,
    identity: draft.identity,
    method: op.method,
    url: query === '' ? path : `${path}?${query}`,
    headers,
    ...(body === undefined ? {} : { body }),
  };
}

/** The identity that may call an operation: the one its attacks go in with. */
function ownerOf(op: Operation): IdentityName {
  return op.security === 'admin' ? 'admin' : op.security === 'device' ? 'device' : 'anonymous';
}

/** A ready-made zstd chunk of random bytes and its digest, so uploads get past the checks. */
function chunkUpload(rng: Random, size: number): { digest: string; body: Buffer } {
  const content = rng.bytes(size);
  return {
    digest: createHash('sha256').update(content).digest('hex'),
    body: zstdCompressSync(content),
  };
}

/**
 * Plans the requests of a run. The systematic pass: each operation as each identity with a
 * valid request; then, as its owner, each whole-request attack and each field attack (every
 * string field, path parameter and query parameter in turn). Then random cases, each a valid
 * request with one to three random attacks, until the run has sent its share.
 */
class Planner {
  private readonly gen: ValueMaker;
  private readonly rng: Random;
  private readonly ops: readonly Operation[];
  constructor(ops: readonly Operation[], rng: Random, pools: Pools) {
    this.ops = ops;
    this.rng = rng;
    this.gen = new ValueMaker(rng, pools);
  }

  /** A valid request of `op` (as the generator knows how) as `identity`. */
  base(op: Operation, identity: IdentityName, label = 'valid'): Draft {
    const params: Record<string, string> = {};
    for (const p of op.params) {
      params[p.name] = this.gen.valid(p.schema, p.name, resourceOfParam(op.path, p.name)) as string;
    }
    const query: [string, string][] = [];
    for (const q of op.query) {
      if (q.required || this.rng.chance(0.5)) {
        query.push([q.name, String(this.gen.valid(q.schema, q.name, resourceOf(op.path)))]);
      }
    }
    let body: Draft['body'];
    let contentType: string | undefined;
    if (op.body !== undefined && (op.bodyRequired || this.rng.chance(0.5))) {
      body = { json: this.gen.valid(op.body, '', resourceOf(op.path)) };
      contentType = 'application/json';
    } else if (op.takesBytes) {
      const upload = chunkUpload(this.rng, 1 + this.rng.int(8192));
      if ('digest' in params) params['digest'] = upload.digest;
      body = { raw: upload.body };
      contentType = 'application/octet-stream';
    }
    return { label, op, identity, params, query, body, contentType, headers: {} };
  }

  *systematic(): Generator<Draft> {
    const { ops } = this;
    // Each operation as each identity.
    for (const op of ops) {
      for (const identity of IDENTITIES) {
        // A device's own stream never ends: its head is read once, and that is enough.
        if (op.streams && identity === ownerOf(op)) continue;
        yield this.base(op, identity);
      }
    }
    for (const op of ops.filter((o) => o.streams)) yield this.base(op, ownerOf(op), 'stream');
    // As its owner, each operation with attacks in each field in turn: the body's strings,
    // the path parameters, the query parameters.
    for (const op of ops) {
      const probe = this.base(op, ownerOf(op), 'field');
      if (probe.body !== undefined && 'json' in probe.body) {
        const json = probe.body.json;
        for (const path of stringPaths(json)) {
          for (const evil of FIELD_ATTACKS) {
            yield {
              ...probe,
              label: `body.${path.join('.')} = ${JSON.stringify(evil)}`,
              body: { json: replaced(json, path, evil) },
            };
          }
        }
        // Deep nesting where the body holds an object or array, as deep as the issue's.
        const inner = allPaths(json).filter((p) => {
          const at = p.reduce<unknown>((v, k) => (v as Record<string, unknown>)[k], json);
          return at !== null && typeof at === 'object';
        });
        for (const path of inner.slice(-2)) {
          yield {
            ...probe,
            label: `body.${path.join('.')} nested 10000 deep`,
            body: { raw: splice(json, path, deepArray(10_000)) },
          };
        }
      }
      for (const p of op.params) {
        for (const evil of FIELD_ATTACKS) {
          yield {
            ...probe,
            label: `:${p.name} = ${JSON.stringify(evil)}`,
            params: { ...probe.params, [p.name]: evil },
          };
        }
      }
      for (const q of op.query) {
        for (const evil of [...FIELD_ATTACKS, 'x'.repeat(5000)]) {
          yield {
            ...probe,
            label: `?${q.name} = ${JSON.stringify(evil.slice(0, 24))}`,
            query: [[q.name, evil]],
          };
        }
      }
      if (op.body !== undefined || op.takesBytes) {
        // The two other parsers Center has: text and raw bytes.
        for (const type of ['text/plain', 'application/octet-stream']) {
          yield { ...probe, label: `content type ${type}`, body: { raw: '{}' }, contentType: type };
        }
      }
    }
    // Attacks that meet code every route shares (the body parser, the router, authentication),
    // each on three operations in turn.
    const withBody = ops.filter((o) => o.body !== undefined || o.takesBytes);
    const withParams = ops.filter((o) => o.params.length > 0);
    let turn = 0;
    const next = (list: readonly Operation[]) => list[turn++ % list.length] as Operation;
    for (let round = 0; round < 3; round++) {
      for (const raw of RAW_BODIES) {
        const op = next(withBody);
        yield {
          ...this.base(op, ownerOf(op), 'raw'),
          label: `raw body ${JSON.stringify(raw.toString().slice(0, 24))}`,
          body: { raw },
          contentType: 'application/json',
        };
      }
      for (const type of [...CONTENT_TYPES, undefined]) {
        const op = next(withBody);
        const d = this.base(op, ownerOf(op), `content type ${type ?? 'none'}`);
        yield { ...d, body: d.body ?? { raw: '{}' }, contentType: type };
      }
      for (const [name, value] of HEADER_ATTACKS) {
        const op = next(ops);
        const d = this.base(op, ownerOf(op), `header ${name}`);
        yield { ...d, headers: { ...d.headers, [name]: value } };
      }
      for (const raw of RAW_SEGMENTS) {
        const op = next(withParams);
        const d = this.base(op, ownerOf(op), `raw segment ${raw.slice(0, 24)}`);
        const name = (op.params[turn % op.params.length] as Parameter).name;
        yield { ...d, params: { ...d.params, [name]: { raw } } };
      }
      for (const raw of ['fuzz=1', 'a=%ff&b=%&&=&limit=1&limit=2&q[x]=1', '%00=%00', '&&&']) {
        const op = next(ops);
        yield { ...this.base(op, ownerOf(op), `raw query ${raw}`), query: { raw } };
      }
    }
  }

  /** A random case: a valid request with one to three attacks. */
  random(): Draft {
    const { rng } = this;
    const op = rng.pick(this.ops);
    let identity = rng.chance(0.6) ? ownerOf(op) : rng.pick(IDENTITIES);
    // A device's own stream never ends; it is read once, in the systematic pass.
    if (op.streams && identity === 'device') identity = 'forged';
    let d = this.base(op, identity, 'random');
    const attacks: string[] = [];
    for (let i = 1 + rng.int(3); i > 0; i--) {
      const [next, label] = this.attack(d);
      d = next;
      attacks.push(label);
    }
    return { ...d, label: `random: ${attacks.join(', ')}` };
  }

  private attack(d: Draft): [Draft, string] {
    const { rng } = this;
    const json = d.body !== undefined && 'json' in d.body ? d.body.json : undefined;
    switch (rng.int(10)) {
      case 0:
      case 1: {
        if (json === undefined) break;
        const paths = stringPaths(json);
        if (paths.length === 0) break;
        const path = rng.pick(paths);
        const evil = rng.pick(EVIL_STRINGS);
        return [
          { ...d, body: { json: replaced(json, path, evil) } },
          `body.${path.join('.')} evil`,
        ];
      }
      case 2: {
        if (json === undefined) break;
        const path = rng.pick(allPaths(json));
        return [
          { ...d, body: { json: replaced(json, path, rng.pick(WRONG_VALUES)) } },
          `body.${path.join('.')} wrong type`,
        ];
      }
      case 3: {
        if (json === undefined) break;
        const paths = allPaths(json).slice(1);
        if (paths.length === 0) break;
        const path = rng.pick(paths);
        if (rng.chance(0.5)) {
          return [
            { ...d, body: { json: replaced(json, path, DELETE) } },
            `body.${path.join('.')} missing`,
          ];
        }
        const depth = rng.pick([32, 33, 100, 10_000]);
        const inner = rng.chance(0.5) ? deepArray(depth) : deepObject(depth);
        return [
          { ...d, body: { raw: splice(json, path, inner) } },
          `body.${path.join('.')} ${depth} deep`,
        ];
      }
      case 4: {
        if (json === null || typeof json !== 'object' || Array.isArray(json)) break;
        const key = rng.pick(['extra', '__proto__', 'constructor', 'id', '']);
        return [
          { ...d, body: { json: { ...json, [key]: rng.pick(WRONG_VALUES) } } },
          `extra field ${key}`,
        ];
      }
      case 5:
        return [
          {
            ...d,
            body: { raw: rng.pick(RAW_BODIES) },
            contentType: rng.pick([...CONTENT_TYPES, 'application/json']),
          },
          'raw body',
        ];
      case 6: {
        if (d.op.params.length === 0) break;
        const p = rng.pick(d.op.params);
        const value = rng.chance(0.5) ? { raw: rng.pick(RAW_SEGMENTS) } : rng.pick(EVIL_STRINGS);
        return [{ ...d, params: { ...d.params, [p.name]: value } }, `:${p.name} evil`];
      }
      case 7: {
        const names = [...d.op.query.map((q) => q.name), 'fuzz', 'limit', 'cursor'];
        const name = rng.pick(names);
        const value = rng.pick([...EVIL_STRINGS, '-1', '1e309', '0x10', 'NaN']);
        const pairs = Array.isArray(d.query) ? d.query : [];
        return [{ ...d, query: [...pairs, [name, value]] }, `?${name} evil`];
      }
      case 8: {
        const [name, value] = rng.pick(HEADER_ATTACKS);
        return [{ ...d, headers: { ...d.headers, [name]: value } }, `header ${name}`];
      }
      case 9: {
        if (d.body === undefined) break;
        return [{ ...d, contentType: rng.pick(CONTENT_TYPES) }, 'content type'];
      }
    }
    return [d, 'valid'];
  }
}

// ---------------------------------------------------------------------------------------------
// The target: a Center over a fresh database, with rows to aim at and identities to call as

interface Identities {
  tokens: Partial<Record<IdentityName, string>>;
}

function deviceKeys(): { privateKey: KeyObject; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

/** A run's result: counts per status, and each failure with the request that caused it. */
export interface FuzzReport {
  seed: number;
  requests: number;
  /** Of which the systematic pass (the rest are random). */
  systematic: number;
  /** Answers by HTTP status. */
  byStatus: Record<string, number>;
  /** Answers by operation, then by HTTP status: which operations the run got past validation. */
  byOperation: Record<string, Record<string, number>>;
  /** Failures found (the first three of each kind kept in `failures`). */
  failureCount: number;
  failures: FuzzFailure[];
  /** How long the run took, in milliseconds. */
  ms: number;
}

export interface FuzzFailure {
  why: string;
  request: FuzzRequest;
  status: number;
  /** The start of the answer's body. */
  answer: string;
  /** What Center logged about it (its error and the top of the stack), if anything. */
  logged: string;
}

export interface FuzzOptions {
  /** The database Center runs on: `sqlite:PATH` or a PostgreSQL URL, empty. */
  url: string;
  seed: number;
  /** Requests to send (the systematic pass first, as far as it fits; then random ones). */
  requests: number;
  /** Progress lines (to stderr, say). */
  progress?: (line: string) => void;
}

const START = Date.parse('2026-01-05T08:00:00Z');
const SETUP_ADDRESS = '192.0.2.1';
const ADDRESSES = ['198.51.100.1', '198.51.100.2', '203.0.113.7', '2001:db8::1'];

/** Shows a request as text a person can repeat: method, URL, headers, and the body escaped. */
export function describeRequest(r: FuzzRequest): string {
  const body =
    r.body === undefined
      ? ''
      : Buffer.isBuffer(r.body)
        ? ` body(${r.body.length} bytes, hex)=${r.body.subarray(0, 64).toString('hex')}`
        : ` body=${JSON.stringify(r.body.length > 400 ? `${r.body.slice(0, 400)}…(${r.body.length} chars)` : r.body)}`;
  const headers = Object.entries(r.headers)
    .map(([k, v]) => `${k}: ${JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v)}`)
    .join('; ');
  return `[${r.label}] ${r.method} ${r.url.length > 300 ? `${r.url.slice(0, 300)}…` : r.url} as ${r.identity}${headers ? ` {${headers}}` : ''}${body}`;
}

/**
 * Runs the fuzzer against a new Center over the empty database at `options.url`; what it makes
 * is released through `cleanups`.
 */
export async function fuzzCenter(cleanups: Cleanups, options: FuzzOptions): Promise<FuzzReport> {
  const began = Date.now();
  const rng = new Random(options.seed);
  const center = await startTestCenter(cleanups, options.url, {
    start: START,
    logLevel: 'error',
  });
  const { app, db, clock } = center;
  const pools = new Pools();

  // Rows to aim at: a group, a system and an app image with versions, an app, a profile,
  // devices, a rollout. Inserted directly: the API is what is under test, not its set-up.
  const groupId = await insertGroup(db, 'fuzz', START);
  const systemId = await insertImage(db, 'os', 'system', START);
  const versions = [
    await insertVersion(db, systemId, '1', START, { release: true }),
    await insertVersion(db, systemId, '2', START),
    await insertVersion(db, systemId, '3', START, { state: 'draft' }),
  ];
  const appImageId = await insertImage(db, 'tools', 'app', START);
  versions.push(await insertVersion(db, appImageId, '1', START, { release: true }));
  const appId = await insertApp(db, 'tools', appImageId, START);
  const profileId = await insertProfile(
    db,
    { name: 'work', systemImageId: systemId, apps: [{ appId, mode: 'optional' }] },
    START,
  );
  const devices = await insertDevices(db, groupId, 3, [profileId], START);
  const seeded: Record<string, string[]> = {
    groups: [groupId],
    images: [systemId, appImageId],
    versions,
    apps: [appId],
    profiles: [profileId],
    devices,
    'name:images': ['os', 'tools'],
    'version:versions': ['1', '2', '3'],
  };
  // Secrets a valid request carries: an enrolment token good for the whole run, device keys,
  // and an administrator whose password the fuzzer knows.
  const enrolment = await createEnrolmentToken(db, {
    groupId,
    uses: 1_000_000,
    expiresAt: new Date(START + 10 * 365 * 86_400_000),
    now: new Date(START),
  });
  seeded['token'] = [enrolment.token];
  seeded['publicKey'] = Array.from({ length: 4 }, () => deviceKeys().publicPem);
  const password = 'fuzz-password-0123';
  await db
    .insertInto('admin_users')
    .values({
      id: newId(START),
      username: 'fuzz-login',
      password_hash: await hashPassword(password),
      role: 'viewer',
      last_login_at: null,
      created_at: START,
      updated_at: START,
    })
    .execute();
  seeded['username:login'] = ['fuzz-login'];
  seeded['password'] = [password];
  for (const [kind, values] of Object.entries(seeded)) {
    for (const value of values) pools.add(kind, value);
  }

  const identities: Identities = { tokens: {} };
  let sessions = 0;
  const newSession = async (role: 'admin' | 'operator' | 'viewer') => {
    sessions += 1;
    identities.tokens[role] = await insertSession(db, `fuzz-${role}-${sessions}`, role, clock.ms);
  };
  const inject = (req: {
    method: 'GET' | 'POST';
    url: string;
    payload?: object;
    token?: string | undefined;
  }) =>
    app.inject({
      method: req.method,
      url: req.url,
      remoteAddress: SETUP_ADDRESS,
      headers: req.token === undefined ? {} : { authorization: `Bearer ${req.token}` },
      ...(req.payload === undefined ? {} : { payload: req.payload }),
    });
  let device: { id: string; key: KeyObject } | undefined;
  /** A device token: the device logs in again, or a new one enrols when it was cut off. */
  const newDevice = async () => {
    for (const fresh of [false, true]) {
      if (fresh || device === undefined) {
        const keys = deviceKeys();
        const { token } = await createEnrolmentToken(db, {
          groupId,
          uses: 1,
          expiresAt: new Date(clock.ms + 3_600_000),
          now: new Date(clock.ms),
        });
        const res = await inject({
          method: 'POST',
          url: '/api/v1/device/enrol',
          payload: {
            token,
            publicKey: keys.publicPem,
            encryptionKey: encryptionKeyPem(),
            inventory: { hostname: 'fuzz-pc' },
          },
        });
        if (res.statusCode !== 200) throw new Error(`fuzz set-up: enrolment answered ${res.body}`);
        device = { id: res.json().deviceId, key: keys.privateKey };
        pools.add('devices', device.id);
      }
      const challenge = await inject({
        method: 'POST',
        url: '/api/v1/device/auth/challenge',
        payload: { deviceId: device!.id },
      });
      const ch: string = challenge.json().challenge;
      const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, ch, device!.key);
      const res = await inject({
        method: 'POST',
        url: '/api/v1/device/auth/token',
        payload: { deviceId: device!.id, challenge: ch, signature },
      });
      if (res.statusCode === 200) {
        identities.tokens.device = res.json().token;
        return;
      }
    }
    throw new Error('fuzz set-up: a freshly enrolled device cannot log in');
  };
  for (const role of ['admin', 'operator', 'viewer'] as const) await newSession(role);
  await newDevice();

  /** Renews an identity the fuzzing revoked (logout, a deleted user, a retired device). */
  const stillValid = async (identity: IdentityName): Promise<void> => {
    const token = identities.tokens[identity];
    if (token === undefined || identity === 'forged') return;
    if (identity === 'device') {
      const res = await inject({ method: 'GET', url: '/api/v1/device/desired-state', token });
      if (res.statusCode !== 200) await newDevice();
    } else {
      const res = await inject({ method: 'GET', url: '/api/v1/admin/me', token });
      if (res.statusCode !== 200) await newSession(identity as 'admin' | 'operator' | 'viewer');
    }
  };

  const doc = (await app.inject({ method: 'GET', url: '/api/openapi.json' })).json();
  const ops = operationsOf(doc);
  const planner = new Planner(ops, rng, pools);
  const systematic = planner.systematic();

  const report: FuzzReport = {
    seed: options.seed,
    requests: 0,
    systematic: 0,
    byStatus: {},
    byOperation: {},
    failureCount: 0,
    failures: [],
    ms: 0,
  };
  let logOffset = 0;
  const kinds = new Map<string, number>();
  const fail = (why: string, request: FuzzRequest, status: number, answer: string) => {
    const text = center.logs();
    const lines = text.slice(logOffset).trim().split('\n').filter(Boolean);
    logOffset = text.length;
    const last = lines.at(-1);
    let logged = '';
    if (last !== undefined) {
      try {
        const entry = JSON.parse(last) as { err?: { message?: string; stack?: string } };
        logged = (entry.err?.stack ?? entry.err?.message ?? last)
          .split('\n')
          .slice(0, 6)
          .join('\n');
      } catch {
        logged = last.slice(0, 500);
      }
    }
    report.failureCount += 1;
    // A few of each kind: one bug met a thousand times must not hide the next one.
    const kind = `${why} on ${request.operation}`;
    const seen = (kinds.get(kind) ?? 0) + 1;
    kinds.set(kind, seen);
    if (seen <= 3) {
      report.failures.push({ why, request, status, answer: answer.slice(0, 500), logged });
    }
  };

  while (report.requests < options.requests) {
    const next = systematic.next();
    if (!next.done) report.systematic += 1;
    const draft = next.done ? planner.random() : next.value;
    const request = encode(draft);
    const token =
      request.identity === 'forged'
        ? rng.pick(['bh_forged', 'x.y.z', 'A'.repeat(40), 'bhe_x'])
        : identities.tokens[request.identity];
    if (token !== undefined && request.headers['authorization'] === undefined) {
      request.headers['authorization'] = `Bearer ${token}`;
    }
    // Only header values HTTP can carry: the fuzzer attacks Center, not light-my-request.
    for (const [name, value] of Object.entries(request.headers)) {
      try {
        validateHeaderValue(name, value);
      } catch {
        delete request.headers[name];
      }
    }
    clock.ms += 1000;
    report.requests += 1;
    const res = await app.inject({
      method: request.method as 'GET',
      url: request.url,
      headers: request.headers,
      remoteAddress: rng.pick(ADDRESSES),
      payloadAsStream: true,
      ...(request.body === undefined ? {} : { payload: request.body }),
    });
    const status = res.statusCode;
    report.byStatus[status] = (report.byStatus[status] ?? 0) + 1;
    const perOperation = (report.byOperation[request.operation] ??= {});
    perOperation[status] = (perOperation[status] ?? 0) + 1;
    let answer = '';
    if (String(res.headers['content-type'] ?? '').startsWith('text/event-stream')) {
      // The stream stays open until Center closes; its head is the answer.
      res.stream().destroy();
    } else {
      const chunks: Buffer[] = [];
      for await (const chunk of res.stream()) chunks.push(chunk as Buffer);
      answer = Buffer.concat(chunks).toString('utf8');
    }
    const shed = status === 503 && res.headers['retry-after'] !== undefined;
    if (status >= 500 && !shed) fail(`answered ${status}`, request, status, answer);
    else if (/\n\s+at /.test(answer)) fail('a stack trace in the answer', request, status, answer);
    else if (status >= 400 && !isErrorBody(answer)) {
      fail("a 4xx without Center's error body", request, status, answer);
    } else if (status < 300) {
      try {
        pools.harvest(JSON.parse(answer), resourceOf(request.operation.split(' ')[1] ?? ''));
      } catch {
        // Not JSON (a stream, an empty 204): nothing to learn.
      }
    }
    if (status === 401 || status === 403) await stillValid(request.identity);
    if (options.progress !== undefined && report.requests % 1000 === 0) {
      options.progress(`${report.requests} requests, ${report.failureCount} failures`);
    }
  }
  report.ms = Date.now() - began;
  return report;
}

/** Whether an answer is `{ error: { code, message } }`. */
function isErrorBody(text: string): boolean {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    return typeof body.error?.code === 'string' && typeof body.error.message === 'string';
  } catch {
    return false;
  }
}

/**
 * The report as a person reads it when a run failed: the failures grouped by what went wrong
 * on which operation, each group with its count and first request.
 */
export function describeFailures(report: FuzzReport): string {
  const groups = new Map<string, FuzzFailure[]>();
  for (const f of report.failures) {
    const key = `${f.why} on ${f.request.operation}`;
    groups.set(key, [...(groups.get(key) ?? []), f]);
  }
  const lines = [
    `${report.failureCount} failures in ${report.requests} requests (seed ${report.seed}; ` +
      `repeat with BULKHEAD_FUZZ_SEED=${report.seed}); the first ${report.failures.length} by kind:`,
  ];
  for (const [key, failures] of groups) {
    const f = failures[0] as FuzzFailure;
    lines.push(`- ${key} (${failures.length}×), e.g. ${describeRequest(f.request)}`);
    lines.push(`    answer: ${JSON.stringify(f.answer.slice(0, 200))}`);
    if (f.logged) lines.push(`    logged: ${f.logged.replaceAll('\n', '\n            ')}`);
  }
  return lines.join('\n');
}
