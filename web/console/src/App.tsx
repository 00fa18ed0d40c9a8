import { useCallback, useEffect, useMemo, useState, type ReactNode } from 'react';
import { adminEndpoints } from '../../../src/protocol/index.ts';
import {
  can,
  clientFor,
  loadToken,
  saveToken,
  sentence,
  setUnauthenticatedHandler,
  type Session,
} from './api.ts';
import { Link, navigate, useRoute } from './router.tsx';
import { Login } from './pages/Login.tsx';
import type { RouteContext } from './page-context.ts';
import { routes } from './routes.tsx';

/*
 * The console: a session (or the login page), the navigation, and the page of the address.
 * Each page gets the client, the session and the route; what a role may not do is not shown.
 */

export function App() {
  const [token, setToken] = useState(loadToken);
  const [session, setSession] = useState<Session | null>(null);
  const [problem, setProblem] = useState<unknown>(null);
  const client = useMemo(() => clientFor(token), [token]);

  const signOut = useCallback(() => {
    saveToken(null);
    setToken(null);
    setSession(null);
  }, []);
  useEffect(() => setUnauthenticatedHandler(signOut), [signOut]);

  useEffect(() => {
    if (token === null) return;
    let stopped = false;
    client
      .call(adminEndpoints.me)
      .then((me) => {
        if (!stopped) setSession({ token, username: me.username, role: me.role });
      })
      .catch((err: unknown) => {
        if (stopped) return;
        if ((err as { code?: string }).code === 'ERR_UNAUTHENTICATED') signOut();
        else setProblem(err);
      });
    return () => {
      stopped = true;
    };
  }, [client, token, signOut]);

  if (token === null) {
    return (
      <Login
        onSignedIn={(t) => {
          saveToken(t);
          setToken(t);
        }}
      />
    );
  }
  if (session === null) {
    return (
      <main aria-busy={problem === null} className="centered">
        {problem === null ? <p>Signing in…</p> : <p role="alert">{sentence(problem)}</p>}
      </main>
    );
  }
  return <Shell session={session} client={client} onSignOut={signOut} />;
}

function Shell(props: Omit<RouteContext, 'route'> & { onSignOut: () => void }) {
  const route = useRoute();
  const { session, client } = props;
  const ctx: RouteContext = { session, client, route };
  const match = routes.find((r) => r.match(route.path));
  const signOut = async () => {
    await client.call(adminEndpoints.logout).catch(() => {});
    props.onSignOut();
    navigate('/');
  };
  return (
    <div className="shell">
      <a className="skip" href="#page-title">
        Skip to content
      </a>
      <header className="topbar">
        <Link to="/" className="brand">
          Bulkhead
        </Link>
        <nav aria-label="Sections">
          <ul>
            {routes
              .filter((r) => r.nav && can(session.role, r.role ?? 'viewer'))
              .map((r) => (
                <NavItem key={r.nav} to={r.href ?? '/'} current={r === match}>
                  {r.nav}
                </NavItem>
              ))}
          </ul>
        </nav>
        <div className="whoami">
          <span>
            {session.username} <span className="role">({session.role})</span>
          </span>
          <button type="button" onClick={() => void signOut()}>
            Sign out
          </button>
        </div>
      </header>
      {match ? (
        match.render(ctx)
      ) : (
        <main aria-busy={false} aria-labelledby="page-title">
          <h1 id="page-title">Not found</h1>
          <p>
            There is no page at {route.path}. <Link to="/">Go to the dashboard</Link>.
          </p>
        </main>
      )}
    </div>
  );
}

function NavItem(props: { to: string; current: boolean; children: ReactNode }) {
  return (
    <li>
      <Link to={props.to} aria-current={props.current ? 'page' : undefined}>
        {props.children}
      </Link>
    </li>
  );
}
