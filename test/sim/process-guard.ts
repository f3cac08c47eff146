import { TorusError } from '../../src/errors/torus-error.js';
import type { SimProcess } from './sim-clock.js';

/**
 * Makes a simulated process's side of an interface behave as a real
 * process's would after SIGKILL or under SIGSTOP, without the code under
 * test knowing:
 *
 * - after death, nothing it calls has an effect: async calls never settle
 *   (the process is gone, nobody is waiting), sync calls throw;
 * - callbacks that another party (the etcd twin, a watch) makes into the
 *   process run as the process: held while it is frozen, dropped once it is
 *   dead.
 *
 * Objects handed back (sessions, locks, stop functions) are guarded the
 * same way; plain records pass through untouched.
 */
export interface GuardOptions {
  /** Methods that answer synchronously: after death they throw instead of hanging. */
  readonly syncMethods?: ReadonlySet<string>;
  /**
   * Guard what calls return (default true). A store hands back only data,
   * and a result that settles after the death changes nothing outside the
   * dead process, so the store skips this (it is on every I/O).
   */
  readonly guardResults?: boolean;
}

export function guardObject<T extends object>(target: T, process: SimProcess, opts: GuardOptions = {}): T {
  const results = opts.guardResults ?? true;
  const cache = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(t, prop, receiver) {
      const v: unknown = Reflect.get(t, prop, receiver);
      if (typeof v !== 'function') return v;
      let wrapped = cache.get(prop);
      if (wrapped === undefined) {
        const name = String(prop);
        const sync = opts.syncMethods?.has(name) ?? false;
        const fn = v as (...a: unknown[]) => unknown;
        wrapped = (...args: unknown[]) => {
          if (!process.alive) return dead(name, sync);
          for (let i = 0; i < args.length; i++) if (typeof args[i] === 'function') args[i] = guardCallback(args[i], process);
          const result = fn.apply(t, args);
          return results ? guardResult(result, process) : result;
        };
        cache.set(prop, wrapped);
      }
      return wrapped;
    },
  });
}

function dead(name: string, sync: boolean): unknown {
  if (sync) throw new TorusError('TORUS_ERR_STORE_CLOSED', `${name}: the simulated process is dead`);
  return new Promise(() => undefined);
}

/** A callback passed in runs later as the process (held while frozen, dropped once dead). */
function guardCallback(a: unknown, process: SimProcess): unknown {
  if (typeof a !== 'function') return a;
  return (...args: unknown[]) => {
    process.fire(() => (a as (...x: unknown[]) => unknown)(...args));
  };
}

function guardResult(result: unknown, process: SimProcess): unknown {
  if (result instanceof Promise) {
    // A result that settles after the process died is never seen by it.
    return result.then(
      (v) => (process.alive ? guardValue(v, process) : new Promise(() => undefined)),
      (err: unknown) => (process.alive ? Promise.reject(err) : new Promise(() => undefined)),
    );
  }
  return guardValue(result, process);
}

function guardValue(v: unknown, process: SimProcess): unknown {
  if (typeof v === 'function') {
    return (...args: unknown[]) => (process.alive ? guardResult((v as (...a: unknown[]) => unknown)(...args), process) : new Promise(() => undefined));
  }
  if (v === null || typeof v !== 'object' || Buffer.isBuffer(v) || Array.isArray(v) || v instanceof Map || v instanceof Set) return v;
  return hasMethods(v) ? guardObject(v, process) : v;
}

/** A service object (session, lock): a class instance or a literal with functions; records have none. */
function hasMethods(v: object): boolean {
  const proto = Object.getPrototypeOf(v) as object | null;
  if (proto !== Object.prototype && proto !== null) return true;
  return Object.values(v).some((x) => typeof x === 'function');
}
