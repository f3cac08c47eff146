import type { MountEntry } from '../k8s/mount/mountinfo.js';

/**
 * What file system the data dir is on, and whether it keeps data the way a
 * storage daemon needs (pure: the caller reads statfs(2)'s f_type and
 * /proc/self/mountinfo). torusd logs it at start-up and warns when the data
 * dir cannot keep what it is given: a data dir on tmpfs loses every block at
 * the node's reboot, and one on overlayfs is usually a container's own
 * writable layer (a DaemonSet whose hostPath mount is missing), lost when
 * the pod is recreated. Both look fine until then, which is why they are
 * said out loud. So are mount options that void what a FLUSH promises
 * (write barriers off) or let a crash show other files' old bytes (ext4's
 * data=writeback).
 *
 * Magic numbers from Linux's include/uapi/linux/magic.h (and ZFS's).
 */

export type DataDirFsVerdict = 'tested' | 'local' | 'ephemeral' | 'remote' | 'unknown';

export interface DataDirFs {
  /** A short name: ext4, xfs, tmpfs, ... or `0x<magic>` when unknown. */
  readonly name: string;
  /**
   * tested: the power-loss suite runs on it (ext4, xfs); local: a local disk
   * file system torus has not been tested on; ephemeral: does not outlive a
   * reboot or the container; remote: over a network or a user-space driver,
   * whose fsync torus cannot vouch for; unknown.
   */
  readonly verdict: DataDirFsVerdict;
  /** For ephemeral and remote: what goes wrong, for the operator. */
  readonly why?: string;
}

const NETWORK_FS = 'a network file system: its fsync and its behaviour when the server goes away are not those of a local disk';

const KNOWN: ReadonlyMap<number, DataDirFs> = new Map<number, DataDirFs>([
  [0xef53, { name: 'ext4', verdict: 'tested' }], // ext2, ext3 and ext4 share it
  [0x58465342, { name: 'xfs', verdict: 'tested' }],
  [0x9123683e, { name: 'btrfs', verdict: 'local' }],
  [0xf2f52010, { name: 'f2fs', verdict: 'local' }],
  [0x2fc12fc1, { name: 'zfs', verdict: 'local' }],
  [0x01021994, { name: 'tmpfs', verdict: 'ephemeral', why: 'every block is lost when the node reboots (tmpfs is memory)' }],
  [0x858458f6, { name: 'ramfs', verdict: 'ephemeral', why: 'every block is lost when the node reboots (ramfs is memory)' }],
  [
    0x794c7630,
    {
      name: 'overlayfs',
      verdict: 'ephemeral',
      why: "every block is lost when the pod is recreated, for this is most likely the container's own writable layer (no hostPath mounted at the data dir)",
    },
  ],
  [0x6969, { name: 'nfs', verdict: 'remote', why: NETWORK_FS }],
  [0xff534d42, { name: 'cifs', verdict: 'remote', why: NETWORK_FS }],
  [0xfe534d42, { name: 'smb2', verdict: 'remote', why: NETWORK_FS }],
  [0x01021997, { name: '9p', verdict: 'remote', why: 'a file system passed through from a host or over a network: its fsync may not reach a disk' }],
  [0x65735546, { name: 'fuse', verdict: 'remote', why: 'a user-space file system: whether its fsync reaches a disk is up to its driver' }],
]);

/** Names statfs(2)'s f_type. */
export function classifyDataDirFs(fType: number | bigint): DataDirFs {
  const magic = Number(fType) >>> 0;
  return KNOWN.get(magic) ?? { name: `0x${magic.toString(16)}`, verdict: 'unknown' };
}

const BARRIERS_OFF =
  'write barriers are off: a FLUSH that torus acknowledges may still sit in the disk\'s volatile cache, and a power cut loses it (remount without nobarrier / barrier=0)';

/** Mount options of the data dir's file system that weaken what torus promises, each said as a sentence. */
export function mountHazards(mount: MountEntry): string[] {
  const opts = new Set([...mount.options, ...mount.superOptions]);
  const out: string[] = [];
  if (opts.has('nobarrier') || opts.has('barrier=0')) out.push(BARRIERS_OFF);
  if ((mount.fsType === 'ext4' || mount.fsType === 'ext3') && opts.has('data=writeback')) {
    out.push('data=writeback: after a power cut a block file may show disk blocks that held other files\' data, since nothing writes data before the metadata that points at it (use the default data=ordered)');
  }
  return out;
}
