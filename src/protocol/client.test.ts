import assert from 'node:assert/strict';
import { test } from 'node:test';
import { z } from 'zod';
import { createApiClient, type Fetch } from './client.ts';
import { BYTES, decodeErrorAnswer, defineEndpoints, endpoint } from './endpoint.ts';
import { isBulkheadError } from './errors.ts';

const probe = defineEndpoints(['test'], {
  rename: endpoint('PATCH /api/v1/things/:id', 'admin', 200, z.object({ name: z.string() }), {
    params: z.strictObject({ id: z.string() }),
    query: z.strictObject({ dry: z.string().optional() }),
    body: z.strictObject({ name: z.string() }),
  }),
  remove: endpoint('DELETE /api/v1/things/:id', 'admin', 204, z.null(), {
    params: z.strictObject({ id: z.string() }),
  }),
  summary: endpoint('GET /api/v1/summary', 'viewer', 200, z.object({ n: z.number() }), {
    query: z.strictObject({ days: z.coerce.number().optional() }),
  }),
  upload: endpoint('PUT /api/v1/blobs/:digest', 'operator', 201, z.object({ ok: z.boolean() }), {
    params: z.strictObject({ digest: z.string() }),
    body: BYTES,
  }),
});

function answer(status: number, body?: unknown, headers: Record<string, string> = {}) {
  return new Response(body === undefined ? null : JSON.stringify(body), { status, headers });
}

test('decoding error answers: one body, retry hints in milliseconds', async (t) => {
  const error = (code: string, extra: object = {}) => ({
    error: { code, message: 'no', ...extra },
  });
  const cases = [
    {
      label: 'a 429 with the hint in its body',
      status: 429,
      json: error('ERR_RATE_LIMITED', { retryAfterMs: 900_000 }),
      headers: { 'retry-after': '900' },
      code: 'ERR_RATE_LIMITED',
      retryable: true,
      retryAfterMs: 900_000,
    },
    {
      label: 'a 429 with only the header',
      status: 429,
      json: undefined,
      headers: { 'retry-after': '5' },
      code: 'ERR_RATE_LIMITED',
      retryable: true,
      retryAfterMs: 5000,
    },
    {
      label: 'a 429 with no hint at all waits a minute',
      status: 429,
      json: error('ERR_RATE_LIMITED'),
      headers: {},
      code: 'ERR_RATE_LIMITED',
      retryable: true,
      retryAfterMs: 60_000,
    },
    {
      label: "Center's own fault",
      status: 500,
      json: error('ERR_INTERNAL'),
      headers: {},
      code: 'ERR_CENTER_UNAVAILABLE',
      retryable: true,
    },
    {
      label: 'a refusal with a known code',
      status: 404,
      json: error('ERR_NOT_FOUND'),
      headers: {},
      code: 'ERR_NOT_FOUND',
      retryable: false,
    },
    {
      label: 'a code this side does not know',
      status: 409,
      json: error('ERR_FROM_THE_FUTURE'),
      headers: {},
      code: 'ERR_CENTER_PROTOCOL',
      retryable: false,
    },
    {
      label: 'a refusal without a body',
      status: 400,
      json: 'not an error body',
      headers: {},
      code: 'ERR_CENTER_PROTOCOL',
      retryable: false,
    },
  ];
  for (const c of cases) {
    await t.test(c.label, () => {
      const err = decodeErrorAnswer({
        status: c.status,
        headers: new Headers(c.headers),
        json: c.json,
        what: 'GET /x',
      });
      assert.equal(err.code, c.code);
      assert.equal(err.retryable, c.retryable);
      const details = err.details as { status: number; retryAfterMs?: number };
      assert.equal(details.status, c.status);
      assert.equal(details.retryAfterMs, c.retryAfterMs);
    });
  }
});

test('the client fills the path in, sends query and body, and checks the answer', async () => {
  const seen: { url: string; init: RequestInit }[] = [];
  const replies = [
    answer(200, { name: 'b' }),
    answer(204),
    answer(201, { ok: true }),
    answer(200, { name: 42 }),
  ];
  const fetchStub: Fetch = async (url, init) => {
    seen.push({ url: String(url), init: init ?? {} });
    return replies.shift() as Response;
  };
  const api = createApiClient({
    baseUrl: 'http://center.test:8080/',
    headers: { authorization: 'Bearer t' },
    fetch: fetchStub,
  });
  assert.equal(api.baseUrl, 'http://center.test:8080');

  const renamed = await api.call(probe.rename, {
    params: { id: 'a/b' },
    query: { dry: undefined },
    body: { name: 'b' },
  });
  assert.deepEqual(renamed, { name: 'b' });
  assert.equal(seen[0]?.url, 'http://center.test:8080/api/v1/things/a%2Fb');
  assert.equal(seen[0]?.init.method, 'PATCH');
  assert.equal(seen[0]?.init.body, '{"name":"b"}');
  const headers = seen[0]?.init.headers as Record<string, string>;
  assert.equal(headers['authorization'], 'Bearer t');
  assert.equal(headers['content-type'], 'application/json');

  assert.equal(await api.call(probe.remove, { params: { id: 'a' } }), null);

  const bytes = new Uint8Array([1, 2, 3]);
  assert.deepEqual(await api.call(probe.upload, { params: { digest: 'd' }, body: bytes }), {
    ok: true,
  });
  assert.equal(
    (seen[2]?.init.headers as Record<string, string>)['content-type'],
    'application/octet-stream',
  );
  assert.equal(seen[2]?.init.body, bytes);

  await assert.rejects(
    api.call(probe.rename, { params: { id: 'a' }, body: { name: 'c' } }),
    (err) => isBulkheadError(err, 'ERR_CENTER_PROTOCOL') && /name/.test(err.message),
  );
});

test('the client says when Center cannot be reached, and refuses a URL that is not one', async () => {
  const api = createApiClient({
    baseUrl: 'http://127.0.0.1:9',
    fetch: async () => {
      throw new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } });
    },
  });
  await assert.rejects(
    api.call(probe.remove, { params: { id: 'a' } }),
    (err) =>
      isBulkheadError(err, 'ERR_CENTER_UNREACHABLE') &&
      err.retryable &&
      /cannot reach Center at http:\/\/127\.0\.0\.1:9: ECONNREFUSED/.test(err.message),
  );
  assert.throws(
    () => createApiClient({ baseUrl: 'ftp://x' }),
    (err) => isBulkheadError(err, 'ERR_USAGE'),
  );
});

test('polling: If-None-Match when an ETag is held, 304 as nothing new, errors as call', async () => {
  const seen: (string | null)[] = [];
  const answers = [
    answer(200, { n: 1 }, { etag: 'W/"a"' }),
    new Response(null, { status: 304, headers: { etag: 'W/"a"' } }),
    answer(200, { n: 2 }, { etag: 'W/"b"' }),
    answer(200, { n: 'not a number' }, { etag: 'W/"c"' }),
    answer(401, { error: { code: 'ERR_UNAUTHENTICATED', message: 'log in' } }),
  ];
  const fetch: Fetch = async (_url, init) => {
    seen.push(new Headers(init?.headers).get('if-none-match'));
    return answers.shift()!;
  };
  const api = createApiClient({ baseUrl: 'http://center.test', fetch });
  const first = await api.poll(probe.summary, { query: { days: 3 } }, null);
  assert.deepEqual(first, { notModified: false, etag: 'W/"a"', body: { n: 1 } });
  assert.deepEqual(await api.poll(probe.summary, {}, 'W/"a"'), { notModified: true });
  const changed = await api.poll(probe.summary, {}, 'W/"a"');
  assert.deepEqual(changed, { notModified: false, etag: 'W/"b"', body: { n: 2 } });
  assert.deepEqual(seen, [null, 'W/"a"', 'W/"a"']);
  await assert.rejects(api.poll(probe.summary, {}, 'W/"b"'), (err) =>
    isBulkheadError(err, 'ERR_CENTER_PROTOCOL'),
  );
  await assert.rejects(api.poll(probe.summary, {}, 'W/"b"'), (err) =>
    isBulkheadError(err, 'ERR_UNAUTHENTICATED'),
  );
  // `call` still refuses a 304 the endpoint does not promise.
  const strict = createApiClient({
    baseUrl: 'http://center.test',
    fetch: async () => new Response(null, { status: 304 }),
  });
  await assert.rejects(strict.call(probe.summary), (err) =>
    isBulkheadError(err, 'ERR_CENTER_PROTOCOL'),
  );
});
