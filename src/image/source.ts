import { execFile } from 'node:child_process';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';

const run = promisify(execFile);

/** Disk image formats recognised by their magic bytes; anything else is taken as raw. */
const MAGICS: { format: string; offset: number; magic: Buffer }[] = [
  { format: 'qcow2', offset: 0, magic: Buffer.from([0x51, 0x46, 0x49, 0xfb]) },
  { format: 'vmdk', offset: 0, magic: Buffer.from('KDMV', 'latin1') },
  { format: 'vmdk', offset: 0, magic: Buffer.from('# Disk DescriptorFile', 'latin1') },
  { format: 'vhdx', offset: 0, magic: Buffer.from('vhdxfile', 'latin1') },
  { format: 'vdi', offset: 64, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
  { format: 'vpc', offset: 0, magic: Buffer.from('conectix', 'latin1') },
];

export interface RawSource {
  /** A raw image file to read. */
  path: string;
  size: number;
  /** The format the input was in. */
  format: string;
  /** Removes any temporary raw copy. */
  dispose(): Promise<void>;
}

function unreadable(path: string, why: string, cause?: unknown): BulkheadError {
  return new BulkheadError(
    ErrorCodes.INPUT_UNREADABLE,
    `cannot read the input image ${path}: ${why}`,
    {
      cause,
      hint: 'check the path and its permissions; the image must be raw or a format qemu-img reads (qcow2, vmdk, vhdx, vdi, vpc)',
    },
  );
}

/** Sniffs the input's format by its magic bytes; explicit `format` wins. */
export async function detectFormat(path: string): Promise<{ format: string; size: number }> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw unreadable(path, errnoCode(err) ?? String(err), err);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() && !st.isBlockDevice()) throw unreadable(path, 'not a file');
    const head = Buffer.alloc(128);
    try {
      await fh.read(head, 0, head.length, 0);
    } catch (err) {
      throw unreadable(path, errnoCode(err) ?? String(err), err);
    }
    const hit = MAGICS.find((m) =>
      head.subarray(m.offset, m.offset + m.magic.length).equals(m.magic),
    );
    return { format: hit?.format ?? 'raw', size: st.size };
  } finally {
    await fh.close();
  }
}

/**
 * Gives a raw view of an input image: the file itself when raw, or a sparse raw copy made by
 * `qemu-img convert` in `tempDir` for qcow2, vmdk, vhdx and the rest.
 */
export async function openRawSource(
  path: string,
  tempDir: string,
  format?: string,
): Promise<RawSource> {
  const detected = await detectFormat(path);
  const fmt = format ?? detected.format;
  if (fmt === 'raw') return { path, size: detected.size, format: 'raw', dispose: async () => {} };
  const out = join(tempDir, `convert-${process.pid}-${Date.now()}.raw`);
  try {
    await mkdir(tempDir, { recursive: true });
    await run('qemu-img', ['convert', '-q', '-f', fmt, '-O', 'raw', '-S', '4k', path, out], {
      maxBuffer: 1 << 20,
    });
  } catch (err) {
    await rm(out, { force: true });
    if (errnoCode(err) === 'ENOENT') {
      throw new BulkheadError(
        ErrorCodes.TOOL_MISSING,
        `qemu-img is needed to read ${fmt} images and was not found`,
        {
          hint: 'install the Debian package qemu-utils (apt-get install qemu-utils)',
        },
      );
    }
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw unreadable(
      path,
      `qemu-img could not convert it from ${fmt}: ${stderr || String(err)}`,
      err,
    );
  }
  const fh = await open(out, 'r');
  const { size } = await fh.stat().finally(() => fh.close());
  return { path: out, size, format: fmt, dispose: () => rm(out, { force: true }) };
}
