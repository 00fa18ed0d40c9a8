import { useId, useState, type ReactNode } from 'react';
import { adminEndpoints, type ApiClient } from '../../../src/protocol/index.ts';
import { sentence, useQuery } from './api.ts';
import { Link, withQuery } from './router.tsx';

/*
 * Pieces the catalog, rollout and audit pages share: a labelled field, the pager of a list that
 * pages on the server (its cursor in the URL), and a secret shown once with a copy button.
 */

/** A form field with its label; `children` is given the input's id. */
export function Field(props: {
  label: string;
  hint?: ReactNode;
  children: (id: string) => ReactNode;
}) {
  const id = useId();
  return (
    <p className="field">
      <label htmlFor={id}>{props.label}</label>
      {props.children(id)}
      {props.hint && <span className="hint">{props.hint}</span>}
    </p>
  );
}

/**
 * "Newer" / "Older" links of a keyset-paged list. The cursors seen so far travel in the URL
 * (`cursor` and `back`), so a page can be reloaded or shared and "Newer" needs no request.
 */
export function Pager(props: {
  path: string;
  query: URLSearchParams;
  next: string | null | undefined;
  olderLabel?: string;
  newerLabel?: string;
}) {
  const params = Object.fromEntries(props.query.entries());
  const trail = (params['back'] ?? '').split('~').filter(Boolean);
  const cursor = params['cursor'];
  const newer =
    cursor === undefined
      ? null
      : withQuery(props.path, {
          ...params,
          cursor: trail.at(-1),
          back: trail.slice(0, -1).join('~'),
        });
  const older =
    props.next === null || props.next === undefined
      ? null
      : withQuery(props.path, {
          ...params,
          cursor: props.next,
          back: [...trail, ...(cursor ? [cursor] : [])].join('~'),
        });
  if (newer === null && older === null) return null;
  return (
    <nav className="pager" aria-label="Pages">
      {newer !== null && <Link to={newer}>{props.newerLabel ?? '← Newer'}</Link>}
      {older !== null && <Link to={older}>{props.olderLabel ?? 'Older →'}</Link>}
    </nav>
  );
}

/** A secret Center shows only once, with a button that copies it. */
export function Secret(props: { label: string; value: string }) {
  const [copied, setCopied] = useState<'yes' | 'failed' | null>(null);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(props.value);
      setCopied('yes');
    } catch {
      setCopied('failed');
    }
  };
  return (
    <div className="secret-row">
      {/* A read-only text box: named, focusable, and its text selectable by keyboard. */}
      <code
        className="secret"
        role="textbox"
        aria-readonly="true"
        aria-label={props.label}
        tabIndex={0}
      >
        {props.value}
      </code>
      <button type="button" onClick={() => void copy()}>
        Copy
      </button>
      <span role="status" className="muted">
        {copied === 'yes' ? 'Copied' : copied === 'failed' ? 'Select it and copy by hand' : ''}
      </span>
    </div>
  );
}

/** Administrators' usernames by id, for the `createdBy` of rollouts and tokens. */
export function useUserNames(client: ApiClient): ReadonlyMap<string, string> {
  const users = useQuery(client, adminEndpoints.listUsers, {}, { pollMs: 0 });
  return new Map((users.data?.users ?? []).map((u) => [u.id, u.username]));
}

/**
 * A validation error beside the field it names: the sentence without the field's path
 * (`body.phases: must be …` reads `Must be …` under the phases field).
 */
export function FieldError({ error }: { error: unknown }) {
  const text = sentence(error).replace(/^(?:body\.)?[A-Za-z.]+: /i, '');
  return (
    <p className="error" role="alert">
      {text.charAt(0).toUpperCase() + text.slice(1)}
    </p>
  );
}
