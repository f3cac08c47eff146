import { TorusError } from '../errors/torus-error.js';
import type { RingRecord, VolumeLockRecord } from '../model/records.js';
import { formatSize } from '../util/size.js';
import { VOLUME_NAME_PATTERN } from './metadata-service.js';

export const BLOCK_SIZE_MIN_BYTES = 4 * 1024;
export const BLOCK_SIZE_MAX_BYTES = 64 * 1024 * 1024;
export const REPLICATION_MAX = 16;
export const SECTOR_BYTES = 512;
/** Large enough for any disk torus will see; small enough that byte maths stays exact. */
export const VOLUME_SIZE_MAX_BYTES = 2 ** 50;
/** Volume ids are u32 on the wire (BlockRef). */
export const VOLUME_ID_MAX = 0xffffffff;
export const RING_MEMBERS_MAX = 4096;

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

/** Shape checks on a ring someone wants to write; placement relies on them. */
export function validateRing(ring: RingRecord): void {
  const bad = (why: string): never => {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid ring: ${why}`);
  };
  if (ring.schema !== 1) bad(`schema ${String(ring.schema)} is not 1`);
  if (!Number.isSafeInteger(ring.version) || ring.version < 1) bad(`version ${String(ring.version)} is not a positive integer`);
  validateReplication(ring.replication);
  if (!Array.isArray(ring.members)) bad('members is not a list');
  if (ring.members.length > RING_MEMBERS_MAX) bad(`more than ${RING_MEMBERS_MAX} members`);
  const seen = new Set<string>();
  for (const m of ring.members) {
    if (typeof m.uuid !== 'string' || m.uuid.length === 0) bad('a member has no uuid');
    if (seen.has(m.uuid)) bad(`member ${m.uuid} appears twice`);
    seen.add(m.uuid);
    if (!Number.isFinite(m.weight) || m.weight <= 0) bad(`member ${m.uuid} has weight ${String(m.weight)}; weights are positive`);
  }
}

export function volumeInUseError(name: string, lock: VolumeLockRecord): TorusError {
  return new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${name}" is in use by ${lock.holder} since ${lock.acquiredAt}`, {
    details: { volume: name, volumeId: lock.volumeId, holder: lock.holder, token: lock.token, acquiredAt: lock.acquiredAt },
  });
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
