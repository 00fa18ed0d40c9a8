import { z } from 'zod';
import { NAME_PATTERN } from './names.ts';

/*
 * Engine's local API: what the switcher (the PC user's screen in front of the VMs, served by
 * Engine) calls, on `<dataDir>/run/engine.sock`, a unix socket, and through the switcher's own
 * loopback HTTP server (behind its per-boot secret): Engine's connection, lock and lease, the
 * VMs with their state and update prompts, each running VM's screen as a PNG, keyboard and
 * pointer input to it, and the user's "restart now" for a staged update. Errors answer with the
 * one error body of every Bulkhead API (`ErrorBodySchema`): 400 for a bad request, 404 for a VM
 * this PC does not have, 409 for one that is not running, whose screen another tool is using or
 * that has no update waiting, 413 for a body over LOCAL_API_BODY_LIMIT, 415 for one that is not
 * JSON.
 */

/** The routes, by what they do: `{vm}` is a VM's name. */
export const LOCAL_API_ROUTES = {
  engine: 'GET /v1/engine',
  vms: 'GET /v1/vms',
  screen: 'GET /v1/vms/{vm}/screen.png',
  input: 'POST /v1/vms/{vm}/input',
  apps: 'POST /v1/vms/{vm}/apps',
  accept: 'POST /v1/vms/{vm}/accept',
} as const;

/**
 * The switcher's WebSocket to a running VM's display (served by the switcher only, never on the
 * unix socket): binary frames carrying the RFB protocol (VNC) both ways, as noVNC speaks it.
 */
export const SWITCHER_DISPLAY_ROUTE = 'GET /v1/vms/{vm}/display';

/** The path of VM `vm`'s display WebSocket on the switcher. */
export function switcherDisplayPath(vm: string): string {
  return `/v1/vms/${encodeURIComponent(vm)}/display`;
}

/**
 * The PC user's choice of a VM's optional apps (`POST /v1/vms/{vm}/apps`): replaces the apps
 * chosen for it. Engine passes it to Center, which takes it only where the VM's profile lets the
 * user choose; the answer is Center's (`ChooseAppsResponse`: chosen and offered apps by name),
 * and the VM gets the apps with its next update.
 */
export const LocalAppsRequestSchema = z.strictObject({
  apps: z.array(z.string().max(63)).max(64),
});
export type LocalAppsRequest = z.infer<typeof LocalAppsRequestSchema>;

/** Largest request body the local API reads, in bytes. */
export const LOCAL_API_BODY_LIMIT = 64 * 1024;

/**
 * A staged update waiting for the user (the switcher's prompt): it switches when the user
 * accepts it (`POST /v1/vms/{vm}/accept`, a restart of the VM), when the VM is next off, or at
 * `deadlineAt`.
 */
export const LocalUpdatePromptSchema = z.object({
  /** The version it brings, `image@version` (`+app@version` for each app layer). */
  to: z.string(),
  /** When it was staged (ms since the epoch). */
  stagedAt: z.number(),
  /** When it switches without the user (ms since the epoch); null when it waits for them. */
  deadlineAt: z.number().nullable(),
});
export type LocalUpdatePrompt = z.infer<typeof LocalUpdatePromptSchema>;

/** How a VM's last update that reached its restart ended. */
export const LocalUpdateOutcomeSchema = z.object({
  /** `updated`: the new version runs healthy; `rolled-back`: it failed and the VM went back. */
  result: z.enum(['updated', 'rolled-back']),
  /** `updated`: the version it runs now; `rolled-back`: the version it went back to. */
  version: z.string(),
  /** `rolled-back`: the version that failed, `image@version`; null after an update. */
  failed: z.string().nullable(),
  /** `rolled-back`: why the new version failed, in a sentence; null after an update. */
  reason: z.string().nullable(),
  /** When it ended (ms since the epoch). */
  at: z.number(),
});
export type LocalUpdateOutcome = z.infer<typeof LocalUpdateOutcomeSchema>;

/** A VM as the switcher shows it: what `bulkhead engine status` says about it. */
export const LocalVmSchema = z.object({
  name: z.string(),
  /** `work`: managed by the organisation; `personal`: the user's own VM. */
  kind: z.enum(['work', 'personal']),
  /** What it runs, `image@version` (`+app@version` per app layer); null before its first install. */
  version: z.string().nullable(),
  /** `running`, `updating`, `rolled-back`, `locked`, `killed`, `stopped`, `crashed`. */
  activity: z.string(),
  /** What the VM is doing, in one sentence naming versions as `image@version`. */
  summary: z.string(),
  currentVersionId: z.string().nullable(),
  desiredVersionId: z.string().nullable(),
  /** The update transaction's state (`idle` when none runs). */
  transaction: z.string(),
  lastError: z.string().nullable(),
  /** Past this (ms since the epoch) without contact with Center, the VM does not start. */
  leaseExpiresAt: z.number().nullable(),
  /**
   * True from the lease's warning window on (a tenth of the lease, at most a day, before it
   * runs out) until a newer document from Center renews it: the switcher tells the user to go
   * online. Stays true once the lease ran out (`leaseExpired`).
   */
  leaseWarning: z.boolean(),
  /** The lease ran out: the VM was shut down and starts again once Center renews it. */
  leaseExpired: z.boolean(),
  /** A staged update waiting for the user; null when none waits. */
  update: LocalUpdatePromptSchema.nullable(),
  /** How its last update ended; null when none has since it was installed. */
  lastOutcome: LocalUpdateOutcomeSchema.nullable(),
});
export type LocalVm = z.infer<typeof LocalVmSchema>;

/** Engine as the switcher shows it (`GET /v1/engine`). */
export const LocalEngineSchema = z.object({
  /** Whether the last contact attempt reached Center. */
  online: z.boolean(),
  /** When Engine last reached Center (ms since the epoch); null when it never has. */
  lastContactAt: z.number().nullable(),
  /**
   * Center's push channel (lock and kill arrive at once through it): `open`, `connecting`,
   * `retrying` after a failure, `unsupported` by this Center, `off` (not held).
   */
  push: z.enum(['open', 'connecting', 'retrying', 'unsupported', 'off']),
  /** The administrator locked this PC: no VM runs until they unlock it. */
  locked: z.boolean(),
  /** The administrator killed this PC: its VMs' keys are destroyed and none runs again. */
  killed: z.boolean(),
  /**
   * The earliest lease among the VMs (the work VM's): past `expiresAt` without contact with
   * Center, the VMs that have it shut down and do not start; null when no VM has a lease.
   */
  lease: z
    .object({
      expiresAt: z.number(),
      /** The VM whose lease it is. */
      vm: z.string(),
      /** In the warning window before it runs out: go online to renew it. */
      warning: z.boolean(),
      expired: z.boolean(),
    })
    .nullable(),
  /** Engine's time when it answered (ms since the epoch), for days left. */
  now: z.number(),
});
export type LocalEngine = z.infer<typeof LocalEngineSchema>;

export const LocalVmsResponseSchema = z.object({ vms: z.array(LocalVmSchema) });
export type LocalVmsResponse = z.infer<typeof LocalVmsResponseSchema>;

/** A VM's name in a path (a profile's name, as Engine names the VM's directory). */
export const LocalVmNameSchema = z
  .string()
  .regex(NAME_PATTERN, 'must be a VM name: 1-128 characters of A-Z a-z 0-9 . _ + -');

/**
 * The keys a combination may name: QEMU's key codes (QKeyCode) of a PC keyboard, US layout:
 * letters, digits, F1-F12, modifiers (`ctrl`, `alt`, `shift`, `meta_l` is the Windows key;
 * `_r` the right-hand ones), `ret`, `esc`, `tab`, `spc`, `backspace`, `delete`, arrows and the
 * keypad (`kp_*`).
 */
export const KEY_NAMES = [
  ...'abcdefghijklmnopqrstuvwxyz0123456789'.split(''),
  ...Array.from({ length: 12 }, (_, i) => `f${i + 1}`),
  ...['shift', 'shift_r', 'ctrl', 'ctrl_r', 'alt', 'alt_r', 'meta_l', 'meta_r', 'menu'],
  ...['esc', 'tab', 'ret', 'spc', 'backspace', 'caps_lock', 'num_lock', 'scroll_lock'],
  ...['print', 'sysrq', 'pause', 'insert', 'delete', 'home', 'end', 'pgup', 'pgdn'],
  ...['left', 'up', 'down', 'right'],
  ...['minus', 'equal', 'bracket_left', 'bracket_right', 'backslash', 'semicolon'],
  ...['apostrophe', 'grave_accent', 'comma', 'dot', 'slash', 'asterisk', 'less'],
  ...['kp_divide', 'kp_multiply', 'kp_subtract', 'kp_add', 'kp_enter', 'kp_decimal'],
  ...Array.from({ length: 10 }, (_, i) => `kp_${i}`),
] as const;
export type KeyName = (typeof KEY_NAMES)[number];

/** Most characters one input may type (at a key each 30 ms, half a minute). */
export const MAX_TYPED_TEXT = 1000;

/** Largest pixel coordinate (beyond any screen a VM shows). */
const MAX_PIXEL = 16_384;

/**
 * One input to a VM's screen: exactly one of
 *   - `text`: typed key by key on a US layout (printable ASCII; `\n` is Enter, `\t` Tab);
 *   - `keys`: one combination, pressed in order and released in reverse (`["ctrl", "alt",
 *     "f2"]`);
 *   - `pointer`: the pointer put on pixel (x, y) of the screen as it is now (the screenshot's
 *     size), then a click of `button` there when one is given.
 */
export const ScreenInputSchema = z
  .strictObject({
    text: z
      .string()
      .min(1)
      .max(MAX_TYPED_TEXT)
      .regex(/^[\x20-\x7e\n\t]*$/, 'must be printable ASCII, newlines and tabs (a US keyboard)')
      .optional(),
    keys: z.array(z.enum(KEY_NAMES)).min(1).max(8).optional(),
    pointer: z
      .strictObject({
        x: z.number().int().min(0).max(MAX_PIXEL),
        y: z.number().int().min(0).max(MAX_PIXEL),
        button: z.enum(['left', 'middle', 'right']).optional(),
      })
      .optional(),
  })
  .refine(
    (i) => [i.text, i.keys, i.pointer].filter((v) => v !== undefined).length === 1,
    'give exactly one of text, keys or pointer',
  );
export type ScreenInput = z.infer<typeof ScreenInputSchema>;
