import { countBlocks, mergeRanges, normalizeRanges, type BlockRange } from '../model/ranges.js';
import type { PeerRecord, RingAck, RingRecord, StaleRecord, VolumeHealthRecord, VolumeMoveRecord, VolumeRecord } from '../model/records.js';
import { ringPhase } from '../ring/transition.js';

/**
 * What `cluster status`, `list-peers` (Balanced) and `peer remove` (drain
 * progress) show, computed from records read from etcd. Pure: the caller
 * reads the records and passes the time.
 */

export interface ClusterSnapshot {
  readonly ring: RingRecord;
  readonly peers: readonly PeerRecord[];
  readonly volumes: readonly VolumeRecord[];
  readonly stale: readonly StaleRecord[];
  /** Move records of the transition in progress (its startedVersion); empty when stable. */
  readonly moves: readonly VolumeMoveRecord[];
  readonly health: readonly VolumeHealthRecord[];
  readonly acks: readonly RingAck[];
}

export interface MoveProgress {
  /** The transition's moving version, which keys its move records. */
  readonly ringVersion: number;
  readonly phase: 'moving' | 'settled';
  readonly volumes: number;
  /** Volumes with a `done` move record for this transition. */
  readonly volumesDone: number;
  readonly scanned: number;
  readonly copied: number;
  /** Blocks no current copy of which is reachable: the move cannot finish while > 0. */
  readonly unavailable: number;
  /**
   * Blocks gone through out of every volume's blocks, 0..100 (a volume
   * done counts whole; one whose record has no `reached`, from an older
   * release, counts when done; 100 when there is no volume to move).
   */
  readonly percent: number;
}

export interface StaleRow {
  readonly volume: string;
  readonly volumeId: number;
  readonly peer: string;
  readonly all: boolean;
  /** Blocks that peer must not be read for (the whole volume's count when `all`). */
  readonly blocks: number;
}

export interface DegradedVolume {
  readonly volume: string;
  readonly volumeId: number;
  /** Blocks with fewer than R current copies: those some peer is stale for. */
  readonly shortBlocks: number;
  readonly stalePeers: readonly string[];
  /** From the last check at the current ring version, if any. */
  readonly healthShort: number | null;
}

export interface ClusterStatus {
  readonly ring: {
    readonly version: number;
    readonly phase: 'stable' | 'moving' | 'settled';
    readonly replication: number;
    readonly minReplicas: number;
    readonly members: readonly string[];
    readonly transition: {
      readonly startedVersion: number;
      readonly startedAt: string;
      readonly reason: string;
      readonly fromReplication: number;
      readonly fromMembers: readonly string[];
    } | null;
  };
  readonly progress: MoveProgress | null;
  /** Live processes doing I/O and how many of them use the current ring version. */
  readonly acks: { readonly live: number; readonly current: number; readonly behind: readonly { readonly lease: string; readonly peer: string | null; readonly ringVersion: number }[] };
  readonly stale: readonly StaleRow[];
  readonly degraded: readonly DegradedVolume[];
  /** Ring members with no peer record. */
  readonly down: readonly string[];
  /** Sum of the peers' rebalance rates. */
  readonly rebalanceBytesPerSec: number;
  readonly balanced: boolean;
  /** Why not balanced, for humans; empty when balanced. */
  readonly unbalancedBecause: readonly string[];
}

/** Blocks in a volume (the last one may be partial). */
export function volumeBlocks(volume: VolumeRecord): number {
  return Math.ceil(volume.size / volume.blockSize);
}

/** Progress of the transition in progress; null when the ring is stable. */
export function moveProgress(ring: RingRecord, volumes: readonly VolumeRecord[], moves: readonly VolumeMoveRecord[]): MoveProgress | null {
  const t = ring.transition;
  if (t === null) return null;
  const live = new Set(volumes.map((v) => v.id));
  const mine = moves.filter((m) => m.ringVersion === t.startedVersion && live.has(m.volumeId));
  const volumesDone = mine.filter((m) => m.done).length;
  const byVolume = new Map(mine.map((m) => [m.volumeId, m]));
  let total = 0;
  let reached = 0;
  for (const v of volumes) {
    const blocks = volumeBlocks(v);
    const m = byVolume.get(v.id);
    total += blocks;
    reached += m === undefined ? 0 : m.done ? blocks : Math.min(blocks, m.reached ?? 0);
  }
  return {
    ringVersion: t.startedVersion,
    phase: t.phase,
    volumes: live.size,
    volumesDone,
    scanned: mine.reduce((n, m) => n + m.scanned, 0),
    copied: mine.reduce((n, m) => n + m.copied, 0),
    unavailable: mine.reduce((n, m) => n + m.unavailable, 0),
    percent: total === 0 ? 100 : (reached / total) * 100,
  };
}

/**
 * Balanced (docs/replication.md): the ring is stable, no replica is stale
 * anywhere, and every volume has a health record at the current ring version
 * that found no block short of R copies. Returns the reasons it is not.
 */
export function unbalancedReasons(ring: RingRecord, volumes: readonly VolumeRecord[], stale: readonly StaleRecord[], health: readonly VolumeHealthRecord[]): string[] {
  const why: string[] = [];
  if (ring.transition !== null) why.push(`the ring is in transition (${ring.transition.phase})`);
  const live = new Set(volumes.map((v) => v.id));
  const staleLive = stale.filter((s) => live.has(s.volumeId));
  if (staleLive.length > 0) why.push(`${staleLive.length} stale record(s)`);
  const checked = new Map(health.filter((h) => h.ringVersion === ring.version).map((h) => [h.volumeId, h]));
  const unchecked = volumes.filter((v) => !checked.has(v.id)).length;
  if (unchecked > 0) why.push(`${unchecked} volume(s) not checked at ring version ${ring.version}`);
  const short = volumes.filter((v) => (checked.get(v.id)?.short ?? 0) > 0).length;
  if (short > 0) why.push(`${short} volume(s) with blocks short of ${ring.replication} copies`);
  return why;
}

export function buildClusterStatus(s: ClusterSnapshot): ClusterStatus {
  const { ring } = s;
  const byId = new Map(s.volumes.map((v) => [v.id, v]));
  const reporting = new Set(s.peers.map((p) => p.uuid));
  const stale: StaleRow[] = [];
  const staleByVolume = new Map<number, { all: boolean; ranges: BlockRange[]; peers: string[] }>();
  for (const r of s.stale) {
    const v = byId.get(r.volumeId);
    if (v === undefined) continue; // a record of a deleted volume
    const total = volumeBlocks(v);
    // Stale ranges may reach past the end (a record cannot know the size): count what exists.
    const ranges = r.all ? [[0, total] as const] : normalizeRanges([...r.ranges, ...(r.unsure ?? [])].filter(([a]) => a < total).map(([a, b]) => [a, Math.min(b, total)] as const));
    stale.push({ volume: v.name, volumeId: v.id, peer: r.peer, all: r.all, blocks: countBlocks(ranges) });
    const agg = staleByVolume.get(v.id) ?? { all: false, ranges: [], peers: [] };
    agg.all ||= r.all;
    agg.ranges = mergeRanges(agg.ranges, ranges);
    agg.peers.push(r.peer);
    staleByVolume.set(v.id, agg);
  }
  stale.sort((a, b) => a.volumeId - b.volumeId || (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
  const healthNow = new Map(s.health.filter((h) => h.ringVersion === ring.version).map((h) => [h.volumeId, h]));
  const degraded: DegradedVolume[] = [];
  for (const v of s.volumes) {
    const agg = staleByVolume.get(v.id);
    const healthShort = healthNow.get(v.id)?.short ?? null;
    if (agg === undefined && !(healthShort !== null && healthShort > 0)) continue;
    degraded.push({
      volume: v.name,
      volumeId: v.id,
      shortBlocks: agg === undefined ? 0 : countBlocks(agg.ranges),
      stalePeers: agg?.peers.sort() ?? [],
      healthShort,
    });
  }
  const current = s.acks.filter((a) => a.ringVersion >= ring.version);
  const behind = s.acks.filter((a) => a.ringVersion < ring.version).map((a) => ({ lease: a.lease, peer: a.peer, ringVersion: a.ringVersion }));
  const why = unbalancedReasons(ring, s.volumes, s.stale, s.health);
  const t = ring.transition;
  return {
    ring: {
      version: ring.version,
      phase: ringPhase(ring),
      replication: ring.replication,
      minReplicas: ring.minReplicas,
      members: ring.members.map((m) => m.uuid),
      transition:
        t === null
          ? null
          : { startedVersion: t.startedVersion, startedAt: t.startedAt, reason: t.reason, fromReplication: t.from.replication, fromMembers: t.from.members.map((m) => m.uuid) },
    },
    progress: moveProgress(ring, s.volumes, s.moves),
    acks: { live: s.acks.length, current: current.length, behind },
    stale,
    degraded,
    down: ring.members.filter((m) => !reporting.has(m.uuid)).map((m) => m.uuid),
    rebalanceBytesPerSec: s.peers.reduce((n, p) => n + (p.rebalanceBytesPerSec ?? 0), 0),
    balanced: why.length === 0,
    unbalancedBecause: why,
  };
}
