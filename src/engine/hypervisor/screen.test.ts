import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deflateSync } from 'node:zlib';
import {
  ABS_MAX,
  absoluteAxis,
  brightnessVariance,
  decodePng,
  keyComboEvents,
  keyEvents,
  keyStrokes,
  pointerEvents,
  ppmSize,
  type Image,
} from './screen.ts';

/** A PNG of `image` whose row y uses filter `filters[y % filters.length]` (as libpng may). */
function encodePng(image: Image, filters: number[]): Buffer {
  const { width, height, channels, pixels } = image;
  const stride = width * channels;
  const raw = Buffer.alloc(height * (stride + 1));
  for (let y = 0; y < height; y++) {
    const f = filters[y % filters.length]!;
    raw[y * (stride + 1)] = f;
    for (let x = 0; x < stride; x++) {
      const at = (yy: number, xx: number) => (yy < 0 || xx < 0 ? 0 : pixels[yy * stride + xx]!);
      const a = at(y, x - channels);
      const b = at(y - 1, x);
      const c = at(y - 1, x - channels);
      const p = a + b - c;
      const paeth =
        Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c)
          ? a
          : Math.abs(p - b) <= Math.abs(p - c)
            ? b
            : c;
      const predictor = [0, a, b, (a + b) >> 1, paeth][f]!;
      raw[y * (stride + 1) + 1 + x] = (at(y, x) - predictor) & 0xff;
    }
  }
  const chunk = (type: string, body: Buffer) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(body.length, 0);
    head.write(type, 4, 'latin1');
    return Buffer.concat([head, body, Buffer.alloc(4)]); // the decoder does not check CRCs
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = channels === 3 ? 2 : 6;
  const idat = deflateSync(raw);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    // Split image data over two chunks, as encoders do for large images.
    chunk('IDAT', idat.subarray(0, 5)),
    chunk('IDAT', idat.subarray(5)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function pattern(width: number, height: number, channels: 3 | 4): Image {
  const pixels = new Uint8Array(width * height * channels);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + (i >> 5) * 11) & 0xff;
  return { width, height, channels, pixels };
}

test('decodePng reads 8-bit RGB and RGBA with every row filter', () => {
  for (const channels of [3, 4] as const) {
    const image = pattern(7, 10, channels);
    const decoded = decodePng(encodePng(image, [0, 1, 2, 3, 4]));
    assert.equal(decoded.width, 7);
    assert.equal(decoded.height, 10);
    assert.equal(decoded.channels, channels);
    assert.deepEqual(decoded.pixels, image.pixels);
  }
});

test('decodePng refuses what it cannot read, saying why', () => {
  const good = encodePng(pattern(2, 2, 3), [0]);
  const cases: [Buffer, RegExp][] = [
    [Buffer.from('GIF89a'), /no PNG signature/],
    [good.subarray(0, good.length - 12), /no IEND/],
    [Buffer.from(good).fill(7, 24, 25), /only 8-bit RGB\/RGBA/], // bit depth 7
  ];
  for (const [png, message] of cases) {
    assert.throws(
      () => decodePng(png),
      (err: unknown) => {
        assert.equal((err as { code?: string }).code, 'ERR_VALIDATION');
        assert.match((err as Error).message, message);
        return true;
      },
    );
  }
});

test('brightness variance: 0 for one colour, above the blank threshold for text', () => {
  const black: Image = { width: 4, height: 4, channels: 3, pixels: new Uint8Array(48) };
  assert.equal(brightnessVariance(black), 0);
  const blue: Image = {
    ...black,
    pixels: new Uint8Array(48).map((_, i) => (i % 3 === 2 ? 200 : 0)),
  };
  assert.equal(brightnessVariance(blue), 0);
  const text = new Uint8Array(48);
  text.fill(170, 0, 3); // one grey pixel of sixteen
  assert.ok(brightnessVariance({ ...black, pixels: text }) > 1000);
});

test('keyStrokes: letters, digits, shifted symbols and Enter on a US layout', () => {
  const keys = (s: string) => keyStrokes(s).map((k) => (k.shift ? `S-${k.qcode}` : k.qcode));
  assert.deepEqual(keys('touch /data/typed\n'), [
    't',
    'o',
    'u',
    'c',
    'h',
    'spc',
    'slash',
    'd',
    'a',
    't',
    'a',
    'slash',
    't',
    'y',
    'p',
    'e',
    'd',
    'ret',
  ]);
  assert.deepEqual(keys('Ab9!@_+:"~|<>?'), [
    'S-a',
    'b',
    '9',
    'S-1',
    'S-2',
    'S-minus',
    'S-equal',
    'S-semicolon',
    'S-apostrophe',
    'S-grave_accent',
    'S-backslash',
    'S-comma',
    'S-dot',
    'S-slash',
  ]);
  assert.deepEqual(keys("-=[]\\;',.`\t"), [
    'minus',
    'equal',
    'bracket_left',
    'bracket_right',
    'backslash',
    'semicolon',
    'apostrophe',
    'comma',
    'dot',
    'grave_accent',
    'tab',
  ]);
  assert.throws(() => keyStrokes('ok é'), /character "é" at position 4 cannot be typed/);
});

test('keyEvents: shift wraps the key, presses before releases', () => {
  const ev = (e: Record<string, unknown>) => {
    const d = e['data'] as { down: boolean; key: { data: string } };
    return `${d.down ? '+' : '-'}${d.key.data}`;
  };
  assert.deepEqual(keyEvents({ qcode: 'a', shift: true }).map(ev), [
    '+shift',
    '+a',
    '-a',
    '-shift',
  ]);
  assert.deepEqual(keyEvents({ qcode: 'ret', shift: false }).map(ev), ['+ret', '-ret']);
});

test('pointer: pixels map onto the tablet axes 0..32767, corners to the ends', () => {
  assert.equal(ABS_MAX, 32767);
  assert.equal(absoluteAxis(0, 720), 0);
  assert.equal(absoluteAxis(719, 720), 32767);
  assert.equal(absoluteAxis(360, 721), 16384);
  assert.equal(absoluteAxis(0, 1), 0, 'a one-pixel axis');
  assert.deepEqual(pointerEvents(10, 399, { width: 720, height: 400 }), [
    { type: 'abs', data: { axis: 'x', value: Math.round((10 * 32767) / 719) } },
    { type: 'abs', data: { axis: 'y', value: 32767 } },
  ]);
});

test('pointer: a point off the screen is refused, naming the axis and the bounds', () => {
  assert.throws(() => pointerEvents(720, 0, { width: 720, height: 400 }), {
    code: 'ERR_VALIDATION',
    message:
      'pointer x 720 is off the screen: it must be a whole pixel from 0 to 719 (the screen is 720 pixels wide)',
  });
  assert.throws(() => pointerEvents(0, -1, { width: 720, height: 400 }), {
    code: 'ERR_VALIDATION',
    message: /^pointer y -1 is off the screen: .* from 0 to 399 \(the screen is 400 pixels high\)$/,
  });
  assert.throws(() => absoluteAxis(1.5, 720), { code: 'ERR_VALIDATION' });
});

test('ppmSize reads the size from a screendump header', () => {
  assert.deepEqual(ppmSize(Buffer.from('P6\n720 400\n255\n\0\0\0')), { width: 720, height: 400 });
  assert.deepEqual(ppmSize(Buffer.from('P6 1024 768 255\n')), { width: 1024, height: 768 });
  assert.equal(ppmSize(Buffer.from('\x89PNG')), null);
});

test('keyComboEvents: pressed in order, released in reverse', () => {
  const ev = (qcode: string, down: boolean) => ({
    type: 'key',
    data: { down, key: { type: 'qcode', data: qcode } },
  });
  assert.deepEqual(keyComboEvents(['ctrl', 'alt', 'f2']), [
    ev('ctrl', true),
    ev('alt', true),
    ev('f2', true),
    ev('f2', false),
    ev('alt', false),
    ev('ctrl', false),
  ]);
});
