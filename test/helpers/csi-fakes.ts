/**
 * Twins for the CSI node service: torusd's attach API on several nodes
 * that share one cluster (volume disks, the write lock and reader locks),
 * each node with its own FakeNode (devices, mount table, mkfs).
 */
import type { AttachmentInfo, AttachRequest, KernelStatus } from '../../src/attach/api.js';
import { TorusError } from '../../src/errors/torus-error.js';
import type { NodeAttach } from '../../src/k8s/csi/node.js';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import { disk, FakeNode, type FakeDisk } from './flex-fakes.js';

/** What the nodes share: each volume's bytes and who holds it. */
export class FakeCluster {
  readonly disks = new Map<string, FakeDisk>();
  readonly writers = new Map<string, string>();
  readonly readers = new Map<string, Set<string>>();

  constructor(readonly metadata: MetadataService) {}

  diskOf(volume: string): FakeDisk {
    let d = this.disks.get(volume);
    if (!d) {
      d = disk();
      this.disks.set(volume, d);
    }
    return d;
  }
}

export class FakeNodeAttach implements NodeAttach {
  readonly node = new FakeNode();
  readonly calls: string[] = [];
  private readonly attached = new Map<string, AttachmentInfo>();
  private next = 0;
  /** Makes the next attach hang until released (for concurrency tests). */
  gate: Promise<void> | null = null;
  /** Detach cleans up, then reports this error, as torusd does when the final flush fails. */
  detachError: TorusError | null = null;

  constructor(
    readonly name: string,
    private readonly cluster: FakeCluster,
  ) {}

  async kernel(): Promise<KernelStatus> {
    return { available: true, mode: 'netlink', detail: 'fake' };
  }

  async list(): Promise<AttachmentInfo[]> {
    return [...this.attached.values()];
  }

  /** The attachment fails for good, as after a lost lock. */
  fail(device: string): void {
    const a = this.attached.get(device)!;
    this.attached.set(device, { ...a, state: 'failed', detail: 'lock lost (test)' });
  }

  async attach(req: AttachRequest): Promise<AttachmentInfo> {
    this.calls.push(`attach ${req.volume}${req.readOnly ? ' ro' : ''}${req.readerLock ? ' reader' : ''}${req.writeLevel ? ` ${req.writeLevel}` : ''}`);
    if (this.gate) await this.gate;
    const v = await this.cluster.metadata.getVolume(req.volume);
    const c = this.cluster;
    for (const a of this.attached.values()) {
      if (a.volume === req.volume) throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${req.volume}" is already attached at ${a.device} on this node`);
    }
    const writer = c.writers.get(req.volume);
    const readers = c.readers.get(req.volume) ?? new Set<string>();
    if (!req.readOnly) {
      if (writer) throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${req.volume}" is in use by torusd u-${writer} on ${writer} (pid 7) since 2026-01-01T00:00:00.000Z`);
      if (readers.size > 0) throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${req.volume}" is read (under a reader lock) by torusd u-${[...readers][0]} on ${[...readers][0]} (pid 7)`);
      c.writers.set(req.volume, this.name);
    } else if (req.readerLock) {
      if (writer) throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${req.volume}" is in use by torusd u-${writer} on ${writer} (pid 7) since 2026-01-01T00:00:00.000Z`);
      c.readers.set(req.volume, new Set([...readers, this.name]));
    }
    const index = this.next++;
    const device = `/dev/nbd${index}`;
    const d = c.diskOf(req.volume);
    d.size = v.size;
    this.node.plug(device, d, req.readOnly === true);
    const info: AttachmentInfo = {
      device,
      index,
      volume: req.volume,
      volumeId: v.id,
      mode: req.readOnly ? 'ro' : 'rw',
      readerLock: req.readerLock === true,
      kernel: 'netlink',
      survivesRestart: true,
      sizeBytes: v.size,
      lockToken: req.readOnly ? null : 1,
      timeoutSeconds: 10,
      deadConnTimeoutSeconds: 30,
      state: 'serving',
      detail: null,
      attachedAt: '2026-01-01T00:00:00.000Z',
      reconnects: 0,
      faults: { read: 'none' },
    };
    this.attached.set(device, info);
    return info;
  }

  async detach(device: string): Promise<unknown> {
    this.calls.push(`detach ${device}`);
    const a = this.attached.get(device);
    if (!a) throw new TorusError('TORUS_ERR_ATTACH_NOT_FOUND', `${device} is not attached by this torusd`);
    this.attached.delete(device);
    this.node.unplug(device);
    if (this.cluster.writers.get(a.volume) === this.name) this.cluster.writers.delete(a.volume);
    this.cluster.readers.get(a.volume)?.delete(this.name);
    if (this.detachError) throw this.detachError;
    return { device, volume: a.volume, detached: true };
  }
}

/** The TorusError code a call fails with, or 'OK' (services are called directly, without gRPC). */
export async function torusCodeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (err) {
    if (err instanceof TorusError) return err.code;
    throw err;
  }
}
