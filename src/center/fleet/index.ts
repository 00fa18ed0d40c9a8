// Center's fleet administration (DESIGN §3, §4): device groups, the app catalog, VM profiles,
// devices and their commands, enrolment tokens.
export { fleetRoutes } from './plugin.ts';
export { deviceListQuery } from './devices.ts';
export { registerFleetMetrics } from './metrics.ts';
