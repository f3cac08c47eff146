import type { PeerRecord, RingRecord } from '../model/records.js';
import { formatAgo, formatBytes, formatRate } from './output.js';

/**
 * What `list-peers` shows, computed from the peer records and the ring.
 * Pure: the caller passes the time and whether the cluster is balanced
 * (cluster-view.ts decides that from the ring, stale and health records).
 */

/** OK: in the ring and reporting. Avail: reporting, not in the ring. DOWN: in the ring, no record. */
export type MemberStatus = 'OK' | 'Avail' | 'DOWN';

export interface PeerRow {
  readonly uuid: string;
  readonly address: string | null;
  readonly hostname: string | null;
  readonly capacity: number | null;
  readonly used: number | null;
  readonly member: MemberStatus;
  readonly weight: number | null;
  readonly updatedAt: string | null;
  readonly updatedAgoMs: number | null;
  /** Bytes per second the peer copies for rebalance, catch-up and repair (REB/REP DATA). */
  readonly rebalanceBytesPerSec: number;
  readonly usedPercent: number | null;
}

export interface PeerView {
  readonly peers: PeerRow[];
  readonly ringVersion: number;
  readonly ringPhase: 'stable' | 'moving' | 'settled';
  readonly replication: number;
  readonly minReplicas: number;
  /** Stable ring, no stale record, every volume checked at this ring version with no block short of R copies. */
  readonly balanced: boolean;
  readonly unbalancedBecause: readonly string[];
  /** Used over capacity of every reporting peer, in percent. */
  readonly usagePercent: number;
}

function percent(used: number, capacity: number): number {
  return capacity > 0 ? (used / capacity) * 100 : 0;
}

export function buildPeerView(peers: readonly PeerRecord[], ring: RingRecord, nowMs: number, unbalancedBecause: readonly string[]): PeerView {
  const weights = new Map(ring.members.map((m) => [m.uuid, m.weight]));
  const reporting = new Set(peers.map((p) => p.uuid));
  const rows: PeerRow[] = peers.map((p) => {
    const updated = Date.parse(p.updatedAt);
    return {
      uuid: p.uuid,
      address: p.address,
      hostname: p.hostname,
      capacity: p.capacity,
      used: p.used,
      member: weights.has(p.uuid) ? 'OK' : 'Avail',
      weight: weights.get(p.uuid) ?? null,
      updatedAt: p.updatedAt,
      updatedAgoMs: Number.isFinite(updated) ? Math.max(0, nowMs - updated) : null,
      rebalanceBytesPerSec: p.rebalanceBytesPerSec ?? 0,
      usedPercent: percent(p.used, p.capacity),
    };
  });
  for (const m of ring.members) {
    if (reporting.has(m.uuid)) continue;
    rows.push({
      uuid: m.uuid,
      address: null,
      hostname: null,
      capacity: null,
      used: null,
      member: 'DOWN',
      weight: m.weight,
      updatedAt: null,
      updatedAgoMs: null,
      rebalanceBytesPerSec: 0,
      usedPercent: null,
    });
  }
  rows.sort((a, b) => {
    const ka = `${a.address === null ? '1' : '0'}${a.address ?? ''} ${a.uuid}`;
    const kb = `${b.address === null ? '1' : '0'}${b.address ?? ''} ${b.uuid}`;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  const used = peers.reduce((s, p) => s + p.used, 0);
  const capacity = peers.reduce((s, p) => s + p.capacity, 0);
  return {
    peers: rows,
    ringVersion: ring.version,
    ringPhase: ring.transition?.phase ?? 'stable',
    replication: ring.replication,
    minReplicas: ring.minReplicas,
    balanced: unbalancedBecause.length === 0,
    unbalancedBecause,
    usagePercent: percent(used, capacity),
  };
}

/** Torus's columns; `REB/REP DATA` is one column (a rate). */
export const PEER_HEADERS = ['ADDRESS', 'UUID', 'SIZE', 'USED', 'MEMBER', 'UPDATED', 'REB/REP DATA'] as const;
export const PEER_ALIGN = ['left', 'left', 'right', 'right', 'left', 'left', 'right'] as const;

export function peerRows(view: PeerView, si: boolean): string[][] {
  return view.peers.map((r) => [
    r.address ?? '',
    r.uuid,
    r.capacity === null ? '' : formatBytes(r.capacity, si),
    r.used === null ? '' : formatBytes(r.used, si),
    r.member,
    r.updatedAgoMs === null ? '' : formatAgo(r.updatedAgoMs),
    r.member === 'DOWN' ? '' : formatRate(r.rebalanceBytesPerSec, si),
  ]);
}

export function peerFooter(view: PeerView): string {
  return `Balanced: ${view.balanced} Usage: ${view.usagePercent.toFixed(2)}%`;
}
