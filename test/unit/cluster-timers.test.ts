import { describe, expect, it } from 'vitest';
import { Timers } from '../../src/cluster/timers.js';
import { ManualClock } from '../helpers/metadata-contract.js';

describe('Timers.adaptive', () => {
  it('doubles the wait after idle ticks up to the maximum, and comes back to the minimum after work or a wake', async () => {
    const clock = new ManualClock();
    const timers = new Timers(clock);
    const ticks: number[] = [];
    let idle = true;
    const t0 = clock.monotonic();
    const handle = timers.adaptive(1_000, 8_000, async () => {
      ticks.push(clock.monotonic() - t0);
      return idle;
    });
    await clock.advance(40_000);
    // 1 s, then waits of 2, 4, 8, 8, 8 ... s
    expect(ticks.slice(0, 6)).toEqual([1_000, 3_000, 7_000, 15_000, 23_000, 31_000]);
    ticks.length = 0;
    // Last tick at 39 s, the next due at 47 s: a wake at 40 s brings it to 41 s.
    handle.wake();
    await clock.advance(1_000);
    expect(ticks).toEqual([41_000]);
    ticks.length = 0;
    // That pass was idle (next in 2 s); then work is found: every minimum while there is work.
    idle = false;
    await clock.advance(2_000);
    expect(ticks).toEqual([43_000]);
    await clock.advance(3_000);
    expect(ticks).toEqual([43_000, 44_000, 45_000, 46_000]);
    timers.cancelAll();
    await clock.advance(20_000);
    expect(ticks.length).toBe(4);
  });

  it('does not back off after a pass that ran while a wake came', async () => {
    const clock = new ManualClock();
    const timers = new Timers(clock);
    const ticks: number[] = [];
    let wakeDuring: (() => void) | null = null;
    const t0 = clock.monotonic();
    const handle = timers.adaptive(1_000, 8_000, async () => {
      ticks.push(clock.monotonic() - t0);
      wakeDuring?.();
      wakeDuring = null;
      return true;
    });
    await clock.advance(3_000); // ticks at 1 s and 3 s: backed off to 4 s next
    wakeDuring = () => handle.wake();
    await clock.advance(4_000); // tick at 7 s, woken while it ran: next at 8 s, not 15 s
    await clock.advance(1_000);
    expect(ticks).toEqual([1_000, 3_000, 7_000, 8_000]);
    timers.cancelAll();
  });
});
