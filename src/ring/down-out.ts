import type { RingRecord } from '../model/records.js';
import { assert } from '../util/assert.js';
import { placeBlock } from './placement.js';

/**
 * The limits on an automatic down-out (docs/replication.md, "Dead peers"),
 * as pure functions: no I/O, no clock. A member DOWN past the interval is
 * taken out of the ring only if at least R members remain and no survivor
 * would end past DOWN_OUT_FILL_MAX of its capacity once it holds the copies
 * the re-replication gives it.
 *
 * Where the copies go comes from the placement code itself: for sampled
 * block refs, placeBlock says whether the member owns the block and who the
 * other owners are. Removing a member from a rendezvous ring moves only its
 * own blocks, each to the next member in that block's order that is not
 * already an owner. Which of the non-owners that is, is an exponential race
 * (a score -w/ln(u) is w over an Exp(1) variable), so given the owners it is
 * non-owner s with probability w_s / (sum of the non-owners' weights). We
 * count that probability instead of the one survivor the hash picks: the
 * same expectation, without the sampling noise that a ring of many members
 * would otherwise have per survivor (a survivor of 100 gets ~1 % of the
 * member's copies; counted one by one, a few samples each). The unit test
 * checks it against the new ring's replicasOf block by block.
 *
 * Copies are added before any leftover is dropped (leftovers go only once
 * the ring is stable), so a survivor's peak is its usage now plus what it
 * gains; what it loses is not subtracted.
 */

/** A survivor is not filled past this share of its capacity by a down-out. */
export const DOWN_OUT_FILL_MAX = 0.85;

/**
 * Placement scores (sampled blocks × members) one estimate may spend: about
 * 50 ms of one core, once per ring version and DOWN member (the caller
 * caches), whatever the ring's size.
 */
export const DOWN_OUT_SCORES_MAX = 2 ** 17;
/** Sampled blocks, at least and at most: the fewest still give each member of a large ring a share within a few %. */
export const DOWN_OUT_SAMPLES_MIN = 1024;
export const DOWN_OUT_SAMPLES_MAX = 16_384;

/** How the ring shares blocks with and without one member (downOutShares). */
export interface DownOutShares {
  readonly member: string;
  readonly samples: number;
  /** Share of all copies each member holds under the ring (the shares sum to 1). */
  readonly copyShare: ReadonlyMap<string, number>;
  /** Share of the member's copies each survivor receives once it is out (sum 1, or empty when it holds none). */
  readonly gainShare: ReadonlyMap<string, number>;
}

/**
 * Copy shares of the ring and where the member's copies would go without
 * it, from `samples` block refs (default: DOWN_OUT_SCORES_MAX / members,
 * within DOWN_OUT_SAMPLES_MIN..MAX). Deterministic: same ring, same result.
 */
export function downOutShares(ring: Pick<RingRecord, 'members' | 'replication'>, member: string, samples?: number): DownOutShares {
  const n = ring.members.length;
  const count = samples ?? Math.min(DOWN_OUT_SAMPLES_MAX, Math.max(DOWN_OUT_SAMPLES_MIN, Math.floor(DOWN_OUT_SCORES_MAX / Math.max(1, n))));
  const r = Math.max(1, ring.replication);
  const weight = new Map(ring.members.map((m) => [m.uuid, m.weight]));
  const copies = new Map<string, number>();
  const gains = new Map<string, number>();
  let allCopies = 0;
  let held = 0;
  for (let i = 0; i < count; i++) {
    // Refs as a volume has them; the hash spreads any set of refs alike.
    const order = placeBlock(ring, { volumeId: 1, generation: 1, index: i });
    const owners = order.slice(0, r);
    for (const o of owners) copies.set(o, (copies.get(o) ?? 0) + 1);
    allCopies += owners.length;
    if (!owners.includes(member)) continue;
    held++;
    const rest = order.slice(r);
    const restWeight = rest.reduce((s, u) => s + weight.get(u)!, 0);
    for (const u of rest) gains.set(u, (gains.get(u) ?? 0) + weight.get(u)! / restWeight);
  }
  const copyShare = new Map<string, number>();
  for (const m of ring.members) copyShare.set(m.uuid, allCopies > 0 ? (copies.get(m.uuid) ?? 0) / allCopies : 0);
  const gainShare = new Map<string, number>();
  if (held > 0) for (const [u, g] of gains) gainShare.set(u, g / held);
  return { member, samples: count, copyShare, gainShare };
}

/** Bytes a peer may store and stores, from its peer record (live, or the last one seen). */
export interface PeerFigures {
  readonly capacity: number;
  readonly used: number;
}

/** What the DOWN member is taken to have held. */
export interface HeldEstimate {
  /** The larger of the two below: the copies the survivors will have to make. */
  readonly bytes: number;
  /** `used` of its last peer record seen, or null when none was. */
  readonly fromRecord: number | null;
  /** Its share of the ring's copies applied to what the survivors store now. */
  readonly fromShare: number;
}

export interface SurvivorFill {
  readonly uuid: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  /** Its share of the member's copies. */
  readonly addedBytes: number;
  /** (used + added) / capacity; Infinity for a capacity of 0 that gains anything. */
  readonly fillAfter: number;
}

export type DownOutCheck =
  | { readonly ok: true; readonly estimate: HeldEstimate; readonly survivors: readonly SurvivorFill[] }
  /** Fewer than R members would remain. */
  | { readonly ok: false; readonly reason: 'replication'; readonly survivors: number; readonly replication: number }
  /** No peer record of this survivor was ever seen: its fill cannot be checked. */
  | { readonly ok: false; readonly reason: 'unknown'; readonly survivor: string }
  /** `worst` (the fullest) and maybe others would end past the limit. */
  | { readonly ok: false; readonly reason: 'fill'; readonly estimate: HeldEstimate; readonly worst: SurvivorFill; readonly over: number; readonly fillMax: number };

export interface DownOutInput {
  /** The stable ring the member would leave. */
  readonly ring: Pick<RingRecord, 'members' | 'replication'>;
  readonly member: string;
  /** downOutShares(ring, member). */
  readonly shares: DownOutShares;
  /** Figures of the ring's members: live records, else the last one seen; absent when none was. */
  readonly peers: ReadonlyMap<string, PeerFigures>;
  readonly fillMax?: number;
}

/**
 * May the member be taken out of the ring? The data it held is the larger
 * of its last known `used` and its ring share of what the survivors store
 * (an imbalanced or recently changed ring can make either one low). Each
 * survivor gains that times its gain share; one ending past the limit holds
 * the down-out, and so does a survivor with no figures at all (nothing
 * bounds what it would be filled to).
 */
export function checkDownOut(input: DownOutInput): DownOutCheck {
  const { ring, member, shares, peers } = input;
  const fillMax = input.fillMax ?? DOWN_OUT_FILL_MAX;
  assert(shares.member === member, 'down-out shares are those of the member checked');
  const survivors = ring.members.filter((m) => m.uuid !== member);
  if (survivors.length < ring.replication) return { ok: false, reason: 'replication', survivors: survivors.length, replication: ring.replication };
  for (const s of survivors) if (!peers.has(s.uuid)) return { ok: false, reason: 'unknown', survivor: s.uuid };

  const stored = survivors.reduce((sum, s) => sum + peers.get(s.uuid)!.used, 0);
  const survivorShare = survivors.reduce((sum, s) => sum + (shares.copyShare.get(s.uuid) ?? 0), 0);
  const memberShare = shares.copyShare.get(member) ?? 0;
  // Survivors that hold no share while storing bytes: nothing bounds the member's part.
  const fromShare = survivorShare > 0 ? (stored * memberShare) / survivorShare : stored > 0 && memberShare > 0 ? Infinity : 0;
  const fromRecord = peers.get(member)?.used ?? null;
  const estimate: HeldEstimate = { bytes: Math.max(fromShare, fromRecord ?? 0), fromRecord, fromShare };

  const fills = survivors.map((s): SurvivorFill => {
    const p = peers.get(s.uuid)!;
    const gain = shares.gainShare.get(s.uuid) ?? 0;
    // An unbounded estimate times a zero share is no copy, not NaN.
    const added = gain > 0 ? estimate.bytes * gain : 0;
    const after = p.used + added;
    return { uuid: s.uuid, capacityBytes: p.capacity, usedBytes: p.used, addedBytes: added, fillAfter: p.capacity > 0 ? after / p.capacity : after > 0 ? Infinity : 0 };
  });
  // Only a survivor that gains copies is filled by the down-out; one already full that gains none is not made worse.
  const over = fills.filter((f) => f.addedBytes > 0 && f.fillAfter > fillMax);
  if (over.length > 0) {
    const worst = over.reduce((a, b) => (b.fillAfter > a.fillAfter ? b : a));
    return { ok: false, reason: 'fill', estimate, worst, over: over.length, fillMax };
  }
  return { ok: true, estimate, survivors: fills };
}
