// Logging under `DEBUG=handover:*`, with the `debug` package loaded only once a log line may be
// written: `debug` keeps its enabled namespaces in process.env.DEBUG (also when enabled from code,
// `debug.enable()`), so while DEBUG is empty no namespace is enabled and nothing needs loading.
// A server that never logs spares `debug`, supports-color, tty and os at start-up.
import type { Debugger } from 'debug';

/** A log function of one namespace, as `debug(namespace)` returns (called the same way). */
export type Log = (formatter: unknown, ...args: unknown[]) => void;

/** createDebug is `require('debug')(namespace)`, loaded at the first call made while DEBUG is set. */
export function createDebug(namespace: string): Log {
  let real: Debugger | undefined;
  return (formatter: unknown, ...args: unknown[]): void => {
    if (real === undefined) {
      if (!process.env.DEBUG) return;
      real = (require('debug') as typeof import('debug'))(namespace);
    }
    real(formatter, ...args);
  };
}
