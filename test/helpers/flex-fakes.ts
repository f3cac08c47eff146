/**
 * Twins for the FlexVolume mount logic: a node (devices, a mount table,
 * mkfs) and an attacher, both in memory, with faults to inject. A volume's
 * "disk" outlives its attachments, as a torus volume does.
 */
import { TorusError } from '../../src/errors/torus-error.js';
import type { Attacher, AttachOptions } from '../../src/k8s/flex/attacher.js';
import type { MountEntry, Probe } from '../../src/k8s/mount/mountinfo.js';
import type { FsType } from '../../src/k8s/mount/filesystem.js';
import type { FsStats, MountSystem } from '../../src/k8s/mount/system.js';

export interface FakeDisk {
  size: number;
  fs: string | null;
  /** blkid finds contradicting signatures. */
  ambiguous: boolean;
  /** Reads at or past this offset fail with EIO. */
  readFaultFrom: number | null;
}

export function disk(size = 64 * 1024 * 1024, fs: string | null = null): FakeDisk {
  return { size, fs, ambiguous: false, readFaultFrom: null };
}

function errno(code: string, message: string): NodeJS.ErrnoException {
  const e = new Error(message) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

export class FakeNode implements MountSystem {
  /** device path -> disk behind it while attached */
  readonly devices = new Map<string, { disk: FakeDisk; readOnly: boolean; minor: number }>();
  mounts: MountEntry[] = [];
  readonly log: string[] = [];
  mkfsFails = false;
  private nextMinor = 0;

  plug(device: string, d: FakeDisk, readOnly: boolean): void {
    this.devices.set(device, { disk: d, readOnly, minor: this.nextMinor++ });
  }

  unplug(device: string): void {
    this.devices.delete(device);
  }

  private dev(device: string) {
    const d = this.devices.get(device);
    if (!d) throw errno('ENOENT', `no such device ${device}`);
    return d;
  }

  count(prefix: string): number {
    return this.log.filter((l) => l.startsWith(prefix)).length;
  }

  async deviceSize(device: string): Promise<number> {
    return this.dev(device).disk.size;
  }

  async readExact(device: string, offset: number, length: number): Promise<void> {
    const d = this.dev(device).disk;
    this.log.push(`read ${device} ${offset} ${length}`);
    if (d.readFaultFrom !== null && offset + length > d.readFaultFrom) throw errno('EIO', `EIO reading ${device} at ${offset}`);
    if (offset + length > d.size) throw new Error('short read');
  }

  async probe(device: string): Promise<Probe> {
    const d = this.dev(device).disk;
    this.log.push(`probe ${device}`);
    if (d.ambiguous) return { kind: 'ambiguous', detail: 'ext4 and xfs' };
    return d.fs === null ? { kind: 'empty' } : { kind: 'filesystem', type: d.fs };
  }

  async mkfs(device: string, fsType: FsType): Promise<void> {
    const d = this.dev(device);
    this.log.push(`mkfs ${device} ${fsType}`);
    if (d.readOnly) throw new Error('mkfs on a read-only device');
    if (this.mkfsFails) throw new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', 'mkfs.ext4 exited 1: injected');
    d.disk.fs = fsType;
  }

  async mount(device: string, target: string, fsType: FsType, options: readonly string[]): Promise<void> {
    const d = this.dev(device);
    this.log.push(`mount ${device} ${target} ${options.join(',')}`);
    if (d.disk.fs !== fsType) throw new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', `mount: wrong fs type on ${device}`);
    if (d.readOnly && !options.includes('ro')) throw new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', `mount: ${device} is write-protected`);
    this.mounts.push({ dev: `43:${d.minor}`, root: '/', mountPoint: target, options: [...options], fsType, source: device, superOptions: ['rw'] });
  }

  async bind(source: string, target: string, readOnly: boolean): Promise<void> {
    this.log.push(`bind ${source} ${target}${readOnly ? ' ro' : ''}`);
    const device = this.devices.get(source);
    if (device) {
      // A device node bound onto a file, as /proc/self/mountinfo shows it: devtmpfs, rooted at the node's name.
      if (!this.files.has(target)) throw new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', `mount --bind: ${target} does not exist`);
      this.mounts.push({ dev: '0:5', root: `/${source.replace(/^\/dev\//, '')}`, mountPoint: target, options: readOnly ? ['ro'] : ['rw'], fsType: 'devtmpfs', source: 'udev', superOptions: ['rw'] });
      return;
    }
    const m = [...this.mounts].reverse().find((e) => e.mountPoint === source);
    if (!m) throw new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', `mount --bind: ${source} is not mounted`);
    this.mounts.push({ ...m, mountPoint: target, options: readOnly ? ['ro'] : [...m.options] });
  }

  async unmount(target: string): Promise<void> {
    this.log.push(`umount ${target}`);
    for (let i = this.mounts.length - 1; i >= 0; i--) {
      if (this.mounts[i]!.mountPoint === target) {
        this.mounts.splice(i, 1);
        return;
      }
    }
    throw new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', `umount: ${target}: not mounted`);
  }

  /** errno the next flushes fail with (e.g. EIO: a writer fenced off). */
  flushFails: string | null = null;

  async flush(device: string): Promise<void> {
    this.dev(device);
    this.log.push(`flush ${device}`);
    if (this.flushFails) throw errno(this.flushFails, `${this.flushFails}: fsync ${device}`);
  }

  async mountTable(): Promise<MountEntry[]> {
    return this.mounts.map((m) => ({ ...m }));
  }

  /** Paths made by mkdirp or touch (only what the code under test made). */
  readonly dirs = new Set<string>();
  readonly files = new Set<string>();
  /** statfs answers per mount point. */
  readonly stats = new Map<string, FsStats>();

  async mkdirp(dir: string): Promise<void> {
    this.dirs.add(dir);
  }

  async touch(file: string): Promise<void> {
    this.log.push(`touch ${file}`);
    this.files.add(file);
  }

  async remove(target: string): Promise<void> {
    if (this.mounts.some((m) => m.mountPoint === target)) throw Object.assign(new Error(`EBUSY: ${target}`), { code: 'EBUSY' });
    this.log.push(`remove ${target}`);
    this.dirs.delete(target);
    this.files.delete(target);
  }

  async statfs(dir: string): Promise<FsStats> {
    const s = this.stats.get(dir);
    if (!s) throw Object.assign(new Error(`ENOENT: statfs ${dir}`), { code: 'ENOENT' });
    return s;
  }
}

export class FakeAttacher implements Attacher {
  readonly disks = new Map<string, FakeDisk>();
  /** Volumes a writer on another node holds: rw attaches are refused. */
  readonly heldElsewhere = new Set<string>();
  readonly calls: { op: 'attach' | 'detach'; volume?: string; device: string; opts?: AttachOptions }[] = [];
  private attached = new Map<string, string>();
  private next = 0;

  constructor(private readonly node: FakeNode) {}

  get attachedCount(): number {
    return this.attached.size;
  }

  async attach(volume: string, opts: AttachOptions): Promise<{ device: string }> {
    const d = this.disks.get(volume);
    if (!d) throw new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', `no volume named "${volume}"`);
    if (!opts.readOnly && this.heldElsewhere.has(volume)) {
      throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${volume}" is open for writing by torusd 1234 on node-b (pid 7)`);
    }
    const device = `/dev/nbd${this.next++}`;
    this.attached.set(device, volume);
    this.node.plug(device, d, opts.readOnly);
    this.calls.push({ op: 'attach', volume, device, opts });
    return { device };
  }

  async detach(device: string): Promise<void> {
    this.calls.push({ op: 'detach', device });
    this.attached.delete(device);
    this.node.unplug(device);
  }
}
