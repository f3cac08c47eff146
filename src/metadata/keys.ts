import { TorusError } from '../errors/torus-error.js';

/** Every torus key lives under this prefix unless the operator picks another. */
export const DEFAULT_PREFIX = '/torus/';

/**
 * Keys relative to the prefix. The etcd client works in a namespace bound to
 * the prefix, so these never carry it; `describeKeyLayout` shows full keys.
 */
export const KEYS = {
  config: 'config',
  volumeIdCounter: 'meta/volume-id',
  volumesPrefix: 'volumes/',
  volumeLocksPrefix: 'volume-locks/',
  volumeFencePrefix: 'volume-fence/',
  peersPrefix: 'peers/',
  ring: 'ring',
  secret: 'secret',
  stalePrefix: 'stale/',
  ringAcksPrefix: 'ring-acks/',
  movesPrefix: 'moves/',
  healthPrefix: 'health/',
  volumeMaintPrefix: 'volume-maint/',
  volumeReadersPrefix: 'volume-readers/',
  volumeReleasedPrefix: 'volume-released/',
  volumeExpiredPrefix: 'volume-expired/',
} as const;

export function volumeKey(name: string): string {
  return KEYS.volumesPrefix + name;
}

export function volumeLockKey(volumeId: number): string {
  return KEYS.volumeLocksPrefix + String(volumeId);
}

export function volumeFenceKey(volumeId: number): string {
  return KEYS.volumeFencePrefix + String(volumeId);
}

/**
 * The last token of the volume whose lock was let go cleanly (in the
 * transaction that deleted the lock key while this lease still held it):
 * equal to the fence when the newest lock ended that way, not by expiry.
 */
export function volumeReleasedKey(volumeId: number): string {
  return KEYS.volumeReleasedPrefix + String(volumeId);
}

/**
 * The newest token of the volume whose lock ended without a clean release
 * (its lease expired, or its holder let go before fencing off the ones
 * before it): written by the lock transaction of the holder after it.
 * Copies written under such a token may hold a change that reached only
 * some owners, with no record saying which (docs/replication.md,
 * "Fencing").
 */
export function volumeExpiredKey(volumeId: number): string {
  return KEYS.volumeExpiredPrefix + String(volumeId);
}

/** The volume id in a `volume-fence/<id>` key; TORUS_ERR_METADATA_CORRUPT for anything else. */
export function fenceIdOf(key: string): number {
  const m = /^volume-fence\/(\d{1,10})$/.exec(key);
  if (!m) throw new TorusError('TORUS_ERR_METADATA_CORRUPT', `etcd key "${key}" is not volume-fence/<volumeId>`, { details: { key } });
  return Number(m[1]);
}

export function peerKey(uuid: string): string {
  return KEYS.peersPrefix + uuid;
}

/** The volume's maintenance lock (leased), beside its writer lock. */
export function volumeMaintKey(volumeId: number): string {
  return KEYS.volumeMaintPrefix + String(volumeId);
}

/** Every reader lock of one volume: the trailing slash keeps volume 1 from matching 10. */
export function volumeReadersPrefix(volumeId: number): string {
  return `${KEYS.volumeReadersPrefix}${volumeId}/`;
}

/** One session's reader lock on a volume (leased): one key per lease, so a session holds at most one. */
export function volumeReaderKey(volumeId: number, leaseId: string): string {
  return volumeReadersPrefix(volumeId) + leaseId;
}

/** Every stale record of one volume: the trailing slash keeps volume 1 from matching 10. */
export function staleVolumePrefix(volumeId: number): string {
  return `${KEYS.stalePrefix}${volumeId}/`;
}

export function staleKey(volumeId: number, peer: string): string {
  return staleVolumePrefix(volumeId) + peer;
}

export function ringAckKey(leaseId: string): string {
  return KEYS.ringAcksPrefix + leaseId;
}

/** Every move record of one transition (its moving version). */
export function movesVersionPrefix(ringVersion: number): string {
  return `${KEYS.movesPrefix}${ringVersion}/`;
}

export function moveKey(ringVersion: number, volumeId: number): string {
  return movesVersionPrefix(ringVersion) + String(volumeId);
}

/** `moves/<ringVersion>/<volumeId>` back to its numbers; null for a key of another shape. */
export function parseMoveKey(key: string): { ringVersion: number; volumeId: number } | null {
  const m = /^moves\/(\d{1,15})\/(\d{1,10})$/.exec(key);
  return m ? { ringVersion: Number(m[1]), volumeId: Number(m[2]) } : null;
}

export function healthKey(volumeId: number): string {
  return KEYS.healthPrefix + String(volumeId);
}

/**
 * Checks an operator-supplied prefix: it must be absolute and end in `/` so
 * that one cluster's keys can never be a string prefix of another's
 * (`/torus` would also match `/torus-test/...`).
 */
export function normalizePrefix(prefix: string): string {
  if (!/^\/[A-Za-z0-9._\-/]*$/.test(prefix)) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid etcd prefix "${prefix}": it must start with "/" and use only [A-Za-z0-9._-/]`);
  }
  return prefix.endsWith('/') ? prefix : `${prefix}/`;
}

export interface KeyDoc {
  readonly key: string;
  readonly what: string;
}

/** The key layout as README documents it. */
export function describeKeyLayout(prefix: string = DEFAULT_PREFIX): KeyDoc[] {
  const p = normalizePrefix(prefix);
  return [
    { key: `${p}${KEYS.config}`, what: 'ClusterConfig JSON (block size, replication), written by torusctl init' },
    { key: `${p}${KEYS.volumeIdCounter}`, what: 'the last volume id handed out; bumped by compare-and-swap, ids are never reused' },
    { key: `${p}${KEYS.volumesPrefix}<name>`, what: 'VolumeRecord JSON for each volume' },
    { key: `${p}${KEYS.volumeLocksPrefix}<volumeId>`, what: 'VolumeLockRecord JSON of the current writer, attached to its lease (vanishes when the writer dies)' },
    { key: `${p}${KEYS.volumeFencePrefix}<volumeId>`, what: 'the last fencing token handed out for the volume (no lease: tokens only grow)' },
    { key: `${p}${KEYS.volumeReleasedPrefix}<volumeId>`, what: 'the last token whose writer or maintenance lock was let go cleanly (deleted by its holder in a transaction while still held), so that the next holder knows whether the previous lock expired instead (no lease)' },
    { key: `${p}${KEYS.volumeExpiredPrefix}<volumeId>`, what: 'the newest token whose writer or maintenance lock ended without a clean release, written by the next lock; a copy written under it or an older token may hold a change that reached only some owners (no lease)' },
    { key: `${p}${KEYS.peersPrefix}<uuid>`, what: "PeerRecord JSON of each live torusd, attached to the peer's lease" },
    { key: `${p}${KEYS.ring}`, what: 'RingRecord JSON (schema 2): version, members, weights, replication, minReplicas and the transition in progress; changed by compare-and-swap on its version' },
    { key: `${p}${KEYS.secret}`, what: 'the cluster secret peers authenticate with (64 hex digits), written once by init or by the first peer of a 0.1.0 cluster' },
    { key: `${p}${KEYS.volumeMaintPrefix}<volumeId>`, what: 'VolumeLockRecord JSON of the maintainer moving, catching up or scrubbing the volume while no one writes it, attached to its lease' },
    { key: `${p}${KEYS.volumeReadersPrefix}<volumeId>/<lease>`, what: 'VolumeLockRecord JSON (kind reader) of each session reading the volume under a reader lock, attached to its lease; readers and a writer exclude each other' },
    { key: `${p}${KEYS.stalePrefix}<volumeId>/<uuid>`, what: 'StaleRecord JSON: blocks of the volume (ranges, or all) that peer must not be read for until it has caught up' },
    { key: `${p}${KEYS.ringAcksPrefix}<lease>`, what: 'RingAck JSON of each process doing I/O: the ring version it uses and the fence revision it has learnt, attached to its lease' },
    { key: `${p}${KEYS.movesPrefix}<ringVersion>/<volumeId>`, what: "VolumeMoveRecord JSON: a volume's progress in the transition that started at that ring version (done, scanned, copied)" },
    { key: `${p}${KEYS.healthPrefix}<volumeId>`, what: "VolumeHealthRecord JSON: the last full check of the volume's copies (ring version, blocks short of R copies)" },
  ];
}
