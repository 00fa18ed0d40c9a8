import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { inflateSync } from 'node:zlib';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import { runFiles } from './qemu-args.ts';
import { QmpClient } from './qmp.ts';

/*
 * A VM's screen through its second QMP monitor (`screen.sock`, see qemu-args.ts): screenshots
 * with `screendump` (PNG, QEMU ≥ 7.1) and keyboard/mouse input with `input-send-event`. Engine's
 * own monitor (`qmp.sock`) stays with the driver; QEMU serves one client per monitor, so screen
 * tools and Engine never wait for each other.
 */

/** A decoded screenshot: 8-bit samples, `channels` (3 RGB, 4 RGBA) per pixel, rows top down. */
export interface Image {
  width: number;
  height: number;
  channels: 3 | 4;
  pixels: Uint8Array;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * Decodes a PNG of 8-bit RGB or RGBA, not interlaced: what QEMU's screendump writes. Enough for
 * measuring a screen, not a general decoder.
 * @throws BulkheadError ERR_VALIDATION saying what is not supported or broken.
 */
export function decodePng(png: Buffer): Image {
  const bad = (why: string) => new BulkheadError(ErrorCodes.VALIDATION, `not a usable PNG: ${why}`);
  if (png.length < 8 || !png.subarray(0, 8).equals(PNG_SIGNATURE)) throw bad('no PNG signature');
  let offset = 8;
  let header: { width: number; height: number; channels: 3 | 4 } | undefined;
  const data: Buffer[] = [];
  let ended = false;
  while (offset + 8 <= png.length && !ended) {
    const length = png.readUInt32BE(offset);
    const type = png.toString('latin1', offset + 4, offset + 8);
    const body = png.subarray(offset + 8, offset + 8 + length);
    if (body.length !== length) throw bad(`chunk ${type} is cut short`);
    offset += 12 + length;
    if (type === 'IHDR') {
      const [depth, color, , , interlace] = body.subarray(8, 13);
      if (depth !== 8 || (color !== 2 && color !== 6) || interlace !== 0) {
        throw bad(`only 8-bit RGB/RGBA without interlacing (depth ${depth}, colour type ${color})`);
      }
      header = {
        width: body.readUInt32BE(0),
        height: body.readUInt32BE(4),
        channels: color === 2 ? 3 : 4,
      };
    } else if (type === 'IDAT') data.push(body);
    else if (type === 'IEND') ended = true;
  }
  if (!header) throw bad('no IHDR chunk');
  if (!ended) throw bad('no IEND chunk');
  const { width, height, channels } = header;
  let raw: Buffer;
  try {
    raw = inflateSync(Buffer.concat(data));
  } catch (err) {
    throw new BulkheadError(ErrorCodes.VALIDATION, 'not a usable PNG: its image data is corrupt', {
      cause: err,
    });
  }
  const stride = width * channels;
  if (raw.length !== height * (stride + 1)) throw bad('image data of the wrong size');
  const pixels = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = y * stride;
    const prior = row - stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? pixels[row + x - channels]! : 0;
      const b = y > 0 ? pixels[prior + x]! : 0;
      const c = y > 0 && x >= channels ? pixels[prior + x - channels]! : 0;
      let predictor: number;
      switch (filter) {
        case 0:
          predictor = 0;
          break;
        case 1:
          predictor = a;
          break;
        case 2:
          predictor = b;
          break;
        case 3:
          predictor = (a + b) >> 1;
          break;
        case 4:
          predictor = paeth(a, b, c);
          break;
        default:
          throw bad(`unknown row filter ${filter}`);
      }
      pixels[row + x] = (line[x]! + predictor) & 0xff;
    }
  }
  return { width, height, channels, pixels };
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * The variance of the pixels' brightness ((R+G+B)/3, 0-255): 0 for a screen of one colour, a
 * few hundred for text on a console.
 */
export function brightnessVariance(image: Image): number {
  const n = image.width * image.height;
  if (n === 0) return 0;
  const brightness = (i: number) => {
    const o = i * image.channels;
    return image.pixels[o]! + image.pixels[o + 1]! + image.pixels[o + 2]!;
  };
  // Two passes over integer sums R+G+B (divided by 3, so the variance by 9, at the end): a
  // screen of one colour comes out exactly 0.
  let sum = 0;
  for (let i = 0; i < n; i++) sum += brightness(i);
  const mean = sum / n;
  let squares = 0;
  for (let i = 0; i < n; i++) squares += (brightness(i) - mean) ** 2;
  return squares / n / 9;
}

/**
 * Below this brightness variance a screen counts as blank. A black (or single-colour) screen
 * is 0; one line of grey console text on black at 720×400 is already above 1.
 */
export const BLANK_VARIANCE = 0.5;

/** One key of a typed string: a QEMU QKeyCode, pressed with shift or not. */
export interface KeyStroke {
  qcode: string;
  shift: boolean;
}

/** US layout: the unshifted character of each key that is not a letter or digit. */
const PLAIN_KEYS: Record<string, string> = {
  ' ': 'spc',
  '\n': 'ret',
  '\t': 'tab',
  '-': 'minus',
  '=': 'equal',
  '[': 'bracket_left',
  ']': 'bracket_right',
  '\\': 'backslash',
  ';': 'semicolon',
  "'": 'apostrophe',
  '`': 'grave_accent',
  ',': 'comma',
  '.': 'dot',
  '/': 'slash',
};

/** US layout: each shifted character and the key it is on. */
const SHIFTED_KEYS: Record<string, string> = {
  '!': '1',
  '@': '2',
  '#': '3',
  $: '4',
  '%': '5',
  '^': '6',
  '&': '7',
  '*': '8',
  '(': '9',
  ')': '0',
  _: 'minus',
  '+': 'equal',
  '{': 'bracket_left',
  '}': 'bracket_right',
  '|': 'backslash',
  ':': 'semicolon',
  '"': 'apostrophe',
  '~': 'grave_accent',
  '<': 'comma',
  '>': 'dot',
  '?': 'slash',
};

/**
 * The keys that type `text` on a US keyboard layout (the guest's console default); `\n` is
 * Enter.
 * @throws BulkheadError ERR_VALIDATION naming the first character no key types.
 */
export function keyStrokes(text: string): KeyStroke[] {
  return [...text].map((ch, i) => {
    if (/^[a-z0-9]$/.test(ch)) return { qcode: ch, shift: false };
    if (/^[A-Z]$/.test(ch)) return { qcode: ch.toLowerCase(), shift: true };
    const plain = PLAIN_KEYS[ch];
    if (plain) return { qcode: plain, shift: false };
    const shifted = SHIFTED_KEYS[ch];
    if (shifted) return { qcode: shifted, shift: true };
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `character ${JSON.stringify(ch)} at position ${i + 1} cannot be typed (US keyboard layout, printable ASCII and Enter only)`,
    );
  });
}

/** The `input-send-event` events of one keystroke: press (shift first), then release. */
export function keyEvents(stroke: KeyStroke): Record<string, unknown>[] {
  const key = (qcode: string, down: boolean) => ({
    type: 'key',
    data: { down, key: { type: 'qcode', data: qcode } },
  });
  return stroke.shift
    ? [key('shift', true), key(stroke.qcode, true), key(stroke.qcode, false), key('shift', false)]
    : [key(stroke.qcode, true), key(stroke.qcode, false)];
}

/**
 * The `input-send-event` events of a key combination (`['ctrl', 'alt', 'f2']`, QEMU key codes):
 * every key pressed in order, then released in reverse.
 */
export function keyComboEvents(keys: readonly string[]): Record<string, unknown>[] {
  const key = (qcode: string, down: boolean) => ({
    type: 'key',
    data: { down, key: { type: 'qcode', data: qcode } },
  });
  return [...keys.map((k) => key(k, true)), ...[...keys].reverse().map((k) => key(k, false))];
}

export type MouseButton = 'left' | 'middle' | 'right';

/** The largest value of QEMU's absolute pointer axes (`abs` events run 0..32767 on each). */
export const ABS_MAX = 32767;

/**
 * The absolute axis value of pixel `pixel` on an axis `size` pixels long: 0 at the first pixel,
 * ABS_MAX at the last, so the guest's tablet (which scales 0..ABS_MAX to its screen) lands on
 * that pixel.
 * @throws BulkheadError ERR_VALIDATION for a pixel off the screen.
 */
export function absoluteAxis(pixel: number, size: number, axis: 'x' | 'y' = 'x'): number {
  if (!Number.isInteger(pixel) || pixel < 0 || pixel >= size) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `pointer ${axis} ${pixel} is off the screen: it must be a whole pixel from 0 to ${size - 1} (the screen is ${size} pixels ${axis === 'x' ? 'wide' : 'high'})`,
    );
  }
  return size <= 1 ? 0 : Math.round((pixel * ABS_MAX) / (size - 1));
}

/** The `input-send-event` events that put the pointer on pixel (x, y) of a screen of `size`. */
export function pointerEvents(
  x: number,
  y: number,
  size: { width: number; height: number },
): Record<string, unknown>[] {
  return [
    { type: 'abs', data: { axis: 'x', value: absoluteAxis(x, size.width, 'x') } },
    { type: 'abs', data: { axis: 'y', value: absoluteAxis(y, size.height, 'y') } },
  ];
}

/** The width and height in a PPM header (`P6 <width> <height> <max>`), or null. */
export function ppmSize(header: Buffer): { width: number; height: number } | null {
  const m = /^P6\s+(\d+)\s+(\d+)\s+\d+\s/.exec(header.toString('latin1'));
  return m ? { width: Number(m[1]), height: Number(m[2]) } : null;
}

/** The screen of one running VM, through its screen monitor. */
export class Screen {
  readonly #qmp: QmpClient;
  readonly #runDir: string;

  private constructor(qmp: QmpClient, runDir: string) {
    this.#qmp = qmp;
    this.#runDir = runDir;
  }

  /**
   * Connects to the screen monitor of the VM whose run directory is `runDir`.
   * @throws BulkheadError ERR_NOT_FOUND when the VM does not run (no screen socket),
   * ERR_IN_USE when another screen tool holds the monitor for longer than `timeoutMs`.
   */
  static async open(runDir: string, options: { timeoutMs?: number } = {}): Promise<Screen> {
    const path = runFiles(runDir).screen;
    try {
      return new Screen(await QmpClient.connect(path, options), runDir);
    } catch (err) {
      // No socket (or nobody listening on it): no QEMU, or one started before VMs had screens.
      if ((err as { kind?: string }).kind === 'closed') {
        throw new BulkheadError(
          ErrorCodes.NOT_FOUND,
          `the VM's screen (${path}) does not answer: the VM does not run, or was started before VMs had screens (restart it)`,
          { cause: err },
        );
      }
      throw new BulkheadError(
        ErrorCodes.IN_USE,
        `the VM's screen is busy (another screenshot or input is using it): ${(err as Error).message}`,
        { cause: err, retryable: true },
      );
    }
  }

  /** The screen now, as PNG bytes (QEMU writes it into the run directory; read, then removed). */
  async screenshot(): Promise<Buffer> {
    const file = join(this.#runDir, `screen-${process.pid}-${Date.now()}.png`);
    try {
      await this.#qmp.execute('screendump', { filename: file, format: 'png' }, 30_000);
      return await readFile(file);
    } finally {
      await rm(file, { force: true });
    }
  }

  /**
   * Types `text` (US layout; `\n` is Enter), one key per `input-send-event`, `pauseMs` apart so
   * the guest's keyboard buffer never overflows.
   */
  async type(text: string, options: { pauseMs?: number } = {}): Promise<void> {
    for (const stroke of keyStrokes(text)) {
      await this.#qmp.execute('input-send-event', { events: keyEvents(stroke) });
      await sleep(options.pauseMs ?? 30);
    }
  }

  /** Presses a key combination (QEMU key codes), then releases it (see keyComboEvents). */
  async pressKeys(keys: readonly string[]): Promise<void> {
    await this.#qmp.execute('input-send-event', { events: keyComboEvents(keys) });
  }

  /**
   * The screen's size now, in pixels (the guest may change its resolution at any time): from a
   * screendump in PPM, whose header says it.
   */
  async size(): Promise<{ width: number; height: number }> {
    const file = join(this.#runDir, `size-${process.pid}-${Date.now()}.ppm`);
    try {
      await this.#qmp.execute('screendump', { filename: file, format: 'ppm' }, 30_000);
      const handle = await open(file, 'r');
      let header: Buffer;
      try {
        header = Buffer.alloc(64);
        const { bytesRead } = await handle.read(header, 0, 64, 0);
        header = header.subarray(0, bytesRead);
      } finally {
        await handle.close();
      }
      const size = ppmSize(header);
      if (!size) {
        throw new BulkheadError(ErrorCodes.INTERNAL, "QEMU's screendump is not a PPM image");
      }
      return size;
    } finally {
      await rm(file, { force: true });
    }
  }

  /**
   * Puts the pointer on pixel (x, y) of the screen as it is now (the VM's USB tablet, an
   * absolute pointer), then clicks `button` there if one is given.
   * @throws BulkheadError ERR_VALIDATION for a point off the screen.
   */
  async pointer(x: number, y: number, button?: MouseButton): Promise<void> {
    const size = await this.size();
    await this.#qmp.execute('input-send-event', { events: pointerEvents(x, y, size) });
    if (button) await this.click(button);
  }

  /** Moves the pointer by (dx, dy) (a relative mouse: the PS/2 mouse of the q35 machine). */
  async moveMouse(dx: number, dy: number): Promise<void> {
    await this.#qmp.execute('input-send-event', {
      events: [
        { type: 'rel', data: { axis: 'x', value: Math.round(dx) } },
        { type: 'rel', data: { axis: 'y', value: Math.round(dy) } },
      ],
    });
  }

  /** Presses and releases a mouse button where the pointer is. */
  async click(button: MouseButton = 'left'): Promise<void> {
    for (const down of [true, false]) {
      await this.#qmp.execute('input-send-event', {
        events: [{ type: 'btn', data: { down, button } }],
      });
    }
  }

  close(): void {
    this.#qmp.close();
  }
}
