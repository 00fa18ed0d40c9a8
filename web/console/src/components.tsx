import { useEffect, useId, useRef, useState, type ReactNode } from 'react';
import { sentence } from './api.ts';

/*
 * The pieces every page uses. `Page` marks its main region busy until the page's data is in
 * (`aria-busy`): screen readers wait for it, and so do the browser tests and the benchmark.
 */

export function Page(props: {
  title: string;
  busy: boolean;
  actions?: ReactNode;
  children: ReactNode;
}) {
  useEffect(() => {
    document.title = `${props.title} · Bulkhead`;
  }, [props.title]);
  return (
    <main aria-busy={props.busy} aria-labelledby="page-title">
      <header className="page-head">
        <h1 id="page-title">{props.title}</h1>
        {props.actions && <div className="page-actions">{props.actions}</div>}
      </header>
      {props.children}
    </main>
  );
}

/** An API error as a sentence, next to what caused it. Nothing when there is none. */
export function ErrorText({ error }: { error: unknown }) {
  if (error === null || error === undefined) return null;
  return (
    <p className="error" role="alert">
      {sentence(error)}
    </p>
  );
}

/** Shown while a list is empty: what it will hold and what to do first. */
export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}

export function Loading() {
  return <p className="muted">Loading…</p>;
}

/**
 * A confirmation for an action that changes things: it names the thing and the consequence.
 * With `typeToConfirm`, the person types that name first (for what cannot be undone). Focus
 * stays inside while it is open; Escape or Cancel closes it.
 */
export function ConfirmDialog(props: {
  title: string;
  children: ReactNode;
  confirmLabel: string;
  danger?: boolean;
  typeToConfirm?: string;
  busy?: boolean;
  error?: unknown;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDivElement>(null);
  const [typed, setTyped] = useState('');
  const inputId = useId();
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    const previous = document.activeElement as HTMLElement | null;
    const focusables = () =>
      Array.from(
        dialog.querySelectorAll<HTMLElement>('button:not([disabled]), input, select, textarea'),
      );
    focusables()[0]?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        props.onCancel();
      } else if (e.key === 'Tab') {
        const all = focusables();
        const first = all[0];
        const last = all[all.length - 1];
        if (!first || !last) return;
        if (e.shiftKey && document.activeElement === first) {
          e.preventDefault();
          last.focus();
        } else if (!e.shiftKey && document.activeElement === last) {
          e.preventDefault();
          first.focus();
        }
      }
    };
    dialog.addEventListener('keydown', onKey);
    return () => {
      dialog.removeEventListener('keydown', onKey);
      previous?.focus();
    };
    // Set up once per opening; the handlers read the latest props through closures.
  }, []);
  const ready = props.typeToConfirm === undefined || typed === props.typeToConfirm;
  return (
    <div className="backdrop">
      <div className="dialog" role="dialog" aria-modal="true" aria-labelledby={titleId} ref={ref}>
        <h2 id={titleId}>{props.title}</h2>
        <div className="dialog-body">{props.children}</div>
        {props.typeToConfirm !== undefined && (
          <p>
            <label htmlFor={inputId}>
              Type <strong>{props.typeToConfirm}</strong> to confirm
            </label>
            <input
              id={inputId}
              value={typed}
              autoComplete="off"
              onChange={(e) => setTyped(e.target.value)}
            />
          </p>
        )}
        <ErrorText error={props.error} />
        <div className="dialog-actions">
          <button type="button" onClick={props.onCancel}>
            Cancel
          </button>
          <button
            type="button"
            className={props.danger ? 'danger' : 'primary'}
            disabled={!ready || props.busy}
            onClick={props.onConfirm}
          >
            {props.confirmLabel}
          </button>
        </div>
      </div>
    </div>
  );
}

const UNITS = ['B', 'KB', 'MB', 'GB', 'TB'];

/** Bytes in decimal units, as disks and downloads are sold. */
export function bytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1000 && u < UNITS.length - 1) {
    v /= 1000;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${UNITS[u]}`;
}

export function dateTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '—';
  return new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** "3 minutes ago", "in 2 days". */
export function relative(ms: number | null | undefined, now = Date.now()): string {
  if (ms === null || ms === undefined) return '—';
  const diff = ms - now;
  const abs = Math.abs(diff);
  const steps: [number, Intl.RelativeTimeFormatUnit][] = [
    [60_000, 'second'],
    [3_600_000, 'minute'],
    [86_400_000, 'hour'],
    [Infinity, 'day'],
  ];
  const size: Record<string, number> = {
    second: 1000,
    minute: 60_000,
    hour: 3_600_000,
    day: 86_400_000,
  };
  const unit = steps.find(([limit]) => abs < limit)![1];
  return new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' }).format(
    Math.round(diff / size[unit]!),
    unit,
  );
}

export function count(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

/** A status word as a coloured badge; the word itself carries the meaning, not the colour. */
export function Badge({ value }: { value: string }) {
  return <span className={`badge badge-${value.replace(/[^a-z]/g, '')}`}>{value}</span>;
}
