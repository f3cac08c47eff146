import type { FsType } from './options.js';
import type { MountEntry, Probe } from './mountinfo.js';

/**
 * The node operations the FlexVolume driver performs, as an interface so the
 * mount logic is tested with a fake (test/unit/flex-mounter.test.ts) and run
 * for real by node-system.ts inside torusd's container.
 */
export interface FlexSystem {
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
}
