/**
 * The CSI Node service: volumes on this node for kubelet.
 *
 * - NodeStageVolume attaches the volume through this node's torusd (its
 *   attach API; the NBD connection lives in torusd and survives restarts
 *   of this plugin and of torusd), then, for a filesystem, makes one only
 *   when the device is provably empty (src/k8s/mount/filesystem.ts, the
 *   FlexVolume driver's rule) and mounts it at the staging path. A raw
 *   block volume is staged by attaching alone.
 * - A writer stage takes the volume's write lock in torusd: while another
 *   node holds the volume the attach is refused and the stage fails with
 *   FAILED_PRECONDITION naming the holder. With `attachRequired: false`
 *   Kubernetes does no multi-attach check of its own, so this lock is the
 *   only guard. MULTI_NODE_READER_ONLY stages attach read-only under a
 *   shared reader lock and mount `ro,noload`: readers share the volume,
 *   and readers and a writer exclude each other.
 * - NodePublishVolume bind-mounts the staging mount into the pod (read-only
 *   when asked), or the device node onto a file for a raw block volume.
 * - Unpublish and unstage undo that; unstage flushes and detaches. Every
 *   call is idempotent: the kernel's mount table and torusd's attachment
 *   list say what is done, nothing on this side keeps state.
 *
 * One call per volume at a time (ABORTED for a second, which the CO retries).
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { AttachmentInfo, AttachRequest, KernelStatus } from '../../attach/api.js';
import { findVolumeById } from '../../admin/volumes.js';
import { isTorusError, TorusError } from '../../errors/torus-error.js';
import type { MetadataService } from '../../metadata/metadata-service.js';
import type { VolumeRecord } from '../../model/records.js';
import { DEFAULT_FS_TYPE, prepareFilesystem, stagingMountOptions } from '../mount/filesystem.js';
import type { FormatMarks } from '../mount/format-marks.js';
import { mountAt, type MountEntry } from '../mount/mountinfo.js';
import type { MountSystem } from '../mount/system.js';
import { CSI_MOUNT_CODES, invalid } from './errors.js';
import { InFlight } from './in-flight.js';
import type { NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeUsage } from './types.js';
import { contextSettings, isReader, nodePath, parseCapability, parseVolumeId, required, type VolumeRef } from './validate.js';

/** What the node service uses of torusd's attach API (AttachClient implements it). */
export interface NodeAttach {
  list(): Promise<AttachmentInfo[]>;
  attach(req: AttachRequest): Promise<AttachmentInfo>;
  detach(device: string): Promise<unknown>;
  kernel(): Promise<KernelStatus>;
}

export interface NodeOptions {
  readonly nodeId: string;
  readonly attach: NodeAttach;
  readonly system: MountSystem;
  readonly marks: FormatMarks;
  readonly metadata: MetadataService;
  readonly logger: Logger;
}

export const NODE_CAPABILITIES = ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'SINGLE_NODE_MULTI_WRITER'] as const;

/** Unmounts of one path, at most, when mounts are stacked there. */
const STACKED_UNMOUNTS_MAX = 8;
const GONE_DEVICE_ERRNOS = new Set(['ENOENT', 'ENXIO', 'ENODEV']);
/** Final-flush failures of a close that are the expected end of a fenced-off writer. */
const FENCED_CLOSE_CODES = ['TORUS_ERR_VOLUME_LOCK_LOST', 'TORUS_ERR_VOLUME_FENCED', 'TORUS_ERR_DATA_LOST'] as const;

function notFound(message: string): TorusError {
  return new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', message);
}

function incompatible(message: string): TorusError {
  return new TorusError('TORUS_ERR_CSI_VOLUME_INCOMPATIBLE', message);
}

/** A raw block volume bound onto a file shows in mountinfo as devtmpfs, rooted at the device's name. */
function isDeviceBind(m: MountEntry, device: string): boolean {
  return m.root === `/${path.basename(device)}`;
}

/** The mounts that still use an attached device: its filesystem (any bind of it) or the device node itself. */
function usersOf(table: readonly MountEntry[], device: string): MountEntry[] {
  return table.filter((m) => m.source === device || isDeviceBind(m, device));
}

export class NodeService {
  private readonly o: NodeOptions;
  private readonly log: Logger;
  private readonly inFlight = new InFlight();
  private clusterIdCache: string | null = null;

  constructor(opts: NodeOptions) {
    this.o = opts;
    this.log = opts.logger.child({ module: 'csi-node', node: opts.nodeId });
  }

  handlers() {
    return {
      NodeStageVolume: (r: NodeStageVolumeRequest) => this.stage(r),
      NodeUnstageVolume: (r: NodeUnstageVolumeRequest) => this.unstage(r),
      NodePublishVolume: (r: NodePublishVolumeRequest) => this.publish(r),
      NodeUnpublishVolume: (r: NodeUnpublishVolumeRequest) => this.unpublish(r),
      NodeGetVolumeStats: (r: NodeGetVolumeStatsRequest) => this.stats(r),
      NodeGetCapabilities: async () => ({ capabilities: NODE_CAPABILITIES.map((type) => ({ rpc: { type } })) }),
      // No topology: every node reaches every volume. No volume limit: the kernel makes nbd devices on demand.
      NodeGetInfo: async () => ({ node_id: this.o.nodeId, max_volumes_per_node: '0', accessible_topology: null }),
    };
  }

  // ------------------------------------------------------------------ lookups

  private async clusterId(): Promise<string> {
    if (this.clusterIdCache) return this.clusterIdCache;
    const config = await this.o.metadata.getClusterConfig();
    if (config === null) throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the torus cluster is not initialised: run torusctl init');
    this.clusterIdCache = config.id;
    return config.id;
  }

  /** The id's volume in this cluster; NOT_FOUND for other clusters' ids and deleted volumes. */
  private async ref(volumeId: string): Promise<VolumeRef> {
    const ref = parseVolumeId(volumeId);
    if (ref === null) throw notFound(`volume id ${JSON.stringify(volumeId)} is not a torus volume id (<cluster id>/<volume id>)`);
    const own = await this.clusterId();
    if (ref.clusterId !== own) throw notFound(`volume ${volumeId} belongs to torus cluster ${ref.clusterId}, not to this node's cluster ${own}`);
    return ref;
  }

  private async volume(volumeId: string): Promise<VolumeRecord> {
    const ref = await this.ref(volumeId);
    const v = await findVolumeById(this.o.metadata, ref.id);
    if (v === null) throw notFound(`volume ${volumeId} does not exist (deleted?)`);
    return v;
  }

  private async attachmentOf(volumeId: number): Promise<AttachmentInfo | null> {
    return (await this.o.attach.list()).find((a) => a.volumeId === volumeId) ?? null;
  }

  // ------------------------------------------------------------------ stage

  private async stage(r: NodeStageVolumeRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    const staging = nodePath(r.staging_target_path, 'staging_target_path');
    const cap = parseCapability(r.volume_capability);
    const ctx = contextSettings(r.volume_context);
    return this.inFlight.exclusive(volumeId, `volume ${volumeId}`, async () => {
      const v = await this.volume(volumeId);
      const reader = isReader(cap.mode);
      const mode = reader ? 'ro' : 'rw';
      const fsType = cap.fsType ?? ctx.fsType ?? DEFAULT_FS_TYPE;
      const log = this.log.child({ volumeId, volume: v.name, staging, mode: cap.mode });
      const table = await this.o.system.mountTable();
      const atStaging = mountAt(table, staging);
      let att = await this.attachmentOf(v.id);
      if (att !== null && att.state === 'failed') {
        // A device that fails with EIO for good (its lock was lost): detach it and start again.
        if (usersOf(table, att.device).length > 0) {
          throw new TorusError('TORUS_ERR_ATTACH_LOCK_LOST', `volume ${v.name}'s device ${att.device} on this node failed for good (${att.detail ?? 'lock lost'}) and is still mounted; unstage it first`);
        }
        log.warn({ device: att.device, detail: att.detail }, 'detaching a failed attachment before staging again');
        await this.o.attach.detach(att.device);
        att = null;
      }
      if (att !== null && (att.mode !== mode || att.readerLock !== reader)) {
        throw incompatible(`volume ${v.name} is attached on this node as ${att.mode}${att.readerLock ? ' (reader lock)' : ''} at ${att.device}; a ${cap.mode} stage needs it unstaged first`);
      }
      if (cap.access === 'mount' && atStaging !== null) {
        if (att !== null && atStaging.source === att.device) {
          if (atStaging.fsType !== fsType) throw incompatible(`volume ${v.name} is staged at ${staging} as ${atStaging.fsType}, not ${fsType}`);
          log.info({ device: att.device }, 'already staged');
          return {};
        }
        throw incompatible(`${staging} already holds a mount of ${atStaging.source} (${atStaging.fsType}); not staging volume ${v.name} over it`);
      }
      if (cap.access === 'block' && att !== null) {
        log.info({ device: att.device }, 'already staged (raw block)');
        return {};
      }
      let attachedNow = false;
      if (att === null) {
        att = await this.o.attach.attach({
          volume: v.name,
          readOnly: reader,
          ...(reader ? { readerLock: true } : {}),
          ...(!reader && ctx.writeLevel ? { writeLevel: ctx.writeLevel } : {}),
        });
        attachedNow = true;
        if (att.volumeId !== v.id) {
          // The name was taken by another volume between the lookup and the attach.
          await this.o.attach.detach(att.device).catch((err: unknown) => log.error({ err, device: att!.device }, 'detaching the wrong volume failed'));
          throw notFound(`volume ${volumeId} does not exist any more (the name ${v.name} now belongs to volume ${att.volumeId})`);
        }
        log.info({ device: att.device }, 'attached');
      }
      if (cap.access === 'block') return {};
      const device = att.device;
      let mounted = false;
      try {
        await prepareFilesystem({ system: this.o.system, marks: this.o.marks, codes: CSI_MOUNT_CODES }, device, { volume: v.name, etcd: null, fsType, readOnly: reader }, log);
        await this.o.system.mkdirp(staging);
        await this.o.system.mount(device, staging, fsType, [...stagingMountOptions(fsType, reader, false), ...cap.mountFlags]);
        mounted = true;
        log.info({ device, fsType }, 'staged');
        return {};
      } finally {
        if (!mounted && attachedNow) {
          // Leave nothing behind that the next attempt would trip over.
          await this.o.attach.detach(device).catch((err: unknown) => log.error({ err, device }, 'undo: detach failed; the next stage or unstage finishes it'));
        }
      }
    });
  }

  private async unstage(r: NodeUnstageVolumeRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    const staging = nodePath(r.staging_target_path, 'staging_target_path');
    return this.inFlight.exclusive(volumeId, `volume ${volumeId}`, async () => {
      const ref = parseVolumeId(volumeId);
      const log = this.log.child({ volumeId, staging });
      const atts = await this.o.attach.list();
      let table = await this.o.system.mountTable();
      const atStaging = mountAt(table, staging);
      const att = atts.find((a) => (ref !== null && a.volumeId === ref.id) || (atStaging !== null && a.device === atStaging.source)) ?? null;
      if (atStaging !== null) {
        if (att === null || atStaging.source !== att.device || (ref !== null && att.volumeId !== ref.id)) {
          throw new TorusError('TORUS_ERR_CSI_NOT_TORUS_MOUNT', `${staging} holds a mount of ${atStaging.source} (${atStaging.fsType}) that is not volume ${volumeId}; not unmounting it`);
        }
        const others = usersOf(table, att.device).filter((m) => m.mountPoint !== staging);
        if (others.length > 0) {
          throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume ${volumeId} is still published at ${others.map((m) => m.mountPoint).join(', ')}; unpublish it first`);
        }
        await this.o.system.unmount(staging);
        table = await this.o.system.mountTable();
      }
      if (att === null) {
        log.info({}, 'not staged (already unstaged)');
        return {};
      }
      const users = usersOf(table, att.device);
      if (users.length > 0) {
        throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume ${volumeId} (${att.device}) is still mounted at ${users.map((m) => m.mountPoint).join(', ')}; unpublish and unstage those first`);
      }
      let lostAnyway = false;
      try {
        await this.o.system.flush(att.device);
      } catch (err) {
        if (att.state !== 'failed' && !GONE_DEVICE_ERRNOS.has((err as NodeJS.ErrnoException).code ?? '') && !(await this.fencedOff(att))) {
          throw new TorusError('TORUS_ERR_CSI_MOUNT_FAILED', `flushing ${att.device} (volume ${att.volume}) failed; the device stays attached: ${(err as Error).message}`, { cause: err });
        }
        lostAnyway = true;
        log.warn({ err, device: att.device }, 'flush failed, but the volume is written elsewhere now (fenced off): detaching; those writes could never land');
      }
      try {
        await this.o.attach.detach(att.device);
      } catch (err) {
        // torusd detaches first and then reports a final flush it could not
        // make. For a device already judged fenced off that is the expected
        // answer (the lock went to another node); anything else is returned
        // to kubelet, whose retry then finds the device gone.
        const fencedClose = lostAnyway && FENCED_CLOSE_CODES.some((code) => isTorusError(err, code));
        if (!isTorusError(err, 'TORUS_ERR_ATTACH_NOT_FOUND') && !fencedClose) throw err;
        if (fencedClose) log.warn({ err, device: att.device }, 'detached; torusd could not make the final flush of the fenced-off volume, as expected');
      }
      log.info({ device: att.device, volume: att.volume }, 'unstaged: flushed and detached');
      return {};
    });
  }

  /**
   * A writer whose flush fails may be fenced off: its lease expired (the
   * node was cut off or frozen) and another node took the volume with a
   * newer token. Its unflushed writes can never land, so keeping the device
   * attached would only keep the node from ever unstaging. A flush that
   * fails while no token newer than ours was handed out (the lock is still
   * ours, or an etcd outage this torusd may recover from by taking the next
   * token itself) keeps the device for a retry.
   *
   * Judged by the volume's fence (the newest token handed out), not by who
   * holds the lock now: the other node may have let go already (the CSI VM
   * suite: node B staged, checked and unstaged the volume before node A's
   * unstage), and torusd marks the device failed only once it notices.
   */
  private async fencedOff(att: AttachmentInfo): Promise<boolean> {
    if (att.mode !== 'rw' || att.lockToken === null) return false;
    try {
      // torusd's view now: it may have failed the device meanwhile, or taken
      // the lock again itself (a newer token, ours).
      const now = (await this.o.attach.list()).find((a) => a.device === att.device && a.volumeId === att.volumeId);
      if (now?.state === 'failed') return true;
      const ours = Math.max(att.lockToken, now?.lockToken ?? 0);
      return (await this.o.metadata.getFence(att.volumeId)) > ours;
    } catch {
      return false;
    }
  }

  // ------------------------------------------------------------------ publish

  private async publish(r: NodePublishVolumeRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    if (!r.staging_target_path) {
      throw new TorusError('TORUS_ERR_CSI_NOT_STAGED', 'staging_target_path is required: this driver stages volumes (STAGE_UNSTAGE_VOLUME)');
    }
    const staging = nodePath(r.staging_target_path, 'staging_target_path');
    const target = nodePath(r.target_path, 'target_path');
    const cap = parseCapability(r.volume_capability);
    const readOnly = r.readonly === true || isReader(cap.mode);
    if (target === staging) throw invalid('target_path is the staging_target_path');
    return this.inFlight.exclusive(volumeId, `volume ${volumeId}`, async () => {
      const ref = await this.ref(volumeId);
      const log = this.log.child({ volumeId, target, readOnly });
      const att = await this.attachmentOf(ref.id);
      if (att === null) throw new TorusError('TORUS_ERR_CSI_NOT_STAGED', `volume ${volumeId} is not staged on this node (not attached); NodeStageVolume first`);
      if (att.state === 'failed') throw new TorusError('TORUS_ERR_ATTACH_LOCK_LOST', `volume ${att.volume}'s device ${att.device} failed for good: ${att.detail ?? 'lock lost'}; unstage and stage it again`);
      const table = await this.o.system.mountTable();
      const atTarget = mountAt(table, target);
      const isRo = (m: MountEntry) => m.options.includes('ro');
      if (cap.access === 'block') {
        if (atTarget !== null) {
          if (isDeviceBind(atTarget, att.device) && isRo(atTarget) === readOnly) return {};
          throw incompatible(`${target} already holds a mount (${atTarget.source}${atTarget.root}) that is not volume ${volumeId} as asked`);
        }
        if (cap.mode === 'SINGLE_NODE_SINGLE_WRITER' && table.some((m) => isDeviceBind(m, att.device))) {
          throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume ${volumeId} is SINGLE_NODE_SINGLE_WRITER and already published on this node`);
        }
        await this.o.system.mkdirp(path.dirname(target));
        await this.o.system.touch(target);
        try {
          // A read-only bind of a device node does not stop writes through
          // it: Linux applies a mount's ro flag to files, not to device
          // nodes. What does stop them is a read-only device (every
          // MULTI_NODE_READER_ONLY stage attaches one) and, in Kubernetes,
          // kubelet, which hands a read-only claim's device to the container
          // with the device-cgroup permission "r". The ro bind is kept: it is
          // what the mount table shows and what the idempotency check reads.
          await this.o.system.bind(att.device, target, readOnly);
        } catch (err) {
          await this.o.system.remove(target).catch(() => undefined);
          throw err;
        }
        log.info({ device: att.device }, 'published (raw block)');
        return {};
      }
      const st = mountAt(table, staging);
      if (st === null || st.source !== att.device) {
        throw new TorusError('TORUS_ERR_CSI_NOT_STAGED', `${staging} holds no mount of volume ${volumeId} (${att.device}); NodeStageVolume first`);
      }
      if (atTarget !== null) {
        if (atTarget.dev === st.dev && atTarget.source === att.device && isRo(atTarget) === readOnly) return {};
        throw incompatible(`${target} already holds a mount of ${atTarget.source} (${isRo(atTarget) ? 'ro' : 'rw'}) that is not volume ${volumeId} as asked`);
      }
      if (cap.mode === 'SINGLE_NODE_SINGLE_WRITER' && usersOf(table, att.device).some((m) => m.mountPoint !== staging)) {
        throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume ${volumeId} is SINGLE_NODE_SINGLE_WRITER and already published on this node`);
      }
      await this.o.system.mkdirp(target);
      await this.o.system.bind(staging, target, readOnly);
      log.info({ device: att.device }, 'published');
      return {};
    });
  }

  private async unpublish(r: NodeUnpublishVolumeRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    const target = nodePath(r.target_path, 'target_path');
    return this.inFlight.exclusive(volumeId, `volume ${volumeId}`, async () => {
      const ref = parseVolumeId(volumeId);
      const att = ref === null ? null : await this.attachmentOf(ref.id);
      for (let i = 0; i < STACKED_UNMOUNTS_MAX; i++) {
        const m = mountAt(await this.o.system.mountTable(), target);
        if (m === null) break;
        // Ours: a mount of the volume's device, or, when torusd no longer
        // lists the attachment (it failed and was forgotten), of any nbd device.
        const ours = att !== null ? m.source === att.device || isDeviceBind(m, att.device) : /^\/dev\/nbd\d+$/.test(m.source) || /^\/nbd\d+$/.test(m.root);
        if (!ours) throw new TorusError('TORUS_ERR_CSI_NOT_TORUS_MOUNT', `${target} holds a mount of ${m.source} (${m.fsType}) that is not volume ${volumeId}; not unmounting it`);
        await this.o.system.unmount(target);
      }
      // The spec leaves the target for the plugin to remove (a directory, or a file for raw block).
      await this.o.system.remove(target);
      this.log.info({ volumeId, target }, 'unpublished');
      return {};
    });
  }

  // ------------------------------------------------------------------ stats

  private async stats(r: NodeGetVolumeStatsRequest): Promise<object> {
    const volumeId = required(r.volume_id, 'volume_id');
    const volumePath = nodePath(r.volume_path, 'volume_path');
    const ref = await this.ref(volumeId);
    const att = await this.attachmentOf(ref.id);
    const m = mountAt(await this.o.system.mountTable(), volumePath);
    if (att === null || m === null || (m.source !== att.device && !isDeviceBind(m, att.device))) {
      throw notFound(`volume ${volumeId} is not staged or published at ${volumePath} on this node`);
    }
    let usage: VolumeUsage[];
    if (isDeviceBind(m, att.device)) {
      usage = [{ unit: 'BYTES', total: att.sizeBytes, available: 0, used: 0 }];
    } else {
      const s = await this.o.system.statfs(volumePath);
      usage = [
        { unit: 'BYTES', total: s.totalBytes, available: s.availableBytes, used: s.usedBytes },
        { unit: 'INODES', total: s.totalInodes, available: s.freeInodes, used: s.usedInodes },
      ];
    }
    return { usage: usage.map((u) => ({ ...u, total: String(u.total), available: String(u.available), used: String(u.used) })), volume_condition: null };
  }

  /** For Probe: torusd answers on its attach socket. */
  async torusdReachable(): Promise<void> {
    await this.o.attach.kernel();
  }
}
