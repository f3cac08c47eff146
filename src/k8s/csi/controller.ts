/**
 * The CSI Controller service: volumes made and removed for
 * PersistentVolumeClaims (the external-provisioner calls it), capacity,
 * listings. It needs etcd only: no node, no device.
 *
 * - CreateVolume is idempotent by name: the CSI name maps to one torus
 *   name (validate.ts), and a volume of that name whose size fits the
 *   range is the answer to a repeated call. Calls with one name in this
 *   process run one after another; across processes, etcd's create
 *   transaction lets one win, and the others find its volume.
 * - The volume reserves size x R against the live ring capacity x the
 *   StorageClass's overcommit (src/admin/volumes.ts), inside the create's
 *   compare-and-swap; GetCapacity reports exactly what CreateVolume would
 *   accept with the same parameters.
 * - DeleteVolume deletes by name *and* id, so a late call never deletes a
 *   volume that took the name since; it is refused while a node holds the
 *   volume (FAILED_PRECONDITION).
 */
import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../../errors/torus-error.js';
import type { MetadataService } from '../../metadata/metadata-service.js';
import type { VolumeRecord } from '../../model/records.js';
import { admits, availableVolumeBytes, createVolume, deleteVolume, findVolumeById, readCapacity, readCapacityInputs } from '../../admin/volumes.js';
import { assert } from '../../util/assert.js';
import { InFlight } from './in-flight.js';
import { invalid } from './errors.js';
import type { CreateVolumeRequest, DeleteVolumeRequest, GetCapacityRequest, ListVolumesRequest, StringMap, ValidateVolumeCapabilitiesRequest } from './types.js';
import {
  checkReplication,
  csiName,
  formatVolumeId,
  parseCapabilities,
  parseCapability,
  parsePage,
  parseParameters,
  parseRange,
  parseVolumeId,
  required,
  sizeFits,
  sizeFor,
  torusNameFor,
  volumeContext,
  type Parameters,
} from './validate.js';

export interface ControllerOptions {
  readonly metadata: MetadataService;
  readonly logger: Logger;
}

/** The capabilities the controller advertises; ControllerPublish is not one (attachRequired: false). */
export const CONTROLLER_CAPABILITIES = ['CREATE_DELETE_VOLUME', 'LIST_VOLUMES', 'GET_CAPACITY', 'SINGLE_NODE_MULTI_WRITER'] as const;

export class ControllerService {
  private readonly md: MetadataService;
  private readonly log: Logger;
  private readonly inFlight = new InFlight();

  constructor(opts: ControllerOptions) {
    this.md = opts.metadata;
    this.log = opts.logger.child({ module: 'csi-controller' });
  }

  handlers() {
    return {
      CreateVolume: (r: CreateVolumeRequest) => this.createVolume(r),
      DeleteVolume: (r: DeleteVolumeRequest) => this.deleteVolume(r),
      ValidateVolumeCapabilities: (r: ValidateVolumeCapabilitiesRequest) => this.validateVolumeCapabilities(r),
      ListVolumes: (r: ListVolumesRequest) => this.listVolumes(r),
      GetCapacity: (r: GetCapacityRequest) => this.getCapacity(r),
      ControllerGetCapabilities: async () => ({ capabilities: CONTROLLER_CAPABILITIES.map((type) => ({ rpc: { type } })) }),
    };
  }

  private async clusterId(): Promise<string> {
    const config = await this.md.getClusterConfig();
    if (config === null) throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the torus cluster is not initialised: run torusctl init');
    return config.id;
  }

  /** The volume an id names in this cluster, or null (ids of other clusters, malformed ids, deleted volumes). */
  private async resolve(volumeId: string): Promise<VolumeRecord | null> {
    const ref = parseVolumeId(volumeId);
    if (ref === null) return null;
    if (ref.clusterId !== (await this.clusterId())) return null;
    return findVolumeById(this.md, ref.id);
  }

  private answer(clusterId: string, v: VolumeRecord, params: Parameters): object {
    return { volume: { capacity_bytes: String(v.size), volume_id: formatVolumeId(clusterId, v.id), volume_context: volumeContext(v.name, params), accessible_topology: [] } };
  }

  private async createVolume(r: CreateVolumeRequest): Promise<object> {
    const name = csiName(r.name);
    parseCapabilities(r.volume_capabilities);
    if (r.volume_content_source && r.volume_content_source.type !== undefined) {
      throw invalid(`volume_content_source (${r.volume_content_source.type}) is not served: torus has no snapshots or clones yet`);
    }
    const params = parseParameters(r.parameters);
    const range = parseRange(r.capacity_range);
    const { config, ring } = await readCapacityInputs(this.md);
    checkReplication(params, ring.replication);
    const size = sizeFor(range, config.blockSize);
    const torusName = torusNameFor(name);
    return this.inFlight.serial(`name:${torusName}`, async () => {
      const existing = await this.md.getVolume(torusName).catch((err: unknown) => {
        if (isTorusError(err, 'TORUS_ERR_VOLUME_NOT_FOUND')) return null;
        throw err;
      });
      const fitting = (v: VolumeRecord): object => {
        if (!sizeFits(v.size, range)) {
          throw new TorusError(
            'TORUS_ERR_CSI_VOLUME_INCOMPATIBLE',
            `volume ${JSON.stringify(name)} exists (torus volume ${v.name}, id ${v.id}) with ${v.size} bytes, outside the requested range (required ${range.required}, limit ${range.limit || 'none'})`,
          );
        }
        return this.answer(config.id, v, params);
      };
      if (existing) return fitting(existing);
      try {
        const v = await createVolume(this.md, torusName, size, { overcommit: params.overcommit });
        this.log.info({ name, volume: v.name, volumeId: v.id, size, overcommit: params.overcommit }, 'volume created');
        return this.answer(config.id, v, params);
      } catch (err) {
        // Another controller won the race for the name: its volume is ours if it fits.
        if (isTorusError(err, 'TORUS_ERR_VOLUME_EXISTS')) return fitting(await this.md.getVolume(torusName));
        throw err;
      }
    });
  }

  private async deleteVolume(r: DeleteVolumeRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    return this.inFlight.serial(`id:${volumeId}`, async () => {
      const v = await this.resolve(volumeId);
      // Gone already (or never ours): the spec's answer to a repeated delete is OK.
      if (v === null) return {};
      try {
        await deleteVolume(this.md, v.name, { id: v.id });
        this.log.info({ volumeId, volume: v.name }, 'volume deleted');
      } catch (err) {
        if (!isTorusError(err, 'TORUS_ERR_VOLUME_NOT_FOUND')) throw err;
      }
      return {};
    });
  }

  private async validateVolumeCapabilities(r: ValidateVolumeCapabilitiesRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    if (!r.volume_capabilities || r.volume_capabilities.length === 0) throw invalid('volume_capabilities is required');
    const v = await this.resolve(volumeId);
    if (v === null) throw new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', `no volume has the id ${JSON.stringify(volumeId)} in this cluster`);
    // Not confirmed (with a message) rather than an error: the spec's answer to capabilities the volume does not have.
    try {
      for (const [i, c] of r.volume_capabilities.entries()) parseCapability(c, `volume_capabilities[${i}]`);
      const params = parseParameters(r.parameters);
      checkReplication(params, (await this.md.getRing()).replication);
    } catch (err) {
      if (err instanceof TorusError && (err.code === 'TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED' || err.code === 'TORUS_ERR_CSI_PARAMETER_INVALID' || err.code === 'TORUS_ERR_CSI_REQUEST_INVALID')) {
        return { message: err.toLine() };
      }
      throw err;
    }
    const ctx: StringMap = r.volume_context ?? {};
    return { confirmed: { volume_context: ctx, volume_capabilities: r.volume_capabilities, parameters: r.parameters ?? {}, mutable_parameters: {} } };
  }

  private async listVolumes(r: ListVolumesRequest): Promise<object> {
    const page = parsePage(r.max_entries, r.starting_token);
    const clusterId = await this.clusterId();
    if (page.after > 0) {
      const { lastId } = await this.md.volumeIdsForGc();
      if (page.after > lastId) throw new TorusError('TORUS_ERR_CSI_PAGE_TOKEN', `starting_token ${page.after} was not handed out by this driver (the last volume id is ${lastId})`);
    }
    const all = (await this.md.listVolumes()).filter((v) => v.id > page.after).sort((a, b) => a.id - b.id);
    const shown = page.max > 0 ? all.slice(0, page.max) : all;
    const more = shown.length < all.length;
    return {
      entries: shown.map((v) => ({ volume: { capacity_bytes: String(v.size), volume_id: formatVolumeId(clusterId, v.id), volume_context: {}, accessible_topology: [] } })),
      next_token: more ? String(shown[shown.length - 1]!.id) : '',
    };
  }

  private async getCapacity(r: GetCapacityRequest): Promise<object> {
    const params = parseParameters(r.parameters);
    const { config, ring, view } = await readCapacity(this.md);
    checkReplication(params, ring.replication);
    let servable = true;
    try {
      for (const [i, c] of (r.volume_capabilities ?? []).entries()) parseCapability(c, `volume_capabilities[${i}]`);
    } catch {
      // Capabilities torus cannot serve: no capacity for them.
      servable = false;
    }
    const available = servable ? availableVolumeBytes(view, params.overcommit, config.blockSize) : 0;
    // The same rule CreateVolume applies: whatever GetCapacity reports fits.
    assert(available === 0 || admits(view, available, params.overcommit), `GetCapacity reports ${available} bytes that CreateVolume would refuse`);
    return {
      available_capacity: String(available),
      maximum_volume_size: { value: String(available) },
      minimum_volume_size: { value: String(config.blockSize) },
    };
  }
}
