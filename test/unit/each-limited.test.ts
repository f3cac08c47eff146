import { describe, expect, it } from 'vitest';
import { eachLimited, indexesBelow } from '../../src/util/each-limited.js';

/** A call that ends when the test says so. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

const turns = (n = 5): Promise<void> => (n === 0 ? Promise.resolve() : new Promise((r) => setImmediate(() => void turns(n - 1).then(r))));

describe('eachLimited', () => {
  it('runs every item, never more than the limit at once, started in order', async () => {
    let running = 0;
    let most = 0;
    const started: number[] = [];
    const done = await eachLimited(indexesBelow(20), 3, async (i) => {
      started.push(i);
      running++;
      most = Math.max(most, running);
      await turns(1 + (i % 4));
      running--;
      return true;
    });
    expect(done).toBe(true);
    expect(started).toEqual([...indexesBelow(20)]);
    expect(most).toBe(3);
  });

  it('starts nothing after a call asks to stop, and lets the running ones finish before it resolves', async () => {
    const gates = [gate(), gate(), gate()];
    const started: number[] = [];
    const finished: number[] = [];
    const p = eachLimited([0, 1, 2, 3, 4, 5], 3, async (i) => {
      started.push(i);
      if (i < 3) await gates[i]!.promise;
      finished.push(i);
      return i !== 1;
    });
    gates[1]!.open();
    await turns();
    // 1 asked to stop: nothing new starts, 0 and 2 still run.
    expect(started).toEqual([0, 1, 2]);
    let settled = false;
    void p.then(() => (settled = true));
    await turns();
    expect(settled).toBe(false);
    gates[0]!.open();
    gates[2]!.open();
    expect(await p).toBe(false);
    expect(finished.sort()).toEqual([0, 1, 2]);
  });

  it('throws the first error once the running calls have ended', async () => {
    const slow = gate();
    let slowEnded = false;
    const p = eachLimited([0, 1, 2, 3], 2, async (i) => {
      if (i === 0) {
        await slow.promise;
        slowEnded = true;
        return true;
      }
      if (i === 1) throw new Error('block 1 failed');
      return true;
    });
    let rejected: unknown = null;
    void p.catch((err: unknown) => (rejected = err));
    await turns();
    expect(rejected).toBeNull();
    slow.open();
    await expect(p).rejects.toThrow('block 1 failed');
    expect(slowEnded).toBe(true);
  });

  it('refuses a limit below one', async () => {
    await expect(eachLimited([1], 0, async () => true)).rejects.toThrow(/at least one/);
  });
});
