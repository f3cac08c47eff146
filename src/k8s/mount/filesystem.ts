/**
 * Filesystems on torus volumes, shared by the FlexVolume and CSI drivers:
 * which ones torus makes, how a volume's own mount is mounted, and the rule
 * for mkfs: only on a device that is provably empty.
 *
 * Each driver reports failures under its own error codes (a CSI user should
 * not read TORUS_ERR_FLEX_*), so the codes come in as a table.
 */
import type { Logger } from 'pino';
import type { ErrorCode } from '../../errors/codes.js';
import { TorusError } from '../../errors/torus-error.js';
import type { FormatMarks } from './format-marks.js';
import type { Probe } from './mountinfo.js';
import type { MountSystem } from './system.js';

/** Filesystems torus will make and mount: the ones whose mkfs the image ships. */
export const FS_TYPES = ['ext4', 'ext3', 'xfs'] as const;
export type FsType = (typeof FS_TYPES)[number];
export const DEFAULT_FS_TYPE: FsType = 'ext4';

export function isFsType(v: string): v is FsType {
  return (FS_TYPES as readonly string[]).includes(v);
}

/** How much of each end of the device must read back before blkid's "nothing" is trusted. */
export const PROBE_BYTES = 1024 * 1024;

/** The codes a driver reports the mount layer's failures under. */
export interface MountErrorCodes {
  /** The device could not be read or probed, so it is not proven empty. */
  readonly deviceRead: ErrorCode;
  /** blkid found data that is not one known filesystem. */
  readonly probeAmbiguous: ErrorCode;
  /** Another filesystem type than asked for. */
  readonly fsMismatch: ErrorCode;
  /** Formatted before (marked) but no filesystem now. */
  readonly fsMissing: ErrorCode;
  /** No filesystem yet and a read-only mount asked for. */
  readonly notFormattedRo: ErrorCode;
  /** mkfs, mount or unmount failed. */
  readonly mountFailed: ErrorCode;
}

export const FLEX_MOUNT_CODES: MountErrorCodes = {
  deviceRead: 'TORUS_ERR_FLEX_DEVICE_READ',
  probeAmbiguous: 'TORUS_ERR_FLEX_PROBE_AMBIGUOUS',
  fsMismatch: 'TORUS_ERR_FLEX_FS_MISMATCH',
  fsMissing: 'TORUS_ERR_FLEX_FS_MISSING',
  notFormattedRo: 'TORUS_ERR_FLEX_NOT_FORMATTED_RO',
  mountFailed: 'TORUS_ERR_FLEX_MOUNT_FAILED',
};

/**
 * Mount options for the volume's own (staging) mount. `noatime`: reads must
 * not turn into writes over the network. A read-only mount also skips journal
 * replay (`noload` for ext3/4, `norecovery` for xfs): without it the kernel
 * replays the journal even on a `ro` mount, a write to a device that is
 * read-only (and may be written by its owner elsewhere).
 */
export function stagingMountOptions(fsType: FsType, readOnly: boolean, trim: boolean): string[] {
  const opts = ['noatime'];
  if (trim && !readOnly) opts.push('discard');
  if (readOnly) opts.push('ro', fsType === 'xfs' ? 'norecovery' : 'noload');
  return opts;
}

export interface FilesystemRequest {
  /** Volume name, for messages and format marks. */
  readonly volume: string;
  /** etcd of the volume's cluster (format marks); null: the local one. */
  readonly etcd: readonly string[] | null;
  readonly fsType: FsType;
  readonly readOnly: boolean;
}

function reason(err: unknown): string {
  return err instanceof TorusError ? err.toLine() : err instanceof Error ? err.message : String(err);
}

/**
 * Makes sure `device` carries a `req.fsType` filesystem, making one only
 * when the device is provably empty: its first and last MiB read back
 * without error, `blkid -p` finds no signature at all, the mount is
 * read-write and the volume has no "formatted" mark. A read error is never
 * "empty"; a marked volume that shows nothing is never formatted again.
 */
export async function prepareFilesystem(
  deps: { readonly system: MountSystem; readonly marks: FormatMarks; readonly codes: MountErrorCodes },
  device: string,
  req: FilesystemRequest,
  log: Logger,
): Promise<void> {
  const { system: sys, marks, codes } = deps;
  let size: number;
  try {
    size = await sys.deviceSize(device);
    if (!(Number.isSafeInteger(size) && size > 0)) throw new Error(`size ${size}`);
    const n = Math.min(PROBE_BYTES, size);
    await sys.readExact(device, 0, n);
    await sys.readExact(device, size - n, n);
  } catch (err) {
    throw new TorusError(codes.deviceRead, `reading ${device} (volume ${req.volume}) failed, so it cannot be proven empty; nothing was written: ${reason(err)}`, { cause: err });
  }
  let probe: Probe;
  try {
    probe = await sys.probe(device);
  } catch (err) {
    throw new TorusError(codes.deviceRead, `blkid -p could not probe ${device} (volume ${req.volume}); nothing was written: ${reason(err)}`, { cause: err });
  }
  if (probe.kind === 'ambiguous') {
    throw new TorusError(codes.probeAmbiguous, `volume ${req.volume} carries data blkid cannot name as one filesystem (${probe.detail}); torus will neither format nor mount it`);
  }
  const mark = await marks.get(req.volume, req.etcd);
  if (probe.kind === 'filesystem') {
    if (probe.type !== req.fsType) {
      throw new TorusError(codes.fsMismatch, `volume ${req.volume} holds a ${probe.type} filesystem but the pod asks for ${req.fsType}; nothing was changed`);
    }
    if (mark === null && !req.readOnly) await marks.set(req.volume, req.etcd, req.fsType);
    return;
  }
  if (mark !== null) {
    throw new TorusError(codes.fsMissing, `volume ${req.volume} was formatted (${mark.fsType}, ${mark.at}) but ${device} shows no filesystem now; torus will not format it again`);
  }
  if (req.readOnly) {
    throw new TorusError(codes.notFormattedRo, `volume ${req.volume} has no filesystem yet and the pod mounts it read-only; mount it read-write once first`);
  }
  log.info({ device, fsType: req.fsType }, 'device is empty; making a filesystem');
  await sys.mkfs(device, req.fsType);
  // Check after writing, as the check before: the filesystem must be there.
  const after = await sys.probe(device);
  if (after.kind !== 'filesystem' || after.type !== req.fsType) {
    throw new TorusError(codes.mountFailed, `mkfs.${req.fsType} on ${device} finished but blkid -p finds ${after.kind === 'filesystem' ? after.type : after.kind}`);
  }
  await marks.set(req.volume, req.etcd, req.fsType);
}
