import type RFB from '@novnc/novnc';
import { StrictMode, useCallback, useEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import type { LocalVm } from '../../../src/protocol/index.ts';
import { acceptUpdate, readSnapshot, SwitcherError, type Snapshot } from './api.ts';
import { releaseShortcutKeys, Screen } from './Screen.tsx';
import { connectionWords, kindWords, leaseWords, outcomeWords, stateWords, when } from './words.ts';
import './switcher.css';

/** How often the page asks Engine for news. */
const POLL_MS = 2000;

/**
 * What the switching shortcut asks for: Ctrl+Alt+Left/Right the previous/next VM, Ctrl+Alt+1…9
 * the VM in that place, Ctrl+Alt+0 the overview. Null for any other key.
 */
function shortcutOf(e: KeyboardEvent): 'previous' | 'next' | 'overview' | number | null {
  if (!e.ctrlKey || !e.altKey || e.metaKey) return null;
  if (e.code === 'ArrowLeft') return 'previous';
  if (e.code === 'ArrowRight') return 'next';
  const digit = /^(?:Digit|Numpad)([0-9])$/.exec(e.code)?.[1];
  if (digit === undefined) return null;
  return digit === '0' ? 'overview' : Number(digit) - 1;
}

function App() {
  const [snap, setSnap] = useState<Snapshot | null>(null);
  const [problem, setProblem] = useState<SwitcherError | null>(null);
  const [shown, setShown] = useState<string | null>(null);
  /** Updates the user put off ("later"), by VM and version, hidden from the screen view. */
  const [later, setLater] = useState<ReadonlySet<string>>(new Set());
  /** VMs the user asked to restart, with when, until their outcome arrives. */
  const [restarting, setRestarting] = useState<Record<string, number>>({});
  const [actionError, setActionError] = useState<Record<string, string>>({});
  const rfbRef = useRef<RFB | null>(null);
  const vmsRef = useRef<LocalVm[]>([]);
  const shownRef = useRef<string | null>(null);
  vmsRef.current = snap?.vms ?? [];
  shownRef.current = shown;

  const refresh = useCallback(async () => {
    try {
      setSnap(await readSnapshot());
      setProblem(null);
    } catch (err) {
      setProblem(err instanceof SwitcherError ? err : new SwitcherError(0, String(err)));
    }
  }, []);

  useEffect(() => {
    void refresh();
    const timer = setInterval(() => void refresh(), POLL_MS);
    return () => clearInterval(timer);
  }, [refresh]);

  // Caught before noVNC (capture, on the window): the shortcut never reaches a VM.
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const wanted = shortcutOf(e);
      if (wanted === null) return;
      e.preventDefault();
      e.stopPropagation();
      if (e.type !== 'keydown' || e.repeat) return;
      const vms = vmsRef.current;
      const at = vms.findIndex((v) => v.name === shownRef.current);
      let next: string | null;
      if (wanted === 'overview') next = null;
      else if (typeof wanted === 'number') next = vms[wanted]?.name ?? shownRef.current;
      else if (vms.length === 0) next = null;
      else {
        const step = wanted === 'next' ? 1 : -1;
        const from = at === -1 ? (step === 1 ? -1 : 0) : at;
        next = vms[(from + step + vms.length) % vms.length]!.name;
      }
      if (next !== shownRef.current) {
        releaseShortcutKeys(rfbRef.current);
        setShown(next);
      }
    };
    window.addEventListener('keydown', onKey, { capture: true });
    window.addEventListener('keyup', onKey, { capture: true });
    return () => {
      window.removeEventListener('keydown', onKey, { capture: true });
      window.removeEventListener('keyup', onKey, { capture: true });
    };
  }, []);

  // A restart asked for is over once the VM has an outcome newer than the request.
  useEffect(() => {
    if (!snap) return;
    setRestarting((r) => {
      const left = Object.fromEntries(
        Object.entries(r).filter(([name, since]) => {
          const vm = snap.vms.find((v) => v.name === name);
          return vm !== undefined && (vm.lastOutcome?.at ?? 0) < since;
        }),
      );
      return Object.keys(left).length === Object.keys(r).length ? r : left;
    });
  }, [snap]);

  const restartNow = async (vm: LocalVm) => {
    setActionError((e) => ({ ...e, [vm.name]: '' }));
    try {
      await acceptUpdate(vm.name);
      setRestarting((r) => ({ ...r, [vm.name]: Date.now() - 1000 }));
      void refresh();
    } catch (err) {
      setActionError((e) => ({ ...e, [vm.name]: (err as Error).message }));
    }
  };

  const prompts = {
    later,
    restarting,
    actionError,
    restartNow: (vm: LocalVm) => void restartNow(vm),
    putOff: (vm: LocalVm) => setLater((s) => new Set(s).add(`${vm.name}@${vm.update?.to}`)),
  };

  if (problem?.status === 401 || problem?.status === 403) {
    return (
      <main className="overview">
        <h1>Bulkhead</h1>
        <p className="notice warning" role="alert">
          {problem.message}
        </p>
      </main>
    );
  }

  const now = snap?.engine.now ?? Date.now();
  const shownVm = snap?.vms.find((v) => v.name === shown);
  if (shown !== null) {
    const pending = snap?.vms.filter(
      (v) => (v.update && !later.has(`${v.name}@${v.update.to}`)) || restarting[v.name],
    );
    const recent = shownVm && restarting[shownVm.name] === undefined ? shownVm : undefined;
    return (
      <div className="screen-view">
        <nav className="screen-bar" aria-label="Virtual machines">
          <button type="button" onClick={() => setShown(null)}>
            All VMs
          </button>
          <ul className="tabs">
            {snap?.vms.map((v, i) => (
              <li key={v.name}>
                <button
                  type="button"
                  aria-current={v.name === shown ? 'page' : undefined}
                  onClick={() => setShown(v.name)}
                  title={`Ctrl+Alt+${i + 1}`}
                >
                  {v.name} <span className="kind">{kindWords(v)}</span>
                </button>
              </li>
            ))}
          </ul>
          <span className="hint">Ctrl+Alt+← / → switches VMs · Ctrl+Alt+0 shows all</span>
          <Connection snap={snap} />
        </nav>
        <div className="screen-notices" aria-live="polite">
          {pending?.map((v) => (
            <UpdatePrompt key={v.name} vm={v} now={now} {...prompts} compact />
          ))}
          {recent?.lastOutcome && recent.lastOutcome.at > loadedAt && (
            <p className={`notice ${recent.lastOutcome.result === 'updated' ? 'good' : 'warning'}`}>
              {outcomeWords(recent, now)}
            </p>
          )}
        </div>
        <Screen vm={shown} rfbRef={rfbRef} />
      </div>
    );
  }

  const lease = snap ? leaseWords(snap.engine) : null;
  return (
    <main className="overview">
      <header className="top">
        <h1>Your VMs</h1>
        <Connection snap={snap} />
      </header>
      {snap?.engine.killed && (
        <p className="notice warning" role="alert">
          Your administrator turned this PC off for good: its VMs do not start again.
        </p>
      )}
      {snap?.engine.locked && !snap.engine.killed && (
        <p className="notice warning" role="alert">
          Locked by your administrator. The VMs stay off until they unlock this PC.
        </p>
      )}
      {lease && (
        <p className={`notice ${lease.warning ? 'warning' : 'quiet'}`} role="status">
          {lease.text}
        </p>
      )}
      {problem && (
        <p className="notice warning" role="alert">
          {problem.message}
        </p>
      )}
      {snap === null && !problem && <p role="status">Loading…</p>}
      {snap?.vms.length === 0 && (
        <p className="notice quiet">
          This PC has no VMs yet. They appear here once your organisation assigns them.
        </p>
      )}
      <ul className="cards">
        {snap?.vms.map((vm, i) => (
          <li key={vm.name} className={`card ${vm.kind}`}>
            <button
              type="button"
              className="open"
              aria-label={`Open ${vm.name}`}
              onClick={() => setShown(vm.name)}
            >
              <span className="name">{vm.name}</span>
              <span className="kind">{kindWords(vm)}</span>
              <span className="state">{stateWords(vm)}</span>
              <span className="version">{vm.version ?? 'nothing installed yet'}</span>
              <span className="key">Ctrl+Alt+{i + 1}</span>
            </button>
            <div aria-live="polite">
              <UpdatePrompt vm={vm} now={now} {...prompts} />
              {outcomeWords(vm, now) && restarting[vm.name] === undefined && (
                <p
                  className={`outcome ${vm.lastOutcome?.result === 'updated' ? 'good' : 'warning'}`}
                >
                  {outcomeWords(vm, now)}
                </p>
              )}
            </div>
          </li>
        ))}
      </ul>
      <footer className="help">
        <h2>Keyboard</h2>
        <p>
          <kbd>Ctrl</kbd>+<kbd>Alt</kbd>+<kbd>→</kbd> and <kbd>Ctrl</kbd>+<kbd>Alt</kbd>+
          <kbd>←</kbd> switch to the next and previous VM, <kbd>Ctrl</kbd>+<kbd>Alt</kbd>+
          <kbd>1</kbd>…<kbd>9</kbd> to the VM in that place, <kbd>Ctrl</kbd>+<kbd>Alt</kbd>+
          <kbd>0</kbd> back here. The keyboard and mouse only ever reach the VM on the screen.
        </p>
      </footer>
    </main>
  );
}

/** When the page was opened: outcomes after it are news on the screen view. */
const loadedAt = Date.now();

function Connection({ snap }: { snap: Snapshot | null }) {
  if (!snap) return null;
  const { engine } = snap;
  return (
    <span
      className={`connection ${engine.online ? 'online' : 'offline'}`}
      title={engine.push === 'open' ? 'Instant updates from your organisation are on' : undefined}
    >
      {connectionWords(engine)}
    </span>
  );
}

interface PromptProps {
  vm: LocalVm;
  now: number;
  later: ReadonlySet<string>;
  restarting: Record<string, number>;
  actionError: Record<string, string>;
  restartNow: (vm: LocalVm) => void;
  putOff: (vm: LocalVm) => void;
  compact?: boolean;
}

/** "An update is ready for work: restart now / later", or the restart under way. */
function UpdatePrompt(props: PromptProps) {
  const { vm, now, later, restarting, actionError, restartNow, putOff, compact } = props;
  if (restarting[vm.name] !== undefined) {
    return (
      <p className="notice prompt" role="status">
        Restarting {vm.name} to install the update…
      </p>
    );
  }
  const update = vm.update;
  if (!update) return null;
  const error = actionError[vm.name];
  const isPutOff = later.has(`${vm.name}@${update.to}`);
  return (
    <div className="notice prompt" role="group" aria-label={`Update for ${vm.name}`}>
      <p>
        An update is ready for {vm.name} ({update.to}).
        {update.deadlineAt !== null &&
          ` It restarts by itself ${when(update.deadlineAt, now)} if you do not restart it first.`}
        {!compact && ' Save your work first: restarting closes what is open in it.'}
      </p>
      <div className="actions">
        <button type="button" className="primary" onClick={() => restartNow(vm)}>
          Restart now
        </button>
        {!isPutOff && (
          <button type="button" onClick={() => putOff(vm)}>
            Later
          </button>
        )}
      </div>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

createRoot(document.getElementById('root') as HTMLElement).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
