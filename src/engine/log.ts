/**
 * The logging Engine needs: pino's call shape (`log.warn({ file }, 'message')`), so a pino
 * logger fits as is and a test can pass a recorder. Components: `sync`, `store`, `queue`.
 */
export interface Log {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** A logger that drops everything. */
export const silentLog: Log = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};
