import type { Page } from 'playwright-core';
import { BLANK_VARIANCE } from '../../src/engine/hypervisor/index.ts';

/*
 * The switcher's page in a real browser, as tests and the benchmark look at it: how much its
 * VM screen shows (the canvas noVNC draws on, read back pixel by pixel), and how long a click
 * on a VM's card, or the switching shortcut, takes to bring that VM's screen.
 */

/*
 * What the functions run in the page use of it, typed here: this program's types are Node's,
 * without the DOM's. Each function reads them from its own `globalThis` (it runs in the page).
 */
interface Canvas {
  width: number;
  height: number;
  getContext(kind: '2d'): {
    getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray };
  };
}
interface PageGlobals {
  document: {
    querySelector(selector: string): (Canvas & { click(): void }) | null;
    querySelectorAll(selector: string): Iterable<Canvas>;
  };
  CSS: { escape(text: string): string };
  requestAnimationFrame(fn: () => void): number;
  addEventListener(
    type: 'keydown',
    fn: (e: { ctrlKey: boolean; altKey: boolean; code: string }) => void,
    options: { capture: boolean },
  ): void;
  removeEventListener(
    type: 'keydown',
    fn: (e: { ctrlKey: boolean; altKey: boolean; code: string }) => void,
    options: { capture: boolean },
  ): void;
  /** The measurement `timeToShortcut` has armed, until it is read back. */
  bulkheadShortcutTiming?: Promise<number>;
}

/**
 * The brightness variance of the canvas of VM `vm`'s screen as shown now (hypervisor's
 * `brightnessVariance`: a screen of one colour is 0); 0 when the page shows no such screen.
 */
export function screenVariance(page: Page, vm: string): Promise<number> {
  return page.evaluate((name) => {
    const { document, CSS } = globalThis as unknown as PageGlobals;
    const canvas = document.querySelector(`.screen[data-vm="${CSS.escape(name)}"] canvas`);
    if (!canvas || canvas.width === 0 || canvas.height === 0) return 0;
    const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
    const n = data.length / 4;
    let sum = 0;
    for (let i = 0; i < data.length; i += 4) sum += data[i]! + data[i + 1]! + data[i + 2]!;
    const mean = sum / n;
    let squares = 0;
    for (let i = 0; i < data.length; i += 4) {
      squares += (data[i]! + data[i + 1]! + data[i + 2]! - mean) ** 2;
    }
    return squares / n / 9;
  }, vm);
}

/**
 * Clicks the card of VM `vm` on the switcher's overview and measures, in the page's own clock,
 * the milliseconds until its screen's canvas first shows a frame that is not blank (variance
 * above the hypervisor's BLANK_VARIANCE), checked at every animation frame. Rejects after
 * `timeoutMs` without one. The page must show the overview with that card.
 */
export async function timeToScreen(
  page: Page,
  vm: string,
  options: { timeoutMs?: number } = {},
): Promise<number> {
  return page.evaluate(
    ({ name, blank, timeoutMs }) =>
      new Promise<number>((resolve, reject) => {
        const { document, CSS, requestAnimationFrame } = globalThis as unknown as PageGlobals;
        const card = document.querySelector(`button[aria-label="Open ${CSS.escape(name)}"]`);
        if (!card) {
          reject(new Error(`the switcher shows no card for ${name}`));
          return;
        }
        const variance = (canvas: Canvas) => {
          const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
          const n = data.length / 4;
          let sum = 0;
          for (let i = 0; i < data.length; i += 4) sum += data[i]! + data[i + 1]! + data[i + 2]!;
          const mean = sum / n;
          let squares = 0;
          for (let i = 0; i < data.length; i += 4) {
            squares += (data[i]! + data[i + 1]! + data[i + 2]! - mean) ** 2;
          }
          return squares / n / 9;
        };
        const start = performance.now();
        card.click();
        const look = () => {
          const canvas = document.querySelector(`.screen[data-vm="${CSS.escape(name)}"] canvas`);
          if (canvas && canvas.width > 0 && canvas.height > 0 && variance(canvas) > blank) {
            resolve(performance.now() - start);
          } else if (performance.now() - start > timeoutMs) {
            reject(new Error(`no screen of ${name} within ${timeoutMs} ms of the click`));
          } else requestAnimationFrame(look);
        };
        requestAnimationFrame(look);
      }),
    { name: vm, blank: BLANK_VARIANCE, timeoutMs: options.timeoutMs ?? 60_000 },
  );
}

/**
 * Presses the switching shortcut Ctrl+Alt+`code` (a KeyboardEvent `code`, e.g. `ArrowRight`,
 * `Digit1`) on the switcher's page and measures, in the page's own clock, the milliseconds from
 * the moment the page receives that key until VM `vm`'s screen shows its first frame that is not
 * blank, on a canvas made after the key (the screen the page showed before does not count),
 * checked at every animation frame. Rejects after `timeoutMs` without one.
 */
export async function timeToShortcut(
  page: Page,
  code: string,
  vm: string,
  options: { timeoutMs?: number } = {},
): Promise<number> {
  // Armed first, in the page: the listener must be there before the key, and the key must be a
  // real one (playwright's keyboard), as the switcher's own listener sees it.
  await page.evaluate(
    ({ name, key, blank, timeoutMs }) => {
      const g = globalThis as unknown as PageGlobals;
      const { document, CSS, requestAnimationFrame } = g;
      const variance = (canvas: Canvas) => {
        const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
        const n = data.length / 4;
        let sum = 0;
        for (let i = 0; i < data.length; i += 4) sum += data[i]! + data[i + 1]! + data[i + 2]!;
        const mean = sum / n;
        let squares = 0;
        for (let i = 0; i < data.length; i += 4) {
          squares += (data[i]! + data[i + 1]! + data[i + 2]! - mean) ** 2;
        }
        return squares / n / 9;
      };
      const armed = performance.now();
      g.bulkheadShortcutTiming = new Promise<number>((resolve, reject) => {
        const shown = new Set(document.querySelectorAll('canvas'));
        let heard = false;
        // Beside the switcher's listener on the window, in the capture phase: the switcher stops
        // the key's propagation, which does not keep other listeners of the window from it.
        const onKey = (e: { ctrlKey: boolean; altKey: boolean; code: string }) => {
          if (!e.ctrlKey || !e.altKey || e.code !== key) return;
          g.removeEventListener('keydown', onKey, { capture: true });
          heard = true;
          const start = performance.now();
          const look = () => {
            const canvas = document.querySelector(`.screen[data-vm="${CSS.escape(name)}"] canvas`);
            if (
              canvas &&
              !shown.has(canvas) &&
              canvas.width > 0 &&
              canvas.height > 0 &&
              variance(canvas) > blank
            ) {
              resolve(performance.now() - start);
            } else if (performance.now() - start > timeoutMs) {
              reject(new Error(`no screen of ${name} within ${timeoutMs} ms of the shortcut`));
            } else requestAnimationFrame(look);
          };
          requestAnimationFrame(look);
        };
        g.addEventListener('keydown', onKey, { capture: true });
        const unheard = () => {
          if (heard) return;
          if (performance.now() - armed < timeoutMs) requestAnimationFrame(unheard);
          else reject(new Error(`the page never received Ctrl+Alt+${key}`));
        };
        requestAnimationFrame(unheard);
      });
    },
    { name: vm, key: code, blank: BLANK_VARIANCE, timeoutMs: options.timeoutMs ?? 60_000 },
  );
  await page.keyboard.press(`Control+Alt+${code}`);
  return page.evaluate(() => {
    const g = globalThis as unknown as PageGlobals;
    const timing = g.bulkheadShortcutTiming!;
    delete g.bulkheadShortcutTiming;
    return timing;
  });
}
