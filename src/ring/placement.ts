import { createHash } from 'node:crypto';
import type { BlockRef } from '../model/block-ref.js';
import type { RingMember, RingRecord } from '../model/records.js';

/**
 * Placement is a pure function from a block ref to an ordered list of peers:
 * weighted rendezvous hashing (highest random weight). Each member scores
 * -weight / ln(u) where u in (0,1) is a hash of (member, block); the highest
 * scores win. Adding or removing one member only moves the blocks that member
 * gains or loses, and a member with twice the weight gets about twice the
 * blocks. The first `replication` entries hold the block; the rest are the
 * order in which to look elsewhere after failures.
 */
export function placeBlock(ring: Pick<RingRecord, 'members'>, ref: BlockRef): string[] {
  const scored: { uuid: string; score: number }[] = [];
  for (const m of ring.members) {
    if (m.weight <= 0) continue;
    scored.push({ uuid: m.uuid, score: score(m, ref) });
  }
  scored.sort((a, b) => b.score - a.score || (a.uuid < b.uuid ? -1 : 1));
  return scored.map((s) => s.uuid);
}

/** The peers that hold a block: the first min(replication, members) of placeBlock. */
export function replicasOf(ring: Pick<RingRecord, 'members' | 'replication'>, ref: BlockRef): string[] {
  return placeBlock(ring, ref).slice(0, Math.max(1, ring.replication));
}

function score(member: RingMember, ref: BlockRef): number {
  // Blocks of one volume generation sit in one "stripe" per 1 block; hashing
  // the whole ref spreads consecutive blocks over all members.
  const h = createHash('sha256')
    .update(member.uuid)
    .update(`/${ref.volumeId}/${ref.generation}/${ref.index}`)
    .digest();
  // 52 bits of the hash as a uniform number in (0, 1).
  const hi = h.readUInt32BE(0) >>> 0;
  const lo = h.readUInt32BE(4) >>> 12;
  const u = (hi * 2 ** 20 + lo + 0.5) / 2 ** 52;
  return -member.weight / Math.log(u);
}
