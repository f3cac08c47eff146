import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { DeadlineRace } from '../../src/util/deadline-race.js';
import { settleEach, SETTLED_OK } from '../../src/util/settle-each.js';
import { ManualClock } from '../helpers/metadata-contract.js';

function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (err: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('settleEach', () => {
  it('waits for every call and gives one outcome per item, in item order, as Promise.allSettled would', async () => {
    const calls = [deferred(), deferred(), deferred()];
    const boom = new Error('boom');
    const oks: string[] = [];
    let done: unknown[] | null = null;
    const all = settleEach(['a', 'b', 'c'], (x) => calls['abc'.indexOf(x)]!.promise, (x) => oks.push(x)).then((o) => (done = o));
    calls[2]!.resolve();
    calls[0]!.reject(boom);
    await Promise.resolve();
    await Promise.resolve();
    // onOk runs as each call fulfils, before the others settle.
    expect(oks).toEqual(['c']);
    expect(done).toBeNull();
    calls[1]!.resolve();
    expect(await all).toEqual([boom, SETTLED_OK, SETTLED_OK]);
    expect(oks).toEqual(['c', 'b']);
  });

  it('counts a synchronous throw, and a throw of onOk, as that item failing', async () => {
    const thrown = new Error('no address');
    const refused = new Error('onOk refused');
    const out = await settleEach(
      [1, 2, 3],
      (x) => {
        if (x === 1) throw thrown;
        return Promise.resolve(x);
      },
      (x) => {
        if (x === 3) throw refused;
      },
    );
    expect(out).toEqual([thrown, SETTLED_OK, refused]);
  });

  it('resolves at once with nothing to call', async () => {
    expect(await settleEach([], () => Promise.resolve())).toEqual([]);
  });
});

describe('DeadlineRace', () => {
  it('passes on what the call gives when it answers in time, either way', async () => {
    const clock = new ManualClock();
    const race = new DeadlineRace(clock);
    expect(await race.run(Promise.resolve(7), 100, 'change', 'p1')).toBe(7);
    const err = new Error('disk');
    await expect(race.run(Promise.reject(err), 100, 'change', 'p1')).rejects.toBe(err);
  });

  it('gives up on each call at its own deadline with TORUS_ERR_TIMEOUT naming the call and peer, on one timer', async () => {
    const clock = new ManualClock();
    const race = new DeadlineRace(clock);
    const first = deferred<number>();
    const second = deferred<number>();
    const outcomes: string[] = [];
    const a = race.run(first.promise, 100, 'change', 'p1').then(
      () => outcomes.push('a ok'),
      (err: unknown) => outcomes.push(isTorusError(err, 'TORUS_ERR_TIMEOUT') ? `a timeout: ${(err as Error).message}` : 'a other'),
    );
    await clock.advance(50);
    const b = race.run(second.promise, 100, 'change', 'p2').then(
      () => outcomes.push('b ok'),
      () => outcomes.push('b failed'),
    );
    await clock.advance(60);
    await a;
    expect(outcomes).toEqual(['a timeout: change on peer p1 did not answer within 100 ms']);
    // An answer after the deadline changes nothing.
    first.resolve(1);
    second.resolve(2);
    await b;
    expect(outcomes).toEqual(['a timeout: change on peer p1 did not answer within 100 ms', 'b ok']);
  });
});
