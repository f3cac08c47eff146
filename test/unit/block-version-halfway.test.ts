import { describe, expect, it } from 'vitest';
import { makeVersion, mayBeHalfWay, VERSION_ABSENT } from '../../src/model/version.js';

describe('mayBeHalfWay (docs/replication.md, "Changes an expired holder left half way")', () => {
  it('with no expiry recorded, only a token newer than the holder\'s own counts', () => {
    expect(mayBeHalfWay(makeVersion(3, 7), 0, 5)).toBe(false);
    expect(mayBeHalfWay(VERSION_ABSENT, 0, 5)).toBe(false);
    expect(mayBeHalfWay(makeVersion(6, 1), 0, 5)).toBe(true);
    expect(mayBeHalfWay(makeVersion(3, 7), 0)).toBe(false);
  });

  it('counts copies written under the expired token or an older one, and the empty block with them', () => {
    expect(mayBeHalfWay(makeVersion(4, 2), 4, 6)).toBe(true);
    expect(mayBeHalfWay(makeVersion(2, 9), 4, 6)).toBe(true);
    expect(mayBeHalfWay(VERSION_ABSENT, 4, 6)).toBe(true);
    expect(mayBeHalfWay(makeVersion(4, 2), 4)).toBe(true);
  });

  it('does not count a holder that let go cleanly after the expiry, nor the holder itself', () => {
    expect(mayBeHalfWay(makeVersion(5, 1), 4, 6)).toBe(false);
    expect(mayBeHalfWay(makeVersion(5, 1), 4)).toBe(false);
    expect(mayBeHalfWay(makeVersion(6, 3), 4, 6)).toBe(false);
    // An adopted lock counts its own token as expired only through expiredToken.
    expect(mayBeHalfWay(makeVersion(6, 3), 6, 7)).toBe(true);
  });
});
