export * from './errors.ts';
export * from './names.ts';
export * from './manifest.ts';
export * from './admin.ts';
export { canonicalJson } from './canonical.ts';
export * from './device.ts';
export * from './policy.ts';
export * from './images.ts';
export * from './fleet.ts';
