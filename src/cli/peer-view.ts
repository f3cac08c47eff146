import type { PeerRecord, RingRecord } from '../model/records.js';
import { formatSize } from '../util/size.js';

/**
 * What `list-peers` shows, computed from the peer records and the ring.
 * Pure: the caller passes the time.
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
  /** Rebalance/replication traffic; always 0 until rebalancing exists. */
  readonly rebalanceBytesPerSec: number;
  readonly usedPercent: number | null;
}

export interface PeerView {
  readonly peers: PeerRow[];
  readonly ringVersion: number;
  readonly replication: number;
  /** Every OK member's usage is within the tolerance of the members' mean. */
  readonly balanced: boolean;
  /** Used over capacity of every reporting peer, in percent. */
  readonly usagePercent: number;
}

function percent(used: number, capacity: number): number {
  return capacity > 0 ? (used / capacity) * 100 : 0;
}

export function buildPeerView(peers: readonly PeerRecord[], ring: RingRecord, nowMs: number, tolerancePercent: number): PeerView {
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
      rebalanceBytesPerSec: 0,
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
  const members = rows.filter((r) => r.member === 'OK' && r.usedPercent !== null);
  const mean = members.reduce((s, r) => s + (r.usedPercent ?? 0), 0) / Math.max(1, members.length);
  const balanced = members.every((r) => Math.abs((r.usedPercent ?? 0) - mean) <= tolerancePercent);
  const used = peers.reduce((s, p) => s + p.used, 0);
  const capacity = peers.reduce((s, p) => s + p.capacity, 0);
  return { peers: rows, ringVersion: ring.version, replication: ring.replication, balanced, usagePercent: percent(used, capacity) };
}

/** `3s ago`, `5m ago`, `2h ago`, `4d ago`. */
export function formatAgo(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s}s ago`;
  if (s < 120 * 60) return `${Math.floor(s / 60)}m ago`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export const PEER_HEADERS = ['ADDRESS', 'UUID', 'SIZE', 'USED', 'MEMBER', 'UPDATED', 'REB/REP', 'DATA'] as const;

export function peerRows(view: PeerView, si: boolean): string[][] {
  return view.peers.map((r) => [
    r.address ?? '',
    r.uuid,
    r.capacity === null ? '' : formatSize(r.capacity, si),
    r.used === null ? '' : formatSize(r.used, si),
    r.member,
    r.updatedAgoMs === null ? '' : formatAgo(r.updatedAgoMs),
    `${formatSize(r.rebalanceBytesPerSec, si)}/sec`,
    r.usedPercent === null ? '' : `${r.usedPercent.toFixed(2)}%`,
  ]);
}

export function peerFooter(view: PeerView): string {
  return `Balanced: ${view.balanced} Usage: ${view.usagePercent.toFixed(2)}%`;
}
