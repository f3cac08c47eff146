import type { RingMember, RingRecord } from '../model/records.js';
import { assert } from '../util/assert.js';

/**
 * Ring changes as transitions (docs/replication.md, "Ring transitions").
 * Pure: the caller passes the time and writes the result by
 * compare-and-swap.
 */

/** The default minReplicas for R copies: R - floor(R/2), the way Ceph sets min_size. */
export function minReplicasDefault(replication: number): number {
  return replication - Math.floor(replication / 2);
}

/**
 * The ring after a change of members, replication or minReplicas. Blocks
 * move from the last placement that is complete: the ring's own when
 * stable or settled, the transition's `from` while moving (writes still
 * reach it, so it is complete).
 */
export function planRingChange(
  ring: RingRecord,
  next: { members: readonly RingMember[]; replication: number; minReplicas: number },
  reason: string,
  nowIso: string,
): RingRecord {
  assert(next.minReplicas >= 1 && next.minReplicas <= next.replication, 'minReplicas lies within 1..replication');
  const from = ring.transition !== null && ring.transition.phase === 'moving' ? ring.transition.from : { members: ring.members, replication: ring.replication };
  const samePlacement = sameMembers(from.members, next.members) && from.replication === next.replication;
  return {
    schema: 2,
    version: ring.version + 1,
    replication: next.replication,
    minReplicas: next.minReplicas,
    members: next.members,
    // Only minReplicas changed (or the change undoes a transition): no block moves.
    transition: samePlacement ? null : { from, phase: 'moving', startedVersion: ring.version + 1, startedAt: nowIso, reason },
  };
}

/** moving → settled → stable; null when stable. */
export function advanceRing(ring: RingRecord): RingRecord | null {
  const t = ring.transition;
  if (t === null) return null;
  if (t.phase === 'moving') return { ...ring, version: ring.version + 1, transition: { ...t, phase: 'settled' } };
  return { ...ring, version: ring.version + 1, transition: null };
}

function sameMembers(a: readonly RingMember[], b: readonly RingMember[]): boolean {
  if (a.length !== b.length) return false;
  const m = new Map(a.map((x) => [x.uuid, x.weight]));
  return b.every((x) => m.get(x.uuid) === x.weight);
}
