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
 *
 * The hash runs on every I/O request, so it is integer mixing (murmur3's
 * finaliser over the ref's words, seeded per member), not a cryptographic
 * hash: placement needs spread, not secrecy.
 */
export function placeBlock(ring: Pick<RingRecord, 'members'>, ref: BlockRef): string[] {
  const members = ring.members;
  if (members.length === 1) return members[0]!.weight > 0 ? [members[0]!.uuid] : [];
  const scored: { uuid: string; score: number }[] = [];
  for (const m of members) {
    if (m.weight <= 0) continue;
    scored.push({ uuid: m.uuid, score: score(m, ref) });
  }
  // Uuids differ, so no two members compare equal.
  scored.sort((a, b) => (ranksBefore(a.score, a.uuid, b.score, b.uuid) ? -1 : 1));
  return scored.map((s) => s.uuid);
}

/**
 * The peers that hold a block: the first min(replication, members) of
 * placeBlock. It runs for every change a coordinator sends, so it keeps
 * only the best `replication` members as it scores them (an insertion into
 * a list that short) instead of sorting every member and slicing.
 */
export function replicasOf(ring: Pick<RingRecord, 'members' | 'replication'>, ref: BlockRef): string[] {
  const want = Math.max(1, ring.replication);
  const members = ring.members;
  if (members.length === 1) return members[0]!.weight > 0 ? [members[0]!.uuid] : [];
  const uuids: string[] = [];
  const scores: number[] = [];
  for (const m of members) {
    if (m.weight <= 0) continue;
    const sc = score(m, ref);
    // Where placeBlock's order puts it among those kept so far.
    let at = uuids.length;
    while (at > 0 && ranksBefore(sc, m.uuid, scores[at - 1]!, uuids[at - 1]!)) at--;
    if (at >= want) continue;
    // Shifted by hand: splice would allocate the (empty) list it removes.
    let i = Math.min(uuids.length, want - 1);
    while (i > at) {
      uuids[i] = uuids[i - 1]!;
      scores[i] = scores[i - 1]!;
      i--;
    }
    uuids[at] = m.uuid;
    scores[at] = sc;
  }
  return uuids;
}

/** placeBlock's order: the higher score first, ties by uuid. */
function ranksBefore(score: number, uuid: string, otherScore: number, otherUuid: string): boolean {
  return score > otherScore || (score === otherScore && uuid < otherUuid);
}

const seeds = new Map<string, [number, number]>();

/** Two 32-bit seeds per member uuid (FNV-1a over its characters, two offsets). */
function seedsOf(uuid: string): [number, number] {
  let s = seeds.get(uuid);
  if (!s) {
    let a = 0x811c9dc5;
    let b = 0x01000193 ^ 0x9e3779b9;
    for (let i = 0; i < uuid.length; i++) {
      const c = uuid.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995);
    }
    s = [a >>> 0, b >>> 0];
    if (seeds.size > 10_000) seeds.clear();
    seeds.set(uuid, s);
  }
  return s;
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function mix(seed: number, ref: BlockRef): number {
  let h = seed;
  h = fmix32(h ^ ref.volumeId);
  h = fmix32(h ^ ref.generation);
  h = fmix32(h ^ (ref.index >>> 0));
  h = fmix32(h ^ Math.floor(ref.index / 2 ** 32));
  return h;
}

function score(member: RingMember, ref: BlockRef): number {
  const [s1, s2] = seedsOf(member.uuid);
  // 52 bits of hash as a uniform number in (0, 1).
  const hi = mix(s1, ref) >>> 6; // 26 bits
  const lo = mix(s2, ref) >>> 6; // 26 bits
  const u = (hi * 2 ** 26 + lo + 0.5) / 2 ** 52;
  return -member.weight / Math.log(u);
}
