import type { FsType } from './filesystem.js';
import type { MountEntry, Probe } from './mountinfo.js';

/**
 * The node operations the Kubernetes drivers perform (FlexVolume and CSI),
 * as an interface so the mount logic is tested with a fake
 * (test/helpers/flex-fakes.ts) and run for real by node-system.ts.
 */
export interface MountSystem {
  /** The device's size in bytes. */
  deviceSize(device: string): Promise<number>;
  /** Reads exactly `length` bytes at `offset`, or throws: a short read is an error. */
  readExact(device: string, offset: number, length: number): Promise<void>;
  /** `blkid -p`: low-level probing, not blkid's cache. */
  probe(device: string): Promise<Probe>;
  mkfs(device: string, fsType: FsType): Promise<void>;
  mount(device: string, target: string, fsType: FsType, options: readonly string[]): Promise<void>;
  /** A bind mount of `source` at `target`, made read-only when asked. */
  bind(source: string, target: string, readOnly: boolean): Promise<void>;
  unmount(target: string): Promise<void>;
  /** Sends the device a flush (fsync of the block device). */
  flush(device: string): Promise<void>;
  /** The kernel's mount table (/proc/self/mountinfo). */
  mountTable(): Promise<MountEntry[]>;
  mkdirp(dir: string): Promise<void>;
  /** Creates an empty regular file if nothing is at `file` (a raw block volume is bind-mounted onto one). */
  touch(file: string): Promise<void>;
  /** Removes an empty directory or a file at `target`; nothing there is not an error. */
  remove(target: string): Promise<void>;
  /** statfs(2) of the filesystem holding `dir`: bytes and inodes. */
  statfs(dir: string): Promise<FsStats>;
}

export interface FsStats {
  readonly totalBytes: number;
  readonly availableBytes: number;
  readonly usedBytes: number;
  readonly totalInodes: number;
  readonly freeInodes: number;
  readonly usedInodes: number;
}
