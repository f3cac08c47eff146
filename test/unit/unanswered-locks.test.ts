/**
 * The list of lock calls a session got no answer to (metadata/unanswered-locks.ts):
 * bounded, and an attempt not found is looked for only for a while.
 */
import { describe, expect, it } from 'vitest';
import { UNANSWERED_LOCKS_MAX, UNANSWERED_LOOK_MS, UnansweredLocks } from '../../src/metadata/unanswered-locks.js';
import { ManualClock } from '../helpers/metadata-contract.js';

describe('UnansweredLocks', () => {
  it('keeps each attempt once, by key and value; one let go leaves, one not found stays until its time is up', async () => {
    const clock = new ManualClock();
    const u = new UnansweredLocks(clock);
    u.add('volume-locks/1', 'a');
    u.add('volume-locks/1', 'a'); // the same attempt again
    u.add('volume-locks/1', 'b'); // another attempt on the same key
    expect(u.list()).toEqual([
      { key: 'volume-locks/1', value: 'a' },
      { key: 'volume-locks/1', value: 'b' },
    ]);
    u.settle({ key: 'volume-locks/1', value: 'a' }, true);
    expect(u.size).toBe(1);
    u.settle({ key: 'volume-locks/1', value: 'b' }, false); // not in etcd (yet): may still be applied
    expect(u.size).toBe(1);
    await clock.advance(UNANSWERED_LOOK_MS);
    u.settle({ key: 'volume-locks/1', value: 'b' }, false);
    expect(u.size).toBe(0);
    u.settle({ key: 'gone', value: 'x' }, true); // unknown: nothing happens
    u.add('k', 'v');
    u.clear();
    expect(u.list()).toEqual([]);
  });

  it(`holds at most ${UNANSWERED_LOCKS_MAX}, the oldest leaving first`, () => {
    const u = new UnansweredLocks(new ManualClock());
    for (let i = 0; i < UNANSWERED_LOCKS_MAX + 3; i++) u.add(`k${i}`, 'v');
    expect(u.size).toBe(UNANSWERED_LOCKS_MAX);
    expect(u.list()[0]).toEqual({ key: 'k3', value: 'v' });
  });
});
