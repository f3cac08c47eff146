import { TorusError } from '../errors/torus-error.js';
import { validateReplication } from '../metadata/validate.js';
import type { PeerRecord, RingMember, RingRecord } from '../model/records.js';
import { minReplicasDefault, planRingChange } from '../ring/transition.js';

/**
 * Ring edits torusctl makes, as pure functions from the current ring (and
 * peer records) to the next ring. Every change of placement is a ring
 * transition (src/ring/transition.ts): the peers move blocks before the old
 * owners stop taking them. Each next ring carries version + 1; the caller
 * writes it by compare-and-swap and re-plans when it loses a race.
 */

function bareAddress(address: string): string {
  return address.replace(/^(?:https?|tdp):\/\//, '');
}

/** A peer by UUID or by its address (with or without http:// or tdp://). */
export function findPeer(selector: string, peers: readonly PeerRecord[]): PeerRecord | undefined {
  const byUuid = peers.find((p) => p.uuid === selector);
  if (byUuid) return byUuid;
  const bare = bareAddress(selector);
  return peers.find((p) => bareAddress(p.address) === bare);
}

/** Weight is the peer's capacity in bytes, so blocks spread by free room. */
export function memberWeight(peer: PeerRecord): number {
  return Math.max(1, peer.capacity);
}

export interface AddPlan {
  readonly next: RingRecord | null; // null: nothing to change
  readonly added: readonly PeerRecord[];
  readonly alreadyMembers: readonly PeerRecord[];
}

export function planAddMembers(ring: RingRecord, peers: readonly PeerRecord[], selectors: readonly string[], allPeers: boolean, nowMs: number): AddPlan {
  const chosen = new Map<string, PeerRecord>();
  for (const sel of selectors) {
    const peer = findPeer(sel, peers);
    if (!peer) {
      throw new TorusError('TORUS_ERR_PEER_NOT_FOUND', `no live peer has address or UUID "${sel}" (list them with "torusctl list-peers")`, {
        details: { selector: sel },
      });
    }
    chosen.set(peer.uuid, peer);
  }
  if (allPeers) for (const p of peers) chosen.set(p.uuid, p);
  const members = new Set(ring.members.map((m) => m.uuid));
  const added = [...chosen.values()].filter((p) => !members.has(p.uuid));
  const alreadyMembers = [...chosen.values()].filter((p) => members.has(p.uuid));
  if (added.length === 0) return { next: null, added, alreadyMembers };
  const nextMembers = [...ring.members, ...added.map((p): RingMember => ({ uuid: p.uuid, weight: memberWeight(p) }))];
  const next = planRingChange(ring, nextMembers, ring.replication, ring.minReplicas, `peer add ${added.map((p) => p.uuid).join(' ')}`, nowMs);
  return { next, added, alreadyMembers };
}

export interface RemovePlan {
  readonly next: RingRecord;
  readonly removed: RingMember;
  /** The member has no peer record: its blocks are re-replicated from the other owners, not drained from it. */
  readonly wasDown: boolean;
}

/**
 * Removing a member is a transition that drains it. Refused without force
 * when the member is DOWN (no copy can leave it: its blocks are copied from
 * the other owners, and a block whose only current copy it holds cannot
 * move) or when fewer members than the replication would remain.
 */
export function planRemoveMember(ring: RingRecord, peers: readonly PeerRecord[], selector: string, force: boolean, nowMs: number): RemovePlan {
  const uuid = ring.members.some((m) => m.uuid === selector) ? selector : findPeer(selector, peers)?.uuid;
  const removed = ring.members.find((m) => m.uuid === uuid);
  if (!removed) {
    throw new TorusError('TORUS_ERR_PEER_NOT_FOUND', `no ring member has address or UUID "${selector}" (see "torusctl ring get")`, {
      details: { selector },
    });
  }
  const wasDown = !peers.some((p) => p.uuid === removed.uuid);
  if (wasDown && !force) {
    throw new TorusError(
      'TORUS_ERR_RING_UNSAFE',
      `ring member ${removed.uuid} is DOWN (no live peer record), so its blocks cannot be drained from it; they are re-replicated from the other owners, and blocks whose only current copy it holds stay unavailable until it returns. Use --force to remove it anyway`,
      { details: { uuid: removed.uuid } },
    );
  }
  const members = ring.members.filter((m) => m.uuid !== removed.uuid);
  if (members.length < ring.replication && !force) {
    throw new TorusError(
      'TORUS_ERR_RING_UNSAFE',
      `removing ${removed.uuid} would leave ${members.length} ring member(s) for replication ${ring.replication}: blocks would have fewer copies; use --force to remove it anyway`,
      { details: { uuid: removed.uuid, remaining: members.length, replication: ring.replication } },
    );
  }
  const next = planRingChange(ring, members, ring.replication, ring.minReplicas, `peer remove ${removed.uuid}${wasDown ? ' (DOWN, forced)' : ''}`, nowMs);
  // A member is always in the placement, so removing it always changes the ring.
  if (next === null) throw new TorusError('TORUS_ERR_ASSERTION', `removing ring member ${removed.uuid} changed nothing`);
  return { next, removed, wasDown };
}

/** minReplicas for N copies: given, or the default; 1 <= M <= N. */
export function resolveMinReplicas(replication: number, min: number | undefined): number {
  validateReplication(replication);
  const m = min ?? minReplicasDefault(replication);
  if (!Number.isSafeInteger(m) || m < 1 || m > replication) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid --min ${String(m)}: it must be a whole number from 1 to the replication (${replication})`);
  }
  return m;
}

/** null when the ring already has that replication and minReplicas. */
export function planSetReplication(ring: RingRecord, replication: number, min: number | undefined, nowMs: number): RingRecord | null {
  const m = resolveMinReplicas(replication, min);
  return planRingChange(ring, ring.members, replication, m, `set-replication ${replication} (min ${m})`, nowMs);
}

export const MANUAL_CHANGE_TYPES = ['empty', 'single', 'mod', 'ketama'] as const;
export type ManualChangeType = (typeof MANUAL_CHANGE_TYPES)[number];

export interface ManualChange {
  readonly type: ManualChangeType;
  readonly replication: number;
  readonly min: number | undefined;
  /** Members by UUID, or every live peer. */
  readonly uuids: readonly string[];
  readonly allPeers: boolean;
  readonly force: boolean;
}

/**
 * `ring manual-change`, accepted for Torus compatibility. Torus's ring types
 * were placement algorithms; torus always places by weighted rendezvous
 * hashing, so the type only says which members the ring gets: none (empty),
 * exactly one (single), or those named (mod, ketama). A member's weight is
 * its peer's capacity, or its current ring weight when it does not report.
 */
export function planManualChange(ring: RingRecord, peers: readonly PeerRecord[], change: ManualChange, volumeCount: number, nowMs: number): RingRecord | null {
  const min = resolveMinReplicas(change.replication, change.min);
  let members: RingMember[];
  if (change.type === 'empty') {
    if (change.uuids.length > 0 || change.allPeers) throw new TorusError('TORUS_ERR_ARG_INVALID', 'an empty ring takes no --uuids or --all-peers');
    if (volumeCount > 0 && !change.force) {
      throw new TorusError(
        'TORUS_ERR_RING_UNSAFE',
        `an empty ring leaves the blocks of ${volumeCount} volume(s) with no owner; use --force to empty it anyway`,
        { details: { volumes: volumeCount } },
      );
    }
    members = [];
  } else {
    const uuids = change.allPeers ? peers.map((p) => p.uuid) : [...new Set(change.uuids)];
    if (uuids.length === 0) throw new TorusError('TORUS_ERR_ARG_INVALID', `a ${change.type} ring needs members: --uuids a,b,... or --all-peers`);
    if (change.type === 'single' && uuids.length !== 1) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `a single ring has exactly one member, not ${uuids.length}`);
    }
    const current = new Map(ring.members.map((m) => [m.uuid, m.weight]));
    members = uuids.map((uuid) => {
      const peer = peers.find((p) => p.uuid === uuid);
      const weight = peer ? memberWeight(peer) : current.get(uuid);
      if (weight === undefined) {
        throw new TorusError('TORUS_ERR_PEER_NOT_FOUND', `no live peer or ring member has UUID "${uuid}" (list them with "torusctl list-peers")`, { details: { uuid } });
      }
      return { uuid, weight };
    });
  }
  return planRingChange(ring, members, change.replication, min, `manual-change --type ${change.type}`, nowMs);
}
