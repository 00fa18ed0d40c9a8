import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock } from '../clock.ts';
import type { Log } from '../log.ts';
import type { EngineState, EngineVm } from '../state.ts';
import { AtomicJsonFile } from '../../durable/index.ts';
import { ReleaseSchema, type Release } from '../volumes/index.ts';
import { TransactionSchema, type Transaction } from './machine.ts';
import {
  isValidName,
  LocalUpdateOutcomeSchema,
  type LocalUpdateOutcome,
} from '../../protocol/index.ts';

/**
 * What the update engine keeps per VM in `engine-state.json` beyond the fields `engine status`
 * shows: the full releases (to rebuild overlays and roll back without Center) and the last
 * failed attempt (so a failing download is retried later, not in a tight loop).
 */
export interface VmRecord extends EngineVm {
  profileId?: string;
  current?: Release | null;
  previous?: Release | null;
  lastFailure?: { releaseKey: string; at: number } | null;
  /** How the last update that switched the VM ended, for the switcher to tell the user. */
  lastOutcome?: LocalUpdateOutcome | null;
}

/** Engine's per-VM records, read-modify-written one update at a time. */
export class VmRecords {
  readonly #file: AtomicJsonFile<EngineState>;
  readonly #clock: Clock;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(file: AtomicJsonFile<EngineState>, clock: Clock) {
    this.#file = file;
    this.#clock = clock;
  }

  async all(): Promise<VmRecord[]> {
    const state = await this.#file.read();
    return (state?.vms ?? []).map((v) => parseRecord(v));
  }

  async get(vm: string): Promise<VmRecord> {
    return (await this.all()).find((v) => v.name === vm) ?? emptyRecord(vm, this.#clock.now());
  }

  /** Applies `fn` to one VM's record and writes the file durably. */
  update(vm: string, fn: (record: VmRecord) => VmRecord): Promise<VmRecord> {
    const run = this.#chain.then(async () => {
      const state = (await this.#file.read()) ?? {
        version: 1 as const,
        vms: [],
        updatedAt: 0,
      };
      const now = this.#clock.now();
      const current = state.vms.find((v) => v.name === vm);
      const next = fn(current ? parseRecord(current) : emptyRecord(vm, now));
      const vms = state.vms.filter((v) => v.name !== vm);
      vms.push(next);
      vms.sort((a, b) => a.name.localeCompare(b.name));
      await this.#file.write({ ...state, vms, updatedAt: now });
      return next;
    });
    this.#chain = run.catch(() => {});
    return run;
  }

  /** Forgets one VM's record (a VM no longer on this PC); a VM without one is left as is. */
  remove(vm: string): Promise<void> {
    const run = this.#chain.then(async () => {
      const state = await this.#file.read();
      if (!state?.vms.some((v) => v.name === vm)) return;
      const vms = state.vms.filter((v) => v.name !== vm);
      await this.#file.write({ ...state, vms, updatedAt: this.#clock.now() });
    });
    this.#chain = run.catch(() => {});
    return run;
  }
}

function parseRecord(v: EngineVm): VmRecord {
  const r = v as VmRecord;
  // Loose fields are ours: check them, and forget ones that do not parse.
  const release = (x: unknown) => {
    const p = ReleaseSchema.safeParse(x);
    return p.success ? p.data : null;
  };
  const outcome = LocalUpdateOutcomeSchema.safeParse(r.lastOutcome);
  return {
    ...r,
    current: release(r.current),
    previous: release(r.previous),
    lastOutcome: outcome.success ? outcome.data : null,
  };
}

export function emptyRecord(vm: string, now: number): VmRecord {
  return {
    name: vm,
    currentVersionId: null,
    previousVersionId: null,
    transaction: { state: 'idle', targetVersionId: null, since: now },
    badVersions: [],
    lastError: null,
    current: null,
    previous: null,
    lastFailure: null,
    lastOutcome: null,
  };
}

/** The persisted transaction of each VM: `<data>/updates/<vm>.json`, absent when idle. */
export class TransactionFiles {
  readonly dir: string;
  readonly #clock: Clock;
  readonly #log: Log | undefined;

  constructor(dataDir: string, clock: Clock, log?: Log) {
    this.dir = join(dataDir, 'updates');
    this.#clock = clock;
    this.#log = log;
  }

  file(vm: string): AtomicJsonFile<Transaction> {
    if (!isValidName(vm)) throw new Error(`invalid VM name ${JSON.stringify(vm)}`);
    return new AtomicJsonFile<Transaction>({
      path: join(this.dir, `${vm}.json`),
      schema: TransactionSchema,
      what: `the update transaction of VM ${vm}`,
      hint: 'remove the file; Engine then sees the VM as idle and plans the update again',
      clock: this.#clock,
      ...(this.#log ? { log: this.#log } : {}),
    });
  }

  read(vm: string): Promise<Transaction | undefined> {
    return this.file(vm).read();
  }

  async write(vm: string, tx: Transaction | null): Promise<void> {
    const f = this.file(vm);
    if (tx) {
      await mkdir(this.dir, { recursive: true });
      await f.write(tx);
    } else await f.remove();
  }
}
