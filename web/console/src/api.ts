import { useCallback, useEffect, useRef, useState } from 'react';
import {
  BulkheadError,
  createApiClient,
  isBulkheadError,
  type AdminRoleName,
  type ApiClient,
  type Endpoint,
  type RequestOf,
  type ResponseOf,
} from '../../../src/protocol/index.ts';

/*
 * The console talks to Center with the CLI's own client (src/protocol/client.ts). The session
 * token lives in this tab's sessionStorage and travels as a bearer header, never as a cookie,
 * so another site cannot make the browser act with it (no CSRF), and it ends with the tab.
 */

const SESSION_KEY = 'bulkhead.session';

export interface Session {
  token: string;
  username: string;
  role: AdminRoleName;
}

export function loadToken(): string | null {
  return sessionStorage.getItem(SESSION_KEY);
}

export function saveToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(SESSION_KEY);
  else sessionStorage.setItem(SESSION_KEY, token);
}

export function clientFor(token: string | null): ApiClient {
  return createApiClient({
    baseUrl: location.origin,
    headers: token === null ? {} : { authorization: `Bearer ${token}` },
    unreachableHint: 'check the network connection; Center may be restarting',
  });
}

/** Roles in order of what they may do: an admin may do all an operator may, and so on. */
const RANK: Record<AdminRoleName, number> = { viewer: 0, operator: 1, admin: 2 };

/** Whether `role` may call an endpoint that needs `needed`. */
export function can(role: AdminRoleName, needed: AdminRoleName): boolean {
  return RANK[role] >= RANK[needed];
}

/** An error as a sentence a person reads: what went wrong, then what to do. */
export function sentence(err: unknown): string {
  if (isBulkheadError(err)) {
    const text = err.message.charAt(0).toUpperCase() + err.message.slice(1);
    return err.hint
      ? `${text}. ${err.hint.charAt(0).toUpperCase()}${err.hint.slice(1)}.`
      : `${text}.`;
  }
  return err instanceof Error ? err.message : String(err);
}

/** The field a validation error names, if any (`body.name: …` → `name`). */
export function fieldOf(err: unknown): string | null {
  if (!(err instanceof BulkheadError)) return null;
  const m = /^(?:body\.)?([A-Za-z]+)[:.\s]/.exec(err.message);
  return m ? (m[1] ?? null) : null;
}

/** Set by the app: what to do when Center says the session is gone. */
let onUnauthenticated: () => void = () => {};
export function setUnauthenticatedHandler(handler: () => void): void {
  onUnauthenticated = handler;
}

export function reportIfSignedOut(err: unknown): void {
  if (isBulkheadError(err, 'ERR_UNAUTHENTICATED')) onUnauthenticated();
}

export interface Query<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  /** Fetches again now (after a change the page made). */
  reload: () => void;
}

/**
 * Reads an endpoint and keeps it fresh: every `pollMs` while the tab is visible it asks again
 * with the ETag of what it has, and Center answers 304 when nothing changed, so a page stays
 * live without reloading and without moving data it already holds.
 */
export function useQuery<E extends Endpoint>(
  client: ApiClient,
  endpoint: E,
  request: RequestOf<E>,
  options: { pollMs?: number; enabled?: boolean } = {},
): Query<ResponseOf<E>> {
  const key = JSON.stringify(request ?? null);
  const [state, setState] = useState<{ key: string; data?: ResponseOf<E>; error: unknown }>({
    key,
    error: null,
  });
  const etag = useRef<{ key: string; etag: string | null }>({ key, etag: null });
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  const enabled = options.enabled ?? true;
  const pollMs = options.pollMs ?? 3000;

  useEffect(() => {
    if (!enabled) return;
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const abort = new AbortController();
    if (etag.current.key !== key) etag.current = { key, etag: null };
    const fetchOnce = async () => {
      try {
        const answer = await client.poll(endpoint, request, etag.current.etag, {
          signal: abort.signal,
        });
        if (stopped) return;
        if (!answer.notModified) {
          etag.current = { key, etag: answer.etag };
          setState({ key, data: answer.body, error: null });
        } else
          setState((s) => (s.key === key && s.error === null ? s : { ...s, key, error: null }));
      } catch (err) {
        if (stopped) return;
        reportIfSignedOut(err);
        setState((s) => ({ key, data: s.key === key ? s.data : undefined, error: err }));
      }
      if (!stopped && pollMs > 0) timer = setTimeout(loop, pollMs);
    };
    const loop = () => {
      if (document.visibilityState === 'hidden') timer = setTimeout(loop, pollMs);
      else void fetchOnce();
    };
    void fetchOnce();
    return () => {
      stopped = true;
      abort.abort();
      if (timer) clearTimeout(timer);
    };
    // `request` is compared through `key`; the endpoint object is a module constant.
  }, [client, endpoint, key, tick, enabled, pollMs]);

  const current = state.key === key;
  return {
    data: current ? state.data : undefined,
    error: current ? state.error : null,
    loading: !current || (state.data === undefined && state.error === null),
    reload,
  };
}

/** Runs one change (a POST, PATCH or DELETE), keeping its error beside the form that sent it. */
export function useMutation<A extends unknown[], R>(run: (...args: A) => Promise<R>) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const mutate = useCallback(
    async (...args: A): Promise<R | undefined> => {
      setBusy(true);
      setError(null);
      try {
        return await run(...args);
      } catch (err) {
        reportIfSignedOut(err);
        setError(err);
        return undefined;
      } finally {
        setBusy(false);
      }
    },
    [run],
  );
  return { mutate, busy, error, clearError: () => setError(null) };
}
