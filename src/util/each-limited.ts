import { assert } from './assert.js';

/**
 * Calls `fn` on each item, at most `limit` calls running at once, items
 * started in order. `fn` answers false to stop: no item starts after that,
 * and the calls running finish. An error stops it the same way and is
 * thrown (the first one) once every running call has ended, so nothing is
 * left running behind the caller. Resolves true when every item ran and
 * none asked to stop.
 */
export async function eachLimited<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<boolean>): Promise<boolean> {
  assert(Number.isSafeInteger(limit) && limit >= 1, 'at least one call runs at a time');
  const source = items[Symbol.iterator]();
  let stopped = false;
  let failure: { err: unknown } | null = null;
  const worker = async (): Promise<void> => {
    while (!stopped) {
      const next = source.next();
      if (next.done === true) return;
      try {
        if (!(await fn(next.value))) stopped = true;
      } catch (err) {
        failure ??= { err };
        stopped = true;
      }
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  // (Set inside the workers: the compiler cannot see it change.)
  const failed = failure as { err: unknown } | null;
  if (failed !== null) throw failed.err;
  return !stopped;
}

/** 0, 1, ... n - 1, lazily. */
export function* indexesBelow(n: number): Generator<number> {
  for (let i = 0; i < n; i++) yield i;
}
