import type { RouteContext } from '../page-context.ts';
import { Page } from '../components.tsx';

export function Devices(_props: RouteContext) {
  return (
    <Page title="Devices" busy={false}>
      <p>…</p>
    </Page>
  );
}

export function DevicePage(props: RouteContext & { id: string }) {
  return (
    <Page title={props.id} busy={false}>
      <p>…</p>
    </Page>
  );
}
