import { useState, type FormEvent } from 'react';
import { adminEndpoints } from '../../../../src/protocol/index.ts';
import { clientFor } from '../api.ts';
import { ErrorText } from '../components.tsx';

/** Sign-in, with the first-run set-up explained for the administrator who just installed Center. */
export function Login(props: { onSignedIn: (token: string) => void }) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const answer = await clientFor(null).call(adminEndpoints.login, {
        body: { username, password },
      });
      props.onSignedIn(answer.token);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="login" aria-busy={false} aria-labelledby="page-title">
      <h1 id="page-title">Bulkhead Console</h1>
      <form onSubmit={(e) => void submit(e)} className="card">
        <p>
          <label htmlFor="username">Username</label>
          <input
            id="username"
            autoComplete="username"
            value={username}
            required
            onChange={(e) => setUsername(e.target.value)}
          />
        </p>
        <p>
          <label htmlFor="password">Password</label>
          <input
            id="password"
            type="password"
            autoComplete="current-password"
            value={password}
            required
            onChange={(e) => setPassword(e.target.value)}
          />
        </p>
        <ErrorText error={error} />
        <button type="submit" className="primary" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
      <section className="card first-run" aria-labelledby="first-run">
        <h2 id="first-run">First time here?</h2>
        <p>
          The first start of Center (<code>npm start</code> or <code>bulkhead center serve</code>)
          creates the administrator <code>admin</code> and prints its one-time password once, on the
          terminal it ran in. Sign in with it, then choose your own password with{' '}
          <code>bulkhead passwd</code>.
        </p>
        <p>
          Lost it? On the server, <code>bulkhead center admin reset --username admin</code> prints a
          new one. Roles: a <strong>viewer</strong> sees everything and changes nothing; an{' '}
          <strong>operator</strong> publishes images, runs rollouts and locks or kills devices; an{' '}
          <strong>admin</strong> also manages profiles, groups, apps, keys and people.
        </p>
      </section>
    </main>
  );
}
