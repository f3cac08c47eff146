import { describe, expect, it } from 'vitest';
import { Throttle } from '../../src/replication/throttle.js';
import { ManualClock } from '../helpers/metadata-contract.js';

/** Starts take(bytes) and records the monotonic time it was granted at. */
function timed(clock: ManualClock, t: Throttle, bytes: number): { at: number | null } {
  const grant: { at: number | null } = { at: null };
  void t.take(bytes).then(() => (grant.at = clock.monotonic()));
  return grant;
}

describe('Throttle', () => {
  it('copies at the set rate, with at most one second of bytes at once', async () => {
    const clock = new ManualClock();
    const t0 = clock.monotonic();
    const t = new Throttle(clock, 1000);
    // The bucket starts full: one second's worth goes at once, the next waits its turn.
    await t.take(1000);
    const grants: number[] = [];
    const copier = (async () => {
      for (let i = 0; i < 4; i++) {
        await t.take(500);
        grants.push(clock.monotonic() - t0);
      }
    })();
    await clock.advance(499);
    expect(grants).toEqual([]);
    await clock.advance(1_501);
    await copier;
    expect(grants).toEqual([500, 1_000, 1_500, 2_000]);
    expect(t.totalBytes()).toBe(3_000);
    expect(t.rate()).toBe(300); // 3000 bytes in the 10 s window

    // A quiet minute refills the bucket to one second's worth, no more.
    await clock.advance(60_000);
    const burst = timed(clock, t, 1000);
    const next = timed(clock, t, 100);
    await clock.advance(0);
    expect(burst.at).toBe(clock.monotonic());
    expect(next.at).toBeNull();
    await clock.advance(100);
    expect(next.at).toBe(clock.monotonic());
  });

  it('lets a request larger than the bucket go once the bucket is full, and makes the next ones pay for it', async () => {
    const clock = new ManualClock();
    const t = new Throttle(clock, 1000);
    const t0 = clock.monotonic();
    const big = timed(clock, t, 3000);
    await clock.advance(0);
    expect(big.at).toBe(t0);
    // 2000 bytes in debt: the next 1000 are granted 3 s later.
    const after = timed(clock, t, 1000);
    await clock.advance(2_999);
    expect(after.at).toBeNull();
    await clock.advance(1);
    expect(after.at).toBe(t0 + 3_000);
  });

  it('takes a new rate from the next request on', async () => {
    const clock = new ManualClock();
    const t = new Throttle(clock, 1000);
    await t.take(1000);
    t.setRate(10_000);
    const t0 = clock.monotonic();
    const g = timed(clock, t, 5000);
    await clock.advance(500);
    expect(g.at).toBe(t0 + 500);
  });

  it('refuses a rate that is not a positive number (0 would hold every copy after the first for good)', () => {
    const clock = new ManualClock();
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) expect(() => new Throttle(clock, bad)).toThrow(/copy rate/);
    const t = new Throttle(clock, 1000);
    expect(() => t.setRate(0)).toThrow(/copy rate/);
  });
});
