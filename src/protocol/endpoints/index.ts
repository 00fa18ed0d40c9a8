import { adminEndpoints } from './admin.ts';
import { deviceEndpoints } from './device.ts';
import { fleetEndpoints } from './fleet.ts';
import { imageEndpoints } from './images.ts';
import { rolloutEndpoints } from './rollouts.ts';

export { adminEndpoints, deviceEndpoints, fleetEndpoints, imageEndpoints, rolloutEndpoints };

/** Every endpoint of Center's device and admin APIs, by name. */
export const endpoints = {
  ...deviceEndpoints,
  ...adminEndpoints,
  ...fleetEndpoints,
  ...imageEndpoints,
  ...rolloutEndpoints,
};
