import { TorusError } from '../errors/torus-error.js';
import { validateReplication } from '../metadata/validate.js';
import type { PeerRecord, RingMember, RingRecord } from '../model/records.js';

/**
 * Ring edits torusctl makes, as pure functions from the current ring (and
 * peer records) to the next ring. Each next ring carries version + 1; the
 * caller writes it by compare-and-swap and re-plans when it loses a race.
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

export function planAddMembers(ring: RingRecord, peers: readonly PeerRecord[], selectors: readonly string[], allPeers: boolean): AddPlan {
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
  const next: RingRecord = {
    ...ring,
    version: ring.version + 1,
    members: [...ring.members, ...added.map((p): RingMember => ({ uuid: p.uuid, weight: memberWeight(p) }))],
  };
  return { next, added, alreadyMembers };
}

export interface RemovePlan {
  readonly next: RingRecord;
  readonly removed: RingMember;
}

export function planRemoveMember(ring: RingRecord, peers: readonly PeerRecord[], selector: string, force: boolean): RemovePlan {
  const uuid = ring.members.some((m) => m.uuid === selector) ? selector : findPeer(selector, peers)?.uuid;
  const removed = ring.members.find((m) => m.uuid === uuid);
  if (!removed) {
    throw new TorusError('TORUS_ERR_PEER_NOT_FOUND', `no ring member has address or UUID "${selector}" (see "torusctl ring get")`, {
      details: { selector },
    });
  }
  const members = ring.members.filter((m) => m.uuid !== removed.uuid);
  if (members.length < ring.replication && !force) {
    throw new TorusError(
      'TORUS_ERR_RING_UNSAFE',
      `removing ${removed.uuid} would leave ${members.length} ring member(s) for replication ${ring.replication}: blocks would lose copies; use --force to remove it anyway`,
      { details: { uuid: removed.uuid, remaining: members.length, replication: ring.replication } },
    );
  }
  return { next: { ...ring, version: ring.version + 1, members }, removed };
}

/** null when the ring already has that replication. */
export function planSetReplication(ring: RingRecord, replication: number): RingRecord | null {
  validateReplication(replication);
  if (ring.replication === replication) return null;
  return { ...ring, version: ring.version + 1, replication };
}
