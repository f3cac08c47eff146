import { describe, expect, it } from 'vitest';
import type { BlockMeta } from '../../src/model/block-meta.js';
import { planCatchUp, type CatchUpPlanInput } from '../../src/replication/catch-up-plan.js';

const data = (version: number, digest = version, suspect = false): BlockMeta => ({ state: 'data', version, digest, suspect });

/** Peer d is the stale one; every block is owned by d and a, except where `owners` says. */
function input(over: Partial<CatchUpPlanInput> & { d?: [number, BlockMeta][]; a?: [number, BlockMeta][] | null }): CatchUpPlanInput {
  const listings = new Map<string, Map<number, BlockMeta>>();
  if (over.a !== null) listings.set('a', new Map(over.a ?? []));
  return {
    blockCount: 6,
    peer: 'd',
    peerCopies: new Map(over.d ?? []),
    listings,
    ownersOf: () => ['a', 'd'],
    trustedOf: () => ['a'],
    ...over,
  };
}

describe('catch-up plan for a whole-volume stale record', () => {
  it('leaves out only blocks whose copy on the peer equals the newest trusted copy, or that no one holds', () => {
    const plan = planCatchUp(
      input({
        // 0: equal; 1: d older; 2: d newer (a change that failed half way);
        // 3: d lacks it; 4: held by no one; 5: same version, other digest.
        d: [[0, data(5)], [1, data(3)], [2, data(9)], [5, data(7, 1)]],
        a: [[0, data(5)], [1, data(4)], [2, data(8)], [3, data(2)], [5, data(7, 2)]],
      }),
    );
    expect(plan).toEqual([1, 2, 3, 5]);
  });

  it('keeps every block when a trusted owner could not be listed, or none is trusted', () => {
    expect(planCatchUp(input({ d: [[0, data(5)]], a: null }))).toEqual([0, 1, 2, 3, 4, 5]);
    expect(planCatchUp(input({ d: [[0, data(5)]], a: [[0, data(5)]], trustedOf: () => [] }))).toEqual([0, 1, 2, 3, 4, 5]);
    // The peer itself never counts as a trusted source.
    expect(planCatchUp(input({ d: [[0, data(5)]], a: [[0, data(5)]], trustedOf: () => ['d'] }))).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('keeps suspect copies on either side, compares tombstones by version, and skips blocks the peer does not own', () => {
    const zero = (version: number): BlockMeta => ({ state: 'zero', version, digest: 0, suspect: false });
    const plan = planCatchUp(
      input({
        d: [[0, data(5, 5, true)], [1, data(4)], [2, zero(6)], [3, data(3)]],
        a: [[0, data(5)], [1, data(4, 4, true)], [2, zero(6)], [3, zero(4)]],
        ownersOf: (i) => (i === 4 ? ['a', 'b'] : ['a', 'd']),
      }),
    );
    expect(plan).toEqual([0, 1, 3]);
  });

  it('takes the newest copy over several trusted owners', () => {
    const listings = new Map([
      ['a', new Map([[0, data(5)]])],
      ['b', new Map([[0, data(6)]])],
    ]);
    const base = { blockCount: 1, peer: 'd', listings, ownersOf: () => ['a', 'b', 'd'], trustedOf: () => ['a', 'b'] };
    expect(planCatchUp({ ...base, peerCopies: new Map([[0, data(5)]]) })).toEqual([0]);
    expect(planCatchUp({ ...base, peerCopies: new Map([[0, data(6)]]) })).toEqual([]);
  });
});
