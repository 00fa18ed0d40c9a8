import type { RouteContext } from '../page-context.ts';
import { Page } from '../components.tsx';

export function Dashboard(_props: RouteContext) {
  return (
    <Page title="Dashboard" busy={false}>
      <p>…</p>
    </Page>
  );
}
