/**
 * Volume actions shared by torusctl and the Kubernetes drivers: create with
 * a capacity reservation, delete, find by id, and the capacity figures the
 * CSI driver reports.
 *
 * Capacity is reserved, not used: a volume of S bytes reserves S x R raw
 * bytes (R = the ring's replication), whether or not its blocks were ever
 * written. The raw capacity is what the live ring members offer (their
 * peer records' capacity: a member that is down offers nothing until it is
 * back), times an overcommit ratio (1.0: no overcommit). Usable capacity,
 * in volume bytes, is raw / R. The check runs inside the create's
 * compare-and-swap (MetadataService.createVolume's admit), so concurrent
 * creates never reserve more than the ring has.
 */
import { TorusError } from '../errors/torus-error.js';
import type { MetadataService } from '../metadata/metadata-service.js';
import type { ClusterConfig, PeerRecord, RingRecord, VolumeRecord } from '../model/records.js';
import { formatSize } from '../util/size.js';

/** No overcommit: every reserved byte exists on some live member. */
export const OVERCOMMIT_DEFAULT = 1;
/** Thin provisioning has a use; a thousandfold promise is a typo. */
export const OVERCOMMIT_MAX = 1000;

export interface CapacityView {
  /** R: copies of every block. */
  readonly replication: number;
  readonly members: number;
  /** Ring members with a live peer record (reporting). */
  readonly liveMembers: number;
  /** Sum of the live members' capacity. */
  readonly rawBytes: number;
  /** Sum of every volume's size times R. */
  readonly reservedRawBytes: number;
  readonly volumes: number;
}

/** Pure: the capacity figures from the ring, the live peers and the volumes. */
export function capacityView(ring: RingRecord, peers: readonly PeerRecord[], volumes: readonly VolumeRecord[]): CapacityView {
  const live = new Map(peers.map((p) => [p.uuid, p]));
  let rawBytes = 0;
  let liveMembers = 0;
  for (const m of ring.members) {
    const p = live.get(m.uuid);
    if (p === undefined) continue;
    liveMembers++;
    rawBytes += Math.max(0, p.capacity);
  }
  const reservedRawBytes = volumes.reduce((n, v) => n + v.size * ring.replication, 0);
  return { replication: ring.replication, members: ring.members.length, liveMembers, rawBytes, reservedRawBytes, volumes: volumes.length };
}

/** Throws TORUS_ERR_ARG_INVALID unless `ratio` is a usable overcommit ratio. */
export function validateOvercommit(ratio: number): number {
  if (!Number.isFinite(ratio) || ratio <= 0 || ratio > OVERCOMMIT_MAX) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `overcommit ratio ${String(ratio)} must be a number above 0 and at most ${OVERCOMMIT_MAX} (1.0: no overcommit)`);
  }
  return ratio;
}

/** Raw bytes the cluster may reserve in all: live capacity times the overcommit ratio. */
function allowedRawBytes(view: CapacityView, overcommit: number): number {
  return Math.floor(view.rawBytes * overcommit);
}

/** Pure: the largest volume a create would accept now, rounded down to whole blocks (0 when none fits). */
export function availableVolumeBytes(view: CapacityView, overcommit: number, blockSize: number): number {
  const freeRaw = allowedRawBytes(view, overcommit) - view.reservedRawBytes;
  if (freeRaw <= 0) return 0;
  const logical = Math.floor(freeRaw / view.replication);
  return Math.floor(logical / blockSize) * blockSize;
}

/** Pure: whether a volume of `size` bytes fits (its S x R raw bytes within what is allowed). */
export function admits(view: CapacityView, size: number, overcommit: number): boolean {
  return view.reservedRawBytes + size * view.replication <= allowedRawBytes(view, overcommit);
}

export function capacityExhausted(name: string, size: number, view: CapacityView, overcommit: number): TorusError {
  return new TorusError(
    'TORUS_ERR_CAPACITY_EXHAUSTED',
    `volume "${name}" (${formatSize(size)}) would reserve ${formatSize(size * view.replication)} raw (replication ${view.replication}), but ` +
      `${formatSize(Math.max(0, allowedRawBytes(view, overcommit) - view.reservedRawBytes))} of ${formatSize(allowedRawBytes(view, overcommit))} is free ` +
      `(${view.liveMembers} of ${view.members} ring members live with ${formatSize(view.rawBytes)}, overcommit ${overcommit}, ${view.volumes} volumes reserving ${formatSize(view.reservedRawBytes)})`,
    { details: { volume: name, size, replication: view.replication, rawBytes: view.rawBytes, reservedRawBytes: view.reservedRawBytes, overcommit } },
  );
}

export interface CapacityInputs {
  readonly config: ClusterConfig;
  readonly ring: RingRecord;
  readonly peers: readonly PeerRecord[];
}

export async function readCapacityInputs(md: MetadataService): Promise<CapacityInputs> {
  const config = await md.getClusterConfig();
  if (config === null) throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the cluster is not initialised: run torusctl init');
  return { config, ring: await md.getRing(), peers: await md.listPeers() };
}

/** The capacity figures now (for GetCapacity and status). */
export async function readCapacity(md: MetadataService): Promise<CapacityInputs & { readonly view: CapacityView }> {
  const inputs = await readCapacityInputs(md);
  return { ...inputs, view: capacityView(inputs.ring, inputs.peers, await md.listVolumes()) };
}

/**
 * Creates a volume. With `overcommit` set, it reserves S x R against the
 * live capacity (TORUS_ERR_CAPACITY_EXHAUSTED beyond it); null creates
 * without a reservation check (torusctl's default: thin volumes).
 */
export async function createVolume(md: MetadataService, name: string, size: number, opts: { readonly overcommit: number | null }): Promise<VolumeRecord> {
  if (opts.overcommit === null) return md.createVolume(name, size);
  const overcommit = validateOvercommit(opts.overcommit);
  const { ring, peers } = await readCapacityInputs(md);
  return md.createVolume(name, size, {
    admit: (volumes) => {
      const view = capacityView(ring, peers, volumes);
      if (!admits(view, size, overcommit)) throw capacityExhausted(name, size, view, overcommit);
    },
  });
}

/**
 * Deletes a volume by name: refused (TORUS_ERR_VOLUME_IN_USE) while a
 * writer or a reader holds it. With `id`, only the volume of that id
 * (TORUS_ERR_VOLUME_NOT_FOUND when the name now belongs to a later one).
 */
export function deleteVolume(md: MetadataService, name: string, opts: { readonly id?: number } = {}): Promise<VolumeRecord> {
  return md.deleteVolume(name, opts);
}

/** The volume with this id, or null: volume keys are by name, so this lists. */
export async function findVolumeById(md: MetadataService, id: number): Promise<VolumeRecord | null> {
  return (await md.listVolumes()).find((v) => v.id === id) ?? null;
}
