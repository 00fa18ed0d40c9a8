export * from './errors.ts';
export * from './names.ts';
export * from './manifest.ts';
export { canonicalJson } from './canonical.ts';
