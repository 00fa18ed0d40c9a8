import type { ApiClient } from '../../../src/protocol/index.ts';
import type { Session } from './api.ts';
import type { Route } from './router.tsx';

/** What every page is given: the signed-in session, the client acting as it, and the address. */
export interface RouteContext {
  session: Session;
  client: ApiClient;
  route: Route;
}
