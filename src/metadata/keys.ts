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

export function peerKey(uuid: string): string {
  return KEYS.peersPrefix + uuid;
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
    { key: `${p}${KEYS.peersPrefix}<uuid>`, what: "PeerRecord JSON of each live torusd, attached to the peer's lease" },
    { key: `${p}${KEYS.ring}`, what: 'RingRecord JSON: ring members, weights and replication; changed by compare-and-swap on its version' },
  ];
}
