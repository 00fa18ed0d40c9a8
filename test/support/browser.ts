import { access } from 'node:fs/promises';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

/*
 * Debian's Chromium, driven by playwright-core (which downloads no browser of its own). Headless,
 * with a fresh profile per launch (playwright makes and removes it) and none of the background services that would try the
 * network: the machines the tests run on reach no host but their own.
 */

/** Where Debian's `chromium` package puts the browser. */
export const CHROMIUM = process.env.BULKHEAD_CHROMIUM ?? '/usr/bin/chromium';

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

export interface TestBrowser {
  browser: Browser;
  /** A new page of 1280×800 (the smallest screen the console is made for). */
  newPage(options?: { width?: number; height?: number }): Promise<Page>;
  close(): Promise<void>;
}

/**
 * Starts Chromium; fails naming the Debian package when it is not installed.
 * Closed with `t.after(() => b.close())` by the caller.
 */
export async function launchBrowser(): Promise<TestBrowser> {
  try {
    await access(CHROMIUM);
  } catch {
    throw new Error(
      `${CHROMIUM} not found: install Debian's chromium package (apt-get install chromium), ` +
        'or run `npm test`, whose set-up installs it',
    );
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    // Generous: two cores shared with QEMU and other tests.
    timeout: 120_000,
  });
  const contexts: BrowserContext[] = [];
  return {
    browser,
    async newPage(options = {}) {
      const context = await browser.newContext({
        viewport: { width: options.width ?? 1280, height: options.height ?? 800 },
      });
      // A page waits for what it needs; the bound only turns a hang into a failure.
      context.setDefaultTimeout(120_000);
      contexts.push(context);
      return context.newPage();
    },
    async close() {
      for (const c of contexts) await c.close().catch(() => {});
      await browser.close().catch(() => {});
    },
  };
}
