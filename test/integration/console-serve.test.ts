import assert from 'node:assert/strict';
import { request } from 'node:http';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { build } from 'vite';
import { launchBrowser } from '../support/browser.ts';
import { startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

/*
 * The real console build, served by a real `center serve`, loaded in Debian's Chromium under
 * Center's Content-Security-Policy: the page renders, on `/` and on a client-side route, with
 * no policy violation and no console error; and raw requests that try to climb out of the build
 * (which a browser or fetch would normalise away) get nothing.
 */

const ROOT = join(import.meta.dirname, '../..');

/** GET with the path sent exactly as written. */
function rawGet(url: string, path: string): Promise<{ status: number; body: string }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, method: 'GET' }, (res) => {
      let body = '';
      res.on('data', (b: Buffer) => (body += b.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('the console loads in Chromium from a real Center, under its strict CSP', async (t) => {
  const dir = await tempDir(t);
  const dist = join(dir, 'console');
  // The build the set-up makes, into a directory of this test's own.
  await build({
    configFile: join(ROOT, 'web/console/vite.config.ts'),
    logLevel: 'silent',
    build: { outDir: dist, emptyOutDir: true },
  });
  const [script] = await readdir(join(dist, 'assets'));
  assert.ok(script !== undefined, 'the build has assets');

  const center = await startCenterProcess(t, ['--data', join(dir, 'data')], {
    env: { BULKHEAD_CONSOLE_DIR: dist },
  });
  const { url } = center.info;

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`failed: ${r.url()}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`${r.status()}: ${r.url()}`);
  });
  // Recorded from the first script on, whatever the page's own scripts do. (Strings: this
  // code runs in the page, whose DOM types the server's type-check does not load.)
  await page.addInitScript({
    content: `window.violations = [];
      document.addEventListener('securitypolicyviolation', (e) =>
        window.violations.push(e.violatedDirective + ' ' + e.blockedURI));`,
  });

  for (const path of ['/', '/devices/0190a0b0-0000-7000-8000-000000000001']) {
    const response = await page.goto(`${url}${path}`);
    assert.equal(response?.status(), 200, path);
    assert.match(response?.headers()['content-security-policy'] ?? '', /script-src 'self'/);
    // Rendered: React filled the root element.
    await page.waitForFunction(`document.getElementById('root').children.length > 0`);
    const violations = await page.evaluate<string[]>(`window.violations`);
    assert.deepEqual(violations, [], `${path}: CSP violations`);
  }
  assert.deepEqual(problems, []);

  const asset = await fetch(`${url}/assets/${script}`);
  assert.equal(asset.status, 200);
  assert.equal(asset.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  for (const path of [
    '/assets/../../package.json',
    '/assets/..%2f..%2fpackage.json',
    '/assets/%2e%2e/%2e%2e/package.json',
    '/assets/%2e%2e%2f%2e%2e%2fpackage.json',
  ]) {
    const res = await rawGet(url, path);
    assert.ok(res.status === 404 || res.status === 400, `${path}: ${res.status}`);
    assert.doesNotMatch(res.body, /"name": "bulkhead"/, path);
  }
  assert.equal(await center.stop(), 0);
});
