import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode } from '../../protocol/index.ts';
import { listConsoleLogs } from './consoles.ts';
import { runFiles } from './qemu-args.ts';

/*
 * Why a VM did not boot, in the firmware's own words. Each firmware says it somewhere else:
 *
 *   - SeaBIOS writes its debug text to the ISA debug port 0x402, which QEMU keeps in the run
 *     directory's `firmware.log` (qemu-args.ts). With a disk it cannot boot it ends:
 *         Booting from Hard Disk...
 *         Boot failed: not a bootable disk
 *         ...
 *         No bootable device.
 *     and waits there for good.
 *   - OVMF (Debian's build is a release build: nothing on port 0x402) prints its boot manager's
 *     messages on the serial console (the VM's console log):
 *         BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0): Not Found
 *         BdsDxe: starting Boot0002 "EFI Internal Shell" from Fv(…)/FvFile(…)
 *     With Secure Boot on, a loader no key in db signed is refused with `Access Denied` (and the
 *     built-in shell with `Security Violation`), then `BdsDxe: No bootable option or device was
 *     found.` Without a loader that boots, OVMF falls back to its own applications (the shell, the
 *     boot manager menu UiApp), which live in its firmware volume (`Fv(…)`).
 *
 * The texts in testdata/ are these logs as QEMU 7.2 with Debian 12's SeaBIOS 1.16.2 and OVMF
 * 2022.11 wrote them.
 */

/** The firmware's verdict on a boot. */
export interface BootVerdict {
  /** One line naming the failure and quoting the firmware. */
  reason: string;
  /**
   * The firmware gave up: nothing boots any more without a reset, so a health check need not
   * wait for its timeout. Otherwise the firmware is still trying (another boot option may boot).
   */
  isFinal: boolean;
}

/** How much of the end of each log is read: enough for a boot's messages, never the whole file. */
export const FIRMWARE_LOG_TAIL = 64 * 1024;

/** Longest firmware line quoted in a reason. */
const MAX_QUOTE = 240;

/**
 * The log's text as lines: terminal escape sequences (OVMF draws its screens with them) and
 * other control characters removed, CR LF and lone CR as line ends, blank lines dropped.
 */
export function logLines(text: string): string[] {
  return text
    .replace(ESCAPES, '')
    .replace(/\r\n?/g, '\n')
    .replace(CONTROLS, '')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/* eslint-disable no-control-regex -- these match control characters on purpose */
/** CSI sequences (colours, cursor moves, `ESC [ = 3 h`), then other escapes. */
const ESCAPES = /\x1b\[[0-9;=?]*[ -/]*[@-~]|\x1b[@-_]?/g;
/** Control characters but the line feed (C0, DEL and C1: the log is read as latin1). */
const CONTROLS = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/g;
/* eslint-enable no-control-regex */

function quote(line: string): string {
  const text = line.length > MAX_QUOTE ? `${line.slice(0, MAX_QUOTE - 1)}…` : line;
  return `'${text}'`;
}

/**
 * The verdict of the firmware logs of one VM's boot: SeaBIOS's debug log, OVMF's console.
 * Null when neither says anything went wrong (the boot is under way or went well).
 */
export function parseFirmwareLogs(logs: {
  firmware?: string;
  console?: string;
}): BootVerdict | null {
  const seabios = seabiosVerdict(logLines(logs.firmware ?? ''), logLines(logs.console ?? ''));
  const ovmf = ovmfVerdict(logLines(logs.console ?? ''));
  // A final verdict wins over one that may still change.
  if (seabios?.isFinal) return seabios;
  if (ovmf?.isFinal) return ovmf;
  return seabios ?? ovmf;
}

function seabiosVerdict(all: string[], consoleLines: string[]): BootVerdict | null {
  // Only the last boot: a reset starts the log over with the banner.
  const start = all.findLastIndex((l) => l.startsWith('SeaBIOS (version'));
  const lines = start < 0 ? all : all.slice(start);
  const disk = lines.findIndex((l) => l === 'Booting from Hard Disk...');
  const diskFailure =
    disk >= 0 && lines[disk + 1]?.startsWith('Boot failed:') ? lines[disk + 1] : undefined;
  if (lines.includes('No bootable device.')) {
    return {
      reason:
        `the firmware found nothing to boot: ${quote('No bootable device.')}` +
        (diskFailure ? ` (hard disk: ${quote(diskFailure)})` : ''),
      isFinal: true,
    };
  }
  const booted = lines.some((l) => /^Booting from (ROM|[0-9a-f]{4}:[0-9a-f]{4})/.test(l));
  const failed = diskFailure ?? lines.find((l) => l.startsWith('Boot failed:'));
  if (failed && !booted) {
    return { reason: `the firmware could not boot: ${quote(failed)}`, isFinal: false };
  }
  // A disk whose MBR has a boot signature but no BIOS loader (a UEFI-only GPT disk: its
  // protective MBR) is "booted" all the same, and the CPU then runs whatever the sector holds.
  // SeaBIOS cannot tell; what tells is that nothing follows. Not final: a loader that prints
  // nothing on the serial console (Windows) looks the same until the guest agent answers.
  const handedOver = lines.findLast((l) => /^Booting from [0-9a-f]{4}:7c00$/.test(l));
  if (handedOver && disk >= 0 && consoleLines.length === 0) {
    return {
      reason:
        `the firmware started the disk's boot sector (${quote(handedOver)}) and nothing has ` +
        'shown on the serial console since: a disk with no BIOS boot loader (UEFI only) stops ' +
        'there; if so, give its profile --firmware uefi',
      isFinal: false,
    };
  }
  return null;
}

const BDS =
  /^BdsDxe: (failed to load|failed to start|loading|starting) Boot[0-9A-Fa-f]{4} "[^"]*" from (\S+)(?:: (.+))?$/;

interface BdsLine {
  line: string;
  what: 'failed to load' | 'failed to start' | 'loading' | 'starting';
  /** One of the firmware's own applications (shell, boot manager menu), not a disk's loader. */
  isBuiltIn: boolean;
  status: string | undefined;
}

function ovmfVerdict(lines: string[]): BootVerdict | null {
  const bds: BdsLine[] = [];
  let gaveUp: string | undefined;
  for (const line of lines) {
    if (line.startsWith('BdsDxe: No bootable option or device was found')) gaveUp ??= line;
    const m = BDS.exec(line);
    if (!m) continue;
    bds.push({
      line,
      what: m[1] as BdsLine['what'],
      isBuiltIn: m[2]!.startsWith('Fv('),
      status: m[3],
    });
  }
  const failures = bds.filter((b) => b.what.startsWith('failed') && !b.isBuiltIn);
  const refused = failures.find(
    (b) => b.status === 'Access Denied' || b.status === 'Security Violation',
  );
  if (refused) {
    return { reason: `Secure Boot refused the boot loader: ${quote(refused.line)}`, isFinal: true };
  }
  const fallback = bds.find((b) => b.isBuiltIn && (b.what === 'loading' || b.what === 'starting'));
  if (gaveUp !== undefined || fallback) {
    const firstFailure = failures[0];
    if (firstFailure) {
      return {
        reason: `the firmware found nothing to boot: ${quote(firstFailure.line)}`,
        isFinal: true,
      };
    }
    const returned = bds.find((b) => !b.isBuiltIn && b.what === 'starting');
    if (returned) {
      return {
        reason: `the boot loader gave control back to the firmware: ${quote(returned.line)}`,
        isFinal: true,
      };
    }
    return {
      reason: `the firmware found nothing to boot: ${quote(gaveUp ?? fallback!.line)}`,
      isFinal: true,
    };
  }
  const failure = failures[0];
  if (failure) {
    return {
      reason: `the firmware could not load the boot loader: ${quote(failure.line)}`,
      isFinal: false,
    };
  }
  return null;
}

/** The last `max` bytes of the file as text (from a line start when cut); '' when it is missing. */
export async function readTail(path: string, max = FIRMWARE_LOG_TAIL): Promise<string> {
  let file;
  try {
    file = await open(path, 'r');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return '';
    throw err;
  }
  try {
    const { size } = await file.stat();
    const length = Math.min(size, max);
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await file.read(buffer, 0, length, size - length);
    const text = buffer.subarray(0, bytesRead).toString('latin1');
    if (length === size) return text;
    const cut = text.indexOf('\n');
    return cut < 0 ? text : text.slice(cut + 1);
  } finally {
    await file.close();
  }
}

/**
 * The firmware's verdict on the current boot of the VM whose run directory is `runDir`: its
 * `firmware.log` and its console (the newest log in `consoleDir` when the VM keeps one per
 * boot, else `console.log` in the run directory), each read from its last FIRMWARE_LOG_TAIL
 * bytes. Null when they show no failure or do not exist.
 */
export async function readBootVerdict(
  runDir: string,
  consoleDir?: string,
): Promise<BootVerdict | null> {
  const files = runFiles(runDir);
  let consoleLog = files.console;
  if (consoleDir !== undefined) {
    const latest = (await listConsoleLogs(consoleDir)).at(-1);
    if (latest === undefined) consoleLog = '';
    else consoleLog = join(consoleDir, latest);
  }
  const [firmware, console] = await Promise.all([
    readTail(files.firmwareLog),
    consoleLog === '' ? '' : readTail(consoleLog),
  ]);
  return parseFirmwareLogs({ firmware, console });
}
