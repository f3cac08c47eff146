import type { BlockRef } from '../model/block-ref.js';
import type { RingRecord } from '../model/records.js';
import { replicasOf } from '../ring/placement.js';
import { carriedOwners, transitionPeers } from '../ring/transition.js';

/**
 * Who owns a block under a ring, during a transition too
 * (docs/replication.md, "Ring transitions"). Pure.
 */
export interface BlockOwners {
  readonly phase: 'stable' | 'moving' | 'settled';
  /** Owners under the placement being left (null when stable). */
  readonly old: readonly string[] | null;
  /** Owners under the ring's own members. */
  readonly now: readonly string[];
  /**
   * Owners under placements a replaced transition was moving to
   * (ring-transition.ts, `carried`), not in old or now: asked when the block
   * is learnt, never read on their own, never required. Empty when none.
   */
  readonly carried: readonly string[];
  /** old ∪ now, old first: the owners the placements name (every owner a change may need). */
  readonly placed: readonly string[];
  /** placed ∪ carried: every owner that may hold a copy. */
  readonly all: readonly string[];
}

export function ownersOf(ring: RingRecord, ref: BlockRef): BlockOwners {
  const now = replicasOf(ring, ref);
  const t = ring.transition;
  if (t === null) return { phase: 'stable', old: null, now, carried: [], placed: now, all: now };
  const old = replicasOf(t.from, ref);
  const placed = [...old];
  for (const u of now) if (!placed.includes(u)) placed.push(u);
  const carried = carriedOwners(t, ref, placed);
  return { phase: t.phase, old, now, carried, placed, all: carried.length === 0 ? placed : [...placed, ...carried] };
}

/** Every peer that may hold blocks under this ring: members of both placements. */
export function ringPeers(ring: RingRecord): string[] {
  const out = ring.members.map((m) => m.uuid);
  for (const u of ring.transition === null ? [] : transitionPeers(ring.transition)) if (!out.includes(u)) out.push(u);
  return out;
}

/** How many of `owners` must take a change: minReplicas, or all of them when there are fewer. */
export function quorumOf(ring: RingRecord, owners: number): number {
  return Math.max(1, Math.min(ring.minReplicas, owners));
}
