/** What settleEach() records for an item whose call fulfilled. */
export const SETTLED_OK: unique symbol = Symbol('settled-ok');

/**
 * Calls `call` for every item at once and resolves, once every call has
 * settled, with one outcome per item in item order: SETTLED_OK, or the
 * reason it failed (a synchronous throw counts as a failure). `onOk` runs
 * for each item as its call fulfils, before the rest have settled; if it
 * throws, that item's outcome is the error.
 *
 * What `Promise.allSettled(items.map(async (x) => { await call(x); onOk(x); }))`
 * does, without an async function, a result object and a wrapper promise per
 * item: it runs for every change on the write path.
 */
export function settleEach<T>(items: readonly T[], call: (item: T) => Promise<unknown>, onOk?: (item: T) => void): Promise<unknown[]> {
  const n = items.length;
  const out: unknown[] = new Array<unknown>(n);
  if (n === 0) return Promise.resolve(out);
  return new Promise((resolve) => {
    let left = n;
    const settle = (i: number, outcome: unknown): void => {
      out[i] = outcome;
      if (--left === 0) resolve(out);
    };
    for (let i = 0; i < n; i++) {
      const item = items[i]!;
      let pending: Promise<unknown>;
      try {
        pending = call(item);
      } catch (err) {
        // Settled in a later turn, as a rejected promise would be.
        pending = Promise.reject(err);
      }
      pending.then(
        () => {
          if (onOk === undefined) return settle(i, SETTLED_OK);
          try {
            onOk(item);
          } catch (err) {
            return settle(i, err);
          }
          settle(i, SETTLED_OK);
        },
        (err: unknown) => settle(i, err),
      );
    }
  });
}
