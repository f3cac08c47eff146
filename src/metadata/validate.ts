import { TorusError } from '../errors/torus-error.js';
import { checkRange, type BlockRange } from '../model/ranges.js';
import type { RingAck, RingMember, RingRecord, VolumeHealthRecord, VolumeLockRecord, VolumeMoveRecord } from '../model/records.js';
import { formatSize } from '../util/size.js';
import { VOLUME_NAME_PATTERN, type MaintenanceLockOptions } from './metadata-service.js';
import { CARRIED_PLACEMENTS_MAX } from '../ring/transition.js';

export const BLOCK_SIZE_MIN_BYTES = 4 * 1024;
export const BLOCK_SIZE_MAX_BYTES = 64 * 1024 * 1024;
export const REPLICATION_MAX = 16;
export const SECTOR_BYTES = 512;
/** Large enough for any disk torus will see; small enough that byte maths stays exact. */
export const VOLUME_SIZE_MAX_BYTES = 2 ** 50;
/** Volume ids are u32 on the wire (BlockRef). */
export const VOLUME_ID_MAX = 0xffffffff;
export const RING_MEMBERS_MAX = 4096;
export const SESSION_TTL_MAX_SECONDS = 3600;
/** Lock holders are for messages: `torusd 3f2a... on node-1 (pid 42)`. */
export const HOLDER_CHARS_MAX = 512;
/** The cluster secret: 32 random bytes, kept as 64 hex digits. */
export const CLUSTER_SECRET_BYTES = 32;
/** Ranges one addStale or removeStale call may carry (a batch of writes, not a whole disk). */
export const STALE_CALL_RANGES_MAX = 65_536;

export function validateClusterParams(config: { blockSize: number; replication: number }): void {
  const { blockSize, replication } = config;
  const powerOfTwo = Number.isSafeInteger(blockSize) && blockSize > 0 && (blockSize & (blockSize - 1)) === 0;
  if (!powerOfTwo || blockSize < BLOCK_SIZE_MIN_BYTES || blockSize > BLOCK_SIZE_MAX_BYTES) {
    throw new TorusError(
      'TORUS_ERR_SIZE_INVALID',
      `invalid block size ${String(blockSize)}: it must be a power of two between ${formatSize(BLOCK_SIZE_MIN_BYTES)} and ${formatSize(BLOCK_SIZE_MAX_BYTES)}`,
    );
  }
  validateReplication(replication);
}

export function validateReplication(replication: number): void {
  if (!Number.isInteger(replication) || replication < 1 || replication > REPLICATION_MAX) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid replication ${String(replication)}: it must be a whole number from 1 to ${REPLICATION_MAX}`);
  }
}

export function validateVolumeName(name: string): void {
  if (typeof name !== 'string' || !VOLUME_NAME_PATTERN.test(name)) {
    throw new TorusError(
      'TORUS_ERR_NAME_INVALID',
      `invalid volume name ${JSON.stringify(name)}: use 1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit`,
    );
  }
}

export function validateVolumeSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid volume size ${String(size)}: it must be a positive whole number of bytes`);
  }
  if (size % SECTOR_BYTES !== 0) {
    throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid volume size ${size}: it must be a multiple of ${SECTOR_BYTES} bytes`);
  }
  if (size > VOLUME_SIZE_MAX_BYTES) {
    throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid volume size ${size}: the largest volume is ${formatSize(VOLUME_SIZE_MAX_BYTES)}`);
  }
}

function validateMembers(members: readonly RingMember[], bad: (why: string) => never, where = ''): void {
  if (!Array.isArray(members)) bad(`${where}members is not a list`);
  if (members.length > RING_MEMBERS_MAX) bad(`${where}more than ${RING_MEMBERS_MAX} members`);
  const seen = new Set<string>();
  for (const m of members) {
    if (typeof m.uuid !== 'string' || m.uuid.length === 0) bad(`${where}a member has no uuid`);
    if (seen.has(m.uuid)) bad(`${where}member ${m.uuid} appears twice`);
    seen.add(m.uuid);
    if (!Number.isFinite(m.weight) || m.weight <= 0) bad(`${where}member ${m.uuid} has weight ${String(m.weight)}; weights are positive`);
  }
}

/** Shape checks on a ring someone wants to write; placement and the transition code rely on them. */
export function validateRing(ring: RingRecord): void {
  const bad = (why: string): never => {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid ring: ${why}`);
  };
  if (ring.schema !== 2) bad(`schema ${String(ring.schema)} is not 2`);
  if (!Number.isSafeInteger(ring.version) || ring.version < 1) bad(`version ${String(ring.version)} is not a positive integer`);
  validateReplication(ring.replication);
  if (!Number.isSafeInteger(ring.minReplicas) || ring.minReplicas < 1 || ring.minReplicas > ring.replication) {
    bad(`minReplicas ${String(ring.minReplicas)} is not a whole number from 1 to the replication (${ring.replication})`);
  }
  validateMembers(ring.members, bad);
  const t = ring.transition;
  if (t === undefined) bad('transition is missing (null when stable)');
  if (t === null) return;
  if (typeof t !== 'object') bad('transition is not an object');
  if (t.phase !== 'moving' && t.phase !== 'settled') bad(`transition phase ${JSON.stringify(t.phase)} is not moving or settled`);
  if (!Number.isSafeInteger(t.startedVersion) || t.startedVersion < 1 || t.startedVersion > ring.version) {
    bad(`transition startedVersion ${String(t.startedVersion)} is not a version from 1 to ${ring.version}`);
  }
  if (typeof t.startedAt !== 'string' || Number.isNaN(Date.parse(t.startedAt))) bad('transition startedAt is not an ISO-8601 time');
  if (typeof t.reason !== 'string') bad('transition reason is not a string');
  if (typeof t.from !== 'object' || t.from === null) bad('transition from is not a placement');
  validateReplication(t.from.replication);
  validateMembers(t.from.members, bad, 'transition from: ');
  if (t.carried !== undefined) {
    if (!Array.isArray(t.carried) || t.carried.length === 0 || t.carried.length > CARRIED_PLACEMENTS_MAX) bad(`transition carried is not a list of 1 to ${CARRIED_PLACEMENTS_MAX} placements`);
    for (const p of t.carried) {
      if (typeof p !== 'object' || p === null) bad('transition carried holds something that is not a placement');
      validateReplication(p.replication);
      validateMembers(p.members, bad, 'transition carried: ');
    }
  }
}

export function volumeInUseError(name: string, lock: VolumeLockRecord): TorusError {
  const what = lock.kind === 'maintainer' ? 'under maintenance by' : lock.kind === 'reader' ? 'read (under a reader lock) by' : 'in use by';
  return new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${name}" is ${what} ${lock.holder} since ${lock.acquiredAt}`, {
    details: { volume: name, volumeId: lock.volumeId, holder: lock.holder, token: lock.token, acquiredAt: lock.acquiredAt, kind: lock.kind ?? 'writer' },
  });
}

/** A writer (or a delete) refused while readers hold the volume: the first reader is named, with how many more there are. */
export function volumeReadersError(name: string, readers: readonly VolumeLockRecord[], total: number): TorusError {
  const first = readers[0]!;
  const more = total > 1 ? ` and ${total - 1} other reader${total > 2 ? 's' : ''}` : '';
  return new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${name}" is read (under a reader lock) by ${first.holder} since ${first.acquiredAt}${more}`, {
    details: { volume: name, volumeId: first.volumeId, holder: first.holder, acquiredAt: first.acquiredAt, kind: 'reader', readers: total },
  });
}

/**
 * For a maintenance lock of a volume no one holds: throws
 * TORUS_ERR_VOLUME_LOCK_EXPIRED when its last lock (token `fence`) ended
 * without a clean release and `opts` does not take it
 * (metadata-service.ts, lockVolumeForMaintenance). A held lock is
 * TORUS_ERR_VOLUME_IN_USE, checked first: it has not expired.
 */
export function checkExpiredForMaintenance(volume: { readonly name: string; readonly id: number }, fence: number, released: boolean, opts: MaintenanceLockOptions | undefined): void {
  if (!refusesExpired(fence, released, opts)) return;
  throw new TorusError('TORUS_ERR_VOLUME_LOCK_EXPIRED', `volume "${volume.name}": its last lock (token ${fence}) ended with its lease, not released; its holder may take it again`, {
    details: { volume: volume.name, volumeId: volume.id, token: fence },
  });
}

/** Whether checkExpiredForMaintenance would refuse (when no lock is held). */
export function refusesExpired(fence: number, released: boolean, opts: MaintenanceLockOptions | undefined): boolean {
  const expired = opts?.expired ?? 'take';
  return !released && expired !== 'take' && expired !== fence;
}

/** A change guarded by a fencing token that is no longer the volume's newest. */
export function volumeFencedError(volumeId: number, token: number, current: number): TorusError {
  const why = current === 0 ? 'the volume has no fencing token (it was deleted)' : `its newest fencing token is ${current}`;
  return new TorusError('TORUS_ERR_VOLUME_FENCED', `volume ${volumeId}: token ${token} is fenced off: ${why}`, {
    details: { volumeId, token, current },
  });
}

/** Records keyed by volume id are only written for volumes that have had a coordinator (a fencing token). */
export function volumeIdNotFoundError(volumeId: number): TorusError {
  return new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', `no volume has id ${volumeId} (deleted, or never opened: it has no fencing token)`, {
    details: { volumeId },
  });
}

export function validateVolumeId(volumeId: number): void {
  if (!Number.isSafeInteger(volumeId) || volumeId < 1 || volumeId > VOLUME_ID_MAX) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid volume id ${String(volumeId)}: it must be a whole number from 1 to ${VOLUME_ID_MAX}`);
  }
}

export function validateHolder(holder: string): void {
  if (typeof holder !== 'string' || holder.length === 0 || holder.length > HOLDER_CHARS_MAX) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `lock holder must be 1 to ${HOLDER_CHARS_MAX} characters`);
  }
}

function validateToken(token: number): void {
  if (!Number.isSafeInteger(token) || token < 1) throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid fencing token ${String(token)}: tokens are positive whole numbers`);
}

function checkRanges(ranges: readonly BlockRange[]): BlockRange[] {
  if (!Array.isArray(ranges)) throw new TorusError('TORUS_ERR_ARG_INVALID', 'block ranges must be a list of [start, end) pairs');
  if (ranges.length > STALE_CALL_RANGES_MAX) throw new TorusError('TORUS_ERR_ARG_INVALID', `more than ${STALE_CALL_RANGES_MAX} block ranges in one call`);
  return ranges.map(checkRange);
}

/** Checks the arguments of addStale; returns its ranges, each checked. */
export function checkStaleAdd(volumeId: number, peer: string, add: StaleAdd): { ranges: BlockRange[]; unsure: BlockRange[] } {
  validateVolumeId(volumeId);
  validatePeerUuid(peer);
  const ranges = checkRanges(add.ranges ?? []);
  const unsure = checkRanges(add.unsure ?? []);
  if (add.token !== undefined) validateToken(add.token);
  if (add.all !== true && ranges.length === 0 && unsure.length === 0) throw new TorusError('TORUS_ERR_ARG_INVALID', `add stale ${volumeId}/${peer}: nothing to add (no ranges and not all)`);
  return { ranges, unsure };
}

/** What addStale adds: the whole volume, blocks the peer missed, blocks it is unsure for. */
export interface StaleAdd {
  readonly all?: boolean;
  readonly ranges?: readonly BlockRange[];
  readonly unsure?: readonly BlockRange[];
  /**
   * The adding coordinator's fencing token: the add is made only while it
   * is the volume's newest (TORUS_ERR_VOLUME_FENCED otherwise), so a writer
   * fenced off cannot distrust the copies of the one that took over.
   */
  readonly token?: number;
}

export function checkStaleRemove(volumeId: number, peer: string, ranges: readonly BlockRange[] | 'all', token: number): BlockRange[] | 'all' {
  validateVolumeId(volumeId);
  validatePeerUuid(peer);
  validateToken(token);
  return ranges === 'all' ? 'all' : checkRanges(ranges);
}

/** Checks the arguments of narrowStale; returns the ranges to keep, each checked. */
export function checkStaleNarrow(volumeId: number, peer: string, keep: readonly BlockRange[], token: number): BlockRange[] {
  validateVolumeId(volumeId);
  validatePeerUuid(peer);
  validateToken(token);
  return checkRanges(keep);
}

export function validateMoveRecord(record: VolumeMoveRecord, token: number): void {
  validateVolumeId(record.volumeId);
  validateToken(token);
  const bad = (why: string): never => {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid move record for volume ${record.volumeId}: ${why}`);
  };
  if (record.schema !== 1) bad('schema is not 1');
  if (!Number.isSafeInteger(record.ringVersion) || record.ringVersion < 1) bad(`ring version ${String(record.ringVersion)} is not positive`);
  for (const f of ['scanned', 'copied', 'unavailable'] as const) {
    if (!Number.isSafeInteger(record[f]) || record[f] < 0) bad(`${f} ${String(record[f])} is not a count`);
  }
  if (record.reached !== undefined && (!Number.isSafeInteger(record.reached) || record.reached < 0)) bad(`reached ${String(record.reached)} is not a count`);
  if (typeof record.done !== 'boolean') bad('done is not true or false');
  if (typeof record.updatedAt !== 'string') bad('updatedAt is not a string');
}

export function validateHealthRecord(record: VolumeHealthRecord): void {
  validateVolumeId(record.volumeId);
  const bad = (why: string): never => {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid health record for volume ${record.volumeId}: ${why}`);
  };
  if (record.schema !== 1) bad('schema is not 1');
  for (const f of ['ringVersion', 'blocks', 'short', 'repaired', 'divergent'] as const) {
    if (!Number.isSafeInteger(record[f]) || record[f] < 0) bad(`${f} ${String(record[f])} is not a count`);
  }
  if (typeof record.checkedAt !== 'string') bad('checkedAt is not a string');
}

export function validateRingAck(ack: RingAck): void {
  const bad = (why: string): never => {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid ring acknowledgement: ${why}`);
  };
  if (ack.kind !== 'peer' && ack.kind !== 'client') bad(`kind ${JSON.stringify(ack.kind)} is not peer or client`);
  if (ack.kind === 'peer') {
    if (ack.peer === null) bad('a peer acknowledgement names no peer');
    else validatePeerUuid(ack.peer);
  }
  if (!Number.isSafeInteger(ack.ringVersion) || ack.ringVersion < 0) bad(`ring version ${String(ack.ringVersion)} is not a version`);
  if (!Number.isSafeInteger(ack.fenceRevision) || ack.fenceRevision < 0) bad(`fence revision ${String(ack.fenceRevision)} is not a revision`);
}

export function notInitialisedError(): TorusError {
  return new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the cluster is not initialised: run "torusctl init" first');
}

export function volumeNotFoundError(name: string): TorusError {
  return new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', `no volume named "${name}"`, { details: { volume: name } });
}

const PEER_UUID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;

export function validatePeerUuid(uuid: string): void {
  if (!PEER_UUID_PATTERN.test(uuid)) throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid peer uuid ${JSON.stringify(uuid)}`);
}
