import { describe, expect, it } from 'vitest';
import { blockRef } from '../../src/model/block-ref.js';
import { placeBlock, replicasOf } from '../../src/ring/placement.js';

const members = (n: number, weight = 1) => Array.from({ length: n }, (_, i) => ({ uuid: `peer-${i}`, weight }));

describe('ring placement (weighted rendezvous hashing)', () => {
  it('is deterministic and lists every member once', () => {
    const ring = { members: members(5), replication: 2 };
    const ref = blockRef(3, 1, 42);
    const a = placeBlock(ring, ref);
    expect(a).toEqual(placeBlock(ring, ref));
    expect(new Set(a).size).toBe(5);
    expect(replicasOf(ring, ref)).toEqual(a.slice(0, 2));
  });

  it('spreads blocks evenly over equal members', () => {
    const ring = { members: members(4), replication: 1 };
    const counts = new Map<string, number>();
    for (let i = 0; i < 40_000; i++) {
      const [p] = placeBlock(ring, blockRef(1, 1, i));
      counts.set(p!, (counts.get(p!) ?? 0) + 1);
    }
    for (const c of counts.values()) expect(Math.abs(c - 10_000)).toBeLessThan(600);
  });

  it('gives a member with twice the weight about twice the blocks', () => {
    const ring = { members: [{ uuid: 'big', weight: 2 }, { uuid: 'small', weight: 1 }], replication: 1 };
    let big = 0;
    for (let i = 0; i < 30_000; i++) if (placeBlock(ring, blockRef(2, 1, i))[0] === 'big') big++;
    expect(big / 30_000).toBeGreaterThan(0.63);
    expect(big / 30_000).toBeLessThan(0.70);
  });

  it('moves only the blocks of a member that leaves', () => {
    const before = { members: members(5), replication: 1 };
    const after = { members: members(5).filter((m) => m.uuid !== 'peer-2'), replication: 1 };
    let moved = 0;
    for (let i = 0; i < 10_000; i++) {
      const ref = blockRef(7, 1, i);
      const a = placeBlock(before, ref)[0];
      const b = placeBlock(after, ref)[0];
      if (a !== b) {
        moved++;
        expect(a).toBe('peer-2');
      }
    }
    expect(moved).toBeGreaterThan(1500);
  });

  it('gives as replicas exactly the first `replication` members of the full placement', () => {
    // Weights and sizes varied, ties included (equal uuids cannot occur; equal scores can only by weight).
    for (let n = 1; n <= 7; n++) {
      for (let replication = 1; replication <= n + 1; replication++) {
        const ring = { members: Array.from({ length: n }, (_, i) => ({ uuid: `p-${(i * 7) % n}-${i}`, weight: i % 3 === 2 ? 0 : 1 + (i % 2) })), replication };
        for (let i = 0; i < 300; i++) {
          const ref = blockRef(1 + (i % 3), 1, i * 977);
          expect(replicasOf(ring, ref)).toEqual(placeBlock(ring, ref).slice(0, replication));
        }
      }
    }
  });

  it('skips members of weight 0 and handles an empty ring', () => {
    expect(placeBlock({ members: [] }, blockRef(1, 1, 0))).toEqual([]);
    expect(placeBlock({ members: [{ uuid: 'a', weight: 0 }, { uuid: 'b', weight: 1 }] }, blockRef(1, 1, 0))).toEqual(['b']);
  });
});
