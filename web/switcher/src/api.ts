import {
  ErrorBodySchema,
  LocalEngineSchema,
  LocalVmsResponseSchema,
  switcherDisplayPath,
  type LocalEngine,
  type LocalVm,
} from '../../../src/protocol/index.ts';

/*
 * The switcher's calls to Engine, on the page's own origin: the session cookie goes with each
 * (the page never sees it), and every answer is checked against the wire contract.
 */

/** A refusal or failure, as a sentence for the person at the PC. */
export class SwitcherError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

async function failure(res: Response): Promise<SwitcherError> {
  const text = await res.text();
  let message = text.trim() || `Engine answered ${res.status}.`;
  try {
    const body = ErrorBodySchema.safeParse(JSON.parse(text));
    if (body.success) message = body.data.error.message;
  } catch {
    // Not JSON: the sentence as it came.
  }
  return new SwitcherError(res.status, message);
}

async function get<T>(path: string, parse: (json: unknown) => T): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
  } catch {
    throw new SwitcherError(0, 'Engine does not answer. It may be restarting.');
  }
  if (!res.ok) throw await failure(res);
  return parse(await res.json());
}

export interface Snapshot {
  engine: LocalEngine;
  vms: LocalVm[];
}

/**
 * Engine's state and the VMs, read together; the work VMs first, then the personal one, each by
 * name: the order of the cards and of the Ctrl+Alt+digit shortcuts.
 */
export async function readSnapshot(): Promise<Snapshot> {
  const [engine, vms] = await Promise.all([
    get('/v1/engine', (j) => LocalEngineSchema.parse(j)),
    get('/v1/vms', (j) => LocalVmsResponseSchema.parse(j).vms),
  ]);
  const rank = (vm: LocalVm) => (vm.kind === 'work' ? 0 : 1);
  vms.sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  return { engine, vms };
}

/** "Restart now": the VM's staged update switches at once. */
export async function acceptUpdate(vm: string): Promise<void> {
  const res = await fetch(`/v1/vms/${encodeURIComponent(vm)}/accept`, {
    method: 'POST',
    credentials: 'same-origin',
  });
  if (!res.ok) throw await failure(res);
}

/** The WebSocket URL of a VM's display, on this page's host. */
export function displayUrl(vm: string): string {
  return `ws://${location.host}${switcherDisplayPath(vm)}`;
}
