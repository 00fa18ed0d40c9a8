import assert from 'node:assert/strict';
import { test } from 'node:test';
import { z } from 'zod';
import { BYTES, type Endpoint } from './endpoint.ts';
import { endpoints } from './endpoints/index.ts';
import { name, text, toName, toText } from './text.ts';

test('text() refuses NUL and unpaired surrogates, and takes everything else', () => {
  const schema = text({ min: 1, max: 50 });
  for (const good of ['plain', 'two\nlines\tand a tab', 'é 😀 中文', '\u001b[2J', '\u202e']) {
    assert.equal(schema.safeParse(good).success, true, JSON.stringify(good));
  }
  for (const bad of ['\u0000', 'a\u0000b', '\ud800', 'a\udfffb', '\udbff\ud800', '😀'[0]!]) {
    const result = schema.safeParse(bad);
    assert.equal(result.success, false, JSON.stringify(bad));
    assert.match(result.error!.issues[0]!.message, /NUL characters or unpaired surrogates/);
  }
  assert.equal(schema.safeParse('').success, false, 'min');
  assert.equal(schema.safeParse('x'.repeat(51)).success, false, 'max');
});

test('name() refuses control characters, separators and bidirectional overrides too', () => {
  const schema = name({ max: 200 });
  for (const good of ['pc-0042', 'Büro 3 — Zürich', '財務部', 'laptop 😀']) {
    assert.equal(schema.safeParse(good).success, true, JSON.stringify(good));
  }
  const bad = [
    '\u001b]0;pwned\u0007',
    'pc\u001b[2J',
    'a\u0000b',
    'tab\there',
    'new\nline',
    'cr\r',
    'del\u007f',
    'csi\u009b31m',
    'line\u2028sep',
    'evil\u202eexe.txt',
    'iso\u2066late',
    '\ud800',
  ];
  for (const value of bad) {
    assert.equal(schema.safeParse(value).success, false, JSON.stringify(value));
  }
});

test('toText and toName make what another program printed acceptable, losing only the bad characters', () => {
  assert.equal(toText('a\u0000b\ud800c'), 'a\ufffdb\ufffdc');
  assert.equal(toText('two\nlines'), 'two\nlines');
  assert.equal(toName('pc\u001b[2J\u202eq'), 'pc [2J q');
  assert.equal(name({ max: 99 }).safeParse(toName('a\u0000\u0007\ud800\n')).success, true);
});

/** Every JSON Schema node of `schema` that is a string, with its path. */
function stringNodes(
  schema: unknown,
  path: string,
  out: { path: string; patterns: string[] }[] = [],
): { path: string; patterns: string[] }[] {
  if (schema === null || typeof schema !== 'object') return out;
  const node = schema as Record<string, unknown>;
  if (node['type'] === 'string' && node['enum'] === undefined && node['const'] === undefined) {
    const all = [node, ...((node['allOf'] as Record<string, unknown>[] | undefined) ?? [])];
    out.push({ path, patterns: all.flatMap((n) => (n['pattern'] ? [String(n['pattern'])] : [])) });
  }
  for (const [key, value] of Object.entries(node)) {
    if (key === 'properties' && value !== null && typeof value === 'object') {
      for (const [prop, sub] of Object.entries(value)) stringNodes(sub, `${path}.${prop}`, out);
    } else if (key === 'items' || key === 'additionalProperties') {
      stringNodes(value, `${path}[]`, out);
    } else if (Array.isArray(value)) {
      for (const sub of value) stringNodes(sub, path, out);
    }
  }
  return out;
}

test('every string any endpoint accepts refuses NUL and unpaired surrogates', () => {
  // A new field declared with z.string() instead of text()/name() (or a narrower pattern)
  // fails here, naming the endpoint and the field.
  const unguarded: string[] = [];
  let checked = 0;
  for (const [endpointName, e] of Object.entries(endpoints) as [string, Endpoint][]) {
    const parts = { params: e.params, query: e.query, body: e.body === BYTES ? undefined : e.body };
    for (const [part, schema] of Object.entries(parts)) {
      if (schema === undefined) continue;
      const json = z.toJSONSchema(schema as z.ZodType, { io: 'input', unrepresentable: 'any' });
      for (const node of stringNodes(json, part)) {
        checked += 1;
        const refuses = (value: string) =>
          node.patterns.some((p) => !new RegExp(p, 'u').test(value));
        if (!refuses('a\u0000b') || !refuses('a\ud800b')) {
          unguarded.push(`${endpointName} ${node.path}`);
        }
      }
    }
  }
  assert.ok(checked > 50, `only ${checked} strings found: is the walk still right?`);
  assert.deepEqual(unguarded, []);
});
