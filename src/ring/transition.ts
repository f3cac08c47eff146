import { TorusError } from '../errors/torus-error.js';
import type { BlockRef } from '../model/block-ref.js';
import type { Placement, RingMember, RingRecord, RingTransition } from '../model/records.js';
import { replicasOf } from './placement.js';

/**
 * Ring transitions as pure functions (docs/replication.md, "Ring
 * transitions"): who owns a block during a change, and the next ring record
 * for a change or for the next phase. No I/O, no clock: the caller passes
 * the time and writes the result by compare-and-swap.
 *
 *   stable --change--> moving --advance--> settled --advance--> stable
 *
 * A change during moving starts a new moving transition from the same
 * `from` (the last placement known to hold every block); a change during
 * settled starts one from the settled placement (the ring's own).
 */

/** Targets of replaced transitions a ring carries at most (ring-transition.ts, planRingChange). */
export const CARRIED_PLACEMENTS_MAX = 4;

/** Reasons are for status lines; longer ones are cut. */
export const TRANSITION_REASON_CHARS_MAX = 256;

/** Owners that must take a write by default: a majority for odd R, half for even R (1 for R=2, 2 for R=3). */
export function minReplicasDefault(replication: number): number {
  if (!Number.isSafeInteger(replication) || replication < 1) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid replication ${String(replication)}: it must be a positive whole number`);
  }
  return replication - Math.floor(replication / 2);
}

/** The placement the ring moves to (or is at, when stable). */
export function targetPlacement(ring: Pick<RingRecord, 'members' | 'replication'>): Placement {
  return { members: ring.members, replication: ring.replication };
}

/**
 * The last placement known to hold every block: `from` while moving (the
 * new owners may still lack blocks), the ring's own once settled or stable.
 */
export function completePlacement(ring: RingRecord): Placement {
  return ring.transition?.phase === 'moving' ? ring.transition.from : targetPlacement(ring);
}

/** Same owners for every block: same replication and the same members with the same weights, in any order. */
export function samePlacement(a: Placement, b: Placement): boolean {
  if (a.replication !== b.replication || a.members.length !== b.members.length) return false;
  const weights = new Map(a.members.map((m) => [m.uuid, m.weight]));
  return b.members.every((m) => weights.get(m.uuid) === m.weight);
}

export interface Owners {
  /** Owners under the placement being left; null when the ring is stable. */
  readonly old: string[] | null;
  /** Owners under the ring's own members and replication. */
  readonly new: string[];
}

/** A block's owners, old and new (docs/replication.md: writes go to both during a transition). */
export function ownersOf(ring: RingRecord, ref: BlockRef): Owners {
  return {
    old: ring.transition === null ? null : replicasOf(ring.transition.from, ref),
    new: replicasOf(ring, ref),
  };
}

/**
 * Owners under the carried placements that `from` and `to` do not name:
 * they may hold a newer copy (so they are asked, and compete when every
 * owner is recorded stale), but a copy they lack says nothing (they may
 * never have been given the block), so they are never read on their own
 * or required for a change.
 */
export function carriedOwners(t: RingTransition, ref: BlockRef, named: readonly string[]): string[] {
  const out: string[] = [];
  for (const p of t.carried ?? []) for (const u of replicasOf(p, ref)) if (!named.includes(u) && !out.includes(u)) out.push(u);
  return out;
}

/** Every peer a transition's old owners come from: `from`'s members, then the carried ones. */
export function transitionPeers(t: RingTransition): string[] {
  const out = t.from.members.map((m) => m.uuid);
  for (const p of t.carried ?? []) for (const m of p.members) if (!out.includes(m.uuid)) out.push(m.uuid);
  return out;
}

/**
 * The next ring for a change of members, replication or minReplicas, or
 * null when nothing would change.
 *
 * - A change of minReplicas alone keeps the placement (and any transition)
 *   and only bumps the version: nothing moves.
 * - A change while moving replaces the transition: the new one moves from
 *   the same complete placement and carries the replaced target (with any
 *   it carried), whose owners may hold the only current copy of a block
 *   moved to them (seed 1375: an old owner lost an unflushed change in a
 *   crash while the other was recorded stale). A change back to the
 *   complete placement is such a transition too, not stable at once. At
 *   most CARRIED_PLACEMENTS_MAX are carried: past that the change is
 *   refused until the transition under way settles.
 * - A change when the complete placement has no members is stable at once:
 *   no block can have a copy to move.
 * - Anything else is a new moving transition from the complete placement,
 *   whose move records are keyed by the new version (`startedVersion`).
 */
export function planRingChange(
  ring: RingRecord,
  nextMembers: readonly RingMember[],
  nextReplication: number,
  nextMin: number,
  reason: string,
  nowMs: number,
): RingRecord | null {
  if (!Number.isSafeInteger(nextMin) || nextMin < 1 || nextMin > nextReplication) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid minReplicas ${String(nextMin)}: it must be a whole number from 1 to the replication (${nextReplication})`);
  }
  const target: Placement = { members: nextMembers.map((m) => ({ uuid: m.uuid, weight: m.weight })), replication: nextReplication };
  const version = ring.version + 1;
  if (samePlacement(target, targetPlacement(ring))) {
    if (nextMin === ring.minReplicas) return null;
    return { ...ring, version, minReplicas: nextMin };
  }
  const complete = completePlacement(ring);
  const base = { schema: 2 as const, version, replication: nextReplication, minReplicas: nextMin, members: target.members };
  if (complete.members.length === 0) return { ...base, transition: null };
  const carried: Placement[] = [];
  const t = ring.transition;
  if (t !== null && t.phase === 'moving') {
    for (const p of [...(t.carried ?? []), targetPlacement(ring)]) {
      if (p.members.length === 0 || samePlacement(p, complete) || samePlacement(p, target) || carried.some((c) => samePlacement(c, p))) continue;
      carried.push({ members: p.members.map((m) => ({ uuid: m.uuid, weight: m.weight })), replication: p.replication });
    }
  }
  if (samePlacement(target, complete) && carried.length === 0) return { ...base, transition: null };
  if (carried.length > CARRIED_PLACEMENTS_MAX) {
    throw new TorusError('TORUS_ERR_RING_TRANSITION', `ring version ${ring.version}: ${carried.length} ring changes were replaced while blocks were still moving; wait until the transition under way settles (torusctl cluster status)`);
  }
  return {
    ...base,
    transition: {
      from: { members: complete.members.map((m) => ({ uuid: m.uuid, weight: m.weight })), replication: complete.replication },
      ...(carried.length > 0 ? { carried } : {}),
      phase: 'moving',
      startedVersion: version,
      startedAt: new Date(nowMs).toISOString(),
      reason: reason.slice(0, TRANSITION_REASON_CHARS_MAX),
    },
  };
}

/**
 * The next phase: moving -> settled (every volume has moved) -> stable (every
 * process acknowledged settled). Checking those conditions is the caller's
 * job; a stable ring has no next phase (TORUS_ERR_RING_TRANSITION).
 */
export function advanceRing(ring: RingRecord): RingRecord {
  const t = ring.transition;
  if (t === null) throw new TorusError('TORUS_ERR_RING_TRANSITION', `ring version ${ring.version} is stable: there is no transition to advance`);
  if (t.phase === 'moving') return { ...ring, version: ring.version + 1, transition: { ...t, phase: 'settled' } };
  return { ...ring, version: ring.version + 1, transition: null };
}

/** `stable`, `moving` or `settled`. */
export function ringPhase(ring: RingRecord): 'stable' | 'moving' | 'settled' {
  return ring.transition?.phase ?? 'stable';
}
