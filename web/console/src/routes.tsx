import type { ReactNode } from 'react';
import type { AdminRoleName } from '../../../src/protocol/index.ts';
import type { RouteContext } from './page-context.ts';
import { Dashboard } from './pages/Dashboard.tsx';
import { DevicePage, Devices } from './pages/Devices.tsx';
import { Audit } from './pages/Audit.tsx';
import { Apps } from './pages/Apps.tsx';
import { Groups } from './pages/Groups.tsx';
import { ImagePage, Images } from './pages/Images.tsx';
import { ProfilePage, Profiles } from './pages/Profiles.tsx';
import { NewRollout, RolloutPage, Rollouts } from './pages/Rollouts.tsx';
import { Publishers } from './pages/Publishers.tsx';
import { Users } from './pages/Users.tsx';
import { Tokens } from './pages/Tokens.tsx';

export type { RouteContext };

export interface RouteEntry {
  /** Its label in the navigation; none for pages reached from another (a device). */
  nav?: string;
  href?: string;
  /** The least role that sees it in the navigation. */
  role?: AdminRoleName;
  match: (path: string) => boolean;
  render: (ctx: RouteContext) => ReactNode;
}

/** `/devices/:id` → the id, for a path of that shape. */
export function param(path: string, prefix: string): string | null {
  const m = new RegExp(`^${prefix}/([^/]+)/?$`).exec(path);
  return m ? decodeURIComponent(m[1]!) : null;
}

const exactly = (p: string) => (path: string) => path === p || path === `${p}/`;

export const routes: RouteEntry[] = [
  { nav: 'Dashboard', href: '/', match: (p) => p === '/', render: (c) => <Dashboard {...c} /> },
  {
    nav: 'Devices',
    href: '/devices',
    match: exactly('/devices'),
    render: (c) => <Devices {...c} />,
  },
  {
    match: (p) => param(p, '/devices') !== null,
    render: (c) => <DevicePage {...c} id={param(c.route.path, '/devices')!} />,
  },
  { nav: 'Images', href: '/images', match: exactly('/images'), render: (c) => <Images {...c} /> },
  {
    match: (p) => param(p, '/images') !== null,
    render: (c) => <ImagePage {...c} id={param(c.route.path, '/images')!} />,
  },
  {
    nav: 'Keys',
    href: '/publishers',
    match: exactly('/publishers'),
    render: (c) => <Publishers {...c} />,
  },
  { nav: 'Apps', href: '/apps', match: exactly('/apps'), render: (c) => <Apps {...c} /> },
  {
    nav: 'Profiles',
    href: '/profiles',
    match: exactly('/profiles'),
    render: (c) => <Profiles {...c} />,
  },
  {
    match: (p) => param(p, '/profiles') !== null,
    render: (c) => <ProfilePage {...c} id={param(c.route.path, '/profiles')!} />,
  },
  { nav: 'Groups', href: '/groups', match: exactly('/groups'), render: (c) => <Groups {...c} /> },
  {
    nav: 'Enrolment',
    href: '/tokens',
    match: exactly('/tokens'),
    render: (c) => <Tokens {...c} />,
  },
  {
    nav: 'Rollouts',
    href: '/rollouts',
    match: exactly('/rollouts'),
    render: (c) => <Rollouts {...c} />,
  },
  { match: exactly('/rollouts/new'), render: (c) => <NewRollout {...c} /> },
  {
    match: (p) => param(p, '/rollouts') !== null,
    render: (c) => <RolloutPage {...c} id={param(c.route.path, '/rollouts')!} />,
  },
  { nav: 'Audit', href: '/audit', match: exactly('/audit'), render: (c) => <Audit {...c} /> },
  {
    nav: 'People',
    href: '/users',
    role: 'admin',
    match: exactly('/users'),
    render: (c) => <Users {...c} />,
  },
];
