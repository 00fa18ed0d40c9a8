import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { insertSession, startTestCenter } from '../../test/support/center.ts';
import { tempDir } from '../../test/support/fixtures.ts';

/*
 * The console's files as Center serves them (without a browser: test/integration/
 * console-serve.test.ts loads the real build in Chromium): caching, client-side routes, what is
 * not the console's, path traversal, and a Center without a build.
 */

const START = Date.UTC(2026, 5, 1);
const PAGE =
  '<!doctype html><html><head><title>t</title><script type="module" src="./assets/app-1a2b.js"></script></head><body><div id="root"></div></body></html>';

async function centerWith(t: Parameters<typeof tempDir>[0], built: boolean) {
  const dir = await tempDir(t);
  const consoleDir = join(dir, 'dist');
  if (built) {
    await mkdir(join(consoleDir, 'assets'), { recursive: true });
    await writeFile(join(consoleDir, 'index.html'), PAGE);
    await writeFile(join(consoleDir, 'assets', 'app-1a2b.js'), 'console.info("hi");\n');
  }
  // A file beside the build that no request may reach.
  await writeFile(join(dir, 'secret.txt'), 'not for the web');
  await writeFile(join(dir, 'package.json'), '{}');
  const c = await startTestCenter(t, `sqlite:${join(dir, 'center.db')}`, {
    start: START,
    config: { consoleDir },
  });
  const get = (url: string, accept = 'text/html,application/xhtml+xml,*/*') =>
    c.app.inject({ method: 'GET', url, headers: { accept } });
  return { ...c, get };
}

test('the built console: its page for client routes, its assets cached for good', async (t) => {
  const c = await centerWith(t, true);
  for (const url of ['/', '/devices/0190a0b0-0000-7000-8000-000000000001', '/rollouts?state=x']) {
    const res = await c.get(url);
    assert.equal(res.statusCode, 200, url);
    assert.match(String(res.headers['content-type']), /^text\/html/);
    assert.equal(res.headers['cache-control'], 'no-cache', url);
    // Relative asset paths resolve from the root on a deep link too.
    assert.match(res.body, /<head><base href="\/"><title>/);
    // The strict policy stays: own scripts only, nothing inline.
    assert.match(String(res.headers['content-security-policy']), /script-src 'self'(;|$)/);
  }
  const asset = await c.get('/assets/app-1a2b.js', '*/*');
  assert.equal(asset.statusCode, 200);
  assert.equal(asset.body, 'console.info("hi");\n');
  assert.equal(asset.headers['cache-control'], 'public, max-age=31536000, immutable');
  assert.match(String(asset.headers['content-type']), /^text\/javascript/);
  assert.equal((await c.get('/assets/nope.js', '*/*')).statusCode, 404);

  // Not the console's: API, store, metrics, docs paths, and requests that do not ask for HTML.
  for (const url of [
    '/api/v1/admin/nothing',
    '/store/nothing',
    '/metrics',
    '/docs',
    '/healthz/x',
  ]) {
    const res = await c.get(url);
    assert.equal(res.statusCode, 404, url);
    assert.match(String(res.headers['content-type']), /^application\/json/, url);
  }
  assert.equal((await c.get('/devices', 'application/json')).statusCode, 404);
  const post = await c.app.inject({
    method: 'POST',
    url: '/devices',
    headers: { accept: 'text/html' },
  });
  assert.equal(post.statusCode, 404);
  // The API keeps its authentication: the page is public, the data is not.
  assert.equal((await c.get('/api/v1/admin/devices', 'application/json')).statusCode, 401);
  const viewer = await insertSession(c.db, 'eve', 'viewer', START);
  const listed = await c.app.inject({
    method: 'GET',
    url: '/api/v1/admin/devices',
    headers: { authorization: `Bearer ${viewer}` },
  });
  assert.equal(listed.statusCode, 200);
});

test('no path leads out of the build', async (t) => {
  const c = await centerWith(t, true);
  for (const url of [
    '/assets/../../package.json',
    '/assets/..%2f..%2fpackage.json',
    '/assets/%2e%2e/%2e%2e/package.json',
    '/assets/%2e%2e%2f%2e%2e%2fsecret.txt',
    '/assets/..%5c..%5csecret.txt',
    '/assets/.%2e/index.html',
    '/assets/',
    '/assets/%00app-1a2b.js',
    '/assets//etc/passwd',
  ]) {
    const res = await c.get(url, '*/*');
    assert.ok(res.statusCode === 404 || res.statusCode === 400, `${url}: ${res.statusCode}`);
    assert.doesNotMatch(res.body, /not for the web|^\{\}$/, url);
  }
});

test('without a build, a page that says how to make one; the API runs on', async (t) => {
  const c = await centerWith(t, false);
  for (const url of ['/', '/devices/abc']) {
    const res = await c.get(url);
    assert.equal(res.statusCode, 503, url);
    assert.match(res.body, /npm run setup/);
  }
  assert.equal((await c.get('/assets/app-1a2b.js', '*/*')).statusCode, 404);
  assert.equal((await c.get('/healthz', 'application/json')).statusCode, 200);
});
